"""Every call from one service to another: per-request balancing over a dependency's replicas.

BentoML's dependency client keeps keep-alive connections to one URL, and a Kubernetes Service
balances per connection, so a caller would pin one pod. ``Upstream`` knows each replica (from
``discovery``), picks one per request (``balancing``), skips those that fail or drain
(``replicas``), retries a request that got no byte back once on another replica, and reads
streams with an idle timeout, closing the connection when its reader stops so the callee
cancels at once. A stream that has started is never replayed.

Requests go through BentoML's own client for each replica (its serialisation, sessions and
trace headers), using its private ``_build_payload``, ``_session_manager`` and
``_parse_response``: bentoml is pinned exactly, and the integration tests fail if they change.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import contextvars
import json
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from multidict import CIMultiDict
from pydantic import BaseModel, Field

from bentochain.config.schema import Connection, UpstreamSettings
from bentochain.observability import context
from bentochain.serving import probes
from bentochain.serving.internal import HEADER, internal_token
from bentochain.serving.upstream import routing
from bentochain.serving.upstream.balancing import STRATEGIES, Balancer, SmoothWeighted
from bentochain.serving.upstream.circuit import Circuit, State
from bentochain.serving.upstream.discovery import Discovery, FileDiscovery, Membership
from bentochain.serving.upstream.replicas import Replica

logger = logging.getLogger(__name__)

PICKLE = "application/vnd.bentoml+pickle"
DRAINING_HEADER = "x-bentochain-draining"
LAST_RESORT_HEADER = "x-bentochain-last-resort"
PROBE_TIMEOUT = 30.0
"""How long a probe may wait for its answer. A replica is unresponsive long before (after
``unresponsive_seconds``); until its probe answers, no other probe is sent to it."""
# How long an idle connection may be reused. The services of a composed Bento are started by
# ``bentoml serve`` with uvicorn's default keep-alive of 5 s (only the entry service takes
# ``--timeout-keep-alive``), while aiohttp reuses an idle connection for 15 s: a request sent
# on a connection the callee is closing fails with ``ClientOSError`` although the callee never
# read it (seen: 1 of 192 chats at 32 users, 503 "LLM unreachable"). The margin covers a busy
# caller's event loop noticing the close late.
REUSE_SECONDS = 3.0


class UpstreamError(Exception):
    """A call to a dependency failed, with the HTTP status its own caller should see.

    ``code`` says why: ``draining`` and ``unavailable`` (no replica could take it, 503),
    ``timeout`` (504), ``broken`` (the connection dropped mid-answer, 502), or
    ``upstream_status`` (the replica answered ``status`` itself, with ``message``).
    """

    def __init__(
        self,
        service: str,
        status: int,
        message: str,
        *,
        code: str,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{service}: {message}")
        self.service = service
        self.status = status
        self.message = message
        self.code = code
        self.retry_after = retry_after


class UpstreamMetrics(Protocol):
    def attempt(self, replica: str, version: str, outcome: str) -> None: ...

    def in_flight(self, replica: str, version: str, delta: int) -> None: ...

    def load(self, replica: str, version: str, load: float) -> None: ...

    def circuit(self, state: str) -> None: ...


class _NoMetrics:
    def attempt(self, replica: str, version: str, outcome: str) -> None:
        pass

    def in_flight(self, replica: str, version: str, delta: int) -> None:
        pass

    def load(self, replica: str, version: str, load: float) -> None:
        pass

    def circuit(self, state: str) -> None:
        pass


@dataclass(eq=False)
class _Flow:
    """A stream being read, and when its last chunk came."""

    response: aiohttp.ClientResponse
    last: float


@dataclass
class _Opened:
    replica: Replica
    response: aiohttp.ClientResponse
    client: Any
    endpoint: Any


class Unresponsive(Exception):
    """The replica stopped answering (its probe is unanswered) before this request's answer."""


