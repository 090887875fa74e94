"""From a profile's service entry to the arguments of ``@bentoml.service``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from bentoml.validators import ContentType

from bentochain.config.schema import Settings
from bentochain.observability.metrics import REQUEST_BUCKETS
from bentochain.serving import probes

JSON = ContentType("application/json")
"""Return-type metadata for an API that answers a list (``Annotated[list[X], JSON]``).

Without it, BentoML derives a root output's media type from its JSON schema on every response
(~0.3 ms, a fifth of an embedder's per-request work on its event loop, which shares 2 cores with
the model); with it, the type is known once.
"""


def service_options(
    profile: Settings,
    name: str,
    *,
    enforce_concurrency: bool = True,
    environ: Mapping[str, str] = os.environ,
) -> dict[str, Any]:
    """BentoML service configuration for service ``name`` of ``profile``; exits naming the
    variable when the tracing settings cannot be used.

    ``enforce_concurrency=False`` leaves ``max_concurrency`` to the service itself (the gateway
    answers overload in OpenAI's error shape instead of BentoML's).
    """
    from bentochain.observability.tracing import TracingConfigError, bentoml_tracing, resolve
    from bentochain.serving.startup import refuse_start

    settings = profile.entry(name)
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
        "metrics": {"duration": {"buckets": list(REQUEST_BUCKETS)}},
        "logging": {"access": {"enabled": True, "skip_paths": sorted(probes.UNCOUNTED)}},
    }
    try:
        export = resolve(profile.observability.tracing, environ)
    except TracingConfigError as exc:
        refuse_start(f"bentochain: tracing: {exc}")
    options["tracing"] = bentoml_tracing(export)
    resources = settings.resources.model_dump(exclude_none=True)
    if resources:
        options["resources"] = resources
    if settings.env:
        options["envs"] = [{"name": k, "value": v} for k, v in sorted(settings.env.items())]
    return options


def install_middleware(service: Any, settings: Settings) -> Any:
    """What every service runs in front of its APIs: the request's id and trace headers, the
    internal token (all but the Gateway), drain on SIGTERM and ``/load``, then the request's
    versions (canary pinning). Returns ``service``."""
    from bentochain.observability.context import RequestContext
    from bentochain.observability.logs import use_json_logs
    from bentochain.observability.tracing import keep_service_names, resolve
    from bentochain.serving.caller import Caller
    from bentochain.serving.drain import DrainMiddleware
    from bentochain.serving.internal import InternalOnly, internal_token
    from bentochain.serving.readiness import ReadinessReport
    from bentochain.serving.upstream.routing import RoutingMiddleware

    keep_service_names()
    if settings.observability.logs.format == "json":
        use_json_logs()
    export = resolve(settings.observability.tracing, os.environ)  # checked by service_options
    service.add_asgi_middleware(RequestContext, export=export)
    if service.name != "Gateway":  # the entry service is the one door: the others are closed
        service.add_asgi_middleware(InternalOnly, token=internal_token())
    service.add_asgi_middleware(
        DrainMiddleware, grace_seconds=settings.grace_seconds(service.name), service=service.name
    )
    if issubclass(service.inner, Caller):  # readiness per dependency, after the drain's
        service.add_asgi_middleware(ReadinessReport)
    service.add_asgi_middleware(RoutingMiddleware)
    return service
