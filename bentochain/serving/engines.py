"""From a profile's service entry to the engine that serves it."""

from __future__ import annotations

from bentochain.config.schema import LLMSettings
from bentochain.engines.llm.engine import EngineConfig


def engine_config(settings: LLMSettings) -> EngineConfig:
    return EngineConfig(
        default_max_tokens=settings.generation.default_max_tokens,
        max_tokens_limit=settings.generation.max_tokens_limit,
        max_waiting_requests=settings.generation.max_waiting_requests,
        max_running=settings.batching.max_batch_size,
        max_queue_seconds=settings.batching.max_latency_ms / 1000,
        block_size=settings.kv_cache.block_size,
        kv_blocks=settings.kv_cache.blocks,
        max_batch_tokens=settings.batching.max_batch_tokens,
        device=settings.device,
        dtype=settings.dtype,
        prefix_caching=settings.kv_cache.prefix_caching,
        step_timeout_seconds=settings.watchdog.step_timeout_seconds,
        packed_weights=settings.packed_weights,
        keep_freed_memory=settings.keep_freed_memory,
        threads=settings.threads,
    )
