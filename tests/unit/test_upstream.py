"""The upstream layer over real HTTP: replicas are small aiohttp servers on loopback that speak
BentoML's JSON protocol (and misbehave on purpose), the client is BentoML's own.

Each test drives one behaviour a caller relies on: how requests spread for each strategy, what
happens when a replica refuses, hangs, drops the connection or drains, how a canary's share
and a request's pinned version hold, and how discovery brings replicas in and out.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from pathlib import Path
from typing import Any

import bentoml
import pytest
from aiohttp import web

from bentochain.config.schema import ReplicaAddress, UpstreamSettings
from bentochain.serving.topology import free_port
from bentochain.serving.upstream import Upstream, UpstreamError
from bentochain.serving.upstream.balancing import LeastLoad
from bentochain.serving.upstream.client import DRAINING_HEADER, LAST_RESORT_HEADER
from bentochain.serving.upstream.discovery import (
    FileDiscovery,
    ReplicaFile,
    TrackDiscovery,
    TrackFile,
    dns,
    fixed,
)
from bentochain.serving.upstream.replicas import Replica
from bentochain.serving.upstream.routing import VERSION_HEADER, request_scope

JSON = "application/json"


@bentoml.service(name="Echo")
class Echo:
    """Only its API signatures matter: they tell BentoML's client the routes and types."""

    @bentoml.api
    def echo(self, text: str) -> str:
        return text

    @bentoml.api
    async def chunks(self, count: int) -> AsyncGenerator[str, None]:
        for i in range(count):
            yield f"{i};"


