"""A chain run seen through LangChain's callbacks: a span per named step, step metrics, and
GenAI attributes on every chat model call.

LangChain reports every run (the chain, each step, each model call) to its callbacks with the
run's id and its parent's, so one handler sees the whole tree without a wrapper around each
step. ``ChainTelemetry`` opens a span for the chain's run, for each run named in its steps and
for each chat model call, as a child of the nearest traced ancestor (the request's span for the
chain itself), and makes it current for the run's code: the calls a step makes to other
services carry it, and the step's own code can add attributes to it (``db.statement``...).
Each named step's duration and failures also go to ``StepMetrics``, traced or not.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGeneration, LLMResult
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from bentochain.observability.tracing import tracer as bentoml_tracer

_MODEL_KEYS = ("model_name", "model", "model_id")


class StepMetrics(Protocol):
    def step(self, chain: str, step: str, seconds: float, failed: bool) -> None: ...


class NullStepMetrics:
    def step(self, chain: str, step: str, seconds: float, failed: bool) -> None:
        pass


@dataclass
class _Run:
    span: Span | None  # None: a run that is not traced (its children attach to its parent)
    parent: Span | None
    step: str | None  # a named step: its duration goes to the metrics
    started: float


class ChainTelemetry(BaseCallbackHandler):
    """Callbacks for one chain: pass in the run's ``callbacks``.

    Inline: LangChain calls it in the run's own task, so the span it makes current is the one
    the step's code and its calls to other services see.
    """

    run_inline = True

    def __init__(
        self,
        chain: str,
        steps: frozenset[str],
        metrics: StepMetrics | None = None,
        tracer: trace.Tracer | None = None,
    ) -> None:
        self.chain = chain
        self.steps = steps
        self.metrics = metrics or NullStepMetrics()
        self.tracer = tracer or bentoml_tracer()
        self._runs: dict[UUID, _Run] = {}

    # -- runs -------------------------------------------------------------------------------

    def _parent(self, parent_run_id: UUID | None) -> Span | None:
        parent = self._runs.get(parent_run_id) if parent_run_id else None
        if parent is None:
            return None
        return parent.span or parent.parent

    def _open(
        self,
        run_id: UUID,
        parent_run_id: UUID | None,
        name: str | None,
        kind: SpanKind,
        attributes: Mapping[str, Any],
        step: str | None,
    ) -> None:
        parent = self._parent(parent_run_id)
        if name is None:
            self._runs[run_id] = _Run(None, parent, step, time.monotonic())
            return
        where = trace.set_span_in_context(parent) if parent is not None else None
        span = self.tracer.start_span(name, context=where, kind=kind, attributes=dict(attributes))
        self._runs[run_id] = _Run(span, parent, step, time.monotonic())
        # Current from here on in the task that starts the run. LangChain then runs the step in
        # a copy of that context, so its code and the calls it makes see this span. The start
        # and end callbacks of a run come from different tasks, so the span cannot be detached
        # at the end: the next run started in the same task replaces it.
        otel_context.attach(trace.set_span_in_context(span))

    def _close(self, run_id: UUID, error: BaseException | None) -> _Run | None:
        run = self._runs.pop(run_id, None)
        if run is None:
            return None
        if run.step is not None:
            elapsed = time.monotonic() - run.started
            self.metrics.step(self.chain, run.step, elapsed, error is not None)
        if run.span is not None:
            if error is not None:
                run.span.record_exception(error)
                run.span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
            run.span.end()
        return run

    def on_chain_start(
        self,
        serialized: dict[str, Any] | None,
        inputs: Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        name = kwargs.get("name")
        attributes = {"bentochain.chain": self.chain}
        if parent_run_id is None:  # the chain's own run
            attributes["bentochain.run_id"] = str(run_id)
            self._open(run_id, None, f"chain {self.chain}", SpanKind.INTERNAL, attributes, None)
        elif name in self.steps:
            attributes["bentochain.step"] = name
            self._open(run_id, parent_run_id, name, SpanKind.INTERNAL, attributes, name)
        else:
            self._open(run_id, parent_run_id, None, SpanKind.INTERNAL, {}, None)

    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._close(run_id, None)

    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._close(run_id, error)

    # -- chat model calls -------------------------------------------------------------------

    def on_chat_model_start(
        self,
        serialized: dict[str, Any] | None,
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        params: Mapping[str, Any] = kwargs.get("invocation_params") or {}
        model = next((str(params[k]) for k in _MODEL_KEYS if params.get(k)), "unknown")
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": str(params.get("_type", "langchain")),
            "gen_ai.request.model": model,
            "bentochain.chain": self.chain,
        }
        for key in ("max_tokens", "temperature", "top_p", "seed"):
            if params.get(key) is not None:
                attributes[f"gen_ai.request.{key}"] = params[key]
        self._open(run_id, parent_run_id, f"chat {model}", SpanKind.CLIENT, attributes, None)

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        run = self._runs.get(run_id)
        if run is not None and run.span is not None:
            _usage(run.span, response.generations)
        self._close(run_id, None)

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._close(run_id, error)


def _usage(span: Span, generations: Sequence[Sequence[Any]]) -> None:
    """Token counts and finish reasons of a chat model's answer, as GenAI attributes."""
    reasons: list[str] = []
    input_tokens = output_tokens = 0
    counted = False
    for generation in (g for batch in generations for g in batch):
        if not isinstance(generation, ChatGeneration):
            continue
        message = generation.message
        usage = getattr(message, "usage_metadata", None)
        if usage:
            counted = True
            input_tokens += int(usage.get("input_tokens", 0))
            output_tokens += int(usage.get("output_tokens", 0))
        meta = message.response_metadata or {}
        reason = meta.get("finish_reason") or meta.get("stop_reason")
        if reason:
            reasons.append(str(reason))
    if counted:
        span.set_attribute("gen_ai.usage.input_tokens", input_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", output_tokens)
    if reasons:
        span.set_attribute("gen_ai.response.finish_reasons", reasons)
