"""Graceful drain on SIGTERM, for every service: what a rolling update and a pod's end need.

On the first SIGTERM a server stops being ready (``/readyz`` answers 503), answers new
requests with ``503`` + ``Retry-After`` and the ``draining`` code (a caller's upstream layer
takes that as "try another replica"), lets the requests in flight (streams included) run to
their end for up to ``shutdown.grace_seconds``, then passes the signal on to uvicorn, which
exits. The socket keeps accepting meanwhile: closed, it would leave new connections queued,
unanswered, in the arbiter's backlog until the process is gone.

A caller with no other replica left marks its request ``x-bentochain-last-resort``: a draining
server still serves it while its grace lasts (one replica during a node drain, or the next LLM
call of a chain that started before the signal).

Every service also answers ``GET /load``: its load (for the LLM the running + waiting
sequences, otherwise the requests in flight) and whether it drains. Callers with the
``least_load`` strategy ask for it every second while they send requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections.abc import Callable
from types import FrameType
from typing import Any, Protocol, runtime_checkable

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bentochain.serving.upstream.client import DRAINING_HEADER, LAST_RESORT_HEADER

logger = logging.getLogger(__name__)

UNCOUNTED = frozenset({"/livez", "/healthz", "/readyz", "/metrics", "/load"})
CANCEL_WAIT = 5.0  # after the grace, how long cancelled requests get to unwind


@runtime_checkable
class ReportsLoad(Protocol):
    def current_load(self) -> int:
        """Work this replica holds now (the LLM: running + waiting sequences)."""
        ...


def _service_load() -> int | None:
    import bentoml

    try:
        service = bentoml.get_current_service()
    except Exception:
        return None
    return service.current_load() if isinstance(service, ReportsLoad) else None


async def _json(send: Send, status: int, body: Any, headers: dict[str, str]) -> None:
    payload = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})


class Drain:
    """A server's drain: requests in flight, and what happens on SIGTERM.

    ``exit`` is called when the drain is over; by default it hands SIGTERM to the handler that
    was installed before ours (uvicorn's, which shuts the server down).
    """

    def __init__(
        self, grace_seconds: float, *, load: Callable[[], int | None] = _service_load
    ) -> None:
        self.grace_seconds = grace_seconds
        self.load = load
        self.draining = False
        self.in_flight = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._idle: asyncio.Event | None = None
        self._previous: Any = signal.SIG_DFL
        self._loop: asyncio.AbstractEventLoop | None = None
        self._exited = False
        self.exit: Callable[[], None] = self._pass_signal_on

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

    def begin(self) -> None:
        """Start draining (SIGTERM does this)."""
        if self.draining:
            return
        self.draining = True
        self._idle = asyncio.Event()
        if self.in_flight == 0:
            self._idle.set()
        logger.warning(
            "SIGTERM: draining, %d request(s) in flight may run for up to %.0fs",
            self.in_flight,
            self.grace_seconds,
        )
        asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        assert self._idle is not None
        try:
            await asyncio.wait_for(self._idle.wait(), self.grace_seconds)
            logger.warning("drained: no request in flight")
        except TimeoutError:
            tasks = list(self._tasks)
            logger.error(
                "grace of %.0fs is over: cancelling %d request(s)", self.grace_seconds, len(tasks)
            )
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=CANCEL_WAIT)
        self._finish()

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
        self.in_flight += 1
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            yield
        finally:
            self.in_flight -= 1
            if task is not None:
                self._tasks.discard(task)
            if self.draining and self.in_flight == 0 and self._idle is not None:
                self._idle.set()

    def current_load(self) -> int:
        load = self.load()
        return self.in_flight if load is None else load


class DrainMiddleware:
    """ASGI side of ``Drain``: readiness, refusals while draining, ``/load``."""

    def __init__(self, app: ASGIApp, *, grace_seconds: float) -> None:
        self.app = app
        self.drain = Drain(grace_seconds)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        drain = self.drain
        if path == "/load" and scope.get("method") == "GET":
            body = {
                "load": drain.current_load(),
                "in_flight": drain.in_flight,
                "draining": drain.draining,
            }
            await _json(send, 200, body, {})
            return
        if path == "/readyz" and drain.draining:
            await _json(send, 503, {"status": "draining"}, {"Retry-After": "1"})
            return
        if path in UNCOUNTED:
            await self.app(scope, receive, send)
            return
        if drain.draining and LAST_RESORT_HEADER not in Headers(scope=scope):
            await _json(send, 503, DRAINING_BODY, DRAINING_HEADERS)
            return

        with drain.counted():
            await self.app(scope, receive, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def watch(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                self.drain.install()  # after the server's own handler, which we pass on to
            await send(message)

        await self.app(scope, receive, watch)


# OpenAI's error shape, since the gateway's clients read it; callers read the header.
DRAINING_BODY = {
    "error": {
        "message": "This server is shutting down; retry the request (another replica takes it).",
        "type": "service_unavailable",
        "param": None,
        "code": "draining",
    }
}
DRAINING_HEADERS = {"Retry-After": "1", DRAINING_HEADER: "1", "Connection": "close"}
