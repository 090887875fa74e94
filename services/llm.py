"""The LLM service: chat and text generation from a causal LM, streamed token by token."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from pathlib import Path

import bentoml

from bentochain.engines.llm.types import GenerationRequest, encode_event
from bentochain.serving.options import service_options
from bentochain.serving.startup import profile, quiet_transformers, stored_model

SETTINGS = profile().llm


@bentoml.service(**service_options("LLM", SETTINGS))
class LLM:
    model = stored_model(SETTINGS.model, "llm.model")

    def __init__(self) -> None:
        from bentochain.engines.llm.engine import EngineLimits, LLMEngine

        quiet_transformers()
        generation = SETTINGS.generation
        self.engine = LLMEngine(
            Path(self.model.path),
            EngineLimits(
                default_max_tokens=generation.default_max_tokens,
                max_tokens_limit=generation.max_tokens_limit,
                max_waiting_requests=generation.max_waiting_requests,
            ),
        )

    @bentoml.api
    async def generate(self, request: GenerationRequest) -> AsyncGenerator[str, None]:
        """Generation events as NDJSON lines (see ``bentochain.engines.llm.types``)."""
        async for event in self.engine.stream(request):
            yield encode_event(event)
