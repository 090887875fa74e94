"""Where a dependency's replicas are, re-read while the caller runs.

A track (``stable``, ``canary``) gets its replicas from a fixed list, from a DNS name (a
Kubernetes headless Service resolves to one address per ready pod, so new pods appear and
removed ones vanish at the next resolution), or from the one URL BentoML gives the caller. A
replica file, which ``bentochain serve-split`` rewrites as it starts, replaces and drains
servers, holds every track with its weight at once: it is the local stand-in for the
headless Service, and lets a rollout change the canary's share without restarting callers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bentochain.config.schema import Canary, ReplicaAddress, UpstreamSettings
from bentochain.serving.upstream.replicas import CANARY, STABLE

logger = logging.getLogger(__name__)

Addresses = tuple[ReplicaAddress, ...]
Resolver = Callable[[], Awaitable[Addresses | None]]  # None: no news, keep what is known


@dataclass(frozen=True)
class Track:
    weight: float
    replicas: Addresses


Membership = Mapping[str, Track]


class UpstreamConfigError(ValueError):
    """A caller cannot find a dependency's replicas from its profile (says which key)."""


class Discovery(Protocol):
    async def membership(self, force: bool = False) -> Membership | None:
        """Every track's weight and replicas; None when nothing could be learnt."""
        ...


class TrackFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    weight: float = Field(ge=0)
    replicas: tuple[ReplicaAddress, ...] = ()


class ReplicaFile(BaseModel):
    """A service's replicas per track, as ``serve-split`` writes them."""

    model_config = ConfigDict(extra="forbid")

    service: str
    tracks: dict[str, TrackFile]

    def write(self, path: Path) -> None:
        """Atomically: a reader sees the old file or the new one, never half of one."""
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        partial.write_text(self.model_dump_json(indent=2))
        os.replace(partial, path)

    def membership(self) -> dict[str, Track]:
        return {name: Track(t.weight, t.replicas) for name, t in self.tracks.items()}


class FileDiscovery:
    """A replica file, re-read when it changed (or when asked to)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[int, int] | None = None

    async def membership(self, force: bool = False) -> Membership | None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            logger.warning("replica file %s does not exist (yet)", self.path)
            return None
        identity = (stat.st_ino, stat.st_mtime_ns)
        if identity == self._seen and not force:
            return None
        try:
            replicas = ReplicaFile.model_validate_json(self.path.read_bytes())
        except (OSError, ValidationError) as exc:
            logger.warning("replica file %s is unreadable: %s", self.path, exc)
            return None
        self._seen = identity
        return replicas.membership()


class TrackDiscovery:
    """Each track from its own resolver, with a weight from the profile."""

    def __init__(self, tracks: Mapping[str, tuple[float, Resolver]]) -> None:
        self.tracks = dict(tracks)
        self._known: dict[str, Addresses] = {}

    async def membership(self, force: bool = False) -> Membership | None:
        results = await asyncio.gather(*(resolve() for _, resolve in self.tracks.values()))
        for name, found in zip(self.tracks, results, strict=True):
            if found is not None:
                self._known[name] = found
        return {
            name: Track(weight, self._known.get(name, ()))
            for name, (weight, _) in self.tracks.items()
        }


def fixed(addresses: Addresses) -> Resolver:
    async def resolve() -> Addresses:
        return addresses

    return resolve


def dns(name: str, default_port: int, scheme: str = "http") -> Resolver:
    """Every A/AAAA address of ``name`` (``host`` or ``host:port``), one replica each."""
    host, _, port_text = name.rpartition(":") if ":" in name else (name, "", "")
    port = int(port_text) if port_text else default_port

    async def resolve() -> Addresses | None:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            logger.warning("cannot resolve %s: %s (keeping the replicas known so far)", host, exc)
            return None
        addresses = sorted({str(info[4][0]) for info in infos})
        return tuple(
            ReplicaAddress(url=f"{scheme}://{_host(a)}:{port}", weight=1) for a in addresses
        )

    return resolve


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def _single(url: str) -> Addresses:
    # BentoML's own address: a Unix socket (file://) or tcp:// in the composed Bento.
    return (ReplicaAddress.model_construct(url=url, weight=1),)


def discovery_for(
    key: str,
    upstream: UpstreamSettings,
    canary: Canary | None,
    bentoml_url: str | None,
    *,
    base: Callable[[str], Path] = Path,
) -> Discovery:
    """The profile's way to find ``key``'s replicas (``key`` names the entry in messages)."""
    if upstream.file:
        return FileDiscovery(base(upstream.file))
    stable: Resolver
    if upstream.replicas:
        stable = fixed(upstream.replicas)
    elif upstream.dns:
        stable = dns(upstream.dns, upstream.port)
    elif bentoml_url:
        stable = fixed(_single(bentoml_url))
    else:
        raise UpstreamConfigError(
            f"{key}.upstream: no replicas are known; set replicas, dns or file, or start the "
            "caller with --depends / BENTOML_SERVE_DEPENDS"
        )
    if canary is None:
        return TrackDiscovery({STABLE: (100.0, stable)})
    if canary.replicas:
        canary_replicas = fixed(canary.replicas)
    elif canary.dns:
        canary_replicas = dns(canary.dns, canary.port)
    else:
        raise UpstreamConfigError(
            f"{key}.canary: where are the canary's replicas? Give {key}.canary.replicas or "
            f"{key}.canary.dns, or run `bentochain serve-split`, which starts them (a composed "
            "Bento runs one version of each service)"
        )
    return TrackDiscovery(
        {STABLE: (100.0 - canary.weight, stable), CANARY: (canary.weight, canary_replicas)}
    )