class FakeReplica:
    """One replica on a free loopback port; ``mode`` is how it behaves."""

    def __init__(self, name: str, mode: str = "ok") -> None:
        self.name = name
        self.mode = mode
        self.served = 0
        self.seen_headers: list[Any] = []  # case-insensitive, as HTTP headers are
        self.load = 0
        self.draining = False
        self.hold = asyncio.Event()  # a stream waits on it after its first chunk
        self.answer_load = asyncio.Event()  # "slow-load": /load waits on it
        self.disconnected = asyncio.Event()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._runner: web.AppRunner | None = None

    async def start(self) -> FakeReplica:
        app = web.Application()
        app.router.add_post("/echo", self.echo)
        app.router.add_post("/chunks", self.chunks)
        app.router.add_get("/load", self.report)
        app.router.add_get("/readyz", self.readyz)
        self._runner = web.AppRunner(app, handler_cancellation=True)  # sees a client leave
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _refusal(self, request: web.Request) -> web.StreamResponse | None:
        self.seen_headers.append(request.headers.copy())
        if self.mode == "draining" and LAST_RESORT_HEADER not in request.headers:
            return web.json_response(
                {"error": {"code": "draining"}},
                status=503,
                headers={DRAINING_HEADER: "1", "Retry-After": "1"},
            )
        if self.mode == "drop":
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        if self.mode == "refuse":
            return web.json_response({"error": "no such thing"}, status=422)
        return None

    async def echo(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        if self.mode in ("hang", "stopped"):
            await asyncio.sleep(30)
        self.served += 1
        return web.Response(
            text=f"{self.name}:{body['text']}", headers={VERSION_HEADER: "Other=canary"}
        )

    async def chunks(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        self.served += 1
        response = web.StreamResponse()
        await response.prepare(request)
        try:
            for i in range(body["count"]):
                await response.write(f"{self.name}{i};".encode())
                if i == 0 and self.mode == "hold":
                    await self.hold.wait()
                if i == 0 and self.mode == "break":
                    await self.hold.wait()  # until the caller has the first chunk
                    assert request.transport is not None
                    request.transport.close()
                    return response
        except (asyncio.CancelledError, ConnectionResetError):
            self.disconnected.set()
            raise
        await response.write_eof()
        return response

    async def report(self, request: web.Request) -> web.StreamResponse:
        if self.mode in ("slow-load", "stopped"):
            await self.answer_load.wait()
        return web.json_response({"load": self.load, "draining": self.draining, "ready": True})

    async def readyz(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=503 if self.draining else 200)


@contextlib.asynccontextmanager
async def replicas(*modes: str) -> AsyncIterator[list[FakeReplica]]:
    started = [await FakeReplica(f"r{i}", mode).start() for i, mode in enumerate(modes)]
    try:
        yield started
    finally:
        for replica in started:
            await replica.stop()


class Clock:
    """Time the test moves: backoffs end when the test says so, not after a sleep."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def upstream(discovery: Any, clock: Callable[[], float] | None = None, **settings: Any) -> Upstream:
    return Upstream(
        "Echo",
        Echo,
        discovery,
        UpstreamSettings(**{"probe_seconds": 3600, "refresh_seconds": 3600, **settings}),
        timeout=5.0,
        media_type=JSON,
        clock=clock or time.monotonic,
    )


def static(*urls: str, weights: tuple[int, ...] = ()) -> TrackDiscovery:
    addresses = tuple(
        ReplicaAddress(url=u, weight=w)
        for u, w in zip(urls, weights or (1,) * len(urls), strict=True)
    )
    return TrackDiscovery({"stable": (100.0, fixed(addresses))})


async def spread(up: Upstream, count: int) -> Counter[str]:
    served = [await up.call("echo", text="x") for _ in range(count)]
    return Counter(answer.split(":")[0] for answer in served)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_round_robin_alternates() -> None:
    async def scenario() -> Counter[str]:
        async with replicas("ok", "ok") as (a, b):
            up = upstream(static(a.url, b.url), strategy="round_robin")
            try:
                return await spread(up, 60)
            finally:
                await up.aclose()

    assert run(scenario()) == Counter({"r0": 30, "r1": 30})


def test_weighted_round_robin_follows_the_weights() -> None:
    async def scenario() -> Counter[str]:
        async with replicas("ok", "ok") as (a, b):
            up = upstream(static(a.url, b.url, weights=(3, 1)), strategy="weighted_round_robin")
            try:
                return await spread(up, 60)
            finally:
                await up.aclose()

    assert run(scenario()) == Counter({"r0": 45, "r1": 15})


def test_least_connections_sends_to_the_idle_replica() -> None:
    async def scenario() -> tuple[Counter[str], str]:
        async with replicas("hold", "hold") as (a, b):
            up = upstream(static(a.url, b.url), strategy="least_connections")
            try:
                held = up.stream("chunks", idle_timeout=10, count=3)
                first = await anext(held)  # one replica now holds a stream open
                for replica in (a, b):
                    replica.mode = "ok"
                counts = await spread(up, 20)
                a.hold.set()
                b.hold.set()
                rest = "".join([chunk async for chunk in held])
                return counts, first + rest
            finally:
                await up.aclose()

    counts, streamed = run(scenario())
    holder = streamed[:2]
    idle = "r1" if holder == "r0" else "r0"
    assert counts == Counter({idle: 20})
    assert streamed == f"{holder}0;{holder}1;{holder}2;"


def test_least_load_follows_what_replicas_report() -> None:
    async def scenario() -> tuple[Counter[str], Counter[str]]:
        async with replicas("ok", "ok") as (a, b):
            up = upstream(static(a.url, b.url), strategy="least_load")
            try:
                await up.refresh(force=True)
                a.load = 7  # busy with another caller's work: least_connections cannot see it
                await up.probe(wait=5)
                busy = await spread(up, 6)
                a.load = 0
                await up.probe(wait=5)
                return busy, await spread(up, 10)
            finally:
                await up.aclose()

    busy, idle = run(scenario())
    assert busy == Counter({"r1": 6})  # b holds nothing between calls: 0 < 7
    assert idle == Counter({"r0": 5, "r1": 5})


def test_a_short_request_inside_a_probes_window_is_not_taken_for_another_callers_load() -> None:
    """The replica counted a request of ours that started and ended while the probe was out;
    read as someone else's, it made an idle replica tie with a busy one (2 of 20 requests went
    to the busy replica in a CI run)."""
    idle, busy = Replica("idle"), Replica("busy")
    sent = idle.probe_sent(0.0), busy.probe_sent(0.0)
    idle.started()  # ours: counted by the replica as it measured, over before its answer
    idle.ended()
    idle.probed(1, False, sent[0], 0.1)
    busy.probed(1, False, sent[1], 0.1)  # another caller's stream
    assert (idle.load_estimate, busy.load_estimate) == (0, 1)
    least = LeastLoad()
    assert {least.pick([idle, busy]).url for _ in range(10)} == {"idle"}


def test_a_replica_that_stops_answering_its_probe_is_skipped_until_it_answers() -> None:
    """A stopped process accepts connections and answers nothing: once its probe has waited
    ``unresponsive_seconds``, requests go to the others; it is back with its first answer."""
    clock = Clock()

    async def scenario() -> tuple[Counter[str], Counter[str], list[str], Counter[str]]:
        async with replicas("slow-load", "ok") as (silent, ok):
            up = upstream(static(silent.url, ok.url), clock, unresponsive_seconds=3)
            try:
                await up.refresh(force=True)
                await up.probe(wait=0.5)  # ok answers; silent does not
                clock.now += 1  # asked 1 s ago: slow, not yet silent
                early = await spread(up, 4)
                clock.now += 3
                skipped = await spread(up, 10)
                states = [r.state for r in up.health().replicas]
                silent.answer_load.set()
                await up.probe(wait=5)
                return early, skipped, states, await spread(up, 4)
            finally:
                await up.aclose()

    early, skipped, states, after = run(scenario())
    assert early == Counter({"r0": 2, "r1": 2})
    assert skipped == Counter({"r1": 10})
    assert states == ["unresponsive", "healthy"]
    assert after == Counter({"r0": 2, "r1": 2})


def test_a_request_waiting_on_a_replica_that_stops_answering_goes_to_another() -> None:
    async def scenario() -> tuple[str, float]:
        async with replicas("hang", "ok") as (hung, ok):
            hung.mode, ok.mode = "hang", "ok"
            hung_first = upstream(
                static(hung.url, ok.url),
                strategy="round_robin",
                probe_seconds=0.1,
                unresponsive_seconds=0.5,
            )
            try:
                await hung_first.refresh(force=True)
                await hung_first.probe(wait=2)
                hung.mode = "stopped"  # from now nothing answers, as after a SIGSTOP
                started = time.monotonic()
                answer = await hung_first.call("echo", text="x")
                return str(answer), time.monotonic() - started
            finally:
                hung.answer_load.set()
                await hung_first.aclose()

    answer, took = run(scenario())
    assert answer == "r1:x"
    assert took < 20  # not the 30 s the hung replica would have held it


def test_a_stream_from_a_replica_that_stops_answering_ends_instead_of_hanging() -> None:
    async def scenario() -> tuple[list[str], UpstreamError]:
        async with replicas("hold") as (replica,):
            up = upstream(static(replica.url), probe_seconds=0.1, unresponsive_seconds=0.5)
            chunks: list[str] = []
            try:
                stream = up.stream("chunks", idle_timeout=60, count=3)
                chunks.append(await anext(stream))
                replica.mode = "stopped"  # the stream and the probes go silent

                async def rest() -> None:
                    async for chunk in stream:
                        chunks.append(chunk)

                with pytest.raises(UpstreamError) as stopped:
                    await rest()
                return chunks, stopped.value
            finally:
                replica.answer_load.set()
                replica.hold.set()
                await up.aclose()

    chunks, error = run(scenario())
    assert chunks == ["r00;"]
    assert error.status == 503 and "stopped answering" in error.message


def test_a_service_with_no_replica_that_answers_fails_at_once_naming_it() -> None:
    clock = Clock()

    async def scenario() -> UpstreamError:
        async with replicas("slow-load") as (silent,):
            up = upstream(static(silent.url), clock, unresponsive_seconds=3)
            try:
                await up.refresh(force=True)
                await up.probe(wait=0.5)
                clock.now += 4
                with pytest.raises(UpstreamError) as caught:
                    await up.call("echo", text="x")
                assert silent.served == 0
                return caught.value
            finally:
                silent.answer_load.set()
                await up.aclose()

    error = run(scenario())
    assert error.status == 503 and error.retry_after is not None
    assert "Echo has no healthy replica" in error.message and "unresponsive" in error.message


def test_a_refused_connection_is_retried_on_another_replica_and_skipped() -> None:
    clock = Clock()

    async def scenario() -> tuple[list[str], Counter[str], Counter[str]]:
        async with replicas("ok") as (good,):
            dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
            up = upstream(static(dead, good.url), clock, backoff_seconds=5)
            try:
                first = [await up.call("echo", text=str(i)) for i in range(4)]
                skipped = await spread(up, 10)
                clock.now += 6  # the backoff is over: the dead one is tried again, and fails
                again = await spread(up, 4)
                return first, skipped, again
            finally:
                await up.aclose()

    first, skipped, again = run(scenario())
    assert first == ["r0:0", "r0:1", "r0:2", "r0:3"]  # the good replica is r0 here
    assert skipped == Counter({"r0": 10})
    assert again == Counter({"r0": 4})


def test_a_replica_that_drops_the_connection_before_answering_is_retried() -> None:
    async def scenario() -> list[str]:
        async with replicas("drop", "ok") as (dropping, good):
            up = upstream(static(dropping.url, good.url), strategy="round_robin")
            try:
                return [await up.call("echo", text=str(i)) for i in range(3)]
            finally:
                await up.aclose()

    assert run(scenario()) == ["r1:0", "r1:1", "r1:2"]


def test_a_timeout_before_the_first_byte_moves_to_another_replica() -> None:
    async def scenario() -> str:
        async with replicas("hang", "ok") as (slow, good):
            up = Upstream(
                "Echo",
                Echo,
                static(slow.url, good.url),
                UpstreamSettings(strategy="round_robin", probe_seconds=3600),
                timeout=0.5,
                media_type=JSON,
            )
            try:
                answer = await up.call("echo", text="t")
                assert up.replicas[0].failures == 1
                return str(answer)
            finally:
                await up.aclose()

    assert run(scenario()) == "r1:t"


def test_draining_replicas_send_callers_elsewhere_and_serve_as_a_last_resort() -> None:
    async def scenario() -> tuple[str, list[str], str]:
        async with replicas("draining", "ok") as (draining, good):
            up = upstream(static(draining.url, good.url), strategy="round_robin")
            try:
                moved = await up.call("echo", text="a")
                later = [await up.call("echo", text="b") for _ in range(4)]
                good.mode = "refuse"  # the only other replica now refuses: 4xx, not retried
                with pytest.raises(UpstreamError) as refused:
                    await up.call("echo", text="c")
                assert refused.value.status == 422
                assert refused.value.message == "no such thing"
                await good.stop()  # gone: the draining one is all that is left
                last = await up.call("echo", text="d")
                return moved, later, last
            finally:
                await up.aclose()

    moved, later, last = run(scenario())
    assert moved == "r1:a"
    assert later == ["r1:b"] * 4  # the draining replica is not chosen again
    assert last == "r0:d"  # served, because the caller said it is its last resort


def test_with_no_replica_left_the_caller_gets_a_503_naming_the_service() -> None:
    async def scenario() -> UpstreamError:
        dead = f"http://127.0.0.1:{free_port()}"
        up = upstream(static(dead))
        try:
            with pytest.raises(UpstreamError) as failed:
                await up.call("echo", text="x")
            return failed.value
        finally:
            await up.aclose()

    error = run(scenario())
    assert (error.status, error.code, error.retry_after) == (503, "unavailable", 1.0)
    assert "unreachable" in error.message


def test_a_stream_that_started_is_never_replayed() -> None:
    async def scenario() -> tuple[list[str], UpstreamError, int, int]:
        async with replicas("break", "ok") as (breaking, other):
            up = upstream(static(breaking.url, other.url), strategy="round_robin")
            chunks: list[str] = []

            async def read() -> None:
                stream = up.stream("chunks", idle_timeout=5, count=3)
                chunks.append(await anext(stream))
                breaking.hold.set()
                async for chunk in stream:
                    chunks.append(chunk)

            try:
                with pytest.raises(UpstreamError) as broken:
                    await read()
                return chunks, broken.value, breaking.served, other.served
            finally:
                await up.aclose()

    chunks, error, first, second = run(scenario())
    assert chunks == ["r00;"]
    assert (error.status, error.code) == (502, "broken")
    assert (first, second) == (1, 0)


def test_closing_a_stream_early_disconnects_the_callee() -> None:
    async def scenario() -> bool:
        async with replicas("hold") as (replica,):
            up = upstream(static(replica.url))
            try:
                stream = up.stream("chunks", idle_timeout=5, count=3)
                await anext(stream)
                await stream.aclose()  # the reader left
                await asyncio.wait_for(replica.disconnected.wait(), 10)
                return replica.disconnected.is_set()
            finally:
                await up.aclose()

    assert run(scenario())


def test_a_canary_takes_its_share_and_a_request_keeps_its_version() -> None:
    async def scenario() -> tuple[Counter[str], set[str], str, list[str | None]]:
        async with replicas("ok", "ok") as (stable, canary):
            discovery = TrackDiscovery(
                {
                    "stable": (90.0, fixed((ReplicaAddress(url=stable.url),))),
                    "canary": (10.0, fixed((ReplicaAddress(url=canary.url),))),
                }
            )
            up = upstream(discovery)
            try:
                shares = await spread(up, 100)
                pinned: set[str] = set()
                for _ in range(20):  # each request: three calls, one version
                    with request_scope() as tracks:
                        answers = {
                            (await up.call("echo", text="q")).split(":")[0] for _ in range(3)
                        }
                        assert len(answers) == 1
                        pinned.add(tracks.used["Echo"])
                        assert tracks.used["Other"] == "canary"  # what the callee reported
                with request_scope({"Echo": "canary"}):  # a client asked for the canary
                    asked = await up.call("echo", text="a")
                with request_scope() as tracks:  # the versions travel to the callee
                    await up.call("echo", text="h")
                    await up.call("echo", text="h")
                served = canary if tracks.used["Echo"] == "canary" else stable
                sent = [h.get("X-Bentochain-Pin") for h in served.seen_headers[-2:]]
                return shares, pinned, asked, sent
            finally:
                await up.aclose()

    shares, pinned, asked, sent = run(scenario())
    assert shares == Counter({"r0": 90, "r1": 10})
    assert pinned == {"stable", "canary"}
    assert asked == "r1:a"
    track = "canary" if sent[1] == "Echo=canary, Other=canary" else "stable"
    assert sent == [None, f"Echo={track}, Other=canary"]  # nothing chosen before the first


def test_replicas_come_and_go_with_the_replica_file(tmp_path: Path) -> None:
    path = tmp_path / "Echo.json"

    def write(*urls: str) -> None:
        replicas_ = tuple(ReplicaAddress(url=u) for u in urls)
        ReplicaFile(
            service="Echo", tracks={"stable": TrackFile(weight=100, replicas=replicas_)}
        ).write(path)

    async def scenario() -> tuple[Counter[str], Counter[str]]:
        async with replicas("ok", "ok") as (a, b):
            write(a.url)
            up = upstream(FileDiscovery(path), strategy="round_robin")
            try:
                before = await spread(up, 6)
                write(a.url, b.url)
                await up.refresh()
                after = await spread(up, 6)
                write(b.url)
                await up.refresh()
                return before, after + await spread(up, 4)
            finally:
                await up.aclose()

    before, after = run(scenario())
    assert before == Counter({"r0": 6})
    assert after == Counter({"r0": 3, "r1": 7})


def test_a_draining_replica_makes_the_caller_look_for_a_new_one(tmp_path: Path) -> None:
    """The rollout order: the new replica is in the file before the old one drains; a caller
    that has not re-read the file yet finds it when the old one says it drains."""
    path = tmp_path / "Echo.json"

    async def scenario() -> str:
        async with replicas("ok", "ok") as (old, new):
            ReplicaFile(
                service="Echo",
                tracks={"stable": TrackFile(weight=100, replicas=(ReplicaAddress(url=old.url),))},
            ).write(path)
            up = upstream(FileDiscovery(path))
            try:
                assert (await up.call("echo", text="1")).startswith("r0")
                ReplicaFile(
                    service="Echo",
                    tracks={
                        "stable": TrackFile(weight=100, replicas=(ReplicaAddress(url=new.url),))
                    },
                ).write(path)
                old.mode = "draining"
                return str(await up.call("echo", text="2"))
            finally:
                await up.aclose()

    assert run(scenario()) == "r1:2"


def test_dns_names_resolve_to_one_replica_per_address() -> None:
    found = run(dns("localhost:3123", 3000)())
    assert found is not None
    urls = {a.url for a in found}
    assert "http://127.0.0.1:3123" in urls
    assert all(u.endswith(":3123") for u in urls)
    assert run(dns("name.invalid", 3000)()) is None  # unresolvable: keep what is known


def test_health_is_known_from_the_probes_without_asking_anyone() -> None:
    async def scenario() -> tuple[bool, list[str], bool, list[str]]:
        async with replicas("ok", "ok") as (a, b):
            up = upstream(static(a.url, b.url))
            try:
                await up.refresh(force=True)
                await up.probe(wait=5)
                a.draining = True
                await up.probe(wait=5)
                one = up.health()
                b.draining = True
                await up.probe(wait=5)
                none = up.health()
                return (
                    one.serving,
                    [r.state for r in one.replicas],
                    none.serving,
                    [r.state for r in none.replicas],
                )
            finally:
                await up.aclose()

    assert run(scenario()) == (
        True,
        ["draining", "healthy"],
        False,
        ["draining", "draining"],
    )


def test_servers_keep_idle_connections_longer_than_callers_reuse_them() -> None:
    """A server that closes an idle connection while its caller still reuses it fails that
    caller's next request with a disconnect: every server we launch outwaits aiohttp."""
    import aiohttp

    from bentochain.serving.launch import server_args

    async def callers_reuse() -> float:
        connector = aiohttp.TCPConnector()  # BentoML's dependency client takes the default
        try:
            reuse = connector._keepalive_timeout
            assert reuse is not None
            return reuse
        finally:
            await connector.close()

    args = server_args(["/bento", "--service-name", "LLM", "--port", "3000"])
    assert args[:4] == ["/bento", "--service-name", "LLM", "--port"]
    server_keeps = float(args[args.index("--timeout-keep-alive") + 1])
    assert server_keeps > asyncio.run(callers_reuse())
    assert server_args(["--timeout-keep-alive", "9"]) == ["--timeout-keep-alive", "9"]


def test_callers_stop_reusing_an_idle_connection_before_a_composed_callee_closes_it() -> None:
    """``bentoml serve`` starts a composed Bento's dependencies with the worker's default
    keep-alive (``--timeout-keep-alive`` reaches only the entry service): a caller that reused
    a connection for longer sent a chat on one the LLM was closing (503 "unreachable")."""
    from _bentoml_impl.worker.service import main as worker

    (callee_keeps,) = [p.default for p in worker.params if p.name == "timeout_keep_alive"]

    async def reuse() -> float:
        async with replicas("ok") as (a,):
            up = upstream(static(a.url), strategy="round_robin")
            try:
                await spread(up, 2)
                session = await up._client(a.url)._session_manager.get_session()
                return float(session.connector._keepalive_timeout)
            finally:
                await up.aclose()

    assert isinstance(callee_keeps, int)
    assert run(reuse()) < callee_keeps


def test_in_the_split_topology_only_the_gateway_binds_the_asked_address() -> None:
    from bentochain.serving.topology import LOOPBACK, SplitTopology

    topology = SplitTopology(host="0.0.0.0", env={"BENTOCHAIN_INTERNAL_TOKEN": "t"})
    assert topology.bind_host("Gateway") == "0.0.0.0"
    assert {topology.bind_host(s) for s in ("LLM", "Embedder", "SQLChain")} == {LOOPBACK}
    assert topology.internal_token == "t"


def test_a_dependency_that_fails_in_a_row_opens_its_circuit_then_tries_once() -> None:
    """After ``circuit_failures`` calls that reach no replica, calls fail at once (no
    connection is tried) until the cooldown; then one trial call goes, and its outcome closes
    the circuit or opens it again."""
    clock = Clock()

    class Attempts:
        def __init__(self) -> None:
            self.outcomes: list[str] = []
            self.states: list[str] = []

        def attempt(self, replica: str, version: str, outcome: str) -> None:
            self.outcomes.append(outcome)

        def in_flight(self, replica: str, version: str, delta: int) -> None:
            pass

        def load(self, replica: str, version: str, load: float) -> None:
            pass

        def circuit(self, state: str) -> None:
            self.states.append(state)

    async def scenario() -> tuple[list[UpstreamError], Attempts, str, str]:
        async with replicas("ok") as (live,):
            port = live.port
            await live.stop()  # down, at the address the caller knows
            seen = Attempts()
            up = upstream(
                static(live.url),
                clock,
                retries=0,
                circuit_failures=3,
                circuit_cooldown_seconds=10,
            )
            up.metrics = seen
            errors = []
            try:
                for _ in range(5):
                    with pytest.raises(UpstreamError) as failed:
                        await up.call("echo", text="x")
                    errors.append(failed.value)
                tried = len(seen.outcomes)
                clock.now += 10  # the cooldown ends: one trial, still down
                with pytest.raises(UpstreamError):
                    await up.call("echo", text="x")
                after_trial = up.circuit.state
                assert len(seen.outcomes) == tried + 1
                clock.now += 10
                revived = FakeReplica("r0")
                revived.port, revived.url = port, live.url
                await revived.start()  # back: the next trial closes the circuit
                try:
                    assert (await up.call("echo", text="x")).startswith("r0")
                finally:
                    await revived.stop()
                return errors, seen, after_trial, up.circuit.state
            finally:
                await up.aclose()

    errors, seen, after_trial, last = run(scenario())
    assert [e.code for e in errors] == ["unavailable"] * 5
    assert seen.outcomes[:3] == ["connect_error"] * 3  # then nothing: the circuit is open
    assert all("is down" in e.message and e.retry_after == 10 for e in errors[3:])
    assert after_trial == "open" and last == "closed"
    assert "open" in seen.states and seen.states[-1] == "closed"
