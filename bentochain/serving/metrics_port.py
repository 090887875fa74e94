"""The Gateway's ``/metrics`` on a port of its own (``gateway.metrics_port``).

The public port then answers ``/metrics`` with a 404 that says where it went, and the server
process (``serving.launch``, the parent of every worker) serves the same Prometheus text on the
other port, from the directory where the workers write their metric files: Prometheus scrapes
it, the clients of the public port no longer see per-key usage and model names.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from prometheus_client import CollectorRegistry, multiprocess, start_http_server
from starlette.types import ASGIApp, Receive, Scope, Send


def serve_metrics(directory: Path, host: str, port: int) -> threading.Thread:
    """Prometheus's text for every worker writing into ``directory``, on ``host:port``."""
    directory.mkdir(parents=True, exist_ok=True)  # BentoML empties it at start; it is re-read
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(directory))
    _, thread = start_http_server(port, addr=host, registry=registry)
    return thread


class MetricsElsewhere:
    """``GET /metrics`` on the public port: a 404 naming the port that serves it."""

    def __init__(self, app: ASGIApp, port: int) -> None:
        self.app = app
        self.body = json.dumps(
            {
                "error": {
                    "message": f"Metrics are served on port {port} (gateway.metrics_port).",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "unknown_url",
                }
            }
        ).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") != "/metrics":
            await self.app(scope, receive, send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 404,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(self.body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": self.body})
