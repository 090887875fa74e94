"""Prometheus metrics of the LLM engine, exposed on every service's ``/metrics``.

Created through ``bentoml.metrics`` so they live in BentoML's registry and multiprocess
directory: the composed Bento's ``/metrics`` shows them next to BentoML's request metrics.
Names follow Prometheus conventions (base units, ``_total`` counters); every series carries the
served model's id as ``model``.
"""

from __future__ import annotations

from typing import Any

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)

METRIC_NAMES = (
    "bentochain_llm_prompt_tokens_total",
    "bentochain_llm_generated_tokens_total",
    "bentochain_llm_time_to_first_token_seconds",
    "bentochain_llm_time_per_output_token_seconds",
    "bentochain_llm_request_duration_seconds",
    "bentochain_llm_queue_wait_seconds",
    "bentochain_llm_running_requests",
    "bentochain_llm_waiting_requests",
    "bentochain_llm_batch_size",
)


class PrometheusEngineMetrics:
    """``EngineMetrics`` recorded as Prometheus series for one served model."""

    def __init__(self, model: str) -> None:
        import bentoml

        labels = ["model"]
        self._prompt = bentoml.metrics.Counter(
            name="bentochain_llm_prompt_tokens",
            documentation="Prompt tokens prefilled.",
            labelnames=labels,
        )
        self._generated = bentoml.metrics.Counter(
            name="bentochain_llm_generated_tokens",
            documentation="Tokens generated.",
            labelnames=labels,
        )
        self._ttft = bentoml.metrics.Histogram(
            name="bentochain_llm_time_to_first_token_seconds",
            documentation="Time from a request's arrival to its first generated token.",
            labelnames=labels,
            buckets=TTFT_BUCKETS,
        )
        self._tpot = bentoml.metrics.Histogram(
            name="bentochain_llm_time_per_output_token_seconds",
            documentation="Mean time between a request's tokens after the first.",
            labelnames=labels,
            buckets=TPOT_BUCKETS,
        )
        self._latency = bentoml.metrics.Histogram(
            name="bentochain_llm_request_duration_seconds",
            documentation="Time from a request's arrival to its last token.",
            labelnames=labels,
            buckets=LATENCY_BUCKETS,
        )
        self._queued = bentoml.metrics.Histogram(
            name="bentochain_llm_queue_wait_seconds",
            documentation="Time a request waited before its prompt was prefilled.",
            labelnames=labels,
            buckets=TTFT_BUCKETS,
        )
        self._running = self._gauge("running_requests", "Sequences decoding.")
        self._waiting = self._gauge("waiting_requests", "Requests waiting to be admitted.")
        self._batch = self._gauge("batch_size", "Sequences in the latest decode step.")
        self._labels = {"model": model}

    @staticmethod
    def _gauge(name: str, documentation: str) -> Any:
        import bentoml

        return bentoml.metrics.Gauge(
            name=f"bentochain_llm_{name}",
            documentation=documentation,
            labelnames=["model"],
            multiprocess_mode="livesum",
        )

    def admitted(self, *, prompt_tokens: int, queued_seconds: float) -> None:
        self._prompt.labels(**self._labels).inc(prompt_tokens)
        self._queued.labels(**self._labels).observe(queued_seconds)

    def first_token(self, *, seconds: float) -> None:
        self._ttft.labels(**self._labels).observe(seconds)

    def generated(self, tokens: int) -> None:
        self._generated.labels(**self._labels).inc(tokens)

    def finished(self, *, seconds: float, per_output_token: float | None) -> None:
        self._latency.labels(**self._labels).observe(seconds)
        if per_output_token is not None:
            self._tpot.labels(**self._labels).observe(per_output_token)

    def step(self, *, batch: int) -> None:
        self._batch.labels(**self._labels).set(batch)

    def occupancy(self, *, running: int, waiting: int) -> None:
        self._running.labels(**self._labels).set(running)
        self._waiting.labels(**self._labels).set(waiting)
        if running == 0:
            self._batch.labels(**self._labels).set(0)
