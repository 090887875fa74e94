"""Per-key limits as OpenAI applies them: requests per minute, tokens per minute, requests at
once, each reported in ``x-ratelimit-*`` headers.

Each per-minute limit is a token bucket that holds a minute's worth and refills continuously,
so a key may burst up to its limit and then goes at its rate. Tokens are reserved when a
request is admitted (its ``max_tokens`` and an estimate of its prompt) and settled with what it
really used. In process, counts are per worker (each worker of each replica has its own); with
Redis they are shared by every worker of every replica, updated atomically by one script.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from bentochain.security.keys import KeyRecord

MINUTE = 60.0


@dataclass(frozen=True)
class BucketState:
    limit: int  # 0: no limit
    remaining: float
    reset_seconds: float  # until the bucket is full again


@dataclass(frozen=True)
class Admission:
    """A limiter's answer: taken or not, the bucket's state for the headers, and when to
    retry (``inf``: never, the request is bigger than the whole limit)."""

    admitted: bool
    state: BucketState
    retry_after: float = 0.0
    reason: str = ""  # requests, tokens or concurrent: which limit refused


class Limiter(Protocol):
    async def admit(self, key: KeyRecord) -> Admission:
        """Take one request from ``key``'s bucket and a concurrency slot, both or neither."""
        ...

    async def reserve(self, key: KeyRecord, tokens: int) -> Admission:
        """Take ``tokens`` from ``key``'s token bucket, or nothing."""
        ...

    async def settle(self, key: KeyRecord, reserved: int, used: int) -> BucketState:
        """Give back what was reserved beyond what was used (or take the difference)."""
        ...

    async def release(self, key: KeyRecord) -> None:
        """The request ended: its concurrency slot is free."""
        ...


def unlimited() -> BucketState:
    return BucketState(0, math.inf, 0.0)


def _state(limit: int, level: float) -> BucketState:
    if not limit:
        return unlimited()
    return BucketState(limit, max(0.0, level), max(0.0, limit - level) * MINUTE / limit)


def _wait(limit: int, level: float, amount: int) -> float:
    """Seconds until a bucket of ``limit`` a minute at ``level`` holds ``amount``."""
    if amount > limit:
        return math.inf
    return max(0.0, amount - level) * MINUTE / limit


@dataclass
class _Bucket:
    level: float
    at: float

    def refill(self, limit: int, now: float) -> None:
        self.level = min(float(limit), self.level + (now - self.at) * limit / MINUTE)
        self.at = now


@dataclass
class _KeyState:
    requests: _Bucket
    tokens: _Bucket
    in_flight: int = 0


@dataclass
class InProcessLimiter:
    """Buckets in this process's memory (one event loop: each call runs whole)."""

    clock: Callable[[], float] = time.monotonic
    _keys: dict[str, _KeyState] = field(default_factory=dict)

    def _of(self, key: KeyRecord) -> _KeyState:
        now = self.clock()
        found = self._keys.get(key.name)
        if found is None:
            limits = key.limits
            found = _KeyState(_Bucket(float(limits.rpm), now), _Bucket(float(limits.tpm), now))
            self._keys[key.name] = found
        found.requests.refill(key.limits.rpm, now)
        found.tokens.refill(key.limits.tpm, now)
        return found

    async def admit(self, key: KeyRecord) -> Admission:
        rpm, most = key.limits.rpm, key.limits.max_concurrent
        state = self._of(key)
        bucket = state.requests
        if rpm and bucket.level < 1:
            return Admission(
                False, _state(rpm, bucket.level), _wait(rpm, bucket.level, 1), "requests"
            )
        if most and state.in_flight >= most:
            return Admission(False, _state(rpm, bucket.level), 1.0, "concurrent")
        if rpm:
            bucket.level -= 1
        state.in_flight += 1
        return Admission(True, _state(rpm, bucket.level))

    async def reserve(self, key: KeyRecord, tokens: int) -> Admission:
        tpm = key.limits.tpm
        if not tpm:
            return Admission(True, unlimited())
        bucket = self._of(key).tokens
        if bucket.level < tokens:
            return Admission(
                False, _state(tpm, bucket.level), _wait(tpm, bucket.level, tokens), "tokens"
            )
        bucket.level -= tokens
        return Admission(True, _state(tpm, bucket.level))

    async def settle(self, key: KeyRecord, reserved: int, used: int) -> BucketState:
        tpm = key.limits.tpm
        if not tpm:
            return unlimited()
        bucket = self._of(key).tokens
        bucket.level = min(float(tpm), bucket.level + reserved - used)
        return _state(tpm, bucket.level)

    async def release(self, key: KeyRecord) -> None:
        state = self._keys.get(key.name)
        if state is not None and state.in_flight > 0:
            state.in_flight -= 1


