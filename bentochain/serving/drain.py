"""Graceful drain on SIGTERM, for every service: what a rolling update and a pod's end need.

On the first SIGTERM a server stops being ready (``/readyz`` answers 503), answers new
requests with ``503`` + ``Retry-After`` and the ``draining`` code (a caller's upstream layer
takes that as "try another replica"), lets the requests in flight (streams included) run to
their end within its grace, then passes the signal on to uvicorn, which exits. The socket
keeps accepting meanwhile: closed, it would leave new connections queued, unanswered, in the
arbiter's backlog until the process is gone.

The grace is ``shutdown.grace_seconds``, or, with ``auto``, what the work in flight needs at the
rate the service measured (the LLM: the most tokens a request in flight may still generate,
at its recent time per decode step, with a margin), else ``AUTO_GRACE_FALLBACK``. When a grace
does run out, nothing is dropped silently: the LLM ends each generation with a ``replaced``
error event, a streamed answer of the gateway ends with an SSE error event saying the server
was replaced and to retry, a request with no answer yet gets a 503, and each stream cut is
counted in ``bentochain_drain_cut_streams_total``.

A caller with no other replica left marks its request ``x-bentochain-last-resort``: a draining
server still serves it while its grace lasts (one replica during a node drain, or the next LLM
call of a chain that started before the signal).

Every service also answers ``GET /load`` (callers with the ``least_load`` strategy and the
upstream layer's health probe ask it every second or so): its load (the LLM: running + waiting
sequences; otherwise the requests in flight), whether it is ready and whether it drains, and
the grace it would take if stopped now. ``GET /health`` is ``/livez`` under vLLM's name.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any, Protocol, runtime_checkable

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bentochain.config.schema import AUTO_GRACE_FALLBACK
from bentochain.serving import probes
from bentochain.serving.upstream.client import DRAINING_HEADER, LAST_RESORT_HEADER

logger = logging.getLogger(__name__)

CANCEL_WAIT = 5.0  # after the grace, how long cut requests get to unwind
AUTO_GRACE_FACTOR = 1.5
AUTO_GRACE_MARGIN = 10.0
"""An ``auto`` grace is the measured need times the factor, plus the margin: the rate can drop
while the drain runs, and the last bytes still have to travel."""
REPLACED = "server_replaced"
REPLACED_MESSAGE = (
    "The server answering this request was replaced before it finished (its shutdown grace "
    "of {grace:.0f}s ran out); retry the request."
)


@runtime_checkable
class ReportsLoad(Protocol):
    def current_load(self) -> int:
        """Work this replica holds now (the LLM: running + waiting sequences)."""
        ...


@runtime_checkable
class MeasuresDrain(Protocol):
    def drain_seconds(self) -> float | None:
        """How long the work held now needs to end, at the rate measured; None when unknown."""
        ...

    def longest_generation_seconds(self) -> float | None:
        """What the longest request it allows needs at the rate measured; None when unknown."""
        ...

    def cut(self, message: str) -> None:
        """End the work held now, each stream with ``message`` as its last event."""
        ...


@runtime_checkable
class ReportsReadiness(Protocol):
    def ready_now(self) -> bool:
        """Whether it can serve, from what it knows now (no I/O)."""
        ...


def current_service() -> Any:
    """This worker's service instance, or None while it is built (or outside BentoML)."""
    import bentoml

    try:
        return bentoml.get_current_service()
    except Exception:
        return None


async def _json(send: Send, status: int, body: Any, headers: dict[str, str]) -> None:
    payload = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})


@dataclass
class _Exchange:
    """A request in flight, as far as its answer went."""

    task: asyncio.Task[Any] | None
    started: bool = False
    streaming: bool = False
    ended: bool = False
    cut: bool = False


