"""The Embedder service: sentence embeddings, batched across concurrent requests."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import bentoml

from bentochain.engines.encoder import EncodedText
from bentochain.serving.batching import Batcher, ModelThread
from bentochain.serving.options import JSON, install_middleware, service_options
from bentochain.serving.startup import profile, quiet_transformers, stored_model

SETTINGS = profile().embedder


@bentoml.service(**service_options(profile(), "Embedder"))
class Embedder:
    model = stored_model(SETTINGS.model, "embedder.model")

    def __init__(self) -> None:
        from bentochain.engines.encoder import SentenceEncoder

        quiet_transformers()
        thread = ModelThread("embedder-model", SETTINGS.threads)
        encoder = thread.load(
            SentenceEncoder,
            Path(self.model.path),
            SETTINGS.max_seq_length,
            packed_weights=SETTINGS.packed_weights,
            keep_freed_memory=SETTINGS.keep_freed_memory,
        )
        self.batcher: Batcher[str, EncodedText] = Batcher(
            thread.batches(lambda texts: EncodedText.batch(encoder.encode(texts))),
            max_batch_size=SETTINGS.batching.max_batch_size,
            max_wait_seconds=SETTINGS.batching.max_latency_ms / 1000,
            executor=thread.executor,
        )

    @bentoml.api
    async def encode(self, texts: list[str]) -> Annotated[list[EncodedText], JSON]:
        return await self.batcher(texts)


install_middleware(Embedder, profile())
