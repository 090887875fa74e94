"""Which LLM a chain calls, and what happens when it fails: real LangChain clients (ChatOpenAI,
ChatAnthropic) against a stand-in server on loopback, and our LLM service's stream protocol."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import HumanMessage

from bentochain.config.schema import ChainLLM, ProviderSettings
from bentochain.engines.llm.types import (
    Delta,
    Failed,
    Finished,
    GenerationRequest,
    Started,
    encode_event,
)
from bentochain.llms.bento import BentoChatModel, LLMServiceError
from bentochain.llms.cache import CountingCache, SQLiteLLMCache
from bentochain.llms.providers import ProviderConfigError, build_chain_llm
from bentochain.llms.resilience import AllProvidersFailed
from tests.support.standin import Script, stand_in

ASK = [HumanMessage("What is the answer?")]


async def twice(llm: Any) -> list[str]:
    """Two calls on one event loop, as a service makes them."""
    return [(await llm.ainvoke(ASK)).text for _ in range(2)]


def fake_service(*replies: str, fail: Failed | None = None):  # type: ignore[no-untyped-def]
    """A ``generate`` stream as the LLM service sends it, chunked at odd places."""
    requests: list[GenerationRequest] = []

    async def generate(request: GenerationRequest) -> AsyncIterator[str]:
        requests.append(request)
        if fail is not None:
            yield encode_event(fail)
            return
        events: list[Started | Delta | Finished] = [
            Started(prompt_tokens=4),
            *(Delta(text=r, completion_tokens=i + 1) for i, r in enumerate(replies)),
            Finished(finish_reason="stop", prompt_tokens=4, completion_tokens=len(replies)),
        ]
        text = "".join(encode_event(e) for e in events)
        for i in range(0, len(text), 7):
            yield text[i : i + 7]

    return generate, requests


def test_the_llm_service_as_a_chat_model() -> None:
    generate, requests = fake_service("Hel", "lo ", "wörld")
    model = BentoChatModel(generate_fn=generate, model_name="llama", max_tokens=12)
    message = asyncio.run(model.ainvoke(ASK, stop=["\n"]))
    assert message.text == "Hello wörld"
    assert message.usage_metadata is not None and message.usage_metadata["output_tokens"] == 3
    (request,) = requests
    assert request.messages is not None and request.messages[0].role == "user"
    assert request.params.max_tokens == 12 and request.params.stop == ("\n",)
    assert request.params.temperature == 0.0


def test_a_refusal_of_the_llm_service_keeps_its_status() -> None:
    generate, _ = fake_service(fail=Failed(status=429, code="busy", message="queue full"))
    model = BentoChatModel(generate_fn=generate)
    with pytest.raises(LLMServiceError) as refused:
        asyncio.run(model.ainvoke(ASK))
    assert refused.value.status == 429


def test_openai_compatible_provider_by_configuration() -> None:
    with stand_in(Script(reply="from openai")) as server:
        settings = ChainLLM(
            provider="openai",
            model="gpt-standin",
            base_url=f"{server.url}/v1",
            api_key_env="STANDIN_KEY",
        )
        llm = build_chain_llm(
            settings, generate=None, served_model="x", environ={"STANDIN_KEY": "sk-test"}
        )
        assert asyncio.run(llm.ainvoke(ASK)).text == "from openai"
        (call,) = server.script.calls
        assert call["body"]["model"] == "gpt-standin"
        assert call["headers"]["authorization"] == "Bearer sk-test"


def test_anthropic_provider_by_configuration() -> None:
    with stand_in(Script(reply="from claude")) as server:
        settings = ChainLLM(
            provider="anthropic", model="claude-standin", base_url=server.url, max_tokens=50
        )
        llm = build_chain_llm(
            settings, generate=None, served_model="x", environ={"ANTHROPIC_API_KEY": "ak"}
        )
        assert asyncio.run(llm.ainvoke(ASK)).text == "from claude"
        (call,) = server.script.calls
        assert call["path"] == "/v1/messages"
        assert call["body"]["max_tokens"] == 50
        headers = call["headers"]  # the SDK sends the key one way or the other
        assert headers.get("x-api-key") == "ak" or headers.get("authorization") == "Bearer ak"


def test_a_missing_key_is_a_configuration_error() -> None:
    settings = ChainLLM(provider="anthropic", model="claude")
    with pytest.raises(ProviderConfigError, match="ANTHROPIC_API_KEY"):
        build_chain_llm(settings, generate=None, served_model="x", environ={}, where="chains.sql")


def test_retries_then_the_fallback_serves() -> None:
    with (
        stand_in(Script(reply="primary", fail=10)) as primary,
        stand_in(Script(reply="fallback")) as backup,
    ):
        settings = ChainLLM(
            provider="openai",
            model="a",
            base_url=f"{primary.url}/v1",
            max_retries=2,
            backoff=0.05,
            fallbacks=(
                ProviderSettings(provider="openai", model="b", base_url=f"{backup.url}/v1"),
            ),
        )
        llm = build_chain_llm(settings, generate=None, served_model="x", environ={})
        assert asyncio.run(llm.ainvoke(ASK)).text == "fallback"
        assert len(primary.script.calls) == 3  # the first try and two retries
        assert len(backup.script.calls) == 1


def test_a_client_error_is_not_retried() -> None:
    with stand_in(Script(fail=5, status=400)) as primary, stand_in(Script(reply="ok")) as backup:
        settings = ChainLLM(
            provider="openai",
            model="a",
            base_url=f"{primary.url}/v1",
            max_retries=3,
            fallbacks=(
                ProviderSettings(provider="openai", model="b", base_url=f"{backup.url}/v1"),
            ),
        )
        llm = build_chain_llm(settings, generate=None, served_model="x", environ={})
        assert asyncio.run(llm.ainvoke(ASK)).text == "ok"
        assert len(primary.script.calls) == 1


def test_a_slow_primary_times_out_and_the_deadline_bounds_everything() -> None:
    with stand_in(Script(delay=1.5)) as slow:
        settings = ChainLLM(
            provider="openai",
            model="a",
            base_url=f"{slow.url}/v1",
            timeout=0.3,
            max_retries=10,
            backoff=0.05,
            deadline=1.0,
        )
        llm = build_chain_llm(settings, generate=None, served_model="x", environ={})
        started = time.monotonic()
        with pytest.raises(AllProvidersFailed, match="no answer within"):
            asyncio.run(llm.ainvoke(ASK))
        assert time.monotonic() - started < 2.0


def test_deterministic_answers_are_cached(tmp_path: Path) -> None:
    lookups: list[bool] = []
    cache = CountingCache(SQLiteLLMCache(tmp_path / "cache.sqlite"), lookups.append)
    with stand_in(Script(reply="cached")) as server:
        settings = ChainLLM(provider="openai", model="a", base_url=f"{server.url}/v1")
        llm = build_chain_llm(settings, generate=None, served_model="x", cache=cache, environ={})
        assert asyncio.run(twice(llm)) == ["cached", "cached"]
        assert len(server.script.calls) == 1
        assert lookups == [False, True]
        # The cache is on disk: a new process (a new cache object) still hits.
        again = SQLiteLLMCache(tmp_path / "cache.sqlite")
        fresh = build_chain_llm(settings, generate=None, served_model="x", cache=again, environ={})
        asyncio.run(fresh.ainvoke(ASK))
        assert len(server.script.calls) == 1


def test_sampled_answers_are_never_cached(tmp_path: Path) -> None:
    lookups: list[bool] = []
    cache = CountingCache(SQLiteLLMCache(tmp_path / "cache.sqlite"), lookups.append)
    with stand_in(Script(reply="sampled")) as server:
        settings = ChainLLM(
            provider="openai", model="a", base_url=f"{server.url}/v1", temperature=0.7
        )
        llm = build_chain_llm(settings, generate=None, served_model="x", cache=cache, environ={})
        asyncio.run(twice(llm))
        assert len(server.script.calls) == 2
        assert lookups == []
