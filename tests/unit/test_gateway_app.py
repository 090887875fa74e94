"""The gateway app, in process, over the real engines: OpenAI clients work, bad input gets 4xx.

The served Bento is tested the same way in ``tests/integration``; here the app runs without
BentoML so that every error path is cheap to drive.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from fastapi import FastAPI
from openai.types.chat import ChatCompletionMessageParam

from bentochain.api.app import create_app
from bentochain.api.backends import Backends, TargetLang
from bentochain.config.loader import DEFAULT_PROFILE, load_settings
from bentochain.config.schema import Settings
from bentochain.engines.encoder import EncodedText, SentenceEncoder
from bentochain.engines.llm.engine import EngineConfig, LLMEngine
from bentochain.engines.llm.metrics import NullMetrics
from bentochain.engines.llm.types import GenerationRequest, encode_event
from bentochain.engines.translator import Translator
from bentochain.llms.bento import BentoChatModel
from bentochain.observability.context import RequestContext
from bentochain.observability.records import AnyRecord, FeedbackRecord, RequestRecord
from bentochain.quality.replay import vector_of
from bentochain.serving.chains import ChainEndpoint, ChainRunner
from chains.catalog import CHAINS
from chains.translate import build_translate_chain

CHAT = "llama-tiny"
EMBED = "all-MiniLM-L6-v2"


class LocalBackends:
    """The engines called directly, as the Gateway calls them through BentoML."""

    def __init__(
        self, llm: LLMEngine, encoder: SentenceEncoder, translators: dict[str, Translator]
    ):
        self.llm, self.encoder, self.translators = llm, encoder, translators

    async def generate(self, request: GenerationRequest) -> AsyncIterator[str]:
        async for event in self.llm.stream(request):
            yield encode_event(event)

    async def embed(self, texts: list[str]) -> list[EncodedText]:
        result = await asyncio.to_thread(self.encoder.encode, texts)
        return EncodedText.batch(result)

    async def translate(self, target_lang: TargetLang, texts: list[str]) -> list[str]:
        return await asyncio.to_thread(self.translators[target_lang].translate, texts)

    def chain(self, name: str) -> ChainEndpoint:
        """The translate chain over these engines, as the Gateway runs it."""
        assert name == "translate", name
        return translate_runner(self)


def profile(**overrides: str) -> Settings:
    environ = {"BENTOCHAIN_LLM__MODEL": "demo:llama-tiny"}
    environ.update({f"BENTOCHAIN_{k.upper()}": v for k, v in overrides.items()})
    return load_settings(DEFAULT_PROFILE, environ)


@pytest.fixture(scope="module")
def app(engines: LocalBackends) -> FastAPI:
    settings = profile(
        gateway__limits__max_inputs="8",
        gateway__limits__max_input_chars="2000",
        gateway__limits__max_body_bytes="20000",
    )
    return create_app(settings, lambda: engines)


def client_for(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway")


def call(app: Any, method: str, path: str, **kwargs: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        async with client_for(app) as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(go())


def with_openai(app: FastAPI, work: Callable[[openai.AsyncOpenAI], Any]) -> Any:
    """Run ``work`` with the official client, its HTTP going straight into the app."""
    import httpx2  # the HTTP library of openai 3

    async def go() -> Any:
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://gateway") as http:
            client = openai.AsyncOpenAI(
                base_url="http://gateway/v1", api_key="unused", http_client=http, max_retries=0
            )
            return await work(client)

    return asyncio.run(go())


def test_top_p_zero_keeps_only_the_most_likely_token(app: FastAPI) -> None:
    """OpenAI accepts top_p 0: nucleus sampling with the smallest nucleus, greedy decoding."""
    body = {**GOOD_CHAT, "max_tokens": 12, "ignore_eos": True}
    greedy = call(app, "POST", "/v1/chat/completions", json={**body, "temperature": 0})
    nucleus = call(app, "POST", "/v1/chat/completions", json={**body, "top_p": 0, "seed": 7})
    assert greedy.status_code == nucleus.status_code == 200, nucleus.text
    text = [r.json()["choices"][0]["message"]["content"] for r in (greedy, nucleus)]
    assert text[0] == text[1] and text[0]


def test_any_integer_seeds_a_repeatable_sample(app: FastAPI) -> None:
    """OpenAI takes any integer as a seed; torch only [-2**63, 2**64): it is reduced, not a 500."""
    body = {**GOOD_CHAT, "max_tokens": 8, "ignore_eos": True, "temperature": 1.0}
    texts = [
        call(app, "POST", "/v1/chat/completions", json={**body, "seed": seed}).json()
        for seed in (2**70 + 5, 2**70 + 5, -(2**80))
    ]
    contents = [t["choices"][0]["message"]["content"] for t in texts]
    assert contents[0] == contents[1] and all(contents)


def assert_openai_error(
    response: httpx.Response, status: int, code: str | None = None
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if code is not None:
        assert error["code"] == code
    return dict(error)


# -- the happy paths, through the official client ------------------------------------------


def test_models_list_says_which_weights_are_demo(app: FastAPI) -> None:
    async def work(client: openai.AsyncOpenAI) -> Any:
        return [m.model_dump() async for m in client.models.list()]

    models = {m["id"]: m for m in with_openai(app, work)}
    assert set(models) == {CHAT, EMBED, "marian-en-fr", "marian-en-es"}
    assert models[CHAT]["task"] == "chat" and models[CHAT]["demo"] is True
    assert "random weights" in models[CHAT]["description"]
    assert models[EMBED]["task"] == "embedding" and models[EMBED]["demo"] is False
    assert models["marian-en-es"]["task"] == "translation"
    assert all(m["object"] == "model" and m["owned_by"] for m in models.values())


def test_chat_completion_with_usage(app: FastAPI, engines: LocalBackends) -> None:
    messages: list[ChatCompletionMessageParam] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi!"},
    ]

    async def work(client: openai.AsyncOpenAI) -> Any:
        return await client.chat.completions.create(
            model=CHAT,
            messages=messages,
            max_tokens=7,
            temperature=0,
            extra_body={"ignore_eos": True},
        )

    completion = with_openai(app, work)
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason == "length"
    prompt_tokens = len(
        engines.llm.encode(GenerationRequest.model_validate({"messages": messages, "params": {}}))
    )
    assert completion.usage.prompt_tokens == prompt_tokens
    assert completion.usage.completion_tokens == 7
    assert completion.usage.total_tokens == prompt_tokens + 7


def test_chat_stream_ends_with_finish_reason_and_usage(app: FastAPI) -> None:
    async def work(client: openai.AsyncOpenAI) -> Any:
        stream = await client.chat.completions.create(
            model=CHAT,
            messages=[{"role": "user", "content": "Stream please"}],
            max_tokens=9,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
        return [chunk async for chunk in stream]

    chunks = with_openai(app, work)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length" and all(f is None for f in finishes[:-1])
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 9


def test_raw_stream_is_sse_ending_with_done(app: FastAPI) -> None:
    response = call(
        app,
        "POST",
        "/v1/chat/completions",
        json={
            "model": CHAT,
            "messages": [{"role": "user", "content": "x"}],
            "max_tokens": 3,
            "stream": True,
        },
    )
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [line for line in response.text.split("\n\n") if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"


def test_completions_single_and_batched(app: FastAPI) -> None:
    async def work(client: openai.AsyncOpenAI) -> Any:
        one = await client.completions.create(model=CHAT, prompt="Once upon", max_tokens=4, seed=1)
        many = await client.completions.create(model=CHAT, prompt=["a", "b", "c"], max_tokens=2)
        return one, many

    one, many = with_openai(app, work)
    assert one.object == "text_completion" and one.choices[0].finish_reason in {"stop", "length"}
    assert [c.index for c in many.choices] == [0, 1, 2]
    assert many.usage.prompt_tokens >= 3


def test_completion_stop_sequence(app: FastAPI) -> None:
    async def work(client: openai.AsyncOpenAI) -> Any:
        base = await client.completions.create(
            model=CHAT, prompt="Tell", max_tokens=30, temperature=0, extra_body={"ignore_eos": True}
        )
        text = base.choices[0].text
        stop = text[10:13]
        cut = await client.completions.create(
            model=CHAT,
            prompt="Tell",
            max_tokens=30,
            temperature=0,
            stop=[stop],
            extra_body={"ignore_eos": True},
        )
        return text, stop, cut

    text, stop, cut = with_openai(app, work)
    assert cut.choices[0].text == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_embeddings_float_and_base64_agree(app: FastAPI) -> None:
    texts = ["The cat sleeps.", "A kitten is napping.", "Stock markets fell."]

    async def work(client: openai.AsyncOpenAI) -> Any:
        packed = await client.embeddings.create(model=EMBED, input=texts)  # base64 on the wire
        plain = await client.embeddings.create(model=EMBED, input=texts, encoding_format="float")
        single = await client.embeddings.create(model=EMBED, input=texts[0])
        return packed, plain, single

    packed, plain, single = with_openai(app, work)
    a = np.asarray([d.embedding for d in packed.data])
    b = np.asarray([d.embedding for d in plain.data])
    assert a.shape == (3, 384) and np.abs(a - b).max() < 1e-6
    assert [d.index for d in plain.data] == [0, 1, 2]
    assert plain.usage.prompt_tokens == plain.usage.total_tokens > 3
    assert np.abs(np.asarray(single.data[0].embedding) - a[0]).max() < 1e-5
    assert a[0] @ a[1] > a[0] @ a[2]


def test_embeddings_base64_wire_format(app: FastAPI) -> None:
    body = {"model": EMBED, "input": "hello", "encoding_format": "base64"}
    data = call(app, "POST", "/v1/embeddings", json=body).json()["data"][0]["embedding"]
    vector = np.frombuffer(base64.b64decode(data), dtype="<f4")
    assert vector.shape == (384,) and abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5


def test_translate(app: FastAPI) -> None:
    for lang in ("fr", "es"):
        response = call(
            app, "POST", "/translate", json={"texts": ["Hello", "Good night"], "target_lang": lang}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model"] == f"marian-en-{lang}"
        assert len(body["translations"]) == 2


def test_translate_chain_composes_the_llm_and_a_translator(app: FastAPI) -> None:
    question = {"question": "Where is Lyon?", "target_lang": "es"}
    response = call(app, "POST", "/chains/translate/invoke", json={"input": question})
    assert response.status_code == 200, response.text
    output = response.json()["output"]
    assert output["question"] == "Where is Lyon?" and output["target_lang"] == "es"
    assert output["english"] and output["answer"]
    # The translator's output is the Spanish model's, which never equals the LLM's text.
    assert output["answer"] != output["english"]


# -- bad input: a clear 4xx, and the server keeps serving -------------------------------------

GOOD_CHAT = {"model": CHAT, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/v1/chat/completions", {**GOOD_CHAT, "model": "gpt-4"}, 404, "model"),
        ("/v1/chat/completions", {**GOOD_CHAT, "model": EMBED}, 404, "model"),
        ("/v1/embeddings", {"model": CHAT, "input": "x"}, 404, "model"),
        ("/v1/chat/completions", {**GOOD_CHAT, "messages": []}, 400, "messages"),
        ("/v1/chat/completions", {**GOOD_CHAT, "max_tokens": 0}, 400, "max_tokens"),
        ("/v1/chat/completions", {**GOOD_CHAT, "max_tokens": -5}, 400, "max_tokens"),
        ("/v1/chat/completions", {**GOOD_CHAT, "max_tokens": 10**6}, 400, "max_tokens"),
        ("/v1/chat/completions", {**GOOD_CHAT, "max_completion_tokens": 10**6}, 400, "max_tokens"),
        ("/v1/chat/completions", {**GOOD_CHAT, "max_tokens": "many"}, 400, "max_tokens"),
        ("/v1/chat/completions", {**GOOD_CHAT, "temperature": 3}, 400, "temperature"),
        ("/v1/chat/completions", {**GOOD_CHAT, "top_p": 1.5}, 400, "top_p"),
        ("/v1/chat/completions", {**GOOD_CHAT, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
        ("/v1/chat/completions", {**GOOD_CHAT, "messages": "hello"}, 400, "messages"),
        (
            "/v1/chat/completions",
            {**GOOD_CHAT, "messages": [{"role": "wizard", "content": "x"}]},
            400,
            None,
        ),
        ("/v1/chat/completions", {**GOOD_CHAT, "n": 2}, 400, None),
        ("/v1/chat/completions", {**GOOD_CHAT, "presence_penalty": 1}, 400, None),
        ("/v1/chat/completions", {"messages": GOOD_CHAT["messages"]}, 400, "model"),
        ("/v1/completions", {"model": CHAT, "prompt": [1, 2, 3]}, 400, "prompt"),
        ("/v1/completions", {"model": CHAT, "prompt": ["a", "b"], "stream": True}, 400, None),
        ("/v1/embeddings", {"model": EMBED, "input": ""}, 400, "input"),
        ("/v1/embeddings", {"model": EMBED, "input": []}, 400, "input"),
        ("/v1/embeddings", {"model": EMBED, "input": [[1, 2, 3]]}, 400, "input"),
        ("/v1/embeddings", {"model": EMBED, "input": "x", "dimensions": 8}, 400, "dimensions"),
        ("/translate", {"texts": ["x"], "target_lang": "de"}, 400, "target_lang"),
        ("/translate", {"texts": [], "target_lang": "fr"}, 400, "texts"),
        ("/translate", {"texts": "not a list", "target_lang": "fr"}, 400, "texts"),
    ],
)
def test_bad_requests_get_openai_errors(
    app: FastAPI, path: str, body: dict[str, Any], status: int, param: str | None
) -> None:
    error = assert_openai_error(call(app, "POST", path, json=body), status)
    if param is not None:
        assert error["param"] == param
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/v1/chat/completions",
            {**GOOD_CHAT, "messages": [{"role": "user", "content": "x" * 2001}]},
        ),
        ("/v1/completions", {"model": CHAT, "prompt": "y" * 2001}),
        ("/v1/embeddings", {"model": EMBED, "input": ["z"] * 9}),
        ("/v1/embeddings", {"model": EMBED, "input": "w" * 2001}),
        ("/translate", {"texts": ["v"] * 9, "target_lang": "fr"}),
    ],
)
def test_inputs_over_the_configured_size_get_400(
    app: FastAPI, path: str, body: dict[str, Any]
) -> None:
    assert_openai_error(call(app, "POST", path, json=body), 400, "input_too_large")


def test_body_over_the_limit_gets_413_declared_or_streamed(app: FastAPI) -> None:
    big = json.dumps({"model": EMBED, "input": "a" * 30_000}).encode()
    assert_openai_error(
        call(
            app, "POST", "/v1/embeddings", content=big, headers={"content-type": "application/json"}
        ),
        413,
        "request_too_large",
    )

    async def chunked() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 4096):
            yield big[start : start + 4096]

    response = call(
        app,
        "POST",
        "/v1/embeddings",
        content=chunked(),
        headers={"content-type": "application/json"},
    )
    assert "content-length" not in response.request.headers
    assert_openai_error(response, 413, "request_too_large")


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"", b"null"])
def test_malformed_json_gets_400(app: FastAPI, raw: bytes) -> None:
    response = call(
        app,
        "POST",
        "/v1/chat/completions",
        content=raw,
        headers={"content-type": "application/json"},
    )
    assert_openai_error(response, 400)


def test_unknown_paths_and_methods(app: FastAPI) -> None:
    assert_openai_error(call(app, "GET", "/v1/engines"), 404)
    wrong_method = call(app, "GET", "/v1/chat/completions")
    assert_openai_error(wrong_method, 405)
    assert wrong_method.headers["allow"] == "POST"
    assert call(app, "PUT", "/translate").headers["allow"] == "POST"
    assert_openai_error(call(app, "GET", "/v1/models/nope"), 404, "model_not_found")
    assert call(app, "GET", f"/v1/models/{CHAT}").json()["id"] == CHAT


def test_still_serving_after_bad_requests(app: FastAPI) -> None:
    for raw in (b"{", b"[]", json.dumps({**GOOD_CHAT, "max_tokens": 0}).encode()):
        call(
            app,
            "POST",
            "/v1/chat/completions",
            content=raw,
            headers={"content-type": "application/json"},
        )
    response = call(app, "POST", "/v1/chat/completions", json=GOOD_CHAT)
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["role"] == "assistant"


# -- overload --------------------------------------------------------------------------------


def test_gateway_concurrency_limit_answers_429_with_retry_after(engines: LocalBackends) -> None:
    app = create_app(profile(gateway__traffic__max_concurrency="1"), lambda: engines)
    slow = {**GOOD_CHAT, "max_tokens": 3000, "ignore_eos": True}

    async def scenario() -> tuple[httpx.Response, httpx.Response]:
        async with client_for(app) as client:
            first = asyncio.create_task(client.post("/v1/chat/completions", json=slow))
            for _ in range(2400):  # until the first one generates (bounded: 120 s)
                if engines.llm.load() >= 1:
                    break
                await asyncio.sleep(0.05)
            assert engines.llm.load() >= 1
            refused = await client.post("/v1/chat/completions", json=GOOD_CHAT)
            return await first, refused

    first, refused = asyncio.run(scenario())
    assert first.status_code == 200
    assert_openai_error(refused, 429, "too_many_requests")
    assert refused.headers["retry-after"] == "1"


def test_llm_queue_full_answers_429_with_retry_after(
    demo_dir: Path, engines: LocalBackends
) -> None:
    class Occupancy(NullMetrics):
        last = (0, 0)

        def occupancy(self, *, running: int, waiting: int, kv_used: int, kv_total: int) -> None:
            self.last = (running, waiting)

    seen = Occupancy()
    llm = LLMEngine(
        demo_dir / "llama-tiny",
        EngineConfig(default_max_tokens=16, max_running=1, max_waiting_requests=1),
        metrics=seen,
    )
    backends = LocalBackends(llm, engines.encoder, engines.translators)
    app = create_app(profile(), lambda: backends)
    slow = {**GOOD_CHAT, "max_tokens": 4000, "ignore_eos": True, "stream": True}

    async def until(state: tuple[int, int]) -> None:
        for _ in range(2400):  # bounded: 120 s on a busy machine
            if seen.last == state:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"the engine never reached {state}; last seen {seen.last}")

    async def scenario() -> list[httpx.Response]:
        async with client_for(app) as client:
            # One at a time: sent together, the second could find the first still waiting
            # (the queue holds one) and be refused itself, leaving nothing to fill the queue.
            busy = [asyncio.create_task(client.post("/v1/chat/completions", json=slow))]
            await until((1, 0))
            busy.append(asyncio.create_task(client.post("/v1/chat/completions", json=slow)))
            await until((1, 1))
            refused = await client.post("/v1/chat/completions", json={**slow, "max_tokens": 4})
            for task in busy:
                task.cancel()
            await asyncio.gather(*busy, return_exceptions=True)
            return [refused]

    try:
        (refused,) = asyncio.run(scenario())
    finally:
        llm.close()
    assert_openai_error(refused, 429, "queue_full")
    assert refused.headers["retry-after"] == "1"


class FailingBackends:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    async def generate(self, request: GenerationRequest) -> AsyncIterator[str]:
        raise self.exc
        yield ""  # pragma: no cover

    async def embed(self, texts: list[str]) -> list[EncodedText]:
        raise self.exc

    async def translate(self, target_lang: TargetLang, texts: list[str]) -> list[str]:
        raise self.exc

    def chain(self, name: str) -> ChainEndpoint:
        return translate_runner(self)


def translate_runner(backends: Backends) -> ChainRunner:
    llm = BentoChatModel(generate_fn=backends.generate, model_name=CHAT, max_tokens=8)
    chain = build_translate_chain(llm, backends.translate)
    return ChainRunner("translate", chain, CHAINS["translate"].steps)


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        ("busy", 503),
        ("unreachable", 503),
        ("draining", 503),
        ("timeout", 504),
        ("failed", 502),
        ("broken", 503),
        ("refused", 503),
        ("bug", 500),
    ],
)
def test_model_service_failures_map_to_clear_statuses(exc: str, status: int) -> None:
    """Each way the upstream layer reports a failed call to a model service."""
    from bentochain.serving.upstream import UpstreamError

    errors: dict[str, Exception] = {
        "busy": UpstreamError("LLM", 503, "busy", code="upstream_status"),
        "unreachable": UpstreamError("LLM", 503, "no replica", code="unavailable"),
        "draining": UpstreamError("LLM", 503, "shutting down", code="draining"),
        "timeout": UpstreamError("LLM", 504, "too slow", code="timeout"),
        "failed": UpstreamError("LLM", 500, "its own error", code="upstream_status"),
        "broken": UpstreamError("LLM", 502, "connection dropped", code="broken"),
        "refused": ConnectionRefusedError("connection refused"),
        "bug": TypeError("a bug of ours"),  # never reported as a dependency's failure
    }
    backends: Backends = FailingBackends(errors[exc])
    app = RequestContext(create_app(profile(), lambda: backends))
    for path, body in (
        ("/v1/chat/completions", GOOD_CHAT),
        ("/v1/embeddings", {"model": EMBED, "input": "x"}),
        ("/translate", {"texts": ["x"], "target_lang": "fr"}),
        ("/chains/translate/invoke", {"input": {"question": "x", "target_lang": "fr"}}),
    ):
        answer = call(app, "POST", path, json=body)
        error = assert_openai_error(answer, status)
        if exc == "bug":
            assert answer.headers["x-request-id"] in error["message"], path
            assert "internal error" in error["message"] or error["code"] == "internal_error"
            assert "unreachable" not in error["message"]


def test_sse_lines_survive_any_generated_character() -> None:
    from bentochain.api.generation import sse_stream
    from bentochain.engines.llm.events import OpenedGeneration
    from bentochain.engines.llm.types import Delta, Finished, Started

    awkward = "a\u2028b\u0085c\rd\ne\x0cf\x1cg\u2029h"

    async def events() -> AsyncIterator[Any]:
        yield Delta(text=awkward, completion_tokens=1)
        yield Finished(finish_reason="length", prompt_tokens=1, completion_tokens=1)

    async def body() -> str:
        stream = OpenedGeneration(Started(prompt_tokens=1), events())  # type: ignore[arg-type]
        return "".join([chunk async for chunk in sse_stream("chat", CHAT, stream, False)])

    lines = [line for line in asyncio.run(body()).splitlines() if line]
    assert all(line.startswith("data: ") for line in lines)
    contents = [json.loads(line[6:]) for line in lines if line != "data: [DONE]"]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in contents) == awkward


# -- quality records ---------------------------------------------------------------------------


class Collected:
    """A recorder that keeps what it is handed."""

    def __init__(self) -> None:
        self.records: list[AnyRecord] = []

    def submit(self, record: AnyRecord) -> None:
        self.records.append(record)


def test_every_answered_request_is_one_record_matching_its_answer(engines: LocalBackends) -> None:
    recorder = Collected()
    # Served, the request ids come from BentoML's middleware stack; here the same middleware.
    app: Any = RequestContext(create_app(profile(), lambda: engines, recorder))
    chat = {**GOOD_CHAT, "max_tokens": 5, "temperature": 0, "ignore_eos": True}

    async def scenario() -> list[httpx.Response]:
        async with client_for(app) as client:
            return [
                await client.post("/v1/chat/completions", json=chat),
                await client.post(
                    "/v1/chat/completions",
                    json={**chat, "stream": True, "stream_options": {"include_usage": True}},
                ),
                await client.post(
                    "/v1/completions",
                    json={"model": CHAT, "prompt": ["a", "b"], "max_tokens": 3, "ignore_eos": True},
                ),
                await client.post("/v1/embeddings", json={"model": EMBED, "input": ["x y"]}),
                await client.post("/translate", json={"texts": ["Hi"], "target_lang": "fr"}),
                await client.post("/v1/chat/completions", json={**chat, "max_tokens": 10**6}),
                await client.get("/v1/models"),  # not a recorded endpoint
            ]

    responses = asyncio.run(scenario())
    plain, streamed, completions, embeddings, translated, refused, _ = responses
    records = recorder.records
    assert [r.endpoint for r in records if isinstance(r, RequestRecord)] == [
        "/v1/chat/completions",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/translate",
        "/v1/chat/completions",
    ]
    by_id = {r.request_id: r for r in records if isinstance(r, RequestRecord)}
    assert set(by_id) == {r.headers["x-request-id"] for r in responses[:6]}

    first = by_id[plain.headers["x-request-id"]]
    body = plain.json()
    assert first.status == 200 and first.model == CHAT
    assert first.model_reference == "demo:llama-tiny"
    assert first.input == chat  # the body as sent: replay resends it
    assert first.output == {"texts": [body["choices"][0]["message"]["content"]]}
    assert first.usage is not None
    assert first.usage.prompt_tokens == body["usage"]["prompt_tokens"]
    assert first.usage.completion_tokens == body["usage"]["completion_tokens"] == 5
    assert first.finish_reason == "length" and first.ttft_s is not None
    assert 0 < first.ttft_s <= first.latency_s

    second = by_id[streamed.headers["x-request-id"]]
    events = [json.loads(line[6:]) for line in streamed.text.splitlines() if line[6:7] == "{"]
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert second.output == {"texts": [text]}
    assert second.usage is not None and second.usage.completion_tokens == 5
    assert events[-1]["usage"]["prompt_tokens"] == second.usage.prompt_tokens
    assert second.ttft_s is not None and second.ttft_s <= second.latency_s

    third = by_id[completions.headers["x-request-id"]]
    assert third.output == {"texts": [c["text"] for c in completions.json()["choices"]]}
    assert third.usage is not None and third.usage.completion_tokens == 6

    fourth = by_id[embeddings.headers["x-request-id"]]
    assert fourth.output is not None and isinstance(fourth.output["embeddings"][0], str)
    assert [vector_of(v) for v in fourth.output["embeddings"]] == [
        embeddings.json()["data"][0]["embedding"]
    ]
    assert fourth.model == EMBED

    fifth = by_id[translated.headers["x-request-id"]]
    assert fifth.output == {"texts": translated.json()["translations"]}

    sixth = by_id[refused.headers["x-request-id"]]
    assert sixth.status == 400 and sixth.output is None
    assert sixth.error == refused.json()["error"]["message"]


def test_records_are_sampled_and_feedback_joins_them_by_request_id(
    engines: LocalBackends,
) -> None:
    recorder = Collected()
    app = create_app(profile(observability__records__sample_rate="0"), lambda: engines, recorder)
    answered = call(app, "POST", "/v1/embeddings", json={"model": EMBED, "input": "hi"})
    assert answered.status_code == 200 and recorder.records == []  # sampled out
    feedback = {"request_id": "req-1", "score": 1, "comment": "right answer"}
    accepted = call(app, "POST", "/v1/feedback", json=feedback)
    assert accepted.status_code == 200
    assert accepted.json() == {"object": "feedback", "request_id": "req-1", "recorded": True}
    (rated,) = recorder.records
    assert isinstance(rated, FeedbackRecord)
    assert (rated.request_id, rated.score, rated.comment) == ("req-1", 1.0, "right answer")
    bad = call(app, "POST", "/v1/feedback", json={"request_id": "req-1", "score": 7})
    assert_openai_error(bad, 400, "invalid_value")
    assert "score" in bad.json()["error"]["message"] and len(recorder.records) == 1
    off = create_app(profile(), lambda: engines)  # no recorder: records are off
    assert_openai_error(call(off, "POST", "/v1/feedback", json=feedback), 404)


# -- hostile bodies ------------------------------------------------------------------------------


CHAT_WITH = b'{"model": "llama-tiny", "messages": [{"role": "user", "content": "x"}], '


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 100 + b"]" * 100,  # deeper than the limit
        b"[" * 10_000,  # the JSON parser would recurse until it failed: a 500
        b'{"model": "llama-tiny", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
        CHAT_WITH + b'"temperature": NaN}',
        CHAT_WITH + b'"temperature": 1e999}',
        CHAT_WITH + b'"max_tokens": 100000000000000000000000000}',
        CHAT_WITH + b'"top_p": "high"}',
        b'{"model": "llama-tiny", "messages": "not a list"}',
        b'{"model": 7, "messages": [{"role": "user", "content": "x"}]}',
        b'{"model": "llama-tiny", "messages": [{"role": "wizard", "content": "x"}]}',
        b'"just a string"',
    ],
)
def test_hostile_bodies_get_a_400_never_a_500(app: FastAPI, raw: bytes) -> None:
    headers = {"Content-Type": "application/json"}
    response = call(app, "POST", "/v1/chat/completions", content=raw, headers=headers)
    assert_openai_error(response, 400)
    assert call(app, "POST", "/v1/chat/completions", json=GOOD_CHAT).status_code == 200


def test_a_lone_surrogate_is_valid_json_but_no_prompt_and_gets_a_400(app: FastAPI) -> None:
    raw = b'{"model": "llama-tiny", "max_tokens": 2, "messages": [{"role": "user", '
    raw += b'"content": "\\ud800"}]}'
    response = call(
        app,
        "POST",
        "/v1/chat/completions",
        content=raw,
        headers={"Content-Type": "application/json"},
    )
    error = assert_openai_error(response, 400, "invalid_prompt")
    assert "cannot build the prompt" in error["message"]


def test_too_many_messages_get_400(app: FastAPI) -> None:
    many = [{"role": "user", "content": "x"}] * 513
    response = call(app, "POST", "/v1/chat/completions", json={**GOOD_CHAT, "messages": many})
    assert_openai_error(response, 400, "input_too_large")


def test_a_body_that_stops_arriving_gets_408_and_frees_the_request(engines: LocalBackends) -> None:
    app = create_app(profile(gateway__limits__body_timeout_seconds="0.5"), lambda: engines)
    sent: list[Any] = []

    async def scenario() -> None:
        chunks = [{"type": "http.request", "body": b'{"model": "llama', "more_body": True}]
        stalled = asyncio.Event()  # never set: the rest of the body never comes

        async def receive() -> Any:
            if chunks:
                return chunks.pop()
            await stalled.wait()
            return {"type": "http.disconnect"}

        async def send(message: Any) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "method": "POST",
            "path": "/v1/chat/completions",
            "headers": [(b"content-type", b"application/json")],
            "query_string": b"",
        }
        await app(scope, receive, send)

    asyncio.run(scenario())
    assert sent[0]["status"] == 408
    assert b"request_timeout" in sent[1]["body"]
