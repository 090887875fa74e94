"""The LLM service: chat and text generation from a causal LM, streamed token by token."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from pathlib import Path

import bentoml

from bentochain.engines.llm.types import Failed, GenerationRequest, encode_event
from bentochain.observability.genai import traced_generation
from bentochain.serving.drain import REPLACED
from bentochain.serving.options import install_middleware, service_options
from bentochain.serving.startup import profile, quiet_transformers, stored_model

SETTINGS = profile().llm
logger = logging.getLogger(__name__)


@bentoml.service(**service_options(profile(), "LLM"))
class LLM:
    model = stored_model(SETTINGS.model, "llm.model")

    def __init__(self) -> None:
        from bentochain.engines.llm.engine import LLMEngine
        from bentochain.observability.metrics import PrometheusEngineMetrics
        from bentochain.serving.engines import engine_config

        quiet_transformers()
        self.engine = LLMEngine(
            Path(self.model.path),
            engine_config(SETTINGS),
            metrics=PrometheusEngineMetrics(SETTINGS.served_id),
        )

    @bentoml.api
    async def generate(self, request: GenerationRequest) -> AsyncGenerator[str, None]:
        """Generation events as NDJSON lines (see ``bentochain.engines.llm.types``)."""
        batches = self.engine.stream_batches(request)
        async for batch in traced_generation(request, SETTINGS.served_id, batches):
            yield "".join(encode_event(event) for event in batch)

    async def __is_alive__(self) -> bool:
        """``/livez``: 503 once the engine thread died or a step hangs (restart me)."""
        health = self.engine.health()
        if not health.alive:
            logger.error("not live: %s", health.reason)
        return health.alive

    async def __is_ready__(self) -> bool:
        """``/readyz``: no traffic to an engine that would not answer it."""
        return self.engine.health().alive

    def current_load(self) -> int:
        """Running + waiting sequences: what ``/load`` reports to ``least_load`` callers."""
        return self.engine.load()

    def ready_now(self) -> bool:
        return self.engine.health().alive

    def drain_seconds(self) -> float | None:
        """What the generations held now need to end at the rate measured (an ``auto``
        grace)."""
        return self.engine.seconds_for(self.engine.tokens_left())

    def longest_generation_seconds(self) -> float | None:
        """What a generation of ``max_tokens_limit`` tokens needs at the rate measured: the
        grace a rollout checks a fixed one against."""
        return self.engine.seconds_for(SETTINGS.generation.max_tokens_limit)

    def cut(self, message: str) -> None:
        self.engine.cut(Failed(status=503, code=REPLACED, message=message, retry_after=1.0))


install_middleware(LLM, profile())
