"""What the gateway needs from the model services, and how their failures reach clients.

In a served Bento the model services are ``bentoml.depends`` proxies; in unit tests they can be
the engines themselves. Either way the gateway sees this protocol.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np
from pydantic import BaseModel

from bentochain.api.errors import APIError
from bentochain.engines.llm.types import GenerationRequest

if TYPE_CHECKING:
    from bentochain.engines.encoder import Embeddings
    from bentochain.serving.chains import ChainEndpoint

TargetLang = Literal["fr", "es"]


class EncodedText(BaseModel):
    """One text's embedding and how many tokens the model read of it.

    The vector travels as little-endian float32 bytes (what OpenAI's ``base64`` format carries):
    between services that pickles as one buffer instead of hundreds of Python floats.
    """

    vector: bytes
    tokens: int

    @classmethod
    def of(cls, vector: np.ndarray, tokens: int) -> EncodedText:
        return cls(vector=np.asarray(vector, dtype="<f4").tobytes(), tokens=tokens)

    @classmethod
    def batch(cls, embeddings: Embeddings) -> list[EncodedText]:
        """One ``EncodedText`` per text the encoder read."""
        return [
            cls.of(vector, tokens)
            for vector, tokens in zip(embeddings.vectors, embeddings.token_counts, strict=True)
        ]

    def floats(self) -> list[float]:
        return [float(x) for x in np.frombuffer(self.vector, dtype="<f4")]

    @property
    def dimensions(self) -> int:
        return len(self.vector) // 4


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
    from bentoml.exceptions import BentoMLException

    if isinstance(exc, APIError):
        return exc
    status = int(getattr(exc, "error_code", 0) or 0) if isinstance(exc, BentoMLException) else 0
    if status in (429, 503):
        return APIError(
            status,
            f"The {service} service is overloaded; retry shortly.",
            code="overloaded",
            retry_after=1.0,
        )
    if status == 504 or isinstance(exc, TimeoutError):
        return APIError(504, f"The {service} service did not answer in time.", code="timeout")
    if 400 <= status < 500:
        return APIError(status, f"The {service} service refused the request: {exc}")
    if status >= 500:
        return APIError(502, f"The {service} service failed: {exc}", code="upstream_error")
    return APIError(
        503,
        f"The {service} service is unreachable ({type(exc).__name__}); retry shortly.",
        code="upstream_unavailable",
        retry_after=1.0,
    )
