"""Streaming clients that time each request: arrival, first token, every token, the end.

Three ways to run the same request: through the gateway (OpenAI ``/v1/completions``, SSE),
straight at the LLM service (its BentoML ``/generate`` API, NDJSON), and in process against the
engine itself (no HTTP at all).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

from bentochain.engines.llm.engine import LLMEngine
from bentochain.engines.llm.types import Delta, Failed, Finished, GenerationRequest, SamplingParams
from bentochain.serving.internal import HEADER
from loadtest.dataset import BenchRequest


@dataclass
class Result:
    """One request's timings, in seconds since its send."""

    id: int
    sent: float = 0.0
    ttft: float | None = None
    chunks: list[float] = field(default_factory=list)
    e2e: float | None = None
    output_tokens: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.e2e is not None

    @property
    def tpot(self) -> float | None:
        """Mean time per output token after the first."""
        if self.ttft is None or self.e2e is None or self.output_tokens < 2:
            return None
        return (self.e2e - self.ttft) / (self.output_tokens - 1)

    @property
    def itl(self) -> list[float]:
        """Gaps between consecutive streamed chunks."""
        return [b - a for a, b in zip(self.chunks, self.chunks[1:], strict=False)]


class Client(Protocol):
    async def run(self, request: BenchRequest) -> Result: ...


def _params(request: BenchRequest) -> dict[str, Any]:
    return {"max_tokens": request.output_tokens, "temperature": 0.0, "ignore_eos": True}


class _Timer:
    def __init__(self, request: BenchRequest) -> None:
        self.result = Result(request.id, sent=time.perf_counter())

    def chunk(self) -> None:
        now = time.perf_counter() - self.result.sent
        if self.result.ttft is None:
            self.result.ttft = now
        self.result.chunks.append(now)

    def end(self, tokens: int) -> Result:
        self.result.e2e = time.perf_counter() - self.result.sent
        self.result.output_tokens = tokens
        return self.result

    def fail(self, error: str) -> Result:
        self.result.error = error
        return self.result


async def _lines(response: aiohttp.ClientResponse) -> AsyncIterator[str]:
    buffer = b""
    async for piece in response.content.iter_any():
        buffer += piece
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                yield line.decode()
    if buffer.strip():
        yield buffer.decode()


async def _openai_stream(
    session: aiohttp.ClientSession,
    url: str,
    body: dict[str, Any],
    timer: _Timer,
    text: Callable[[dict[str, Any]], Any],
    *,
    done_optional: bool,
) -> Result:
    """Time an OpenAI SSE stream: a chunk whenever ``text(choice)`` has some, tokens from usage.

    ``done_optional``: the stream may end after its usage chunk without ``[DONE]``.
    """
    try:
        async with session.post(url, json=body) as response:
            if response.status != 200:
                return timer.fail(f"{response.status}: {(await response.text())[:200]}")
            tokens = 0
            async for line in _lines(response):
                data = line.removeprefix("data: ")
                if data == "[DONE]":
                    if done_optional and not tokens:
                        return timer.fail("no usage reported")
                    return timer.end(tokens)
                event = json.loads(data)
                if "error" in event:
                    error = event["error"]
                    message = error.get("message") if isinstance(error, dict) else None
                    return timer.fail(str(message or error)[:200])
                if event.get("usage"):
                    tokens = event["usage"]["completion_tokens"]
                if any(text(choice) for choice in event.get("choices", [])):
                    timer.chunk()
            if done_optional:  # transformers serve ends after the usage chunk, with no [DONE]
                return timer.end(tokens) if tokens else timer.fail("stream ended without usage")
            return timer.fail("stream ended without [DONE]")
    except (aiohttp.ClientError, TimeoutError) as exc:
        return timer.fail(repr(exc))


class GatewayClient:
    """OpenAI ``/v1/completions`` with ``stream`` and usage, as any OpenAI client sends it."""

    def __init__(self, session: aiohttp.ClientSession, url: str, model: str) -> None:
        self.session, self.url, self.model = session, url, model

    async def run(self, request: BenchRequest) -> Result:
        body = {
            "model": self.model,
            "prompt": request.prompt,
            "stream": True,
            "stream_options": {"include_usage": True},
            **_params(request),
        }
        return await _openai_stream(
            self.session,
            f"{self.url}/v1/completions",
            body,
            _Timer(request),
            lambda choice: choice.get("text"),
            done_optional=False,
        )


class ChatClient:
    """OpenAI ``/v1/chat/completions``, streamed: any OpenAI-compatible server (ours, the peers).

    Only what every server understands is sent (no ``ignore_eos``); output tokens come from
    the usage the server reports at the end of the stream.
    """

    def __init__(self, session: aiohttp.ClientSession, url: str, model: str) -> None:
        self.session, self.url, self.model = session, url, model

    async def run(self, request: BenchRequest) -> Result:
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": request.prompt}],
            "max_tokens": request.output_tokens,
            "temperature": 0.0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        return await _openai_stream(
            self.session,
            f"{self.url}/v1/chat/completions",
            body,
            _Timer(request),
            lambda choice: choice.get("delta", {}).get("content"),
            done_optional=True,
        )


class DirectClient:
    """The LLM service's own BentoML API, bypassing the gateway."""

    def __init__(self, session: aiohttp.ClientSession, url: str, internal_token: str) -> None:
        self.session, self.url = session, url
        self.headers = {HEADER: internal_token}  # the service takes calls from services only

    async def run(self, request: BenchRequest) -> Result:
        body = {"request": {"prompt": request.prompt, "params": _params(request)}}
        timer = _Timer(request)
        try:
            async with self.session.post(
                f"{self.url}/generate", json=body, headers=self.headers
            ) as response:
                if response.status != 200:
                    return timer.fail(f"{response.status}: {(await response.text())[:200]}")
                async for line in _lines(response):
                    event = json.loads(line)
                    if event["type"] == "delta":
                        timer.chunk()
                    elif event["type"] == "finished":
                        return timer.end(event["completion_tokens"])
                    elif event["type"] == "error":
                        return timer.fail(event["message"])
                return timer.fail("stream ended without finishing")
        except (aiohttp.ClientError, TimeoutError) as exc:
            return timer.fail(repr(exc))


class EngineClient:
    """The engine in this process: the limit any server built on it can approach."""

    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine

    async def run(self, request: BenchRequest) -> Result:
        generation = GenerationRequest(
            prompt=request.prompt, params=SamplingParams(**_params(request))
        )
        timer = _Timer(request)
        async for event in self.engine.stream(generation):
            if isinstance(event, Delta):
                timer.chunk()
            elif isinstance(event, Finished):
                return timer.end(event.completion_tokens)
            elif isinstance(event, Failed):
                return timer.fail(event.message)
        return timer.fail("stream ended without finishing")
