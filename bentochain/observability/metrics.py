"""Prometheus metrics of the LLM engine, the chains' cache and calls between services, exposed on
every service's ``/metrics``.

Created through ``bentoml.metrics`` so they live in BentoML's registry and multiprocess
directory: the composed Bento's ``/metrics`` shows them next to BentoML's request metrics.
Names follow Prometheus conventions (base units, ``_total`` counters); every series carries the
served model's id as ``model``.
"""

from __future__ import annotations

import functools
import threading
import time
from collections import deque
from typing import Any, Literal

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
RATE_WINDOW = 5.0  # seconds the tokens-per-second gauge averages over
REQUEST_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
    900.0, 1800.0,
)  # fmt: skip
"""Every service's ``bentoml_service_request_duration_seconds`` buckets (set, so that a latency
SLO's threshold is known to be one of them: BentoML's own depend on its version and config)."""
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
    "bentochain_llm_kv_cache_used_blocks",
    "bentochain_llm_kv_cache_total_blocks",
    "bentochain_llm_kv_cache_usage_ratio",
    "bentochain_llm_generation_tokens_per_second",
    "bentochain_llm_prefix_cache_queries_total",
    "bentochain_llm_prefix_cache_hits_total",
)


class PrometheusEngineMetrics:
    """``EngineMetrics`` recorded as Prometheus series for one served model.

    Each series is bound to its ``model`` label once: the engine reports every generated token,
    so the per-call label lookup would sit on the decode loop's hot path.
    """

    def __init__(self, model: str) -> None:
        self._prompt = _counter(model, "prompt_tokens", "Prompt tokens prefilled.")
        self._generated = _counter(model, "generated_tokens", "Tokens generated.")
        self._ttft = _histogram(
            model,
            "time_to_first_token_seconds",
            "Time from a request's arrival to its first generated token.",
            TTFT_BUCKETS,
        )
        self._tpot = _histogram(
            model,
            "time_per_output_token_seconds",
            "Mean time between a request's tokens after the first.",
            TPOT_BUCKETS,
        )
        self._latency = _histogram(
            model,
            "request_duration_seconds",
            "Time from a request's arrival to its last token.",
            LATENCY_BUCKETS,
        )
        self._queued = _histogram(
            model,
            "queue_wait_seconds",
            "Time a request waited before its prompt was prefilled.",
            TTFT_BUCKETS,
        )
        self._running = _gauge(model, "running_requests", "Sequences decoding.")
        self._waiting = _gauge(model, "waiting_requests", "Requests waiting to be admitted.")
        self._batch = _gauge(model, "batch_size", "Sequences in the latest decode step.")
        self._kv_used = _gauge(model, "kv_cache_used_blocks", "KV-cache blocks lent out.")
        self._kv_total = _gauge(model, "kv_cache_total_blocks", "KV-cache blocks in all.")
        self._kv_usage = _gauge(
            model,
            "kv_cache_usage_ratio",
            "KV-cache blocks lent out over all blocks (1: new sequences wait for memory).",
            mode="livemax",
        )
        self._rate = _gauge(
            model,
            "generation_tokens_per_second",
            f"Tokens generated per second over the last {RATE_WINDOW:g} s (0 when idle).",
        )
        self._cache_queries = _counter(
            model, "prefix_cache_queries", "Prompt tokens looked up in the prefix cache."
        )
        self._cache_hits = _counter(
            model, "prefix_cache_hits", "Prompt tokens whose KV came from the prefix cache."
        )
        self._recent: deque[tuple[float, int]] = deque()  # (when, tokens): the engine's thread

    def admitted(self, *, prompt_tokens: int, queued_seconds: float) -> None:
        self._prompt.inc(prompt_tokens)
        self._queued.observe(queued_seconds)

    def prefix_cache(self, *, queried: int, hit: int) -> None:
        self._cache_queries.inc(queried)
        self._cache_hits.inc(hit)

    def first_token(self, *, seconds: float) -> None:
        self._ttft.observe(seconds)

    def generated(self, tokens: int) -> None:
        self._generated.inc(tokens)
        self._recent.append((time.monotonic(), tokens))

    def finished(self, *, seconds: float, per_output_token: float | None) -> None:
        self._latency.observe(seconds)
        if per_output_token is not None:
            self._tpot.observe(per_output_token)

    def step(self, *, batch: int) -> None:
        self._batch.set(batch)

    def occupancy(self, *, running: int, waiting: int, kv_used: int, kv_total: int) -> None:
        self._running.set(running)
        self._waiting.set(waiting)
        self._kv_used.set(kv_used)
        self._kv_total.set(kv_total)
        self._kv_usage.set(kv_used / kv_total if kv_total else 0.0)
        now = time.monotonic()
        while self._recent and self._recent[0][0] < now - RATE_WINDOW:
            self._recent.popleft()
        if running == 0:
            self._batch.set(0)
            self._rate.set(0.0)  # the engine sleeps until the next request: nothing is made
            self._recent.clear()
        elif self._recent:
            span = max(now - self._recent[0][0], 1e-3)
            self._rate.set(sum(tokens for _, tokens in self._recent) / span)


