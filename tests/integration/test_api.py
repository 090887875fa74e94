"""Every endpoint of the served Bento, driven by the official openai client and by LangChain.

Each test runs twice: against the composed Bento (``bentoml serve``) and against the split
topology (one server per service, as one Kubernetes Deployment per service runs it).
"""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import openai
import pytest
from langchain_core.messages import AIMessageChunk, HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI, OpenAI, OpenAIEmbeddings

from tests.integration.conftest import Server

pytestmark = pytest.mark.integration

CHAT = "llama-tiny"
EMBED = "all-MiniLM-L6-v2"


@pytest.fixture
def client(gateway: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.v1, api_key="unused", max_retries=0, timeout=120)


def test_health_and_metrics(gateway: Server) -> None:
    assert httpx.get(f"{gateway.url}/livez", timeout=10).status_code == 200
    assert httpx.get(f"{gateway.url}/readyz", timeout=10).status_code == 200
    httpx.get(f"{gateway.v1}/models", timeout=10)
    metrics = httpx.get(f"{gateway.url}/metrics", timeout=10)
    assert metrics.status_code == 200
    assert 'endpoint="/v1/models"' in metrics.text
    assert "bentoml_service_request_total" in metrics.text


def test_models(client: openai.OpenAI) -> None:
    models = {m.id: m.model_dump() for m in client.models.list()}
    assert {models[i]["task"] for i in models} == {"chat", "embedding", "translation"}
    assert models[CHAT]["demo"] is True and models[EMBED]["demo"] is False
    assert client.models.retrieve(EMBED).id == EMBED


def test_chat_completion(client: openai.OpenAI) -> None:
    request: dict[str, Any] = {
        "model": CHAT,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "max_tokens": 6,
        "temperature": 0.7,
        "top_p": 0.9,
        "seed": 3,
        "extra_body": {"ignore_eos": True},
    }
    completion = client.chat.completions.create(**request)
    assert completion.object == "chat.completion" and completion.model == CHAT
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 6
    again = client.chat.completions.create(**request)  # the same seed samples the same tokens
    assert again.choices[0].message.content == completion.choices[0].message.content


def test_chat_stream(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=CHAT,
        messages=[{"role": "user", "content": "Count"}],
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_completion_and_stream(client: openai.OpenAI) -> None:
    completion = client.completions.create(model=CHAT, prompt="Once upon a time", max_tokens=5)
    assert completion.choices[0].finish_reason in {"stop", "length"}
    assert completion.usage is not None and completion.usage.prompt_tokens > 0
    streamed = list(client.completions.create(model=CHAT, prompt="Tell", max_tokens=5, stream=True))
    assert streamed[-1].choices[0].finish_reason in {"stop", "length"}


def test_embeddings_put_close_sentences_closer(client: openai.OpenAI) -> None:
    texts = [
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "The girl plays the violin.",
    ]
    response = client.embeddings.create(model=EMBED, input=texts)
    vectors = np.asarray([d.embedding for d in response.data])
    assert vectors.shape == (3, 384)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.3
    assert response.usage.prompt_tokens > 0


def test_translate(gateway: Server) -> None:
    for lang in ("fr", "es"):
        response = httpx.post(
            f"{gateway.url}/translate",
            json={"texts": ["Good morning", "The weather is nice."], "target_lang": lang},
            timeout=120,
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model"] == f"marian-en-{lang}" and len(body["translations"]) == 2


def test_langchain_chat_model(gateway: Server) -> None:
    llm = ChatOpenAI(
        model=CHAT,
        base_url=gateway.v1,
        api_key="unused",
        max_tokens=8,
        temperature=0,
        max_retries=0,
    )
    reply = llm.invoke([SystemMessage("You are terse."), HumanMessage("Hello!")])
    assert isinstance(reply.content, str) and reply.content
    assert reply.response_metadata["finish_reason"] in {"stop", "length"}
    chunks = list(llm.stream("Stream this"))
    assert chunks and all(isinstance(c, AIMessageChunk) for c in chunks)
    assert len(llm.batch(["one", "two", "three"])) == 3


def test_langchain_completion_llm(gateway: Server) -> None:
    llm = OpenAI(model=CHAT, base_url=gateway.v1, api_key="unused", max_tokens=6, max_retries=0)
    assert isinstance(llm.invoke("Say something"), str)


def test_langchain_embeddings(gateway: Server) -> None:
    embeddings = OpenAIEmbeddings(  # type: ignore[call-arg]
        model=EMBED,
        base_url=gateway.v1,
        api_key="unused",
        check_embedding_ctx_length=False,  # send text; tiktoken has no offline encodings
        max_retries=0,
    )
    docs = embeddings.embed_documents(["The cat sleeps on the sofa.", "Interest rates rose again."])
    query = embeddings.embed_query("A kitten naps on the couch.")
    assert len(query) == 384
    assert float(np.dot(query, docs[0])) > float(np.dot(query, docs[1]))


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        (
            "/v1/chat/completions",
            {"model": "nope", "messages": [{"role": "user", "content": "x"}]},
            404,
        ),
        ("/v1/chat/completions", {"model": CHAT, "messages": []}, 400),
        (
            "/v1/chat/completions",
            {"model": CHAT, "messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
            400,
        ),
        (
            "/v1/chat/completions",
            {"model": CHAT, "messages": [{"role": "user", "content": "x"}], "max_tokens": 10**7},
            400,
        ),
        (
            "/v1/chat/completions",
            {"model": CHAT, "messages": [{"role": "user", "content": 5}]},
            400,
        ),
        (
            "/v1/chat/completions",
            {"model": CHAT, "messages": [{"role": "user", "content": "x" * 40000}]},
            400,
        ),
        ("/v1/embeddings", {"model": EMBED, "input": ["x"] * 300}, 400),
        ("/v1/embeddings", {"model": EMBED, "input": 42}, 400),
        ("/translate", {"texts": ["x"], "target_lang": "klingon"}, 400),
    ],
)
def test_bad_input_gets_a_clear_error_and_the_server_keeps_serving(
    gateway: Server, client: openai.OpenAI, path: str, body: dict[str, object], status: int
) -> None:
    response = httpx.post(f"{gateway.url}{path}", json=body, timeout=60)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert client.chat.completions.create(
        model=CHAT, messages=[{"role": "user", "content": "still there?"}], max_tokens=2
    ).choices


def test_malformed_and_oversized_bodies(gateway: Server) -> None:
    headers = {"content-type": "application/json"}
    bad = httpx.post(
        f"{gateway.url}/v1/chat/completions", content=b"{oops", headers=headers, timeout=30
    )
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"
    huge = b'{"model": "x", "input": "' + b"a" * 2_000_000 + b'"}'
    big = httpx.post(f"{gateway.url}/v1/embeddings", content=huge, headers=headers, timeout=30)
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"


def test_openai_client_raises_typed_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=CHAT, messages=[], max_tokens=3)
    assert "messages" in str(caught.value)
