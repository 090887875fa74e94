"""An OTLP/HTTP trace receiver on loopback: what a collector would get from the services.

Spans arrive as protobuf ``ExportTraceServiceRequest`` bodies (``opentelemetry-proto`` decodes
them) and are kept as plain values, so a test reads the trace a request left behind: which
service made each span, its parent, its attributes.
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bentochain.serving.topology import free_port


@dataclass(frozen=True)
class Span:
    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    service: str
    kind: int
    attributes: dict[str, Any]
    status: int  # 0 unset, 1 ok, 2 error
    start_ns: int
    end_ns: int
    events: tuple[str, ...]


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind) if kind else None


def decode(body: bytes) -> list[Span]:
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    found = []
    for resource_spans in request.resource_spans:
        resource = {kv.key: _value(kv.value) for kv in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                found.append(
                    Span(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_id=span.parent_span_id.hex() or None,
                        name=span.name,
                        service=str(resource.get("service.name", "")),
                        kind=span.kind,
                        attributes={kv.key: _value(kv.value) for kv in span.attributes},
                        status=span.status.code,
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                        events=tuple(event.name for event in span.events),
                    )
                )
    return found


@dataclass
class Collector:
    url: str
    spans: list[Span] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def endpoint(self) -> str:
        """What ``OTEL_EXPORTER_OTLP_ENDPOINT`` would be (the exporter adds ``/v1/traces``)."""
        return self.url

    def trace(self, trace_id: str) -> list[Span]:
        with self.lock:
            return [s for s in self.spans if s.trace_id == trace_id]

    def wait_for(
        self, trace_id: str, done: Callable[[list[Span]], bool], what: str, polls: int = 600
    ) -> list[Span]:
        """The trace's spans once ``done`` holds for them (polled every 0.1 s, bounded)."""
        for _ in range(polls):
            spans = self.trace(trace_id)
            if done(spans):
                return spans
            time.sleep(0.1)
        raise AssertionError(f"{what}: not within {polls} polls; got {self.trace(trace_id)}")


def closed(spans: list[Span], outside: str | None = None) -> bool:
    """Whether every span's parent has arrived too, so no span of the trace is still on its way.

    Each process exports in its own batches, and a server span ends (and is exported) after
    the children it carries, so a trace read as soon as its leaves arrive can lack its middle.
    ``outside`` is the caller's span id when the trace was continued from a ``traceparent``.
    """
    ids = {s.span_id for s in spans}
    return bool(spans) and all(s.parent_id in ids or s.parent_id == outside for s in spans)


def _app(collector: Collector) -> Starlette:
    async def traces(request: Request) -> Response:
        body = await request.body()
        if request.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        spans = decode(body)
        with collector.lock:
            collector.spans.extend(spans)
        return Response(
            ExportTraceServiceResponse().SerializeToString(),
            media_type="application/x-protobuf",
        )

    return Starlette(routes=[Route("/v1/traces", traces, methods=["POST"])])


@contextmanager
def otlp_collector() -> Iterator[Collector]:
    """Receive OTLP/HTTP traces on a free loopback port for the duration of the block."""
    port = free_port()
    collector = Collector(f"http://127.0.0.1:{port}")
    server = uvicorn.Server(
        uvicorn.Config(_app(collector), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(500):
        if server.started:
            break
        time.sleep(0.02)
    else:
        raise RuntimeError("the OTLP collector did not start")
    try:
        yield collector
    finally:
        server.should_exit = True
        thread.join(timeout=10)
