"""The generation engine on the tiny demo model: events, limits, stops, queueing, cancellation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bentochain.engines.llm.engine import EngineLimits, LLMEngine
from bentochain.engines.llm.types import (
    ChatMessage,
    Delta,
    Failed,
    Finished,
    GenerationRequest,
    SamplingParams,
    Started,
)

LIMITS = EngineLimits(default_max_tokens=16, max_tokens_limit=1_000_000, max_waiting_requests=8)


@pytest.fixture(scope="module")
def engine(demo_dir: Path) -> Iterator[LLMEngine]:
    engine = LLMEngine(demo_dir / "llama-tiny", LIMITS)
    yield engine
    engine.close()


def chat(text: str = "Hello there", **params: object) -> GenerationRequest:
    return GenerationRequest(
        messages=(ChatMessage(role="user", content=text),), params=SamplingParams(**params)
    )


def run(engine: LLMEngine, request: GenerationRequest) -> list[object]:
    async def collect() -> list[object]:
        return [event async for event in engine.stream(request)]

    return asyncio.run(collect())


def text_of(events: list[object]) -> str:
    return "".join(e.text for e in events if isinstance(e, Delta))


def test_events_start_stream_and_finish_with_counts(engine: LLMEngine) -> None:
    events = run(engine, chat(max_tokens=12, temperature=0.0, ignore_eos=True))
    started, finished = events[0], events[-1]
    assert isinstance(started, Started)
    expected_prompt = len(engine.encode(chat()))
    assert started.prompt_tokens == expected_prompt
    assert isinstance(finished, Finished)
    assert finished.finish_reason == "length"
    assert (finished.prompt_tokens, finished.completion_tokens) == (expected_prompt, 12)
    deltas = [e for e in events if isinstance(e, Delta)]
    assert deltas and all(d.text for d in deltas)
    assert [d.completion_tokens for d in deltas] == sorted(d.completion_tokens for d in deltas)


def test_default_max_tokens_applies_when_none_is_given(engine: LLMEngine) -> None:
    finished = run(engine, chat(temperature=0.0, ignore_eos=True))[-1]
    assert isinstance(finished, Finished)
    assert finished.completion_tokens == LIMITS.default_max_tokens


def test_greedy_is_deterministic_and_seeds_reproduce(engine: LLMEngine) -> None:
    greedy = chat(max_tokens=20, temperature=0.0, ignore_eos=True)
    assert text_of(run(engine, greedy)) == text_of(run(engine, greedy))
    seeded = chat(max_tokens=20, temperature=1.0, seed=123, ignore_eos=True)
    other = chat(max_tokens=20, temperature=1.0, seed=124, ignore_eos=True)
    assert text_of(run(engine, seeded)) == text_of(run(engine, seeded))
    assert text_of(run(engine, seeded)) != text_of(run(engine, other))


def test_stop_string_ends_generation_with_stop(engine: LLMEngine) -> None:
    full = text_of(run(engine, chat(max_tokens=40, temperature=0.0, ignore_eos=True)))
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    cut = full[: full.index(stop)]
    events = run(engine, chat(max_tokens=40, temperature=0.0, ignore_eos=True, stop=(stop,)))
    assert text_of(events) == cut
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.finish_reason == "stop"
    assert finished.completion_tokens < 40


def test_plain_prompt_completion(engine: LLMEngine) -> None:
    request = GenerationRequest(prompt="Once upon a time", params=SamplingParams(max_tokens=5))
    events = run(engine, request)
    assert isinstance(events[0], Started) and isinstance(events[-1], Finished)


@pytest.mark.parametrize(
    ("max_tokens", "code"),
    [(2_000_000, "invalid_value"), (140_000, "context_length_exceeded")],
)
def test_too_many_tokens_is_refused_before_starting(
    engine: LLMEngine, max_tokens: int, code: str
) -> None:
    events = run(engine, chat(max_tokens=max_tokens))
    assert len(events) == 1
    failed = events[0]
    assert isinstance(failed, Failed)
    assert (failed.status, failed.code, failed.param) == (400, code, "max_tokens")


def test_a_full_queue_answers_429_at_once(demo_dir: Path) -> None:
    engine = LLMEngine(
        demo_dir / "llama-tiny",
        EngineLimits(default_max_tokens=16, max_tokens_limit=100_000, max_waiting_requests=1),
    )
    long = chat(max_tokens=20_000, ignore_eos=True)

    async def scenario() -> Failed:
        running = engine.stream(long)
        assert isinstance(await anext(running), Started)
        assert isinstance(await anext(running), Delta)  # the engine thread took it
        waiting = engine.stream(long)
        assert isinstance(await anext(waiting), Started)  # queued
        started = time.perf_counter()
        refused = [event async for event in engine.stream(long)]
        assert time.perf_counter() - started < 1.0
        await running.aclose()
        await waiting.aclose()
        assert len(refused) == 1 and isinstance(refused[0], Failed)
        return refused[0]

    try:
        failed = asyncio.run(scenario())
    finally:
        engine.close()
    assert failed.status == 429 and failed.retry_after == 1.0


def test_a_cancelled_request_frees_the_engine(engine: LLMEngine) -> None:
    async def scenario() -> float:
        # ~20k tokens would keep the tiny model busy for well over ten seconds.
        stream = engine.stream(chat(max_tokens=20_000, ignore_eos=True))
        for _ in range(3):
            await anext(stream)
        await stream.aclose()
        started = time.perf_counter()
        events = [e async for e in engine.stream(chat(max_tokens=5, temperature=0.0))]
        assert isinstance(events[-1], Finished)
        return time.perf_counter() - started

    assert asyncio.run(scenario()) < 5.0