# One script per change, so that a check and its take cannot interleave with another replica's;
# the time is Redis's own, the same for every replica. TAKE: KEYS bucket, in-flight counter;
# ARGV limit a minute, amount, most in flight (0: no limit, and no counter). It answers taken,
# the level after, and why not ("" when taken).
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local limit, amount, most = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local level = limit
if limit > 0 then
  level = tonumber(redis.call('HGET', KEYS[1], 'level') or limit)
  local at = tonumber(redis.call('HGET', KEYS[1], 'at') or now)
  level = math.min(limit, level + (now - at) * limit / 60)
end
local why = ''
if limit > 0 and level < amount then why = 'short'
elseif most > 0 and tonumber(redis.call('GET', KEYS[2]) or 0) >= most then why = 'concurrent'
end
if why == '' then
  level = level - amount
  if most > 0 or ARGV[4] == '1' then
    redis.call('INCR', KEYS[2])
    redis.call('EXPIRE', KEYS[2], 3600)
  end
end
if limit > 0 then
  redis.call('HSET', KEYS[1], 'level', tostring(level), 'at', tostring(now))
  redis.call('EXPIRE', KEYS[1], 3600)
end
return {why == '' and 1 or 0, tostring(level), why}
"""


class RedisLimiter:
    """Buckets in Redis, shared by every gateway worker and replica."""

    def __init__(self, url: str) -> None:
        import redis.asyncio as aioredis

        self._redis = aioredis.Redis.from_url(url)
        self._take = self._redis.register_script(_TAKE)

    @staticmethod
    def _names(key: KeyRecord) -> tuple[str, str, str]:
        base = f"bentochain:limits:{key.name}"
        return f"{base}:requests", f"{base}:tokens", f"{base}:in-flight"

    async def _run(
        self, bucket: str, limit: int, amount: int, in_flight: str, most: int, count: bool
    ) -> tuple[bool, float, str]:
        taken, level, why = await self._take(
            keys=[bucket, in_flight], args=[limit, amount, most, "1" if count else "0"]
        )
        reason = why.decode() if isinstance(why, bytes) else str(why)
        return bool(taken), float(level), reason

    async def admit(self, key: KeyRecord) -> Admission:
        requests, _, in_flight = self._names(key)
        rpm, most = key.limits.rpm, key.limits.max_concurrent
        taken, level, why = await self._run(requests, rpm, 1, in_flight, most, count=True)
        if taken:
            return Admission(True, _state(rpm, level))
        if why == "concurrent":
            return Admission(False, _state(rpm, level), 1.0, "concurrent")
        return Admission(False, _state(rpm, level), _wait(rpm, level, 1), "requests")

    async def reserve(self, key: KeyRecord, tokens: int) -> Admission:
        _, bucket, in_flight = self._names(key)
        tpm = key.limits.tpm
        if not tpm:
            return Admission(True, unlimited())
        taken, level, _ = await self._run(bucket, tpm, tokens, in_flight, 0, count=False)
        if taken:
            return Admission(True, _state(tpm, level))
        return Admission(False, _state(tpm, level), _wait(tpm, level, tokens), "tokens")

    async def settle(self, key: KeyRecord, reserved: int, used: int) -> BucketState:
        _, bucket, in_flight = self._names(key)
        tpm = key.limits.tpm
        if not tpm:
            return unlimited()
        # A negative take gives tokens back; the bucket never holds more than its limit.
        _, level, _ = await self._run(bucket, tpm, used - reserved, in_flight, 0, count=False)
        return _state(tpm, min(level, float(tpm)))

    async def release(self, key: KeyRecord) -> None:
        in_flight = self._names(key)[2]
        if int(await self._redis.decr(in_flight)) < 0:
            await self._redis.set(in_flight, 0)


def reset_header(seconds: float) -> str:
    """OpenAI's duration format for ``x-ratelimit-reset-*``: ``20ms``, ``1s``, ``6m0s``."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    whole = math.ceil(seconds)
    minutes, rest = divmod(whole, 60)
    return f"{minutes}m{rest}s" if minutes else f"{rest}s"
