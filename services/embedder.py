"""The Embedder service: sentence embeddings with adaptive batching."""

from __future__ import annotations

from pathlib import Path

import bentoml

from bentochain.engines.encoder import EncodedText
from bentochain.serving.options import install_middleware, service_options
from bentochain.serving.startup import profile, quiet_transformers, stored_model

SETTINGS = profile().embedder


@bentoml.service(**service_options(profile(), "Embedder"))
class Embedder:
    model = stored_model(SETTINGS.model, "embedder.model")

    def __init__(self) -> None:
        from bentochain.engines.encoder import SentenceEncoder

        quiet_transformers()
        self.encoder = SentenceEncoder(Path(self.model.path), SETTINGS.max_seq_length)

    @bentoml.api(
        batchable=True,
        max_batch_size=SETTINGS.batching.max_batch_size,
        max_latency_ms=SETTINGS.batching.max_latency_ms,
    )
    def encode(self, texts: list[str]) -> list[EncodedText]:
        return EncodedText.batch(self.encoder.encode(texts))


install_middleware(Embedder, profile())