class Drain:
    """A server's drain: requests in flight, and what happens on SIGTERM.

    ``grace_seconds`` None is ``auto`` (see the module's docstring). ``exit`` is called when the
    drain is over; by default it hands SIGTERM to the handler that was installed before ours
    (uvicorn's, which shuts the server down).
    """

    def __init__(
        self,
        grace_seconds: float | None,
        *,
        service: Callable[[], Any] = current_service,
        on_cut: Callable[[int], None] | None = None,
    ) -> None:
        self.grace_seconds = grace_seconds
        self.service = service
        self.on_cut = on_cut or (lambda streams: None)
        self.draining = False
        self.grace: float | None = None  # the bound taken when the drain began
        self._exchanges: dict[int, _Exchange] = {}
        self._idle: asyncio.Event | None = None
        self._previous: Any = signal.SIG_DFL
        self._loop: asyncio.AbstractEventLoop | None = None
        self._exited = False
        self.exit: Callable[[], None] = self._pass_signal_on

    @property
    def in_flight(self) -> int:
        return len(self._exchanges)

    def install(self) -> None:
        """Take SIGTERM over from the server (call inside the running loop, main thread)."""
        self._loop = asyncio.get_running_loop()
        try:
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        except ValueError:  # not the main thread (an in-process test client): nothing to drain
            logger.debug("not the main thread: SIGTERM is left to the server")

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        assert self._loop is not None
        if self.draining:  # a second SIGTERM: stop waiting
            self._loop.call_soon_threadsafe(self._finish)
        else:
            self._loop.call_soon_threadsafe(self.begin)

    def bound(self) -> float:
        """The grace this server takes if it is stopped now."""
        if self.grace_seconds is not None:
            return self.grace_seconds
        service = self.service()
        needed = service.drain_seconds() if isinstance(service, MeasuresDrain) else None
        if needed is None:
            return AUTO_GRACE_FALLBACK
        return needed * AUTO_GRACE_FACTOR + AUTO_GRACE_MARGIN

    def begin(self) -> None:
        """Start draining (SIGTERM does this)."""
        if self.draining:
            return
        self.draining = True
        self.grace = self.bound()
        self._idle = asyncio.Event()
        if not self._exchanges:
            self._idle.set()
        logger.warning(
            "SIGTERM: draining, %d request(s) in flight may run for up to %.0fs%s",
            self.in_flight,
            self.grace,
            ""
            if self.grace_seconds is not None
            else " (auto: what they need at the rate measured)",
        )
        asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        assert self._idle is not None and self.grace is not None
        try:
            await asyncio.wait_for(self._idle.wait(), self.grace)
            logger.warning("drained: no request in flight")
        except TimeoutError:
            await self._cut(self.grace)
        self._finish()

    async def _cut(self, grace: float) -> None:
        """The grace ran out: end what is still in flight, each with a word to its client."""
        assert self._idle is not None
        exchanges = list(self._exchanges.values())
        streams = sum(1 for e in exchanges if e.streaming)
        logger.error(
            "grace of %.0fs is over: cutting %d request(s), %d of them streams",
            grace,
            len(exchanges),
            streams,
        )
        if streams:
            self.on_cut(streams)
        message = REPLACED_MESSAGE.format(grace=grace)
        service = self.service()
        if isinstance(service, MeasuresDrain):  # its streams end with an error event
            service.cut(message)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), CANCEL_WAIT)
        tasks = []
        for exchange in list(self._exchanges.values()):
            exchange.cut = True
            if exchange.task is not None:
                exchange.task.cancel()
                tasks.append(exchange.task)
        if tasks:
            await asyncio.wait(tasks, timeout=CANCEL_WAIT)

    def _finish(self) -> None:
        if not self._exited:
            self._exited = True
            self.exit()

    def _pass_signal_on(self) -> None:
        previous = self._previous
        if callable(previous):
            previous(signal.SIGTERM, None)
            return
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    @contextlib.contextmanager
    def counted(self) -> Any:
        task = asyncio.current_task()
        exchange = _Exchange(task)
        self._exchanges[id(exchange)] = exchange
        try:
            yield exchange
        finally:
            del self._exchanges[id(exchange)]
            if self.draining and not self._exchanges and self._idle is not None:
                self._idle.set()

    def report(self) -> dict[str, Any]:
        """``/load``'s answer."""
        service = self.service()
        load = service.current_load() if isinstance(service, ReportsLoad) else self.in_flight
        ready = (
            service.ready_now() if isinstance(service, ReportsReadiness) else service is not None
        )
        report = {
            "load": load,
            "in_flight": self.in_flight,
            "draining": self.draining,
            "ready": ready and not self.draining,
            "grace_seconds": self.grace if self.draining else self.bound(),
            "grace_fixed": self.grace_seconds is not None,
        }
        if isinstance(service, MeasuresDrain):
            report["longest_generation_seconds"] = service.longest_generation_seconds()
        return report


