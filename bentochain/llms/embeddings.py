"""Our Embedder service as LangChain ``Embeddings``, so a vector store can call it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import numpy as np
from langchain_core.embeddings import Embeddings

from bentochain.engines.encoder import EncodedText

Encode = Callable[[list[str]], Awaitable[list[EncodedText]]]


class BentoEmbeddings(Embeddings):
    """Texts go to the Embedder in slices of ``batch_size``; its batcher merges them
    with other callers' texts."""

    def __init__(self, encode: Encode, *, batch_size: int = 64) -> None:
        self.encode = encode
        self.batch_size = batch_size

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        vectors: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            encoded = await self.encode(texts[start : start + self.batch_size])
            vectors += [np.frombuffer(e.vector, dtype="<f4").tolist() for e in encoded]
        return vectors

    async def aembed_query(self, text: str) -> list[float]:
        return (await self.aembed_documents([text]))[0]

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return asyncio.run(self.aembed_documents(texts))

    def embed_query(self, text: str) -> list[float]:
        return asyncio.run(self.aembed_query(text))
