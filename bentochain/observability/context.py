"""Every request's id and trace, told to the caller and carried to the services it reaches.

A request keeps the ``x-request-id`` its client sent (when it is a sane token) or gets a new
one; the same id goes on to every service the request calls, so records and log lines of one
request share it. Every answer, streamed or not, carries ``x-request-id`` and a W3C
``traceresponse`` naming the trace, so a client can find its request in the tracing backend.
"""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar

from opentelemetry import context as otel_context
from opentelemetry import trace
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bentochain.observability.tracing import (
    Export,
    drop_unexported_spans,
    export_spans,
    untraced_span,
)

REQUEST_ID_HEADER = "x-request-id"
TRACE_RESPONSE_HEADER = "traceresponse"
_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

_request_id: ContextVar[str | None] = ContextVar("bentochain_request_id", default=None)


def request_id() -> str | None:
    """This request's id; None outside a request."""
    return _request_id.get()


def trace_id() -> str | None:
    """The current trace's id as 32 hex digits; None without a valid span."""
    context = trace.get_current_span().get_span_context()
    return f"{context.trace_id:032x}" if context.is_valid else None


def outgoing() -> dict[str, str]:
    """Headers that carry this request's id to a service it calls."""
    current = _request_id.get()
    return {REQUEST_ID_HEADER: current} if current else {}


def traceresponse() -> str | None:
    """The W3C ``traceresponse`` value of the current span (version 00)."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


class RequestContext:
    """ASGI middleware, inside BentoML's tracing one: with tracing on, its request span is
    current here; with it off, that layer skips every request and this one makes the request's
    span (``untraced_span``).

    It is built once per worker, with the worker's app and before BentoML's tracing layer
    around it: with tracing on (``export``), that is where the worker's spans start to be
    exported; with it off, where BentoML's tracer stops recording them."""

    def __init__(self, app: ASGIApp, export: Export | None = None) -> None:
        self.app = app
        if export is not None:
            export_spans(export)
        else:
            drop_unexported_spans()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next(
            (v.decode("latin-1") for k, v in scope["headers"] if k == REQUEST_ID_HEADER.encode()),
            "",
        )
        current = given if _SANE_ID.fullmatch(given) else uuid.uuid4().hex
        span = trace.get_current_span()
        token = None
        if not span.get_span_context().is_valid:  # BentoML's layer skipped it: tracing is off
            span = untraced_span(scope["headers"])
            token = otel_context.attach(trace.set_span_in_context(span))
        if span.is_recording():
            span.set_attribute("bentochain.request_id", current)
        headers = [(REQUEST_ID_HEADER.encode(), current.encode())]
        answer = traceresponse()
        if answer is not None:
            headers.append((TRACE_RESPONSE_HEADER.encode(), answer.encode()))

        async def send_with_ids(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *headers]
            await send(message)

        # Not reset when the request ends: the server runs each request in a task (and context)
        # of its own, and BentoML's access log, outside this middleware, logs the id too.
        _request_id.set(current)
        try:
            await self.app(scope, receive, send_with_ids)
        finally:
            if token is not None:  # as BentoML's layer ends its span: no trace for the next
                otel_context.detach(token)
