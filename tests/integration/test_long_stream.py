"""A stream that lasts longer than any timeout on its way arrives whole.

BentoML's dependency client reads a call, a stream included, under one total timeout: the
callee's ``traffic.timeout`` (60 s by default), so a long generation used to be cut in mid-stream.
The gateway reads the LLM's stream with an idle timeout instead (``bentochain.serving.streams``).
The test servers set the LLM's ``traffic.timeout`` to 30 s; this test aims at a stream of about
a minute through the composed Bento, checks that it outlasted that timeout, and that every token
and the closing ``[DONE]`` arrive. The aim is twice the bound, so a machine that speeds up or
slows down between calibration and stream (a shared CI box) does not decide the outcome.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.integration.conftest import Server

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LLM_TIMEOUT_VARIABLE = "BENTOCHAIN_LLM__TRAFFIC__TIMEOUT"
TARGET_SECONDS = 62.0
CONTEXT_BUDGET = 120_000  # the tiny demo model has 131072 positions


def _stream(server: Server, max_tokens: int) -> tuple[float, int, str | None, bool]:
    """Stream a chat completion; return (seconds, content chunks, finish_reason, saw [DONE])."""
    body = {
        "model": "llama-tiny",
        "messages": [{"role": "user", "content": "Talk for a long time."}],
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
    }
    started = time.monotonic()
    finish, done, tokens = None, False, None
    chunks = 0
    timeout = httpx.Timeout(30.0, read=60.0)  # per read: the stream itself may take minutes
    with httpx.stream(
        "POST", f"{server.v1}/chat/completions", json=body, timeout=timeout
    ) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line.removeprefix("data: ")
            if data == "[DONE]":
                done = True
                continue
            event = json.loads(data)
            assert "error" not in event, event
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
            for choice in event["choices"]:
                if choice["delta"].get("content"):
                    chunks += 1
                finish = choice["finish_reason"] or finish
    assert tokens == max_tokens, f"usage says {tokens} tokens, asked for {max_tokens}"
    return time.monotonic() - started, chunks, finish, done


def test_stream_longer_than_the_llm_timeout_arrives_whole(
    composed: Server, served_env: dict[str, str]
) -> None:
    timeout = float(served_env[LLM_TIMEOUT_VARIABLE])
    assert timeout * 2 <= TARGET_SECONDS
    # Calibrate on this machine. Each token costs a little more than the one before (the
    # context grows), so a rate measured on a short stream only errs towards a longer one.
    seconds = _stream(composed, 2000)[0]
    max_tokens = min(CONTEXT_BUDGET, int(2000 / seconds * TARGET_SECONDS))
    seconds, chunks, finish, done = _stream(composed, max_tokens)
    assert seconds > timeout, (
        f"the stream took {seconds:.1f}s ({max_tokens} tokens), less than the LLM's "
        f"traffic.timeout of {timeout:g}s: too fast to prove anything"
    )
    assert finish == "length" and done
    assert chunks > 0