def _counter(model: str, name: str, documentation: str) -> Any:
    import bentoml

    return bentoml.metrics.Counter(
        name=f"bentochain_llm_{name}", documentation=documentation, labelnames=["model"]
    ).labels(model=model)


def _histogram(model: str, name: str, documentation: str, buckets: tuple[float, ...]) -> Any:
    import bentoml

    return bentoml.metrics.Histogram(
        name=f"bentochain_llm_{name}",
        documentation=documentation,
        labelnames=["model"],
        buckets=buckets,
    ).labels(model=model)


def _gauge(
    model: str, name: str, documentation: str, mode: Literal["livesum", "livemax"] = "livesum"
) -> Any:
    import bentoml

    return bentoml.metrics.Gauge(
        name=f"bentochain_llm_{name}",
        documentation=documentation,
        labelnames=["model"],
        multiprocess_mode=mode,
    ).labels(model=model)


class CacheMetrics:
    """Hits and misses of one chain's LLM answer cache (``bentochain_llm_cache_*_total``)."""

    def __init__(self, chain: str) -> None:
        import bentoml

        def counter(name: str, documentation: str) -> Any:
            return bentoml.metrics.Counter(
                name=f"bentochain_llm_cache_{name}_total",
                documentation=documentation,
                labelnames=["chain"],
            ).labels(chain=chain)

        self._hits = counter("hits", "LLM calls of a chain answered from the cache.")
        self._misses = counter("misses", "LLM calls of a chain the cache could not answer.")

    def lookup(self, hit: bool) -> None:
        (self._hits if hit else self._misses).inc()


CIRCUIT_STATES = {"closed": 0.0, "half_open": 1.0, "open": 2.0}
UPSTREAM_METRIC_NAMES = (
    "bentochain_upstream_requests_total",
    "bentochain_upstream_circuit_state",
    "bentochain_upstream_in_flight_requests",
    "bentochain_upstream_replica_load",
)


@functools.cache
def _upstream_families() -> tuple[Any, Any, Any, Any]:
    """One counter and one gauge per process, shared by every dependency it calls (a
    Prometheus registry holds each name once)."""
    import bentoml

    requests = bentoml.metrics.Counter(
        name="bentochain_upstream_requests",
        documentation=(
            "Attempts to call a replica of a dependency, by outcome: ok, client_error, "
            "server_error, draining, connect_error, disconnected, timeout, broken, cancelled, "
            "error."
        ),
        labelnames=["service", "replica", "version", "outcome"],
    )
    in_flight = bentoml.metrics.Gauge(
        name="bentochain_upstream_in_flight_requests",
        documentation="Requests this caller has in flight on each replica of a dependency.",
        labelnames=["service", "replica", "version"],
        multiprocess_mode="livesum",
    )
    load = bentoml.metrics.Gauge(
        name="bentochain_upstream_replica_load",
        documentation=(
            "Each replica's load from other callers (running + waiting requests as it last "
            "reported them, less this caller's own, which bentochain_upstream_in_flight_requests "
            "counts): what least_load balances on, with this caller's requests in flight."
        ),
        labelnames=["service", "replica", "version"],
        multiprocess_mode="livemostrecent",
    )
    circuit = bentoml.metrics.Gauge(
        name="bentochain_upstream_circuit_state",
        documentation=(
            "Each dependency's circuit as this caller sees it: 0 closed, 1 half-open (one trial "
            "call), 2 open (calls fail at once)."
        ),
        labelnames=["service"],
        multiprocess_mode="livemax",
    )
    return requests, in_flight, load, circuit


@functools.cache
def drain_cut_streams() -> Any:
    """Streams a server ended because its drain's grace ran out (each got an error event)."""
    import bentoml

    return bentoml.metrics.Counter(
        name="bentochain_drain_cut_streams",
        documentation=(
            "Streams cut because the server's shutdown grace ran out before they ended; each "
            "got an error event telling its client to retry."
        ),
        labelnames=["service"],
    )


