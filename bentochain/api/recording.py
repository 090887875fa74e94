"""Which gateway requests become quality records, and how each one's record is filled.

``RecordingMiddleware`` opens a ``Draft`` for a sampled request to a recorded endpoint and
hands it to a recorder when the last byte of the answer has gone out (for a stream, its end),
with the status, the latency and, for an error, its message. The route fills in what only it
knows (the model, the answer, the token counts) through ``draft()``.
"""

from __future__ import annotations

import json
import random
import re
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bentochain.observability.context import request_id, trace_id
from bentochain.observability.records import Recorder, RequestRecord, Usage
from bentochain.serving.upstream import routing

RECORDED = re.compile(
    r"^/(v1/chat/completions|v1/completions|v1/embeddings|translate"
    r"|chains/[^/]+/(invoke|batch|stream))$"
)
MAX_BODY = 1 << 20  # a request body bigger than this is recorded by its size only

_draft: ContextVar[Draft | None] = ContextVar("bentochain_record_draft", default=None)


@dataclass
class Draft:
    """A request's record while it is served."""

    endpoint: str
    started: float = field(default_factory=time.monotonic)
    time: datetime = field(default_factory=lambda: datetime.now(UTC))
    model: str | None = None
    reference: str | None = None
    input: Any = None
    texts: list[str] | None = None
    output: Any = None
    usage: Usage | None = None
    ttft_s: float | None = None
    finish_reason: str | None = None
    steps: dict[str, Any] | None = None
    error: str | None = None  # a failure the status does not show (a stream's error event)

    def first_token(self) -> None:
        if self.ttft_s is None:
            self.ttft_s = time.monotonic() - self.started

    def generated(
        self, texts: list[str], finish_reason: str | None, prompt: int, completion: int
    ) -> None:
        self.texts = texts
        self.finish_reason = finish_reason
        self.usage = Usage(prompt_tokens=prompt, completion_tokens=completion)

    def chain_output(self, output: Any) -> None:
        self.output = {"chain": output}
        self.steps = chain_steps(output)


def draft() -> Draft | None:
    """The record of the request being served; None when it is not recorded."""
    return _draft.get()


def note_model(model: str, reference: str | None = None) -> Draft | None:
    """Name the model of the request being recorded (its served id, and what serves it under
    that name); its draft, None when the request is not recorded."""
    current = _draft.get()
    if current is not None:
        current.model = model
        current.reference = reference
    return current


def chain_steps(output: Any) -> dict[str, Any] | None:
    """What a chain's steps produced, from its output: the SQL and its rows, the sources."""
    if not isinstance(output, dict):
        return None
    steps: dict[str, Any] = {}
    if "attempts" in output:
        steps["sql"] = output.get("sql")
        steps["rows"] = len(output.get("rows") or [])
        steps["attempts"] = len(output["attempts"])
    if "sources" in output:
        steps["sources"] = [
            {"source": s.get("source"), "chunk": s.get("chunk"), "score": s.get("score")}
            for s in output["sources"]
            if isinstance(s, dict)
        ]
    return steps or None


class RecordingMiddleware:
    def __init__(self, app: ASGIApp, recorder: Recorder, sample_rate: float = 1.0) -> None:
        self.app = app
        self.recorder = recorder
        self.sample_rate = sample_rate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if (
            scope["type"] != "http"
            or scope.get("method") != "POST"
            or not RECORDED.match(path)
            or random.random() >= self.sample_rate
        ):
            await self.app(scope, receive, send)
            return
        current = Draft(endpoint=path)
        body = bytearray()
        status = 0
        error = bytearray()

        async def receive_body() -> Message:
            message = await receive()
            if message["type"] == "http.request" and len(body) <= MAX_BODY:
                body.extend(message.get("body", b""))
            return message

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and status >= 400 and len(error) < 4096:
                error.extend(message.get("body", b""))
            await send(message)

        token = _draft.set(current)
        try:
            await self.app(scope, receive_body, send_and_note)
        finally:
            _draft.reset(token)
            self.recorder.submit(_record(current, bytes(body), status, bytes(error)))


def _record(current: Draft, body: bytes, status: int, error: bytes) -> RequestRecord:
    output = current.output
    if output is None and current.texts is not None:
        output = {"texts": current.texts}
    return RequestRecord(
        request_id=request_id() or "",
        trace_id=trace_id(),
        time=current.time,
        endpoint=current.endpoint,
        status=status or 500,  # no answer started: the request failed before it
        model=current.model,
        model_reference=current.reference,
        model_version=routing.used(),  # every version the request reached, to its end
        input=_body(body),
        output=output,
        usage=current.usage,
        latency_s=round(time.monotonic() - current.started, 6),
        ttft_s=None if current.ttft_s is None else round(current.ttft_s, 6),
        finish_reason=current.finish_reason,
        error=current.error or (_error(error) if status >= 400 or not status else None),
        steps=current.steps,
    )


def _body(raw: bytes) -> Any:
    if len(raw) > MAX_BODY:
        return {"too_large": True, "bytes": len(raw)}
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return {"not_json": True, "bytes": len(raw)}


def _error(raw: bytes) -> str:
    """The message of an error answer (OpenAI's shape, or a chain stream's error event)."""
    text = raw.decode("utf-8", "replace")
    try:
        data = json.loads(text)
    except ValueError:
        return text.strip()[:1000] or "no answer"
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        return str(data["error"].get("message", ""))[:1000]
    return text.strip()[:1000]
