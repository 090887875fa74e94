"""What the gateway needs from the model services, and how their failures reach clients.

In a served Bento the model services are reached through the upstream layer; in unit tests
they can be the engines themselves. Either way the gateway sees this protocol.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Literal, Protocol

from bentochain.api.errors import APIError
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


def upstream_error(exc: Exception, service: str) -> APIError:
    """Map a failed call to a model service to what the gateway's client should see."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, UpstreamError) and exc.code in ("draining", "unavailable"):
        return APIError(
            503,
            f"The {service} service is unavailable: {exc.message}; retry shortly.",
            code="upstream_unavailable",
            retry_after=exc.retry_after or 1.0,
        )
    status = exc.status if isinstance(exc, UpstreamError) else 0
    if status in (429, 503):
        return APIError(
            status,
            f"The {service} service is overloaded; retry shortly.",
            code="overloaded",
            retry_after=1.0,
        )
    if status == 504 or isinstance(exc, TimeoutError):
        return APIError(504, f"The {service} service did not answer in time.", code="timeout")
    detail = exc.message if isinstance(exc, UpstreamError) else str(exc)
    if 400 <= status < 500:
        return APIError(status, f"The {service} service refused the request: {detail}")
    if status >= 500:
        return APIError(502, f"The {service} service failed: {detail}", code="upstream_error")
    return APIError(
        503,
        f"The {service} service is unreachable ({type(exc).__name__}); retry shortly.",
        code="upstream_unavailable",
        retry_after=1.0,
    )
