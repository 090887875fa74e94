"""Running a chain for HTTP callers: configs in, JSON out, failures as statuses.

The same ``ChainRunner`` serves a chain inside its BentoML service (SQLChain, RAGChain) and
inside the gateway (translate), so ``invoke``, ``batch`` and ``stream`` mean the same thing
wherever a chain runs. ``chain_llm`` builds a chain's model from the profile, with the
LLM service reached through the upstream layer and the profile's answer cache. A run keeps
one version of each service it calls (``upstream.routing``): a canary LLM serves all of a SQL
run's attempts or none.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Annotated, Any, Protocol
from uuid import UUID

import bentoml
from langchain_core.caches import BaseCache
from langchain_core.runnables import Runnable, RunnableConfig
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import to_jsonable_python

from bentochain.config.schema import ChainLLM, Settings
from bentochain.config.types import Whole
from bentochain.engines.llm.types import GenerationRequest
from bentochain.llms.bento import LLMServiceError
from bentochain.llms.resilience import AllProvidersFailed, ResilientChatModel
from bentochain.observability.chains import ChainTelemetry, StepMetrics
from bentochain.observability.context import request_id
from bentochain.serving.upstream import Upstream, UpstreamError
from bentochain.serving.upstream.routing import run_scope

logger = logging.getLogger(__name__)
MAX_STEP_CHARS = 20_000  # a step's output in the stream is cut past this


class RunConfig(BaseModel):
    """What a caller may set for one run (LangChain's ``RunnableConfig``, the safe part)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    run_name: str | None = Field(None, max_length=200)
    tags: list[str] = Field(default_factory=list, max_length=32)
    metadata: dict[str, str | int | float | bool | None] = Field(
        default_factory=dict, max_length=32
    )
    max_concurrency: Annotated[int, Field(ge=1, le=32), Whole] | None = Field(
        None, description="inputs of one batch run at once (default 4)"
    )

    @property
    def concurrency(self) -> int:
        return self.max_concurrency or 4

    def runnable(self, run_id: str) -> RunnableConfig:
        config = RunnableConfig(
            run_id=UUID(run_id),
            tags=list(self.tags),
            metadata=dict(self.metadata),
            max_concurrency=self.concurrency,
        )
        if self.run_name:
            config["run_name"] = self.run_name
        return config


class ChainError(Exception):
    """A chain run that failed, with the HTTP status its caller should see."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def chain_error(exc: BaseException, chain: str) -> ChainError:
    if isinstance(exc, ChainError):
        return exc
    if isinstance(exc, ValidationError):
        return ChainError(422, f"Invalid input for chain '{chain}': {exc.errors()[0]['msg']}.")
    if isinstance(exc, AllProvidersFailed):
        return ChainError(502, f"The '{chain}' chain's LLM failed: {exc}")
    if isinstance(exc, UpstreamError) and exc.code in ("draining", "unavailable", "broken"):
        return ChainError(503, str(exc))  # a service it calls is down: retry (as the gateway)
    if isinstance(exc, LLMServiceError | UpstreamError):
        status = {429: 503, 503: 503, 504: 504}.get(exc.status, 502)
        return ChainError(status, str(exc))
    if isinstance(exc, TimeoutError):
        return ChainError(504, f"The '{chain}' chain did not finish in time.")
    if isinstance(exc, ConnectionError):
        return ChainError(503, f"The '{chain}' chain could not reach a service: {exc!r}")
    current = request_id() or "unknown"
    logger.error("the '%s' chain failed (request %s)", chain, current, exc_info=exc)
    return ChainError(
        500,
        f"The '{chain}' chain had an internal error (request id {current}); it is in the log.",
    )


def jsonable(value: Any) -> Any:
    return to_jsonable_python(value, fallback=str)


def _step_output(value: Any) -> Any:
    data = jsonable(value)
    if isinstance(data, str) and len(data) > MAX_STEP_CHARS:
        return data[:MAX_STEP_CHARS] + "…"
    return data


class ChainRunner:
    """One chain, run for callers that speak JSON. Every run reports to LangChain callbacks
    that trace its named steps and time them on ``/metrics``."""

    def __init__(
        self,
        name: str,
        runnable: Runnable[Any, Any],
        steps: frozenset[str],
        *,
        metrics: StepMetrics | None = None,
    ) -> None:
        self.name = name
        self.runnable = runnable
        self.steps = steps
        self.metrics = metrics

    def _config(self, config: RunConfig, run_id: str) -> RunnableConfig:
        runnable = config.runnable(run_id)
        runnable["callbacks"] = [ChainTelemetry(self.name, self.steps, self.metrics)]
        return runnable

    async def invoke(self, input: Mapping[str, Any], config: RunConfig, run_id: str) -> Any:
        try:
            with run_scope():
                output = await self.runnable.ainvoke(dict(input), self._config(config, run_id))
            return jsonable(output)
        except Exception as exc:
            raise chain_error(exc, self.name) from exc

    async def batch(
        self, inputs: Sequence[Mapping[str, Any]], config: RunConfig, run_ids: list[str]
    ) -> list[Any]:
        """Every output in input order; any failure fails the whole batch (with its status)."""
        limit = asyncio.Semaphore(config.concurrency)

        async def one(item: Mapping[str, Any], run_id: str) -> Any:
            async with limit:
                return await self.invoke(item, config, run_id)

        return list(
            await asyncio.gather(*(one(i, r) for i, r in zip(inputs, run_ids, strict=True)))
        )

    async def stream(
        self, input: Mapping[str, Any], config: RunConfig, run_id: str
    ) -> AsyncIterator[dict[str, Any]]:
        """Events: each named step's end, each custom event (e.g. ``attempt``), then the
        ``output``; a failure is an ``error`` event with its status, and ends the stream.

        A stream is one run per request: the request's scope keeps its versions."""
        try:
            async for event in self.runnable.astream_events(
                dict(input), self._config(config, run_id), version="v2"
            ):
                kind, name = event["event"], event["name"]
                if kind == "on_custom_event":
                    yield {"event": name, "data": jsonable(event["data"])}
                elif kind == "on_chain_end" and event["run_id"] == run_id:
                    yield {"event": "output", "data": jsonable(event["data"]["output"])}
                elif kind == "on_chain_end" and name in self.steps:
                    output = event["data"].get("output")
                    yield {"event": "step", "name": name, "output": _step_output(output)}
        except Exception as exc:
            error = chain_error(exc, self.name)
            yield {"event": "error", "status": error.status, "message": error.message}


def answer_cache(settings: Settings, chain: str) -> BaseCache | None:
    """The profile's LLM answer cache for ``chain``, counted on ``/metrics``; None if off."""
    from bentochain.llms.cache import CountingCache, RedisLLMCache, SQLiteLLMCache
    from bentochain.observability.metrics import CacheMetrics
    from bentochain.sql.source import state_dir

    cache = settings.chains.cache
    inner: BaseCache
    if cache.backend == "none":
        return None
    if cache.backend == "redis":
        inner = RedisLLMCache(cache.url or "", ttl=cache.ttl)
    else:
        inner = SQLiteLLMCache(state_dir(settings.chains) / "llm_cache.sqlite")
    return CountingCache(inner, CacheMetrics(chain).lookup)


def chain_llm(
    settings: Settings, chain: str, llm: ChainLLM, llm_service: Upstream
) -> ResilientChatModel:
    """``chain``'s model: the profile's provider and fallbacks; ``self`` is ``llm_service``."""
    from bentochain.llms.providers import build_chain_llm

    def generate(request: GenerationRequest) -> AsyncIterator[str]:
        return llm_service.stream(
            "generate", idle_timeout=settings.llm.traffic.timeout, request=request
        )

    return build_chain_llm(
        llm,
        generate=generate,
        served_model=settings.llm.served_id,
        served_version=str(settings.llm.model),
        cache=answer_cache(settings, chain),
        where=f"chains.{chain}.llm",
    )


class ChainEndpoint(Protocol):
    """Where the gateway runs a chain: a ``ChainRunner`` in process, or a chain service."""

    async def invoke(self, input: Mapping[str, Any], config: RunConfig, run_id: str) -> Any: ...

    async def batch(
        self, inputs: Sequence[Mapping[str, Any]], config: RunConfig, run_ids: list[str]
    ) -> list[Any]: ...

    def stream(
        self, input: Mapping[str, Any], config: RunConfig, run_id: str
    ) -> AsyncIterator[dict[str, Any]]: ...


class RemoteChain:
    """A chain service's APIs (through its ``Upstream``) as a ``ChainEndpoint``; its refusals
    come back as ``ChainError`` with the service's status and message."""

    def __init__(self, service: Upstream, *, idle_timeout: float) -> None:
        self.service = service
        self.idle_timeout = idle_timeout

    @staticmethod
    def _refusal(exc: Exception) -> ChainError | None:
        if isinstance(exc, UpstreamError) and exc.code == "upstream_status":
            return ChainError(exc.status, exc.message)
        return None

    async def invoke(self, input: Mapping[str, Any], config: RunConfig, run_id: str) -> Any:
        try:
            return await self.service.call(
                "invoke", input=dict(input), config=config, run_id=run_id
            )
        except Exception as exc:
            raise (self._refusal(exc) or exc) from exc

    async def batch(
        self, inputs: Sequence[Mapping[str, Any]], config: RunConfig, run_ids: list[str]
    ) -> list[Any]:
        try:
            return list(
                await self.service.call(
                    "batch", inputs=[dict(i) for i in inputs], config=config, run_ids=run_ids
                )
            )
        except Exception as exc:
            raise (self._refusal(exc) or exc) from exc

    async def stream(
        self, input: Mapping[str, Any], config: RunConfig, run_id: str
    ) -> AsyncIterator[dict[str, Any]]:
        chunks = self.service.stream(
            "stream",
            idle_timeout=self.idle_timeout,
            input=dict(input),
            config=config,
            run_id=run_id,
        )
        buffer = ""
        try:
            async for chunk in chunks:
                buffer += chunk
                *lines, buffer = buffer.split("\n")
                for line in lines:
                    if line.strip():
                        yield json.loads(line)
        except Exception as exc:
            raise (self._refusal(exc) or exc) from exc
        finally:
            await chunks.aclose()


def service_error(exc: ChainError) -> bentoml.exceptions.BentoMLException:
    """A chain failure as BentoML answers it: the same status, the message as the body."""
    from http import HTTPStatus

    return bentoml.exceptions.BentoMLException(exc.message, error_code=HTTPStatus(exc.status))


class ChainService:
    """The APIs of every chain service; a subclass builds ``self.runner`` in ``__init__``."""

    runner: ChainRunner

    @bentoml.api
    async def invoke(self, input: dict[str, Any], config: RunConfig, run_id: str) -> Any:
        try:
            return await self.runner.invoke(input, config, run_id)
        except ChainError as exc:
            raise service_error(exc) from None

    @bentoml.api
    async def batch(
        self, inputs: list[dict[str, Any]], config: RunConfig, run_ids: list[str]
    ) -> list[Any]:
        try:
            return await self.runner.batch(inputs, config, run_ids)
        except ChainError as exc:
            raise service_error(exc) from None

    @bentoml.api
    async def stream(
        self, input: dict[str, Any], config: RunConfig, run_id: str
    ) -> AsyncIterator[str]:
        """The run's events as NDJSON lines."""
        async for event in self.runner.stream(input, config, run_id):
            yield json.dumps(event) + "\n"
