"""Readiness of a caller, from what its upstream layer already knows: never by waiting on a
replica.

A caller is ready while it can serve: the Gateway while any of its routes can (one down model
makes its own routes answer 503 at once, not the whole API unready, so an orchestrator keeps
sending the rest), a chain service while every service its chain calls can. Whether a
dependency can serve comes from its replicas' probes and passive health (``Upstream.health``),
so ``/readyz`` answers in well under a kubelet probe's timeout even when a replica hangs, and
its JSON lists each dependency and its replicas.

BentoML's own check of the entry service asks every dependency's ``/readyz`` and lets a
connection error escape; its timeout middleware then holds the probe for the whole
``traffic.timeout``. This one is a middleware in front of it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Receive, Scope, Send

from bentochain.serving import probes
from bentochain.serving.upstream.client import DependencyHealth

logger = logging.getLogger(__name__)

Needs = Literal["any", "all"]


class DependencyState(DependencyHealth):
    required: bool = Field(description="this caller is not ready without it")


class Readiness(BaseModel):
    """The body of a caller's ``/readyz`` (200 when ``ready``, else 503)."""

    ready: bool
    starting: bool = False
    needs: Needs = Field("all", description="'any': ready while one dependency serves")
    dependencies: dict[str, DependencyState] = {}


def readiness(calls: Mapping[str, Any], needs: Needs) -> Readiness:
    """Ready or not, and each dependency's state, from the upstream layer's state alone (call
    inside the event loop: the first call starts the probes)."""
    states = {
        name: DependencyState(**upstream.health().model_dump(), required=needs == "all")
        for name, upstream in calls.items()
    }
    serving = [state.serving for state in states.values()]
    ready = (any(serving) if needs == "any" else all(serving)) if states else True
    return Readiness(ready=ready, needs=needs, dependencies=states)


class ReadinessReport:
    """``GET /readyz`` of a caller: 200 or 503, with every dependency's state as JSON."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope.get("path") != probes.READYZ
            or scope["method"] != "GET"
        ):
            await self.app(scope, receive, send)
            return
        from bentochain.serving.drain import current_service

        instance = current_service()
        if instance is None:  # not built yet: starting
            report = Readiness(ready=False, starting=True)
        else:
            report = readiness(instance.calls, instance.needs)
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
