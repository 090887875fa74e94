"""Traces of served requests, as an OTLP collector receives them from every service, in both
topologies: one trace per request, the right parent across processes, GenAI attributes that
match what the client was told."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable

import httpx
import pytest

from tests.integration.conftest import Server
from tests.support.otlp import Collector, Span, closed
from tests.support.serving import until

pytestmark = pytest.mark.integration


def trace_of(response: httpx.Response) -> tuple[str, str]:
    """The (trace id, server span id) a response names in its ``traceresponse``."""
    version, trace_id, span_id, _ = response.headers["traceresponse"].split("-")
    assert version == "00"
    return trace_id, span_id


def one(spans: list[Span], match: Callable[[Span], bool], what: str) -> Span:
    found = [s for s in spans if match(s)]
    assert len(found) == 1, f"{what}: {len(found)} spans in {[(s.service, s.name) for s in spans]}"
    return found[0]


def test_a_streamed_chat_is_one_trace_from_the_gateway_to_the_model(
    gateway: Server, collector: Collector
) -> None:
    body = {
        "model": "llama-tiny",
        "messages": [{"role": "user", "content": "Tell me a story."}],
        "max_tokens": 12,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream("POST", f"{gateway.v1}/chat/completions", json=body, timeout=120) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line.startswith("data: {")]
        response = r
    usage = json.loads(lines[-1].removeprefix("data: "))["usage"]
    trace_id, gateway_span = trace_of(response)
    request_id = response.headers["x-request-id"]

    def complete(spans: list[Span]) -> bool:
        return (
            closed(spans)
            and any(s.name == "chat llama-tiny" for s in spans)
            and any(s.service == "Gateway" and s.span_id == gateway_span for s in spans)
            and any(s.service == "LLM" and s.kind == 2 for s in spans)
        )

    spans = collector.wait_for(trace_id, complete, "the chat's trace")
    root = one(spans, lambda s: s.span_id == gateway_span, "the gateway's request span")
    assert root.service == "Gateway" and root.parent_id is None
    served = one(spans, lambda s: s.service == "LLM" and s.kind == 2, "the LLM's request span")
    assert served.parent_id == root.span_id  # across processes
    assert served.attributes["bentochain.request_id"] == request_id  # carried on
    chat = one(spans, lambda s: s.name == "chat llama-tiny", "the generation span")
    assert chat.service == "LLM" and chat.parent_id == served.span_id
    assert chat.attributes["gen_ai.operation.name"] == "chat"
    assert chat.attributes["gen_ai.request.model"] == "llama-tiny"
    assert chat.attributes["gen_ai.request.max_tokens"] == 12
    assert chat.attributes["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert chat.attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"] == 12
    assert chat.attributes["gen_ai.response.finish_reasons"] == ["length"]
    assert chat.attributes["gen_ai.server.time_to_first_token"] > 0
    # The ASGI layer's span per streamed chunk is not exported.
    assert not [s for s in spans if "asgi.event.type" in s.attributes]


def test_a_sql_run_is_one_trace_through_its_steps_and_every_service(
    gateway: Server, collector: Collector
) -> None:
    question = f"How many orders were placed? ({uuid.uuid4().hex})"  # past the answer cache
    response = httpx.post(
        f"{gateway.url}/chains/sql/invoke", json={"input": {"question": question}}, timeout=180
    )
    assert response.status_code == 200, response.text
    output = response.json()["output"]
    calls = len(output["attempts"]) + (output["sql"] is not None)  # each attempt, the answer
    trace_id, gateway_span = trace_of(response)

    def complete(spans: list[Span]) -> bool:
        generations = [s for s in spans if s.service == "LLM" and s.name.startswith("chat ")]
        chain = [s for s in spans if s.name == "chain sql"]
        return closed(spans) and len(generations) == calls and bool(chain)

    spans = collector.wait_for(trace_id, complete, "the SQL run's trace")
    assert {s.service for s in spans} == {"Gateway", "SQLChain", "LLM"}
    by_id = {s.span_id: s for s in spans}

    def parent(s: Span) -> Span:
        assert s.parent_id in by_id, f"{s.name} has no parent in the trace"
        return by_id[s.parent_id]

    chain = one(spans, lambda s: s.name == "chain sql", "the chain's run")
    assert parent(chain).service == "SQLChain"
    assert parent(parent(chain)).span_id == gateway_span  # SQLChain's request, from the Gateway
    steps = [s for s in spans if s.service == "SQLChain" and "bentochain.step" in s.attributes]
    assert {parent(s).name for s in steps if s.name in ("schema", "attempt")} == {"chain sql"}
    attempts = [s for s in steps if s.name == "attempt"]
    assert len(attempts) == len(output["attempts"])
    for name in ("generate", "validate"):
        assert [parent(s).name for s in steps if s.name == name] == ["attempt"] * len(attempts)
    for attempt, made in zip(
        sorted(attempts, key=lambda s: s.start_ns), output["attempts"], strict=True
    ):
        (check,) = [s for s in steps if s.name == "validate" and s.parent_id == attempt.span_id]
        assert (check.status == 2) == (made["error"] is not None)  # a refused query: an error
    # Every model call: the chain's client span, then the LLM's request span under it (the
    # call crossed processes), then the LLM's generation span.
    for generation in [s for s in spans if s.service == "LLM" and s.name.startswith("chat ")]:
        served = parent(generation)
        assert served.service == "LLM" and served.kind == 2
        caller = parent(served)
        assert caller.service == "SQLChain" and caller.name.startswith("chat ")
        assert parent(caller).name in ("generate", "answer")
        assert generation.attributes["gen_ai.usage.output_tokens"] > 0


def test_an_incoming_traceparent_is_continued(gateway: Server, collector: Collector) -> None:
    trace_id, caller_span = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    response = httpx.post(
        f"{gateway.url}/translate",
        json={"texts": ["Hello"], "target_lang": "es"},
        headers={"traceparent": f"00-{trace_id}-{caller_span}-01"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    assert trace_of(response)[0] == trace_id

    def complete(spans: list[Span]) -> bool:
        services = {s.service for s in spans}
        return closed(spans, outside=caller_span) and services >= {"Gateway", "TranslatorES"}

    spans = collector.wait_for(trace_id, complete, "the translation's trace")
    root = one(spans, lambda s: s.service == "Gateway" and s.kind == 2, "the gateway's span")
    assert root.parent_id == caller_span
    served = one(spans, lambda s: s.service == "TranslatorES" and s.kind == 2, "the callee's")
    assert served.parent_id == root.span_id


def test_json_log_lines_carry_the_request_id_and_trace_on_every_service(split: Server) -> None:
    body = {"model": "llama-tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    response = httpx.post(f"{split.v1}/chat/completions", json=body, timeout=120)
    assert response.status_code == 200
    request_id = response.headers["x-request-id"]
    trace_id, _ = trace_of(response)

    def lines_of(service: str) -> list[dict[str, object]]:
        found = []
        for log in split.log.parent.glob(f"{service}-*.log"):
            for line in log.read_text().splitlines():
                if line.startswith("{") and request_id in line:
                    found.append(json.loads(line))
        return found

    # Each server logs the request's access line as it ends: both are there once both ended.
    until(lambda: bool(lines_of("Gateway")) and bool(lines_of("LLM")), "both access lines", 300)
    for service in ("Gateway", "LLM"):
        (line, *_) = lines_of(service)
        assert line["service"] == service and line["request_id"] == request_id
        assert line["trace_id"] == trace_id and line["level"] == "INFO"
        assert "/chat/completions" in str(line["message"]) or "/generate" in str(line["message"])
