"""Readiness of a caller, per dependency: which of them has a replica that answers its own
``/readyz``, and whether the ones it cannot serve without do.

The Gateway is ready while the LLM is; a chain service while the services its chain calls are.
A dependency that is down makes only its own routes fail (fast, once its circuit opens), not the
whole caller unready. ``/readyz`` answers with each dependency's state as JSON.

BentoML's built-in check lets a connection error to a dependency that is still starting escape
the handler; its timeout middleware then never answers that probe, and the request (and the
worker's graceful shutdown) hangs for the whole ``traffic.timeout``. This check turns every
failure into "not ready" instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel
from starlette.types import ASGIApp, Receive, Scope, Send

from bentochain.serving.upstream.circuit import State

logger = logging.getLogger(__name__)

PROBE_TIMEOUT = 5.0


async def _ready(dependency: Any, seconds: float) -> bool:
    try:
        return bool(await asyncio.wait_for(dependency.ready(seconds), seconds + 1))
    except Exception as exc:
        logger.debug("dependency not ready: %r", exc)
        return False


class DependencyState(BaseModel):
    ready: bool
    required: bool
    circuit: State | None = None


class Readiness(BaseModel):
    """The body of a caller's ``/readyz`` (200 when ``ready``, else 503)."""

    ready: bool
    starting: bool = False
    dependencies: dict[str, DependencyState] = {}


async def dependency_states(
    calls: Mapping[str, Any], required: Iterable[str], seconds: float = PROBE_TIMEOUT
) -> Readiness:
    """Ready or not (every required dependency is), and each dependency's state."""
    names = list(calls)
    answers = await asyncio.gather(*(_ready(calls[n], seconds) for n in names))
    needed = set(required)
    states = {
        name: DependencyState(
            ready=ok,
            required=name in needed,
            circuit=getattr(calls[name], "circuit", None) and calls[name].circuit.state,
        )
        for name, ok in zip(names, answers, strict=True)
    }
    ready = all(states[n].ready for n in needed if n in states)
    return Readiness(ready=ready, dependencies=states)


class ReadinessReport:
    """``GET /readyz`` of a caller: 200 or 503, with every dependency's state as JSON."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") != "/readyz" or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        import bentoml

        try:
            instance = bentoml.get_current_service()
            calls, required = instance.calls, instance.required_dependencies()
        except Exception:  # not built yet: starting
            report = Readiness(ready=False, starting=True)
        else:
            report = await dependency_states(calls, required)
        payload = report.model_dump_json().encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200 if report.ready else 503,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})
