"""Drain and routing middleware in front of a small ASGI app, and the composed Bento's stop order.

SIGTERM itself is sent to real servers in ``tests/integration/test_replicas.py``; here the drain
is started by calling ``begin`` (what the signal handler does), so every step can be watched.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.types import Receive, Scope, Send

from bentochain.serving.drain import DrainMiddleware
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
    assert seen["load"] == {"load": 1, "in_flight": 1, "draining": False}
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
    assert seen["load_after"] == {"load": 0, "in_flight": 0, "draining": True}


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


def test_load_is_what_the_service_reports_else_its_requests_in_flight() -> None:
    async def scenario() -> dict[str, Any]:
        app = DrainMiddleware(SlowApp(), grace_seconds=1)
        app.drain.load = lambda: 5  # the LLM reports running + waiting sequences
        async with client(app) as http:
            return dict((await http.get("/load")).json())

    assert asyncio.run(scenario()) == {"load": 5, "in_flight": 0, "draining": False}


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