# Failures before any byte of the answer: the request can go to another replica.
_NO_ANSWER: tuple[tuple[type[BaseException], str], ...] = (
    (Unresponsive, "unresponsive"),
    (aiohttp.ConnectionTimeoutError, "connect_error"),
    (aiohttp.ClientConnectorError, "connect_error"),
    (aiohttp.ServerDisconnectedError, "disconnected"),
    (aiohttp.ClientOSError, "disconnected"),
    (aiohttp.ClientPayloadError, "disconnected"),
    (TimeoutError, "timeout"),
)


async def _session(client: Any) -> aiohttp.ClientSession:
    """The BentoML client's current session, reusing idle connections for ``REUSE_SECONDS`` at
    most (BentoML makes its connector with aiohttp's default, and remakes it on recycling)."""
    session: aiohttp.ClientSession = await client._session_manager.get_session()
    if session.connector is not None:
        session.connector._keepalive_timeout = REUSE_SECONDS
    return session


def _no_answer(exc: BaseException) -> str | None:
    for kind, outcome in _NO_ANSWER:
        if isinstance(exc, kind):
            return outcome
    return None


def _message(body: str) -> str:
    """The readable part of an error body (BentoML answers ``{"error": …}`` or a list of one)."""
    try:
        data = json.loads(body)
    except ValueError:
        return body.strip()[:2000]
    if isinstance(data, list) and data and isinstance(data[0], dict):
        data = data[0]
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict):
            return str(error.get("message", error))
        if error is not None:
            return str(error)
    return body.strip()[:2000]


