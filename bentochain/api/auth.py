"""API keys at the gateway: who is calling, and whether their limits let them.

With ``gateway.auth.mode: keys`` every API path wants ``Authorization: Bearer <key>`` (what the
``openai`` client and LangChain send). A missing or wrong key gets OpenAI's 401
(``invalid_api_key``); a key over its requests per minute or requests at once gets 429
(``rate_limit_exceeded``) with ``Retry-After``. The routes reserve the tokens a request may use
(``reserve_tokens``, 429 the same way) and settle them with what it used (``settle_tokens``).
Every answer to a keyed request carries OpenAI's ``x-ratelimit-*`` headers. The probes and
``/metrics`` are BentoML's, outside this app: they stay open.
"""

from __future__ import annotations

import math
import re
from contextvars import ContextVar
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bentochain.api.errors import APIError
from bentochain.security.access import Access, KeyMetrics
from bentochain.security.keys import KeyRecord
from bentochain.security.limits import Admission, BucketState, Limiter, reset_header, unlimited

PROTECTED = re.compile(r"^/(v1/|translate$|chains(/|$))")


@dataclass
class Grant:
    """A keyed request: its key and what its limits said."""

    key: KeyRecord
    limiter: Limiter
    metrics: KeyMetrics
    requests: BucketState
    tokens: BucketState
    reserved: int = 0


_grant: ContextVar[Grant | None] = ContextVar("bentochain_grant", default=None)


def _refusal(admission: Admission, key: KeyRecord) -> APIError:
    limits = key.limits
    if admission.reason == "concurrent":
        message = (
            f"Rate limit reached for key '{key.name}': {limits.max_concurrent} requests at "
            "once. Wait for one to finish."
        )
    elif admission.reason == "requests":
        message = f"Rate limit reached for key '{key.name}': {limits.rpm} requests per minute."
    elif math.isinf(admission.retry_after):
        message = (
            f"Request too large for key '{key.name}': it may use more tokens than its limit of "
            f"{limits.tpm} tokens per minute. Lower max_tokens or the input."
        )
    else:
        message = f"Rate limit reached for key '{key.name}': {limits.tpm} tokens per minute."
    retry = None if math.isinf(admission.retry_after) else max(1.0, admission.retry_after)
    return APIError(429, message, code="rate_limit_exceeded", retry_after=retry)


def _bearer(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = bytes(value).decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def _headers(grant: Grant) -> list[tuple[bytes, bytes]]:
    found: list[tuple[bytes, bytes]] = []
    for kind, state in (("requests", grant.requests), ("tokens", grant.tokens)):
        if not state.limit:
            continue
        found += [
            (f"x-ratelimit-limit-{kind}".encode(), str(state.limit).encode()),
            (f"x-ratelimit-remaining-{kind}".encode(), str(math.floor(state.remaining)).encode()),
            (f"x-ratelimit-reset-{kind}".encode(), reset_header(state.reset_seconds).encode()),
        ]
    return found


class KeyAuth:
    """ASGI middleware: the key, its request and concurrency limits, the headers."""

    def __init__(self, app: ASGIApp, access: Access) -> None:
        self.app = app
        self.keys = access.keys
        self.limiter = access.limiter
        self.metrics = access.metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not PROTECTED.match(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        given = _bearer(scope)
        key = self.keys.find(given) if given else None
        if key is None:
            self.metrics.request("", "unauthorized")
            message = (
                "Incorrect API key provided. Create one with `bentochain keys create NAME`."
                if given
                else "You didn't provide an API key: send it as 'Authorization: Bearer <key>'."
            )
            await APIError(401, message, code="invalid_api_key").response()(scope, receive, send)
            return
        admission = await self.limiter.admit(key)
        grant = Grant(key, self.limiter, self.metrics, admission.state, unlimited())
        if not admission.admitted:
            self.metrics.request(key.name, admission.reason)
            response = _refusal(admission, key).response()
            response.headers.update({k.decode(): v.decode() for k, v in _headers(grant)})
            await response(scope, receive, send)
            return
        self.metrics.request(key.name, "ok")
        if key.limits.tpm:
            grant.tokens = (await self.limiter.reserve(key, 0)).state  # the bucket as it is now

        async def send_with_limits(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_headers(grant)]
            await send(message)

        _grant.set(grant)  # the request's own task: no reset needed
        try:
            await self.app(scope, receive, send_with_limits)
        finally:
            await self.limiter.release(key)


def estimate_tokens(chars: int) -> int:
    """A text's tokens before a tokenizer has seen it: about four characters each."""
    return math.ceil(chars / 4)


async def reserve_tokens(tokens: int) -> None:
    """Take ``tokens`` from the calling key's per-minute budget; 429 when it has not enough.
    Nothing to do for an open gateway or a key without a token limit."""
    grant = _grant.get()
    if grant is None or not grant.key.limits.tpm:
        return
    admission = await grant.limiter.reserve(grant.key, tokens)
    grant.tokens = admission.state
    if not admission.admitted:
        grant.metrics.request(grant.key.name, "tokens")
        raise _refusal(admission, grant.key)
    grant.reserved = tokens


async def settle_tokens(used: int) -> None:
    """The request used ``used`` tokens in all: give back (or take) the difference."""
    grant = _grant.get()
    if grant is None:
        return
    grant.metrics.tokens(grant.key.name, used)
    if grant.key.limits.tpm:
        grant.tokens = await grant.limiter.settle(grant.key, grant.reserved, used)
        grant.reserved = used
