"""What the gateway needs from the model services, and how their failures reach clients.

In a served Bento the model services are reached through the upstream layer; in unit tests
they can be the engines themselves. Either way the gateway sees this protocol.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Literal, Protocol

import aiohttp

from bentochain.api.errors import APIError, internal_error
from bentochain.engines.encoder import EncodedText
from bentochain.engines.llm.types import GenerationRequest
from bentochain.serving.upstream import UpstreamError

if TYPE_CHECKING:
    from bentochain.serving.chains import ChainEndpoint

TargetLang = Literal["fr", "es"]


class Backends(Protocol):
    def generate(self, request: GenerationRequest) -> AsyncIterator[str]:
        """NDJSON generation events (see ``engines.llm.types``), in chunks of any size."""
        ...

    async def embed(self, texts: list[str]) -> list[EncodedText]: ...

    async def translate(self, target_lang: TargetLang, texts: list[str]) -> list[str]: ...

    def chain(self, name: str) -> ChainEndpoint:
        """Where chain ``name`` (one of ``chains.catalog.CHAINS``) runs."""
        ...


def upstream_error(exc: BaseException, service: str) -> APIError:
    """What the client of the gateway should see when a call to ``service`` failed: the one
    place a failure becomes a status. A dependency down or draining: 503 with Retry-After; too
    slow: 504; refusing the request: its own 4xx; failing: 502; anything else is a bug of
    ours: 500 ``internal_error`` with the request id, and the traceback in the log."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, UpstreamError):
        return _from_upstream(exc, service)
    if isinstance(exc, TimeoutError):
        return APIError(504, f"The {service} service did not answer in time.", code="timeout")
    if isinstance(exc, ConnectionError | aiohttp.ClientConnectionError):
        return APIError(
            503,
            f"The {service} service is unreachable ({type(exc).__name__}); retry shortly.",
            code="upstream_unavailable",
            retry_after=1.0,
        )
    return internal_error(exc)


def _from_upstream(exc: UpstreamError, service: str) -> APIError:
    # A replica that died mid-answer ("broken") is a dependency that went down: retry.
    if exc.code in ("draining", "unavailable", "broken"):
        return APIError(
            503,
            f"The {service} service is unavailable: {exc.message}; retry shortly.",
            code="upstream_unavailable",
            retry_after=exc.retry_after or 1.0,
        )
    if exc.status in (429, 503):
        return APIError(
            503,
            f"The {service} service is overloaded; retry shortly.",
            code="overloaded",
            retry_after=1.0,
        )
    if exc.status == 504 or exc.code == "timeout":
        return APIError(504, f"The {service} service did not answer in time.", code="timeout")
    if 400 <= exc.status < 500:
        return APIError(exc.status, f"The {service} service refused the request: {exc.message}")
    return APIError(502, f"The {service} service failed: {exc.message}", code="upstream_error")