class Upstream:
    """One dependency (a BentoML service) as this caller process reaches it."""

    def __init__(
        self,
        name: str,
        service: Any,
        discovery: Discovery,
        settings: UpstreamSettings,
        *,
        timeout: float,
        connection: Connection | None = None,
        media_type: str = PICKLE,
        metrics: UpstreamMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.service = service
        self.discovery = discovery
        self.settings = settings
        self.timeout = timeout
        self.connection = connection or Connection()
        self.media_type = media_type
        self.metrics = metrics or _NoMetrics()
        self.clock = clock
        self._internal = {HEADER: internal_token()}  # what the callee's door asks for
        self.circuit = Circuit(
            settings.circuit_failures, settings.circuit_cooldown_seconds, clock=clock
        )
        self.tracks: dict[str, list[Replica]] = {}
        self.weights: dict[str, float] = {}
        self._balancers: dict[str, Balancer] = {}
        self._track_choice = SmoothWeighted()
        self._clients: dict[str, Any] = {}
        self._retired: dict[str, Replica] = {}
        self._maintainer: asyncio.Task[None] | None = None
        self._last_refresh = float("-inf")
        self._probes: dict[str, asyncio.Task[None]] = {}
        self._streams: dict[str, set[_Flow]] = {}
        self._cheap_discovery = isinstance(discovery, FileDiscovery)

    # -- membership ---------------------------------------------------------------------

    @property
    def replicas(self) -> list[Replica]:
        return [r for track in self.tracks.values() for r in track]

    async def refresh(self, force: bool = False) -> None:
        """Ask discovery for the replicas now (it re-reads a file only when it changed)."""
        self._last_refresh = self.clock()
        membership = await self.discovery.membership(force)
        if membership is not None:
            self._apply(membership)

    def _apply(self, membership: Membership) -> None:
        known = {r.url: r for r in self.replicas}
        tracks: dict[str, list[Replica]] = {}
        for name, track in membership.items():
            replicas = []
            for address in track.replicas:
                replica = known.pop(address.url, None)
                self._retired.pop(address.url, None)  # back again: its session is in use
                if replica is None or replica.track != name:
                    replica = Replica(address.url, name, address.weight)
                replica.weight = address.weight
                replicas.append(replica)
            tracks[name] = replicas
            self.weights[name] = track.weight
            self._balancers.setdefault(name, STRATEGIES[self.settings.strategy]())
        if known:
            logger.info("%s: replicas gone: %s", self.name, ", ".join(sorted(known)))
        self._retired.update(known)  # closed once nothing is in flight on them
        self.tracks = tracks

    async def _start(self) -> None:
        """Before the first request: upkeep running, the replicas known."""
        if self._upkeep():
            await self.refresh(force=True)

    def _upkeep(self) -> bool:
        """Start upkeep unless it runs; whether it was started now."""
        if self._maintainer is not None:
            return False
        # Its own context: it must not hold on to the request that happened to start it.
        self._maintainer = asyncio.get_running_loop().create_task(
            self._maintain(), context=contextvars.Context()
        )
        return True

    async def _maintain(self) -> None:
        """Re-read discovery every ``refresh_seconds``; probe each replica every
        ``probe_seconds``, and end what waits on one that stopped answering."""
        settings = self.settings
        while True:
            try:
                if self.clock() - self._last_refresh >= settings.refresh_seconds:
                    await self.refresh()
                await self.probe()
                self._drop_unresponsive()
                await self._close_retired()
            except Exception:  # never let upkeep die: the next round tries again
                logger.exception("%s: replica upkeep failed", self.name)
            await asyncio.sleep(min(settings.refresh_seconds, settings.probe_seconds))

    async def probe(self, wait: float = 0.0) -> None:
        """Ask every replica for its load and state, and wait up to ``wait`` seconds for the
        answers. One probe at a time per replica: one that does not answer is not asked again
        until it does."""
        probing = []
        for replica in self.replicas:
            running = self._probes.get(replica.url)
            if running is None or running.done():
                running = asyncio.get_running_loop().create_task(
                    self._probe(replica), context=contextvars.Context()
                )
                self._probes[replica.url] = running
            probing.append(running)
        if wait and probing:
            await asyncio.wait(probing, timeout=wait)

    async def _probe(self, replica: Replica) -> None:
        session = await _session(self._client(replica.url))
        timeout = aiohttp.ClientTimeout(
            total=PROBE_TIMEOUT, sock_connect=self.settings.connect_timeout
        )
        sent = replica.probe_sent(self.clock())
        try:
            async with session.get(
                probes.LOAD, timeout=timeout, headers=self._internal
            ) as response:
                report = await response.json() if response.ok else None
        except TimeoutError:
            return  # still unanswered: the next round asks again
        except (aiohttp.ClientError, ValueError):
            replica.answered(self.clock())  # refused or reset: gone, not silent
            self._failed(replica)
            return
        if isinstance(report, dict):
            load = float(report.get("load", 0))
            ready = bool(report.get("ready", True))
            replica.probed(load, bool(report.get("draining", False)), sent, self.clock(), ready)
            self.metrics.load(replica.url, replica.track, replica.others_load)
        else:
            replica.answered(self.clock())

    def _drop_unresponsive(self) -> None:
        """A stream from a replica that stopped answering, and silent as long, ends now with an
        error event instead of hanging until its idle timeout (a replica that still streams
        is slow, not stopped)."""
        now, after = self.clock(), self.settings.unresponsive_seconds
        for replica in self.replicas:
            if replica.unresponsive(now, after):
                for flow in list(self._streams.get(replica.url, ())):
                    if now - flow.last > after:
                        flow.response.close()

    async def _close_retired(self) -> None:
        for url, replica in list(self._retired.items()):
            if replica.in_flight == 0:
                del self._retired[url]
                client = self._clients.pop(url, None)
                if client is not None:
                    await client._session_manager.close()

    async def aclose(self) -> None:
        for task in self._probes.values():
            task.cancel()
        self._probes.clear()
        if self._maintainer is not None:
            self._maintainer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintainer
            self._maintainer = None
        for client in self._clients.values():
            await client._session_manager.close()
        self._clients.clear()

    # -- choosing a replica -------------------------------------------------------------

    def _client(self, url: str) -> Any:
        client = self._clients.get(url)
        if client is None:
            from _bentoml_impl.client.proxy2 import AsyncClient

            client = AsyncClient(
                url,
                media_type=self.media_type,
                service=self.service,
                timeout=self.timeout,
                server_ready_timeout=0,
                max_age=self.connection.max_age,
                max_requests=self.connection.max_requests,
            )
            self._clients[url] = client
        return client

    def _track(self) -> str | None:
        """This request's track: the one it already uses, or one chosen by weight."""
        populated = [t for t, replicas in self.tracks.items() if replicas]
        pinned = routing.pinned(self.name)
        if pinned in populated:
            return pinned
        weighted = [t for t in populated if self.weights.get(t, 0) > 0] or populated
        if not weighted:
            return None
        return self._track_choice.choose(weighted, lambda t: self.weights.get(t, 1.0), str)

    def _pick(self, track: str | None, tried: set[str]) -> Replica | None:
        """An available replica of ``track``, else of another track; else the least bad one
        that may still answer (draining, or backing off after a failure): never one that is
        unready or stopped answering."""
        now, after = self.clock(), self.settings.unresponsive_seconds
        order = sorted(self.tracks, key=lambda t: t != track)
        pools = [(t, [r for r in self.tracks[t] if r.url not in tried]) for t in order]
        for name, pool in pools:
            available = [r for r in pool if r.available(now, after)]
            if available:
                return self._balancers[name].pick(available)
        for _, pool in pools:
            answering = [r for r in pool if r.ready and not r.unresponsive(now, after)]
            if answering:
                return min(answering, key=lambda r: (r.draining, r.skip_until))
        return None

    def _none_healthy(self) -> UpstreamError:
        """Every replica is known not to answer: fail now, naming them, instead of waiting."""
        now, after = self.clock(), self.settings.unresponsive_seconds
        states = ", ".join(f"{r.url} {r.state(now, after)}" for r in self.replicas)
        return UpstreamError(
            self.name,
            503,
            f"{self.name} has no healthy replica ({states or 'none known'}); retry shortly",
            code="unavailable",
            retry_after=max(1.0, self.settings.probe_seconds),
        )

    # -- sending ------------------------------------------------------------------------

    async def _open(
        self, api: str, kwargs: Mapping[str, Any], limits: aiohttp.ClientTimeout
    ) -> _Opened:
        """Send the request, moving to another replica while no byte of an answer came back;
        at once refused while the dependency's circuit is open."""
        wait = self.circuit.wait()
        if wait is not None:
            raise UpstreamError(
                self.name,
                503,
                f"{self.name} is down: {self.settings.circuit_failures} calls in a row reached "
                f"none of its replicas; the next try is in {wait:.0f}s",
                code="unavailable",
                retry_after=wait,
            )
        self.metrics.circuit(self.circuit.state)
        try:
            opened = await self._send(api, kwargs, limits)
        except UpstreamError as exc:
            if exc.code in ("unavailable", "timeout"):
                self.circuit.failed()
            else:  # the dependency answered (a refusal is its own): it is up
                self.circuit.succeeded()
            self.metrics.circuit(self.circuit.state)
            raise
        except BaseException:
            self.circuit.abandoned()
            raise
        self.circuit.succeeded()
        self.metrics.circuit(self.circuit.state)
        return opened

    async def _send(
        self, api: str, kwargs: Mapping[str, Any], limits: aiohttp.ClientTimeout
    ) -> _Opened:
        await self._start()
        if self._cheap_discovery:  # a file's stat: a replica leaves rotation at once
            await self.refresh()
        track = self._track()
        tried: set[str] = set()
        failure: UpstreamError | None = None
        drained: Replica | None = None
        for attempt in range(1 + self.settings.retries):
            replica = self._pick(track, tried)
            if replica is None or (attempt and not replica.available(self.clock())):
                await self.refresh(force=True)  # a replacement may have appeared
                track = track if track in self.tracks else self._track()
                replica = self._pick(track, tried)
            if replica is None:
                # Every other replica failed: one that drains still serves as a last resort.
                replica, drained = drained, None
            if replica is None:
                if not tried:
                    failure = self._none_healthy()
                break
            tried.add(replica.url)
            opened, failure = await self._attempt(replica, api, kwargs, limits)
            if opened is not None:
                return opened
            if failure is not None and failure.code == "draining":
                drained = replica
        if failure is None:
            failure = UpstreamError(
                self.name,
                503,
                f"no replica of {self.name} is known",
                code="unavailable",
                retry_after=1.0,
            )
        raise failure

    async def _attempt(
        self,
        replica: Replica,
        api: str,
        kwargs: Mapping[str, Any],
        limits: aiohttp.ClientTimeout,
    ) -> tuple[_Opened | None, UpstreamError | None]:
        client = self._client(replica.url)
        endpoint = client.endpoints[api]
        headers: dict[str, str] = {
            "Content-Type": client.media_type,
            **routing.outgoing(),
            **context.outgoing(),
            **self._internal,
        }
        if replica.draining:
            headers[LAST_RESORT_HEADER] = "1"
        replica.started()
        self.metrics.in_flight(replica.url, replica.track, 1)
        try:
            request_headers: CIMultiDict[str] = CIMultiDict(headers)
            body = client._build_payload(endpoint, (), dict(kwargs), request_headers)
            session = await _session(client)
            response = await self._first_answer(
                replica,
                session.post(endpoint.route, data=body, headers=request_headers, timeout=limits),
            )
        except BaseException as exc:
            outcome = _no_answer(exc)
            if outcome is None:
                cancelled = isinstance(exc, asyncio.CancelledError)
                self._ended(replica, "cancelled" if cancelled else "error")
                raise
            self._ended(replica, outcome)
            self._failed(replica)
            logger.warning("%s: %s failed (%s): %r", self.name, replica.url, outcome, exc)
            if outcome == "unresponsive":
                return None, UpstreamError(
                    self.name,
                    503,
                    f"{replica.url} stopped answering",
                    code="unavailable",
                    retry_after=1.0,
                )
            if outcome == "timeout":
                return None, UpstreamError(
                    self.name, 504, f"{replica.url} did not answer in time", code="timeout"
                )
            return None, UpstreamError(
                self.name,
                503,
                f"{replica.url} is unreachable ({type(exc).__name__})",
                code="unavailable",
                retry_after=1.0,
            )
        if response.status == 503 and response.headers.get(DRAINING_HEADER):
            response.release()
            self._ended(replica, "draining")
            replica.drains(self.clock(), self.settings.backoff_seconds)
            retry_after = float(response.headers.get("Retry-After", "1") or 1)
            return None, UpstreamError(
                self.name,
                503,
                f"every replica of {self.name} is shutting down",
                code="draining",
                retry_after=retry_after,
            )
        if not response.ok:
            try:
                text = await response.text()
            finally:
                response.release()
                outcome = "client_error" if response.status < 500 else "server_error"
                self._ended(replica, outcome)
            raise UpstreamError(self.name, response.status, _message(text), code="upstream_status")
        replica.succeeded()
        routing.merge(response.headers.get(routing.VERSION_HEADER))  # what the callee used
        routing.record(self.name, replica.track)
        return _Opened(replica, response, client, endpoint), None

    async def _first_answer(
        self, replica: Replica, request: Awaitable[aiohttp.ClientResponse]
    ) -> aiohttp.ClientResponse:
        """The response's status and headers; ``Unresponsive`` when the replica stops
        answering its probes first (the request goes to another replica: no byte came back)."""
        sending = asyncio.ensure_future(request)
        after = self.settings.unresponsive_seconds
        try:
            while True:
                done, _ = await asyncio.wait({sending}, timeout=self.settings.probe_seconds)
                if done:
                    return sending.result()
                if replica.unresponsive(self.clock(), after):
                    raise Unresponsive(f"{replica.url}: no answer to its probe for {after:g}s")
        finally:
            if not sending.done():
                sending.cancel()
                with contextlib.suppress(BaseException):
                    await sending

    def _ended(self, replica: Replica, outcome: str) -> None:
        replica.ended()
        self.metrics.in_flight(replica.url, replica.track, -1)
        self.metrics.attempt(replica.url, replica.track, outcome)

    def _failed(self, replica: Replica) -> None:
        settings = self.settings
        replica.failed(self.clock(), settings.backoff_seconds, settings.max_backoff_seconds)

    async def call(self, api: str, /, **kwargs: Any) -> Any:
        """A unary API: its deserialised answer."""
        timeout = aiohttp.ClientTimeout(
            total=self.timeout, sock_connect=self.settings.connect_timeout
        )
        opened = await self._open(api, kwargs, timeout)
        outcome = "cancelled"
        try:
            result = await opened.client._parse_response(opened.endpoint, opened.response)
            outcome = "ok"
            return result
        except (aiohttp.ClientError, TimeoutError) as exc:
            outcome = "broken"
            raise self._broken(opened.replica, exc) from exc
        finally:
            opened.response.release()
            self._ended(opened.replica, outcome)

    async def stream(
        self, api: str, /, *, idle_timeout: float, **kwargs: Any
    ) -> AsyncGenerator[str, None]:
        """A streaming API's text, read with at most ``idle_timeout`` between two chunks.

        Closing this generator early closes the connection: the callee sees its client leave.
        """
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self.settings.connect_timeout, sock_read=idle_timeout
        )
        opened = await self._open(api, kwargs, timeout)
        decoder = codecs.getincrementaldecoder("utf-8")()
        outcome = "cancelled"
        streams = self._streams.setdefault(opened.replica.url, set())
        flow = _Flow(opened.response, self.clock())
        streams.add(flow)
        try:
            async for chunk in opened.response.content.iter_any():
                flow.last = self.clock()
                text = decoder.decode(chunk)
                if text:
                    yield text
            tail = decoder.decode(b"", final=True)
            if tail:
                yield tail
            outcome = "ok"
        except (aiohttp.ClientError, TimeoutError) as exc:
            outcome = "broken"
            raise self._broken(opened.replica, exc) from exc
        finally:
            streams.discard(flow)
            if outcome == "ok":
                opened.response.release()
            else:
                opened.response.close()
            self._ended(opened.replica, outcome)

    def _broken(self, replica: Replica, exc: BaseException) -> UpstreamError:
        after = self.settings.unresponsive_seconds
        if replica.unresponsive(self.clock(), after):
            return UpstreamError(
                self.name,
                503,
                f"{replica.url} stopped answering mid-answer (no answer to its probe for "
                f"{after:g}s); retry the request",
                code="unavailable",
                retry_after=1.0,
            )
        if isinstance(exc, TimeoutError):
            return UpstreamError(
                self.name, 504, f"{replica.url} went silent mid-answer", code="timeout"
            )
        return UpstreamError(
            self.name,
            502,
            f"the connection to {replica.url} dropped mid-answer ({type(exc).__name__})",
            code="broken",
        )

    def health(self) -> DependencyHealth:
        """Whether a request can go to some replica, from what the probes and the requests
        taught so far: no waiting on any replica (upkeep starts on the first call)."""
        self._upkeep()
        now, after = self.clock(), self.settings.unresponsive_seconds
        replicas = [
            ReplicaHealth(
                url=r.url,
                version=r.track,
                state=r.state(now, after),
                load=r.load_estimate,
                heard_seconds_ago=None if r.heard is None else round(now - r.heard, 3),
            )
            for r in self.replicas
        ]
        serving = any(r.state == "healthy" for r in replicas) and self.circuit.state != "open"
        return DependencyHealth(serving=serving, circuit=self.circuit.state, replicas=replicas)


class ReplicaHealth(BaseModel):
    url: str
    version: str
    state: str = Field(
        description="healthy, unknown (not probed yet), failing, draining, not_ready, unresponsive"
    )
    load: float
    heard_seconds_ago: float | None


class DependencyHealth(BaseModel):
    serving: bool = Field(description="some replica is healthy and the circuit is not open")
    circuit: State
    replicas: list[ReplicaHealth]
