"""What every service module does at import: read the profile and find its models, or stop.

``bentoml serve`` imports the service modules in every process it starts. A bad profile or a
model that was never prepared must stop that start with one clear message and a non-zero exit,
not a traceback from deep inside BentoML.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from bentochain.config.loader import ProfileError, get_settings
from bentochain.config.schema import ChainLLM, Settings
from bentochain.models.refs import ModelRef
from bentochain.models.store import ModelNotPrepared, store_tag

if TYPE_CHECKING:
    import bentoml

    from bentochain.observability.records import RecordWriter
    from bentochain.security.access import Access
    from bentochain.security.keys import KeyStore
    from bentochain.serving.upstream import Upstream

EXIT_BAD_PROFILE = 2


def refuse_start(message: str) -> NoReturn:
    print(message, file=sys.stderr, flush=True)
    raise SystemExit(EXIT_BAD_PROFILE)


def profile() -> Settings:
    """This process's profile; exits with the profile's problems when it is invalid."""
    try:
        return get_settings()
    except ProfileError as exc:
        refuse_start(str(exc))


def stored_model(ref: ModelRef, key: str) -> bentoml.models.BentoModel:
    """The store entry a service declares (so ``bentoml build`` packs it); exits when missing."""
    import bentoml

    from bentochain.models.store import require

    try:
        require(ref, key)
    except ModelNotPrepared as exc:
        refuse_start(f"bentochain: {exc}")
    return bentoml.models.BentoModel(store_tag(ref))


def quiet_transformers() -> None:
    """Progress bars and advisory warnings from transformers are noise in server logs."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def chain_llm_settings(llm: ChainLLM, where: str) -> ChainLLM:
    """A chain's LLM settings; exits naming the variable when a provider's API key is unset."""
    import os

    from bentochain.llms.providers import ProviderConfigError, check_keys

    try:
        check_keys(llm, os.environ, where)
    except ProviderConfigError as exc:
        refuse_start(f"bentochain: {exc}")
    return llm


def existing_dir(path: Path, key: str) -> Path:
    """A folder the profile names; exits naming the key when it does not exist."""
    if not path.is_dir():
        refuse_start(f"bentochain: {key}: folder {path} does not exist")
    return path


def dependencies(settings: Settings, services: Iterable[Any]) -> dict[str, Upstream]:
    """How this service calls each of ``services`` (BentoML services it depends on), by name;
    exits naming the key when the profile leaves a dependency's replicas unknown."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    from bentochain.config.loader import project_path
    from bentochain.config.schema import SERVICE_KEYS
    from bentochain.observability.metrics import PrometheusUpstreamMetrics
    from bentochain.serving.upstream import Upstream, UpstreamConfigError, discovery_for

    # The address BentoML would use: the composed Bento's socket, or --depends.
    addresses: dict[str, str] = BentoMLContainer.remote_runner_mapping.get()
    upstreams: dict[str, Upstream] = {}
    for service in services:
        name = service.name
        entry = settings.entry(name)
        upstream = settings.upstream(name)
        try:
            discovery = discovery_for(
                SERVICE_KEYS[name],
                upstream,
                settings.canary(name),
                addresses.get(name),
                base=project_path,
            )
        except UpstreamConfigError as exc:
            refuse_start(f"bentochain: {exc}")
        upstreams[name] = Upstream(
            name,
            service,
            discovery,
            upstream,
            timeout=entry.traffic.timeout * 1.01,  # as BentoML's own client
            connection=entry.connection,
            metrics=PrometheusUpstreamMetrics(name),
        )
    return upstreams


def quality_recorder(settings: Settings) -> RecordWriter | None:
    """This worker's writer of quality records (``records.<worker>.jsonl`` in the profile's
    folder), counted on ``/metrics``; None when the profile turns records off."""
    import bentoml

    from bentochain.config.loader import project_path
    from bentochain.observability.metrics import PrometheusRecordMetrics
    from bentochain.observability.records import RecordWriter

    records = settings.observability.records
    if not records.enabled:
        return None
    return RecordWriter(
        project_path(records.dir),
        f"records.{bentoml.server_context.worker_index or 0}",
        max_bytes=records.max_bytes,
        backups=records.backups,
        queue_size=records.queue_size,
        flush_seconds=records.flush_seconds,
        redact_paths=records.redact,
        metrics=PrometheusRecordMetrics(),
    )


def key_access(settings: Settings) -> Access | None:
    """The gateway's keys and limits when the profile wants keys (``gateway.auth``)."""
    from bentochain.observability.metrics import PrometheusKeyMetrics
    from bentochain.security.access import Access
    from bentochain.security.keys import KeyRing
    from bentochain.security.limits import InProcessLimiter, Limiter, RedisLimiter

    auth = settings.gateway.auth
    if auth.mode != "keys":
        return None
    limiter: Limiter = (
        RedisLimiter(auth.redis_url or "") if auth.limits == "redis" else InProcessLimiter()
    )
    ring = KeyRing(key_store(settings), refresh_seconds=auth.refresh_seconds)
    return Access(ring, limiter, PrometheusKeyMetrics())


def key_store(settings: Settings) -> KeyStore:
    """Where the profile keeps API key hashes: a file in the project, or Redis."""
    from bentochain.config.loader import project_path
    from bentochain.security.keys import FileKeyStore, RedisKeyStore

    auth = settings.gateway.auth
    if auth.store == "redis":
        return RedisKeyStore(auth.redis_url or "")
    return FileKeyStore(project_path(auth.keys_file))
