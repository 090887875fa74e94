"""Drain and routing middleware in front of a small ASGI app, and the composed Bento's stop order.

SIGTERM itself is sent to real servers in ``tests/integration/test_replicas.py``; here the drain
is started by calling ``begin`` (what the signal handler does), so every step can be watched.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.types import Receive, Scope, Send

from bentochain.config.schema import AUTO_GRACE_FALLBACK
from bentochain.serving.drain import AUTO_GRACE_FACTOR, AUTO_GRACE_MARGIN, DrainMiddleware
from bentochain.serving.shutdown import depths, stages
from bentochain.serving.upstream import routing
from bentochain.serving.upstream.client import DRAINING_HEADER, LAST_RESORT_HEADER


class SlowApp:
    """``/slow`` answers when ``release`` is set; everything else at once."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered = asyncio.Event()
        self.cancelled = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/slow":
            self.entered.set()
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled = True
                raise
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def test_a_draining_server_refuses_new_work_finishes_what_it_has_then_exits() -> None:
    async def scenario() -> dict[str, Any]:
        inner = SlowApp()
        app = DrainMiddleware(inner, grace_seconds=30)
        exited = asyncio.Event()
        app.drain.exit = exited.set
        seen: dict[str, Any] = {}
        async with client(app) as http:
            slow = asyncio.create_task(http.get("/slow"))
            await inner.entered.wait()
            seen["load"] = (await http.get("/load")).json()
            app.drain.begin()
            refused = await http.post("/v1/chat/completions", json={})
            seen["refused"] = (refused.status_code, dict(refused.headers), refused.json())
            seen["last_resort"] = (await http.get("/fast", headers={LAST_RESORT_HEADER: "1"})).text
            seen["ready"] = (await http.get("/readyz")).status_code
            seen["live"] = (await http.get("/livez")).status_code
            seen["exited_early"] = exited.is_set()
            inner.release.set()
            seen["slow"] = (await slow).text
            await asyncio.wait_for(exited.wait(), 10)
            seen["load_after"] = (await http.get("/load")).json()
        return seen

    seen = asyncio.run(scenario())
    assert seen["load"] | {"grace_seconds": None} == {
        "load": 1,
        "in_flight": 1,
        "draining": False,
        "ready": False,  # no service built: not ready
        "grace_seconds": None,
        "grace_fixed": True,
    }
    status, headers, body = seen["refused"]
    assert status == 503
    assert headers[DRAINING_HEADER] == "1"
    assert headers["retry-after"] == "1"
    assert body["error"]["code"] == "draining"
    assert seen["last_resort"] == "done"  # a caller with nowhere else to go is served
    assert seen["ready"] == 503
    assert seen["live"] == 200  # alive: an orchestrator must not kill it for draining
    assert seen["exited_early"] is False  # the slow request was still in flight
    assert seen["slow"] == "done"  # and it ran to its end
    assert (seen["load_after"]["in_flight"], seen["load_after"]["draining"]) == (0, True)
    assert seen["load_after"]["grace_seconds"] == 30


def test_past_the_grace_requests_in_flight_are_cancelled() -> None:
    async def scenario() -> tuple[bool, bool]:
        inner = SlowApp()
        app = DrainMiddleware(inner, grace_seconds=0.2)
        exited = asyncio.Event()
        app.drain.exit = exited.set
        async with client(app) as http:
            slow = asyncio.create_task(http.get("/slow"))
            await inner.entered.wait()
            app.drain.begin()
            await asyncio.wait_for(exited.wait(), 10)
            slow.cancel()
            await asyncio.gather(slow, return_exceptions=True)
        return inner.cancelled, exited.is_set()

    assert asyncio.run(scenario()) == (True, True)