class DrainMiddleware:
    """ASGI side of ``Drain``: readiness while draining, refusals, ``/load``, ``/health``, and
    the word a request in flight gets when the grace runs out."""

    def __init__(self, app: ASGIApp, *, grace_seconds: float | None, service: str = "") -> None:
        self.app = app
        self.drain = Drain(grace_seconds, on_cut=_cut_counter(service) if service else None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        drain = self.drain
        if path == probes.LOAD and scope.get("method") == "GET":
            await _json(send, 200, drain.report(), {})
            return
        if path == probes.READYZ and drain.draining:
            await _json(send, 503, {"status": "draining"}, {"Retry-After": "1"})
            return
        if path == probes.HEALTH:  # vLLM's name for liveness
            scope = {**scope, "path": probes.LIVEZ, "raw_path": probes.LIVEZ.encode()}
            path = probes.LIVEZ
        if path in probes.UNCOUNTED:
            await self.app(scope, receive, send)
            return
        if drain.draining and LAST_RESORT_HEADER not in Headers(scope=scope):
            await _json(send, 503, DRAINING_BODY, DRAINING_HEADERS)
            return

        with drain.counted() as exchange:

            async def watched(message: Message) -> None:
                if message["type"] == "http.response.start":
                    exchange.started = True
                    kind = Headers(raw=message.get("headers", [])).get("content-type", "")
                    exchange.streaming = kind.startswith("text/event-stream")
                elif message["type"] == "http.response.body" and not message.get("more_body"):
                    exchange.ended = True
                await send(message)

            try:
                await self.app(scope, receive, watched)
            except asyncio.CancelledError:
                if not exchange.cut or exchange.ended:
                    raise
                await self._last_word(exchange, send)

    async def _last_word(self, exchange: _Exchange, send: Send) -> None:
        """What a request cut by the drain sends before its connection closes."""
        message = REPLACED_MESSAGE.format(grace=self.drain.grace or 0)
        with contextlib.suppress(Exception):  # the client may be gone already
            if not exchange.started:
                body = {"error": {**DRAINING_BODY["error"], "message": message, "code": REPLACED}}
                await _json(send, 503, body, DRAINING_HEADERS)
            elif exchange.streaming:
                await send({"type": "http.response.body", "body": replaced_event(message)})
                await send({"type": "http.response.body", "body": b""})
            else:
                await send({"type": "http.response.body", "body": b""})

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def watch(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                self.drain.install()  # after the server's own handler, which we pass on to
            await send(message)

        await self.app(scope, receive, watch)


def replaced_event(message: str) -> bytes:
    """The SSE event that ends a stream cut by a drain: an ``error`` event whose data has
    OpenAI's ``error`` (the ``openai`` client raises it) and the chain stream's ``status`` and
    ``message``."""
    error = {**DRAINING_BODY["error"], "message": message, "code": REPLACED}
    data = {"error": error, "status": 503, "message": message}
    return f"event: error\ndata: {json.dumps(data)}\n\n".encode()


def _cut_counter(service: str) -> Callable[[int], None]:
    from bentochain.observability.metrics import drain_cut_streams

    counter = drain_cut_streams().labels(service=service)
    return lambda streams: counter.inc(streams)


# OpenAI's error shape, since the gateway's clients read it; callers read the header.
DRAINING_BODY: dict[str, Any] = {
    "error": {
        "message": "This server is shutting down; retry the request (another replica takes it).",
        "type": "service_unavailable",
        "param": None,
        "code": "draining",
    }
}
DRAINING_HEADERS = {"Retry-After": "1", DRAINING_HEADER: "1", "Connection": "close"}
