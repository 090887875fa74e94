"""From a profile's service entry to the arguments of ``@bentoml.service``."""

from __future__ import annotations

from typing import Any

from bentochain.config.schema import ServiceSettings, Settings


def service_options(
    name: str, settings: ServiceSettings, *, enforce_concurrency: bool = True
) -> dict[str, Any]:
    """BentoML service configuration for one profile entry.

    ``enforce_concurrency=False`` leaves ``max_concurrency`` to the service itself (the gateway
    answers overload in OpenAI's error shape instead of BentoML's).
    """
    traffic: dict[str, Any] = {
        "timeout": settings.traffic.timeout,
        # BentoCloud's autoscaler scales on in-flight requests per replica.
        "concurrency": settings.scaling.target_concurrency,
    }
    if enforce_concurrency and settings.traffic.max_concurrency is not None:
        traffic["max_concurrency"] = settings.traffic.max_concurrency
    options: dict[str, Any] = {
        "name": name,
        "workers": settings.workers,
        "traffic": traffic,
        "runner_connection": settings.connection.model_dump(),
        "logging": {
            "access": {"enabled": True, "skip_paths": ["/livez", "/readyz", "/metrics", "/load"]}
        },
    }
    resources = settings.resources.model_dump(exclude_none=True)
    if resources:
        options["resources"] = resources
    if settings.env:
        options["envs"] = [{"name": k, "value": v} for k, v in sorted(settings.env.items())]
    return options


def install_middleware(service: Any, settings: Settings) -> Any:
    """What every service runs in front of its APIs: drain on SIGTERM and ``/load``, then the
    request's versions (canary pinning). Returns ``service``."""
    from bentochain.serving.drain import DrainMiddleware
    from bentochain.serving.upstream.routing import RoutingMiddleware

    service.add_asgi_middleware(DrainMiddleware, grace_seconds=settings.grace_seconds(service.name))
    service.add_asgi_middleware(RoutingMiddleware)
    return service
