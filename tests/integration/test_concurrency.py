"""Concurrent traffic through the gateway completes with zero errors.

BentoML's dependency client recycles its connection after ``runner_connection.max_requests``
(default 100) and closes requests still in flight on it. Each round below sends 64 concurrent
chats and 64 concurrent embeddings, and three rounds push well past 100 calls per dependency
while calls overlap: every one must succeed.
"""

from __future__ import annotations

import asyncio

import openai
import pytest

from tests.integration.conftest import Server

pytestmark = pytest.mark.integration

CONCURRENCY = 64
ROUNDS = 3


async def _round(client: openai.AsyncOpenAI, round_no: int) -> list[BaseException | object]:
    chats = [
        client.chat.completions.create(
            model="llama-tiny",
            messages=[{"role": "user", "content": f"request {round_no}-{i}"}],
            max_tokens=8,
        )
        for i in range(CONCURRENCY)
    ]
    embeds = [
        client.embeddings.create(model="all-MiniLM-L6-v2", input=[f"text {round_no}-{i}", "more"])
        for i in range(CONCURRENCY)
    ]
    return await asyncio.gather(*chats, *embeds, return_exceptions=True)


def test_64_concurrent_chats_and_embeddings_have_zero_errors(gateway: Server) -> None:
    async def scenario() -> list[BaseException | object]:
        client = openai.AsyncOpenAI(
            base_url=gateway.v1, api_key="unused", max_retries=0, timeout=300
        )
        results: list[BaseException | object] = []
        async with client:
            for round_no in range(ROUNDS):
                results += await _round(client, round_no)
        return results

    results = asyncio.run(scenario())
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, f"{len(errors)} of {len(results)} failed, first: {errors[0]!r}"
    assert len(results) == ROUNDS * 2 * CONCURRENCY
    chats = [r for r in results if getattr(r, "object", None) == "chat.completion"]
    assert len(chats) == ROUNDS * CONCURRENCY
    assert all(c.usage.completion_tokens > 0 for c in chats)  # type: ignore[attr-defined]
