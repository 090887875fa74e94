"""TranslatorFR and TranslatorES: one seq2seq service per language pair, so each scales alone."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import bentoml

from bentochain.serving.batching import Batcher, ModelThread
from bentochain.serving.options import JSON, install_middleware, service_options
from bentochain.serving.startup import profile, quiet_transformers, stored_model


def _translator_service(name: str, lang: Literal["fr", "es"]) -> Any:
    settings = getattr(profile().translators, lang)

    @bentoml.service(**service_options(profile(), name))
    class Translator:
        model = stored_model(settings.model, f"translators.{lang}.model")

        def __init__(self) -> None:
            from bentochain.engines.translator import Translator as Engine

            quiet_transformers()
            thread = ModelThread(f"{name.lower()}-model", settings.threads)
            engine = thread.load(
                Engine,
                Path(self.model.path),
                max_new_tokens=settings.max_new_tokens,
                num_beams=settings.num_beams,
                packed_weights=settings.packed_weights,
                keep_freed_memory=settings.keep_freed_memory,
            )
            self.batcher: Batcher[str, str] = Batcher(
                thread.batches(engine.translate),
                max_batch_size=settings.batching.max_batch_size,
                max_wait_seconds=settings.batching.max_latency_ms / 1000,
                executor=thread.executor,
            )

        @bentoml.api
        async def translate(self, texts: list[str]) -> Annotated[list[str], JSON]:
            return await self.batcher(texts)

    return install_middleware(Translator, profile())


TranslatorFR = _translator_service("TranslatorFR", "fr")
TranslatorES = _translator_service("TranslatorES", "es")
