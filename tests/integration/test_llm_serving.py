"""The LLM service under load, through the composed Bento: metrics, batching, cancellation."""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import openai
import pytest

from bentochain.observability.metrics import METRIC_NAMES
from tests.integration.conftest import Server

pytestmark = pytest.mark.integration

CHAT = "llama-tiny"


def metric(text: str, name: str) -> float:
    """The value of an unlabelled-by-us series (summing over label sets)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def scrape(server: Server) -> str:
    return httpx.get(f"{server.url}/metrics", timeout=10).text


def test_token_metrics_follow_the_load(composed: Server) -> None:
    before = scrape(composed)

    async def load() -> list[object]:
        client = openai.AsyncOpenAI(base_url=composed.v1, api_key="x", max_retries=0, timeout=120)
        async with client:
            return await asyncio.gather(
                *(
                    client.completions.create(
                        model=CHAT,
                        prompt=f"load {i}",
                        max_tokens=20,
                        extra_body={"ignore_eos": True},
                    )
                    for i in range(24)
                )
            )

    results = asyncio.run(load())
    prompt_tokens = sum(r.usage.prompt_tokens for r in results)  # type: ignore[attr-defined]
    after = scrape(composed)
    missing = [name for name in METRIC_NAMES if name not in after]
    assert not missing, f"missing from /metrics: {missing}\n{after}"
    assert re.search(r'bentochain_llm_generated_tokens_total\{model="llama-tiny"\}', after)
    generated = metric(after, "bentochain_llm_generated_tokens_total") - metric(
        before, "bentochain_llm_generated_tokens_total"
    )
    assert generated == 24 * 20
    prompted = metric(after, "bentochain_llm_prompt_tokens_total") - metric(
        before, "bentochain_llm_prompt_tokens_total"
    )
    assert prompted == prompt_tokens
    ttft = metric(after, "bentochain_llm_time_to_first_token_seconds_count") - metric(
        before, "bentochain_llm_time_to_first_token_seconds_count"
    )
    assert ttft == 24
    assert metric(after, "bentochain_llm_running_requests") == 0


def test_each_split_server_keeps_its_own_metrics(split: Server) -> None:
    """Five servers share one BENTOML_HOME; a later start must not erase an earlier one's files."""
    response = httpx.post(
        f"{split.v1}/completions",
        json={"model": CHAT, "prompt": "split", "max_tokens": 7, "ignore_eos": True},
        timeout=60,
    )
    assert response.status_code == 200
    llm = httpx.get(f"{split.services['LLM']}/metrics", timeout=10).text
    assert metric(llm, "bentochain_llm_generated_tokens_total") >= 7
    gateway = httpx.get(f"{split.url}/metrics", timeout=10).text
    assert 'endpoint="/v1/completions"' in gateway
    assert "bentochain_llm_generated_tokens_total" not in gateway  # not the LLM's files


def test_concurrent_requests_decode_in_one_batch(composed: Server) -> None:
    async def load() -> None:
        client = openai.AsyncOpenAI(base_url=composed.v1, api_key="x", max_retries=0, timeout=120)
        async with client:
            await asyncio.gather(
                *(
                    client.completions.create(
                        model=CHAT, prompt=f"b {i}", max_tokens=400, extra_body={"ignore_eos": True}
                    )
                    for i in range(12)
                )
            )

    async def watch() -> float:
        task = asyncio.create_task(load())
        peak = 0.0
        async with httpx.AsyncClient(timeout=10) as http:
            while not task.done():
                text = (await http.get(f"{composed.url}/metrics")).text
                peak = max(peak, metric(text, "bentochain_llm_running_requests"))
                await asyncio.sleep(0.05)
        await task
        return peak

    assert asyncio.run(watch()) >= 6  # many sequences were decoding at the same time


def test_a_client_that_disconnects_frees_its_sequence(composed: Server) -> None:
    body = {
        "model": CHAT,
        "messages": [{"role": "user", "content": "never stop"}],
        "max_tokens": 20_000,
        "ignore_eos": True,
        "stream": True,
    }
    with httpx.stream("POST", f"{composed.v1}/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        for _ in range(20):
            next(lines)
        running = metric(scrape(composed), "bentochain_llm_running_requests")
        assert running == 1
    # The connection is closed: the gateway closes its stream from the LLM service, which
    # cancels the generation. 20k tokens would otherwise keep it busy for many seconds.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if metric(scrape(composed), "bentochain_llm_running_requests") == 0:
            break
        time.sleep(0.2)
    assert metric(scrape(composed), "bentochain_llm_running_requests") == 0
