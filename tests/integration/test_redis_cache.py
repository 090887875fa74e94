"""The LLM answer cache on a real Redis server, shared by every replica of a chain service."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from bentochain.config.schema import ChainLLM
from bentochain.llms.cache import CountingCache, RedisLLMCache
from bentochain.llms.providers import build_chain_llm
from tests.support.standin import Script, stand_in
from tests.support.system import redis_server
from tests.unit.test_chain_llms import ASK, twice


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


def test_replicas_share_answers_through_redis(redis_url: str) -> None:
    lookups: list[bool] = []
    with stand_in(Script(reply="from the provider")) as server:
        settings = ChainLLM(provider="openai", model="m", base_url=f"{server.url}/v1")

        def replica() -> object:
            cache = CountingCache(RedisLLMCache(redis_url, ttl=60), lookups.append)
            return build_chain_llm(
                settings, generate=None, served_model="x", cache=cache, environ={}
            )

        assert asyncio.run(twice(replica())) == ["from the provider"] * 2
        asyncio.run(replica().ainvoke(ASK))  # type: ignore[attr-defined]
        assert len(server.script.calls) == 1  # one miss, then hits in both replicas
        assert lookups == [False, True, True]


def test_entries_expire_after_their_ttl(redis_url: str) -> None:
    with stand_in(Script(reply="fresh")) as server:
        settings = ChainLLM(provider="openai", model="ttl", base_url=f"{server.url}/v1")
        cache = RedisLLMCache(redis_url, ttl=1)
        llm = build_chain_llm(settings, generate=None, served_model="x", cache=cache, environ={})

        async def before_and_after_expiry() -> None:  # one loop: the client is bound to it
            await llm.ainvoke(ASK)
            await asyncio.sleep(2.2)
            await llm.ainvoke(ASK)

        asyncio.run(before_and_after_expiry())
        assert len(server.script.calls) == 2


def test_a_redis_that_is_down_is_a_miss_not_an_error(tmp_path: Path) -> None:
    lookups: list[bool] = []
    with redis_server(tmp_path / "short-lived") as url:
        pass  # started and stopped: nothing listens at url any more
    with stand_in(Script(reply="still answered")) as server:
        settings = ChainLLM(provider="openai", model="m", base_url=f"{server.url}/v1")
        cache = CountingCache(RedisLLMCache(url), lookups.append)
        llm = build_chain_llm(settings, generate=None, served_model="x", cache=cache, environ={})
        assert asyncio.run(llm.ainvoke(ASK)).text == "still answered"
    assert lookups == [False]
