"""Exact-match LLM answer caches behind LangChain's ``BaseCache``: SQLite on disk, or Redis.

A cache only ever sits on a chain's model when that model is deterministic (temperature 0,
see ``providers.build_chain_llm``): replaying a sampled answer would hide the sampling. Entries
are LangChain's own serialisation of the generations (``langchain_core.load``), keyed by the
prompt and the model's parameters, so a change of model or temperature is a miss.
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from langchain_core.caches import RETURN_VAL_TYPE, BaseCache
from langchain_core.load import dumps, loads


def _key(prompt: str, llm_string: str) -> str:
    return hashlib.sha256(f"{llm_string}\x00{prompt}".encode()).hexdigest()


def _encode(value: RETURN_VAL_TYPE) -> str:
    return dumps(list(value))


def _decode(text: str) -> RETURN_VAL_TYPE:
    return loads(text, allowed_objects="core")  # type: ignore[no-any-return]


class SQLiteLLMCache(BaseCache):
    """One SQLite file; safe across threads and worker processes (WAL, one writer at a time)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, timeout=10)
        with self._lock, self._db:
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS llm_cache (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
            )

    def lookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        with self._lock:
            row = self._db.execute(
                "SELECT value FROM llm_cache WHERE key = ?", (_key(prompt, llm_string),)
            ).fetchone()
        return _decode(row[0]) if row else None

    def update(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO llm_cache VALUES (?, ?)",
                (_key(prompt, llm_string), _encode(return_val)),
            )

    def clear(self, **kwargs: Any) -> None:
        with self._lock, self._db:
            self._db.execute("DELETE FROM llm_cache")


class RedisLLMCache(BaseCache):
    """Shared by every replica of a chain service; entries expire after ``ttl`` seconds."""

    PREFIX = "bentochain:llm:"

    def __init__(self, url: str, ttl: int | None = None) -> None:
        import redis

        self._redis = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self.ttl = ttl

    def lookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        value = self._redis.get(self.PREFIX + _key(prompt, llm_string))
        return _decode(value.decode()) if isinstance(value, bytes) else None

    def update(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        self._redis.set(self.PREFIX + _key(prompt, llm_string), _encode(return_val), ex=self.ttl)

    def clear(self, **kwargs: Any) -> None:
        for key in self._redis.scan_iter(self.PREFIX + "*"):
            self._redis.delete(key)


class CountingCache(BaseCache):
    """Counts hits and misses of another cache (for ``/metrics``), and never fails a request:
    a cache that is down is a miss, logged by the caller's metrics, not an error."""

    def __init__(self, inner: BaseCache, on_lookup: Callable[[bool], None]) -> None:
        self.inner = inner
        self.on_lookup = on_lookup

    def lookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        try:
            value = self.inner.lookup(prompt, llm_string)
        except Exception:  # a broken cache must not break the chain
            value = None
        self.on_lookup(value is not None)
        return value

    def update(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        with contextlib.suppress(Exception):
            self.inner.update(prompt, llm_string, return_val)

    def clear(self, **kwargs: Any) -> None:
        self.inner.clear(**kwargs)
