"""API keys: made once, shown once, kept only as hashes, with each key's own limits.

A key is ``bc-`` and 43 random URL-safe characters (256 bits): long enough that a plain
SHA-256 of it is a safe thing to store (nothing to guess from it). The store holds, per key
name, that hash, a short prefix to recognise it by, its limits and its dates. Two stores: a
JSON file in the state folder (one gateway, or replicas sharing a volume) and Redis (any number
of gateway replicas). The gateway re-reads the store every few seconds, so a revoked key stops
working without a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import tempfile
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel, Field, NonNegativeInt, TypeAdapter

PREFIX = "bc-"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class KeyProblem(ValueError):
    """A key operation that cannot be done; the message says why."""


class Limits(BaseModel):
    """What one key may do: 0 is no limit."""

    rpm: NonNegativeInt = Field(0, description="requests per minute")
    tpm: NonNegativeInt = Field(0, description="tokens per minute (prompt + completion)")
    max_concurrent: NonNegativeInt = Field(0, description="requests in flight at once")


class KeyRecord(BaseModel):
    name: str
    hash: str = Field(description="SHA-256 of the key, hex")
    prefix: str = Field(description="the key's first characters, to recognise it")
    limits: Limits = Limits()
    created: datetime
    expires: datetime | None = None
    revoked: datetime | None = None

    def active(self, now: datetime) -> bool:
        return self.revoked is None and (self.expires is None or now < self.expires)


_RECORDS = TypeAdapter(dict[str, KeyRecord])


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return PREFIX + secrets.token_urlsafe(32)


class KeyStore(Protocol):
    def load(self) -> dict[str, KeyRecord]:
        """Every key, by name."""
        ...

    def save(self, record: KeyRecord) -> None: ...


class FileKeyStore:
    """Keys in a JSON file (mode 0600), replaced whole on each change (atomic rename)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def load(self) -> dict[str, KeyRecord]:
        try:
            return _RECORDS.validate_json(self.path.read_bytes())
        except FileNotFoundError:
            return {}

    def save(self, record: KeyRecord) -> None:
        with self._lock:
            records = self.load()
            records[record.name] = record
            self.path.parent.mkdir(parents=True, exist_ok=True)
            data = _RECORDS.dump_json(records, indent=2)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".keys-")
            try:
                os.fchmod(fd, 0o600)
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise


class RedisKeyStore:
    """Keys in a Redis hash (``bentochain:api-keys``: name → record), shared by replicas."""

    HASH = "bentochain:api-keys"

    def __init__(self, url: str) -> None:
        import redis

        self._redis = redis.Redis.from_url(url)

    def load(self) -> dict[str, KeyRecord]:
        raw: dict[bytes, bytes] = self._redis.hgetall(self.HASH)  # type: ignore[assignment]
        return {n.decode(): KeyRecord.model_validate_json(v) for n, v in raw.items()}

    def save(self, record: KeyRecord) -> None:
        self._redis.hset(self.HASH, record.name, record.model_dump_json())


def create(
    store: KeyStore,
    name: str,
    limits: Limits,
    *,
    expires_days: float | None = None,
    now: datetime | None = None,
) -> str:
    """A new key named ``name``: stored as its hash, returned (the only time it is seen)."""
    if not NAME.match(name):
        raise KeyProblem(f"key name {name!r}: letters, digits, '.', '_' or '-' (64 at most)")
    now = now or datetime.now(UTC)
    existing = store.load().get(name)
    if existing is not None and existing.active(now):
        raise KeyProblem(f"a key named {name!r} exists: revoke it first, or choose another name")
    key = new_key()
    expires = now + timedelta(days=expires_days) if expires_days is not None else None
    store.save(
        KeyRecord(
            name=name,
            hash=digest(key),
            prefix=key[:7],
            limits=limits,
            created=now,
            expires=expires,
        )
    )
    return key


def revoke(store: KeyStore, name: str, *, now: datetime | None = None) -> KeyRecord:
    record = store.load().get(name)
    if record is None:
        raise KeyProblem(f"no key named {name!r}")
    if record.revoked is not None:
        return record
    revoked = record.model_copy(update={"revoked": now or datetime.now(UTC)})
    store.save(revoked)
    return revoked


class KeyRing:
    """What the gateway checks keys against: the store's records by hash, re-read at most
    every ``refresh_seconds`` (a revoked key works for that long at most)."""

    def __init__(
        self,
        store: KeyStore,
        refresh_seconds: float = 2.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        import time

        self.store = store
        self.refresh_seconds = refresh_seconds
        self.clock = clock or time.monotonic
        self._by_hash: dict[str, KeyRecord] = {}
        self._loaded_at = -float("inf")
        self._lock = threading.Lock()

    def _refresh(self) -> None:
        now = self.clock()
        if now - self._loaded_at < self.refresh_seconds:
            return
        with self._lock:
            if now - self._loaded_at < self.refresh_seconds:
                return
            self._by_hash = {r.hash: r for r in self.store.load().values()}
            self._loaded_at = now

    def find(self, key: str) -> KeyRecord | None:
        """The active record of ``key``; None for a wrong, revoked or expired key."""
        self._refresh()
        wanted = digest(key)
        # Compared in constant time: the lookup itself is by hash, which leaks nothing.
        record = self._by_hash.get(wanted)
        if record is None or not hmac.compare_digest(record.hash, wanted):
            return None
        return record if record.active(datetime.now(UTC)) else None


def listing(records: Iterable[KeyRecord], now: datetime | None = None) -> list[str]:
    """``keys list``: one line per key, never the key itself."""
    now = now or datetime.now(UTC)
    lines = []
    for r in sorted(records, key=lambda r: r.created):
        state = (
            "revoked" if r.revoked else "expired" if r.expires and now >= r.expires else "active"
        )
        limits = ", ".join(f"{k}={v}" for k, v in r.limits.model_dump().items() if v) or "no limits"
        expires = f", expires {r.expires:%Y-%m-%d}" if r.expires else ""
        lines.append(f"{r.name:<20} {r.prefix}…  {state:<8} {limits}{expires}")
    return lines