class StreamingApp:
    """``/stream`` sends one SSE event, then waits for ``release``; ``/slow`` answers nothing
    until then."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/stream":
            headers = [(b"content-type", b"text/event-stream; charset=utf-8")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        self.entered.set()
        await self.release.wait()
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})


def test_past_the_grace_a_stream_ends_with_an_error_event_and_is_counted() -> None:
    async def scenario() -> tuple[str, tuple[int, dict[str, Any]], list[int]]:
        inner = StreamingApp()
        cuts: list[int] = []
        app = DrainMiddleware(inner, grace_seconds=0.2)
        app.drain.on_cut = cuts.append
        exited = asyncio.Event()
        app.drain.exit = exited.set
        async with client(app) as http:
            stream = asyncio.create_task(http.get("/stream"))
            await inner.entered.wait()
            inner.entered.clear()
            waiting = asyncio.create_task(http.get("/slow", headers={LAST_RESORT_HEADER: "1"}))
            await inner.entered.wait()
            app.drain.begin()
            await asyncio.wait_for(exited.wait(), 10)
            streamed, refused = await stream, await waiting
        return streamed.text, (refused.status_code, refused.json()), cuts

    text, (status, body), cuts = asyncio.run(scenario())
    assert text.startswith("data: 1\n\nevent: error\ndata: ")
    event = json.loads(text.split("data: ", 2)[2])
    assert event["error"]["code"] == "server_replaced"
    assert "replaced" in event["message"] and "retry" in event["message"]
    assert status == 503 and body["error"]["code"] == "server_replaced"
    assert cuts == [1]  # the stream; the request that had no answer yet is not a stream


class Generating:
    """What the LLM tells its drain: what its work needs, and a cut that ends it."""

    def __init__(self, needs: float | None) -> None:
        self.needs = needs
        self.cut_with: str | None = None
        self.app: StreamingApp | None = None

    def drain_seconds(self) -> float | None:
        return self.needs

    def longest_generation_seconds(self) -> float | None:
        return None if self.needs is None else 10 * self.needs

    def cut(self, message: str) -> None:
        self.cut_with = message
        assert self.app is not None
        self.app.release.set()  # each generation ends with its error event, as the engine's


def test_an_auto_grace_is_what_the_work_in_flight_needs_at_the_rate_measured() -> None:
    measured, unmeasured = Generating(4.0), Generating(None)
    app = DrainMiddleware(SlowApp(), grace_seconds=None)
    app.drain.service = lambda: measured
    assert app.drain.bound() == 4.0 * AUTO_GRACE_FACTOR + AUTO_GRACE_MARGIN
    app.drain.service = lambda: unmeasured
    assert app.drain.bound() == AUTO_GRACE_FALLBACK
    fixed = DrainMiddleware(SlowApp(), grace_seconds=30)
    fixed.drain.service = lambda: measured
    assert fixed.drain.bound() == 30


def test_past_the_grace_a_service_that_can_cut_its_own_work_does() -> None:
    async def scenario() -> tuple[str | None, str]:
        inner = StreamingApp()
        llm = Generating(0.0)
        llm.app = inner
        app = DrainMiddleware(inner, grace_seconds=0.2)
        app.drain.service = lambda: llm
        exited = asyncio.Event()
        app.drain.exit = exited.set
        async with client(app) as http:
            stream = asyncio.create_task(http.get("/stream"))
            await inner.entered.wait()
            app.drain.begin()
            await asyncio.wait_for(exited.wait(), 10)
            return llm.cut_with, (await stream).text

    message, text = asyncio.run(scenario())
    assert message is not None and "0s ran out" in message
    assert text == "data: 1\n\ndata: [DONE]\n\n"  # it ended by itself: nothing added


def test_health_is_liveness_under_vllms_name() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": scope["path"].encode()})

    async def scenario() -> str:
        async with client(DrainMiddleware(app, grace_seconds=1)) as http:
            return (await http.get("/health")).text

    assert asyncio.run(scenario()) == "/livez"


def test_load_is_what_the_service_reports_else_its_requests_in_flight() -> None:
    class Busy:
        def current_load(self) -> int:
            return 5  # the LLM reports running + waiting sequences

    async def scenario() -> dict[str, Any]:
        app = DrainMiddleware(SlowApp(), grace_seconds=1)
        app.drain.service = Busy
        async with client(app) as http:
            return dict((await http.get("/load")).json())

    report = asyncio.run(scenario())
    assert (report["load"], report["in_flight"], report["draining"]) == (5, 0, False)


def test_a_request_keeps_the_versions_it_was_pinned_to_and_reports_those_it_used() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        pinned = routing.pinned("LLM")
        routing.record("Embedder", "stable")
        headers = [(b"x-pinned", (pinned or "").encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    async def scenario() -> list[httpx.Headers]:
        async with client(routing.RoutingMiddleware(app)) as http:
            return [
                (
                    await http.get("/", headers={routing.PIN_HEADER: "LLM=canary, X=nonsense"})
                ).headers,
                (await http.get("/")).headers,
            ]

    pinned, plain = asyncio.run(scenario())
    assert pinned["x-pinned"] == "canary"
    assert pinned[routing.VERSION_HEADER] == "Embedder=stable"  # used, not merely asked for
    assert plain["x-pinned"] == ""


@dataclass
class FakeService:
    name: str
    dependencies: dict[str, Any] = field(default_factory=dict)


@dataclass
class Dep:
    on: FakeService | None


@dataclass
class Watcher:
    name: str


def test_the_composed_bento_stops_callers_before_what_they_call() -> None:
    llm, embedder = FakeService("LLM"), FakeService("Embedder")
    sql = FakeService("SQLChain", {"llm": Dep(llm)})
    rag = FakeService("RAGChain", {"llm": Dep(llm), "embedder": Dep(embedder)})
    gateway = FakeService(
        "Gateway",
        {"a": Dep(llm), "b": Dep(embedder), "c": Dep(sql), "d": Dep(rag), "e": Dep(None)},
    )
    depth = depths(gateway)
    assert depth == {"Gateway": 0, "LLM": 2, "Embedder": 2, "SQLChain": 1, "RAGChain": 1}
    watchers = [Watcher(n) for n in ("service_LLM", "service_SQLChain", "service", "other")]
    order = [[w.name for w in group] for group in stages(watchers, "Gateway", depth)]
    assert order == [["service"], ["service_SQLChain"], ["service_LLM"], ["other"]]
