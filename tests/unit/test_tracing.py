"""Traces without a server: tracing settings, the spans of a chain run and of a generation, and
the ids every answer carries. Served traces across processes: tests/integration/test_tracing.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route

from bentochain.config.loader import DEFAULT_PROFILE, load_settings
from bentochain.config.schema import TracingSettings
from bentochain.engines.llm.types import (
    ChatMessage,
    Delta,
    Failed,
    Finished,
    GenerationRequest,
    SamplingParams,
    Started,
)
from bentochain.observability.chains import ChainTelemetry
from bentochain.observability.context import RequestContext
from bentochain.observability.genai import Event, traced_generation
from bentochain.observability.tracing import (
    Export,
    TracingConfigError,
    _WithoutMessageSpans,
    keep_service_names,
    resolve,
)
from bentochain.serving.options import service_options
from bentochain.sql.database import ReadOnlyDatabase
from chains.catalog import CHAINS
from chains.sql import build_sql_chain

OFF = TracingSettings()


@pytest.fixture
def spans() -> tuple[trace.Tracer, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("test"), exporter


# -- settings --------------------------------------------------------------------------------


def test_tracing_is_off_unless_an_endpoint_or_the_profile_turns_it_on() -> None:
    assert resolve(OFF, {}) is None
    on = resolve(OFF, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"})
    assert on == Export("http://collector:4318/v1/traces", 1.0)
    own = {
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/x",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "y",
    }
    assert resolve(OFF, own) == Export("http://c:4318/x", 1.0)
    profile = TracingSettings(endpoint="http://profile:4318", sample_rate=0.25)
    assert resolve(profile, {}) == Export("http://profile:4318/v1/traces", 0.25)
    assert resolve(TracingSettings(enabled=True), {}) == Export(
        "http://localhost:4318/v1/traces", 1.0
    )
    assert resolve(TracingSettings(enabled=False, endpoint="http://p:4318"), {}) is None
    # The standard switches win over the profile.
    assert resolve(profile, {"OTEL_SDK_DISABLED": "true"}) is None
    assert resolve(profile, {"OTEL_TRACES_EXPORTER": "none"}) is None


@pytest.mark.parametrize(
    ("sampler", "arg", "rate"),
    [
        ("always_on", None, 1.0),
        ("parentbased_always_off", None, 0.0),
        ("traceidratio", "0.1", 0.1),
        ("parentbased_traceidratio", "0.5", 0.5),
    ],
)
def test_standard_samplers_become_bentomls_ratio(
    sampler: str, arg: str | None, rate: float
) -> None:
    environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_SAMPLER": sampler}
    if arg is not None:
        environ["OTEL_TRACES_SAMPLER_ARG"] = arg
    found = resolve(TracingSettings(sample_rate=0.9), environ)
    assert found is not None and found.sample_rate == rate


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"OTEL_TRACES_SAMPLER": "xray"}, "OTEL_TRACES_SAMPLER='xray'"),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"}, "SAMPLER_ARG"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "OTEL_EXPORTER_OTLP_PROTOCOL='grpc'"),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER='zipkin'"),
    ],
)
def test_settings_bentochain_cannot_honour_are_refused_by_name(
    environ: dict[str, str], named: str
) -> None:
    with pytest.raises(TracingConfigError, match=named):
        resolve(TracingSettings(enabled=True), environ)


def test_service_options_give_bentoml_the_sampler_and_no_request_spans_when_off() -> None:
    settings = load_settings(DEFAULT_PROFILE, {})
    # Off: BentoML's ASGI layer opens no span (RequestContext gives the request its ids).
    assert service_options(settings, "LLM", environ={})["tracing"] == {"excluded_urls": [".*"]}
    environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_SAMPLER_ARG": "0.3"}
    environ["OTEL_TRACES_SAMPLER"] = "traceidratio"
    options = service_options(settings, "LLM", environ=environ)
    assert options["tracing"] == {"sample_rate": 0.3}  # no exporter of BentoML's own


def test_otel_service_name_names_the_deployment_and_each_service_keeps_its_own() -> None:
    environ = {"OTEL_SERVICE_NAME": "shop-assistant", "OTEL_RESOURCE_ATTRIBUTES": "team=ml"}
    keep_service_names(environ)
    assert "OTEL_SERVICE_NAME" not in environ
    assert environ["OTEL_RESOURCE_ATTRIBUTES"] == "team=ml,service.namespace=shop-assistant"


def test_the_asgi_layers_per_message_spans_are_not_exported(
    spans: tuple[trace.Tracer, InMemorySpanExporter],
) -> None:
    tracer, memory = spans
    with (
        tracer.start_as_current_span("POST /generate"),
        tracer.start_as_current_span("POST /generate http send") as send,
    ):
        send.set_attribute("asgi.event.type", "http.response.body")
    finished = list(memory.get_finished_spans())
    kept: list[ReadableSpan] = []

    class Keep(InMemorySpanExporter):
        def export(self, batch: Sequence[ReadableSpan]) -> Any:
            kept.extend(batch)
            return super().export(batch)

    _WithoutMessageSpans(Keep()).export(finished)
    assert [s.name for s in kept] == ["POST /generate"]


# -- a chain run -----------------------------------------------------------------------------


class RecordingChat(FakeListChatModel):
    """A scripted chat model that notes which span was current when it was called: what a
    call to another service would carry as its parent."""

    seen: ClassVar[list[trace.SpanContext]] = []

    async def _agenerate(self, *args: Any, **kwargs: Any) -> Any:
        self.seen.append(trace.get_current_span().get_span_context())
        return await super()._agenerate(*args, **kwargs)


def test_a_sql_run_is_one_tree_of_named_steps_with_the_model_calls_under_them(
    shop: tuple[Path, ReadOnlyDatabase], spans: tuple[trace.Tracer, InMemorySpanExporter]
) -> None:
    tracer, memory = spans
    _, db = shop
    llm = RecordingChat(responses=["SELECT * FROM invoices", "SELECT 7 AS n", "Seven."])
    llm.seen.clear()
    steps: list[tuple[str, bool]] = []

    class Metrics:
        def step(self, chain: str, step: str, seconds: float, failed: bool) -> None:
            assert chain == "sql" and seconds >= 0
            steps.append((step, failed))

    telemetry = ChainTelemetry("sql", CHAINS["sql"].steps, Metrics(), tracer)
    chain = build_sql_chain(llm, db, max_repairs=2)

    async def run() -> Any:
        with tracer.start_as_current_span("POST /invoke"):
            return await chain.ainvoke({"question": "seven?"}, {"callbacks": [telemetry]})

    answer = asyncio.run(run())
    assert answer.rows == [[7]]
    finished = {s.context.span_id: s for s in memory.get_finished_spans()}
    by_name: dict[str, list[ReadableSpan]] = {}
    for s in finished.values():
        by_name.setdefault(s.name, []).append(s)

    def parent(s: ReadableSpan) -> str:
        assert s.parent is not None
        return finished[s.parent.span_id].name

    (root,) = by_name["chain sql"]
    assert parent(root) == "POST /invoke"
    assert [parent(s) for s in by_name["schema"] + by_name["attempt"] + by_name["answer"]] == [
        "chain sql"
    ] * 4
    first, second = sorted(by_name["attempt"], key=lambda s: s.start_time or 0)
    assert (first.attributes or {})["bentochain.attempt"] == 1
    assert (second.attributes or {})["bentochain.repair"] is True
    for name in ("generate", "validate"):
        assert sorted(parent(s) for s in by_name[name]) == ["attempt", "attempt"]
    refused, accepted = sorted(by_name["validate"], key=lambda s: s.start_time or 0)
    assert refused.status.status_code == trace.StatusCode.ERROR
    assert "invoices" in (refused.status.description or "")
    assert accepted.status.status_code != trace.StatusCode.ERROR
    (execute,) = by_name["execute"]
    assert execute.attributes == {
        "bentochain.chain": "sql",
        "bentochain.step": "execute",
        "db.system": "sqlite",
        "db.statement": "SELECT 7 AS n",
        "db.response.returned_rows": 1,
    }
    chats = [s for s in finished.values() if s.name.startswith("chat ")]
    assert sorted(parent(s) for s in chats) == ["answer", "generate", "generate"]
    assert all(s.kind == trace.SpanKind.CLIENT for s in chats)
    # Each model call ran with its own span current: a call to a service would carry it.
    assert {c.span_id for c in llm.seen} == {s.context.span_id for s in chats}
    assert ("validate", True) in steps and ("validate", False) in steps
    assert ("execute", False) in steps and ("answer", False) in steps
    assert len(steps) == len(finished) - 1 - 1 - len(chats)  # neither root nor request span


# -- a generation ----------------------------------------------------------------------------


def chat_request(max_tokens: int = 3) -> GenerationRequest:
    return GenerationRequest(
        messages=(ChatMessage(role="user", content="hi"),),
        params=SamplingParams(max_tokens=max_tokens, temperature=0.0),
    )


async def scripted(
    events: list[list[Event]], closed: list[bool]
) -> AsyncGenerator[Sequence[Event], None]:
    try:
        for batch in events:
            yield batch
    finally:
        closed.append(True)


def test_a_generation_span_carries_genai_attributes_with_the_real_counts(
    spans: tuple[trace.Tracer, InMemorySpanExporter],
) -> None:
    tracer, memory = spans
    events: list[list[Event]] = [
        [Started(prompt_tokens=12)],
        [Delta(text="a", completion_tokens=1)],
        [
            Delta(text="b", completion_tokens=2),
            Finished(finish_reason="length", prompt_tokens=12, completion_tokens=2),
        ],
    ]
    closed: list[bool] = []

    async def run() -> list[Sequence[Event]]:
        stream = traced_generation(chat_request(), "llama-tiny", scripted(events, closed), tracer)
        return [batch async for batch in stream]

    assert asyncio.run(run()) == events  # passed through unchanged
    (span,) = memory.get_finished_spans()
    assert span.name == "chat llama-tiny"
    attributes = dict(span.attributes or {})
    ttft = attributes.pop("gen_ai.server.time_to_first_token")
    assert isinstance(ttft, float) and ttft >= 0
    assert attributes == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "bentochain",
        "gen_ai.request.model": "llama-tiny",
        "gen_ai.request.temperature": 0.0,
        "gen_ai.request.top_p": 1.0,
        "gen_ai.request.max_tokens": 3,
        "gen_ai.response.model": "llama-tiny",
        "gen_ai.usage.input_tokens": 12,
        "gen_ai.usage.output_tokens": 2,
        "gen_ai.response.finish_reasons": ("length",),
    }
    assert [e.name for e in span.events] == ["gen_ai.first_token"]
    assert closed == [True]


def test_a_refused_or_abandoned_generation_says_so_and_lets_the_engine_go(
    spans: tuple[trace.Tracer, InMemorySpanExporter],
) -> None:
    tracer, memory = spans
    refused: list[list[Event]] = [[Failed(status=429, code="queue_full", message="busy")]]
    long: list[list[Event]] = [[Started(prompt_tokens=3)]]
    long += [[Delta(text="x", completion_tokens=i)] for i in range(1, 50)]
    closed: list[bool] = []

    async def run() -> None:
        async for _ in traced_generation(chat_request(), "m", scripted(refused, closed), tracer):
            pass
        stream = traced_generation(chat_request(), "m", scripted(long, closed), tracer)
        await anext(stream)
        await anext(stream)
        await stream.aclose()  # the client left

    asyncio.run(run())
    failed, left = memory.get_finished_spans()
    assert failed.status.status_code == trace.StatusCode.ERROR
    assert (failed.attributes or {})["error.type"] == "queue_full"
    assert (left.attributes or {})["error.type"] == "cancelled"
    assert closed == [True, True]  # the engine's stream was closed both times


# -- ids on every answer -----------------------------------------------------------------------


def test_every_answer_carries_its_request_id_and_trace(
    spans: tuple[trace.Tracer, InMemorySpanExporter],
) -> None:
    tracer, _ = spans
    seen: list[str | None] = []

    async def plain(request: Request) -> PlainTextResponse:
        from bentochain.observability.context import request_id

        seen.append(request_id())
        return PlainTextResponse("ok")

    async def streamed(request: Request) -> StreamingResponse:
        async def body() -> AsyncGenerator[str, None]:
            yield "a"
            yield "b"

        return StreamingResponse(body())

    inner = RequestContext(Starlette(routes=[Route("/plain", plain), Route("/stream", streamed)]))

    async def app(scope: Any, receive: Any, send: Any) -> None:  # as BentoML's tracing layer
        with tracer.start_as_current_span("request"):
            await inner(scope, receive, send)

    async def calls() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return [
                await client.get("/plain", headers={"x-request-id": "client-id-1"}),
                await client.get("/plain", headers={"x-request-id": "bad id\twith spaces"}),
                await client.get("/stream"),
            ]

    given, replaced, stream = asyncio.run(calls())
    assert given.headers["x-request-id"] == "client-id-1" == seen[0]
    assert replaced.headers["x-request-id"] != "bad id\twith spaces"
    assert len(replaced.headers["x-request-id"]) == 32 == len(seen[1] or "")
    assert stream.text == "ab" and len(stream.headers["x-request-id"]) == 32
    traces = set()
    for response in (given, replaced, stream):
        version, trace_id, span_id, flags = response.headers["traceresponse"].split("-")
        assert (version, len(trace_id), len(span_id)) == ("00", 32, 16)
        assert int(flags, 16) & 1  # sampled
        traces.add(trace_id)
    assert len(traces) == 3  # one trace per request


def test_with_tracing_off_bentomls_spans_are_dropped_but_keep_their_ids() -> None:
    from bentochain.observability.tracing import tracer as bentoml_tracer

    before = bentoml_tracer()  # taken before the worker's app is built, as BentoML's may be
    RequestContext(Starlette())  # no export: tracing is off
    for tracer in (before, bentoml_tracer()):
        with tracer.start_as_current_span("POST /v1/completions") as span:
            assert not span.is_recording()  # nothing built or filled for nobody to read
            context = span.get_span_context()
            assert context.is_valid and context.trace_id and context.span_id


def test_with_tracing_off_a_request_still_has_its_trace_and_passes_it_on() -> None:
    from opentelemetry.propagate import inject

    passed_on: list[dict[str, str]] = []

    async def call_on(request: Request) -> PlainTextResponse:
        headers: dict[str, str] = {}
        inject(headers)  # what BentoML's client does for a call to another service
        passed_on.append(headers)
        return PlainTextResponse("ok")

    app = RequestContext(Starlette(routes=[Route("/", call_on)]))  # no BentoML span around
    caller_trace, caller_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"

    async def calls() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return [
                await client.get(
                    "/", headers={"traceparent": f"00-{caller_trace}-{caller_span}-01"}
                ),
                await client.get("/"),
                await client.get("/", headers={"traceparent": "00-not-a-valid-header-01"}),
            ]

    continued, new, bad = asyncio.run(calls())
    answered = [r.headers["traceresponse"].split("-") for r in (continued, new, bad)]
    sent = [h["traceparent"].split("-") for h in passed_on]
    assert [a[1:3] for a in answered] == [s[1:3] for s in sent]  # the callee joins that span
    assert answered[0][1] == caller_trace and answered[0][2] != caller_span
    assert len({a[1] for a in answered}) == 3  # a new trace for each request without a valid one
    for version, trace_id, span_id, flags in answered:
        assert (version, len(trace_id), len(span_id), flags) == ("00", 32, 16, "00")
        assert int(trace_id, 16) and int(span_id, 16)
