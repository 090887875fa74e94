"""Which version (track) of each service one request uses, kept for the request's whole life.

A request's first call to a service with a canary chooses a track by weight; every later call
of the same request to that service stays on it, so a chain that calls the LLM several times
(the SQL repair loop) sees one model version. The choices travel to the services a request
reaches in ``x-bentochain-pin``, and come back to the client in ``x-bentochain-version``
(``LLM=canary, Embedder=stable``). A client may send ``x-bentochain-pin`` itself to ask for a
version, e.g. to try the canary before it takes traffic.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bentochain.serving.upstream.replicas import TRACKS

PIN_HEADER = "x-bentochain-pin"
VERSION_HEADER = "x-bentochain-version"


@dataclass
class Tracks:
    """One request's versions: those it was asked to use, and those it used."""

    pins: dict[str, str] = field(default_factory=dict)
    used: dict[str, str] = field(default_factory=dict)


# One per request: tasks a request spawns copy the context, so they share the same object.
_tracks: ContextVar[Tracks | None] = ContextVar("bentochain_tracks", default=None)


def parse(header: str | None) -> dict[str, str]:
    """``LLM=canary, Embedder=stable`` as a mapping; unknown tracks and junk are ignored."""
    tracks: dict[str, str] = {}
    for item in (header or "").split(","):
        service, sep, track = item.strip().partition("=")
        if sep and service and track.strip() in TRACKS:
            tracks[service.strip()] = track.strip()
    return tracks


def render(tracks: Mapping[str, str]) -> str:
    return ", ".join(f"{service}={track}" for service, track in sorted(tracks.items()))


@contextlib.contextmanager
def request_scope(pins: Mapping[str, str] | None = None) -> Iterator[Tracks]:
    """A fresh set of choices for one request (the middleware opens one per request)."""
    tracks = Tracks(pins=dict(pins or {}))
    token = _tracks.set(tracks)
    try:
        yield tracks
    finally:
        _tracks.reset(token)


@contextlib.contextmanager
def run_scope() -> Iterator[Tracks]:
    """A scope for one unit of work inside a request (one chain run of a batch): it keeps the
    request's pins, chooses its own versions, and reports them to the request when it ends."""
    outer = _tracks.get()
    with request_scope(outer.pins if outer else None) as inner:
        try:
            yield inner
        finally:
            if outer is not None:
                for service, track in inner.used.items():
                    outer.used.setdefault(service, track)


def pinned(service: str) -> str | None:
    """The track this request uses (or was asked to use) for ``service``, if any."""
    tracks = _tracks.get()
    if tracks is None:
        return None
    return tracks.used.get(service) or tracks.pins.get(service)


def record(service: str, track: str) -> None:
    """Remember that this request used ``track`` of ``service`` (the first use wins)."""
    tracks = _tracks.get()
    if tracks is not None:
        tracks.used.setdefault(service, track)


def merge(header: str | None) -> None:
    """Take in the versions a called service used (its ``x-bentochain-version``)."""
    for service, track in parse(header).items():
        record(service, track)


def used() -> str | None:
    """The versions this request has used so far, as ``x-bentochain-version`` says them."""
    tracks = _tracks.get()
    return render(tracks.used) if tracks is not None and tracks.used else None


def outgoing() -> dict[str, str]:
    """Headers for a call to another service: this request's versions so far."""
    tracks = _tracks.get()
    if tracks is None:
        return {}
    chosen = {**tracks.pins, **tracks.used}
    return {PIN_HEADER: render(chosen)} if chosen else {}


class RoutingMiddleware:
    """Opens a request's scope from its ``x-bentochain-pin`` and answers with the versions it
    used in ``x-bentochain-version`` (for a stream: those chosen before its first byte)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with request_scope(parse(Headers(scope=scope).get(PIN_HEADER))) as tracks:

            async def send_with_versions(message: Message) -> None:
                if message["type"] == "http.response.start" and tracks.used:
                    MutableHeaders(scope=message)[VERSION_HEADER] = render(tracks.used)
                await send(message)

            await self.app(scope, receive, send_with_versions)