class PrometheusUpstreamMetrics:
    """``UpstreamMetrics`` for calls to ``service``, labelled per replica (its URL) and
    version (``stable`` or ``canary``), so the spread over replicas is visible."""

    def __init__(self, service: str) -> None:
        self.service = service
        self._requests, self._in_flight, self._load, circuit = _upstream_families()
        self._circuit = circuit.labels(service=service)
        self._circuit.set(0)

    def attempt(self, replica: str, version: str, outcome: str) -> None:
        self._requests.labels(
            service=self.service, replica=replica, version=version, outcome=outcome
        ).inc()

    def in_flight(self, replica: str, version: str, delta: int) -> None:
        self._in_flight.labels(service=self.service, replica=replica, version=version).inc(delta)

    def load(self, replica: str, version: str, load: float) -> None:
        self._load.labels(service=self.service, replica=replica, version=version).set(load)

    def circuit(self, state: str) -> None:
        self._circuit.set(CIRCUIT_STATES[state])


STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


@functools.cache
def _step_families() -> tuple[Any, Any]:
    import bentoml

    duration = bentoml.metrics.Histogram(
        name="bentochain_chain_step_duration_seconds",
        documentation="Time a named step of a chain run took (failed runs of it included).",
        labelnames=["chain", "step"],
        buckets=STEP_BUCKETS,
    )
    errors = bentoml.metrics.Counter(
        name="bentochain_chain_step_errors",
        documentation="Named steps of chain runs that raised (a refused query in 'validate'...).",
        labelnames=["chain", "step"],
    )
    return duration, errors


class PrometheusStepMetrics:
    """``StepMetrics`` as ``bentochain_chain_step_duration_seconds{chain,step}`` and
    ``bentochain_chain_step_errors_total{chain,step}``."""

    def __init__(self) -> None:
        self._duration, self._errors = _step_families()

    def step(self, chain: str, step: str, seconds: float, failed: bool) -> None:
        self._duration.labels(chain=chain, step=step).observe(seconds)
        if failed:
            self._errors.labels(chain=chain, step=step).inc()


class PrometheusRecordMetrics:
    """``RecordMetrics`` as ``bentochain_records_written_total`` and
    ``bentochain_records_dropped_total{reason}`` (queue_full: the disk is slow; write_error:
    it is full or read-only). Created at import (the writer is the gateway app's), so the
    series are made on first use, in a worker."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # first used by the writer thread or a request

    @functools.cached_property
    def _families(self) -> tuple[Any, Any]:
        with self._lock:
            return _record_families()

    def written(self) -> None:
        self._families[0].inc()

    def dropped(self, reason: str) -> None:
        self._families[1].labels(reason=reason).inc()


@functools.cache
def _record_families() -> tuple[Any, Any]:
    import bentoml

    written = bentoml.metrics.Counter(
        name="bentochain_records_written",
        documentation="Quality records written to disk.",
    )
    dropped = bentoml.metrics.Counter(
        name="bentochain_records_dropped",
        documentation="Quality records lost, by reason: queue_full or write_error.",
        labelnames=["reason"],
    )
    for reason in ("queue_full", "write_error"):  # at 0 from the start: a loss shows as a rise
        dropped.labels(reason=reason)
    return written, dropped


@functools.cache
def _key_families() -> tuple[Any, Any]:
    import bentoml

    requests = bentoml.metrics.Counter(
        name="bentochain_api_key_requests",
        documentation=(
            "Requests by API key name (never the key) and outcome: ok, unauthorized (no or a "
            "wrong key, name empty), or the limit that refused it: requests, tokens, concurrent."
        ),
        labelnames=["key", "outcome"],
    )
    tokens = bentoml.metrics.Counter(
        name="bentochain_api_key_tokens",
        documentation="Tokens (prompt + completion) used, by API key name.",
        labelnames=["key"],
    )
    return requests, tokens


class PrometheusKeyMetrics:
    """``KeyMetrics`` as ``bentochain_api_key_requests_total{key,outcome}`` and
    ``bentochain_api_key_tokens_total{key}``, made on first use (in a worker)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    @functools.cached_property
    def _families(self) -> tuple[Any, Any]:
        with self._lock:
            return _key_families()

    def request(self, key: str, outcome: str) -> None:
        self._families[0].labels(key=key, outcome=outcome).inc()

    def tokens(self, key: str, count: int) -> None:
        self._families[1].labels(key=key).inc(count)
