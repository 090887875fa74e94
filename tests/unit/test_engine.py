"""The continuous-batching engine on the tiny demo model.

Events and limits, per-request parameters, batch invariance of greedy decoding, requests joining
and leaving a running batch, the bounded queue, KV memory and cancellation.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from bentochain.engines.llm.engine import EngineConfig, LLMEngine
from bentochain.engines.llm.types import (
    ChatMessage,
    Delta,
    Failed,
    Finished,
    GenerationRequest,
    SamplingParams,
    Started,
)

CONFIG = EngineConfig(
    default_max_tokens=16,
    max_tokens_limit=1_000_000,
    max_waiting_requests=64,
    max_running=16,
    kv_blocks=20_000,
)

Event = Started | Delta | Finished | Failed


@pytest.fixture(scope="module")
def engine(demo_dir: Path) -> Iterator[LLMEngine]:
    engine = LLMEngine(demo_dir / "llama-tiny", CONFIG)
    yield engine
    engine.close()


def make_engine(demo_dir: Path, **changes: object) -> LLMEngine:
    return LLMEngine(demo_dir / "llama-tiny", replace(CONFIG, **changes))  # type: ignore[arg-type]


def chat(text: str = "Hello there", **params: object) -> GenerationRequest:
    return GenerationRequest(
        messages=(ChatMessage(role="user", content=text),),
        params=SamplingParams(**params),
    )


def prompt(text: str, **params: object) -> GenerationRequest:
    return GenerationRequest(prompt=text, params=SamplingParams(**params))


async def collect(engine: LLMEngine, request: GenerationRequest) -> list[Event]:
    return [event async for event in engine.stream(request)]


def run(engine: LLMEngine, request: GenerationRequest) -> list[Event]:
    return asyncio.run(collect(engine, request))


def text_of(events: list[Event]) -> str:
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


def test_greedy_matches_transformers_generate(engine: LLMEngine) -> None:
    ids = engine.tokenizer("The cat sleeps on the warm chair.")["input_ids"]
    with torch.inference_mode():
        reference = engine.model.generate(
            torch.tensor([ids]), max_new_tokens=30, min_new_tokens=30, do_sample=False
        )
    expected = engine.tokenizer.decode(reference[0, len(ids) :], skip_special_tokens=True)
    events = run(
        engine,
        prompt("The cat sleeps on the warm chair.", max_tokens=30, temperature=0, ignore_eos=True),
    )
    assert text_of(events) == expected


def test_default_max_tokens_applies_when_none_is_given(engine: LLMEngine) -> None:
    finished = run(engine, chat(temperature=0.0, ignore_eos=True))[-1]
    assert isinstance(finished, Finished)
    assert finished.completion_tokens == CONFIG.default_max_tokens


def test_greedy_is_deterministic_and_seeds_reproduce(engine: LLMEngine) -> None:
    greedy = chat(max_tokens=20, temperature=0.0, ignore_eos=True)
    assert text_of(run(engine, greedy)) == text_of(run(engine, greedy))
    seeded = chat(max_tokens=20, temperature=1.0, seed=123, ignore_eos=True)
    other = chat(max_tokens=20, temperature=1.0, seed=124, ignore_eos=True)
    assert text_of(run(engine, seeded)) == text_of(run(engine, seeded))
    assert text_of(run(engine, seeded)) != text_of(run(engine, other))


def test_greedy_output_is_the_same_alone_and_in_a_full_batch(engine: LLMEngine) -> None:
    requests = [
        prompt(
            f"request {i}: " + "some words to vary the length " * (i % 7),
            max_tokens=24,
            temperature=0,
            ignore_eos=True,
        )
        for i in range(CONFIG.max_running)
    ]
    alone = [text_of(run(engine, r)) for r in requests[:6]]

    async def together() -> list[list[Event]]:
        return await asyncio.gather(*(collect(engine, r) for r in requests))

    batched = asyncio.run(together())
    assert [text_of(events) for events in batched[:6]] == alone
    # Seeded sampling is per request too: its stream does not depend on its neighbours.
    seeded = prompt("seeded", max_tokens=24, temperature=1.0, seed=7, ignore_eos=True)

    async def seeded_in_batch() -> list[Event]:
        results = await asyncio.gather(
            collect(engine, seeded), *(collect(engine, r) for r in requests[:8])
        )
        return results[0]

    assert text_of(asyncio.run(seeded_in_batch())) == text_of(run(engine, seeded))


def test_stop_string_ends_generation_with_stop(engine: LLMEngine) -> None:
    full = text_of(run(engine, chat(max_tokens=40, temperature=0.0, ignore_eos=True)))
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    cut = full[: full.index(stop)]
    events = run(engine, chat(max_tokens=40, temperature=0.0, ignore_eos=True, stop=(stop,)))
    assert text_of(events) == cut
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.finish_reason == "stop"
    assert finished.completion_tokens < 40


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


def test_an_empty_prompt_is_refused_and_the_engine_goes_on(engine: LLMEngine) -> None:
    """An empty prompt has nothing to prefill: it once failed the step and hung its request."""
    failed = run(engine, prompt("", max_tokens=4))
    assert len(failed) == 1 and isinstance(failed[0], Failed)
    assert (failed[0].status, failed[0].param) == (400, "prompt")
    assert isinstance(run(engine, prompt("hi", max_tokens=4))[-1], Finished)


def test_a_vanishing_temperature_is_greedy_not_nan(engine: LLMEngine) -> None:
    """5e-324 once divided the logits into infinities: the step failed and the request hung."""
    body: dict[str, Any] = {"max_tokens": 10, "ignore_eos": True, "min_tokens": 10}
    greedy = run(engine, chat(temperature=0.0, **body))
    tiny = run(engine, chat(temperature=5e-324, **body))
    assert isinstance(tiny[-1], Finished)
    assert text_of(tiny) == text_of(greedy)


def fails_alone(engine: LLMEngine, failing: str, message: str) -> None:
    """A request for ``failing`` ends with a 500 carrying ``message`` and holds no KV block
    after; the next request runs to its end."""
    try:
        failed = run(engine, prompt(failing, max_tokens=4))
        after = engine.budget.used
        fine = run(engine, prompt("antidote", max_tokens=4, ignore_eos=True))
    finally:
        engine.close()
    assert isinstance(failed[-1], Failed) and failed[-1].status == 500
    assert message in failed[-1].message
    assert after == 0  # nothing leaked
    assert isinstance(fine[-1], Finished) and fine[-1].completion_tokens == 4


def test_a_failing_prefill_fails_its_request_alone(demo_dir: Path) -> None:
    """The failed request gets its error event and its KV blocks back; the next one runs."""
    engine = make_engine(demo_dir)
    forward = engine.runner.forward

    def broken(rows: Any, tokens: Any) -> Any:
        if any(len(t) > 1 and engine.tokenizer.decode(t).endswith("poison") for t in tokens):
            raise RuntimeError("injected prefill failure")
        return forward(rows, tokens)

    engine.runner.forward = broken  # type: ignore[method-assign]
    fails_alone(engine, "poison", "injected prefill failure")


def test_memory_that_cannot_be_had_fails_its_request_alone(demo_dir: Path) -> None:
    """An allocation that raises (the arena's fallback out of memory) fails that request with a
    500 and gives its blocks back; the engine goes on serving."""
    engine = make_engine(demo_dir)
    sequence = engine.arena.sequence
    calls = 0

    def broken(blocks: int) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise MemoryError("injected allocation failure")
        return sequence(blocks)

    engine.arena.sequence = broken  # type: ignore[method-assign]
    fails_alone(engine, "first", "injected allocation failure")


def test_a_failing_decode_step_fails_only_its_sequence(demo_dir: Path) -> None:
    """A forward pass that fails because of one sequence: it fails alone, the others finish
    with the tokens they would have had without it, and every KV block comes back."""
    engine = make_engine(demo_dir)
    forward = engine.runner.forward
    poisoned = engine.tokenizer("poison")["input_ids"]

    def broken(rows: Any, tokens: Any) -> Any:
        if len(tokens[0]) == 1:  # a decode step: fails once the poisoned sequence is 3 deep
            for seq in list(engine._running):
                if (
                    seq.job.prompt_ids == poisoned
                    and seq.generated >= 3
                    and any(seq.kv is r for r in rows)
                ):
                    raise RuntimeError("injected decode failure")
        return forward(rows, tokens)

    fine = [prompt(f"fine {i}", max_tokens=12, ignore_eos=True, temperature=0) for i in range(3)]
    try:
        alone = [text_of(run(engine, r)) for r in fine]
        engine.runner.forward = broken  # type: ignore[method-assign]

        async def together() -> list[list[Event]]:
            bad = prompt("poison", max_tokens=12, ignore_eos=True, temperature=0)
            return await asyncio.gather(collect(engine, bad), *(collect(engine, r) for r in fine))

        failed, *others = asyncio.run(together())
        leaked = engine.budget.used
    finally:
        engine.close()
    assert isinstance(failed[-1], Failed) and failed[-1].status == 500
    assert "injected decode failure" in failed[-1].message
    assert sum(isinstance(e, Delta) for e in failed) >= 1  # it had streamed before it failed
    assert [text_of(events) for events in others] == alone
    assert all(isinstance(e[-1], Finished) and e[-1].completion_tokens == 12 for e in others)
    assert leaked == 0


def test_a_failing_sampler_fails_only_its_sequence(demo_dir: Path) -> None:
    engine = make_engine(demo_dir)
    sample = engine.sampler.sample

    def broken(logits: Any, rows: Any) -> Any:
        if any(row.params.temperature == 0.5 for row in rows):
            raise RuntimeError("injected sampling failure")
        return sample(logits, rows)

    engine.sampler.sample = broken  # type: ignore[method-assign]
    try:

        async def together() -> list[list[Event]]:
            bad = prompt("odd", max_tokens=8, temperature=0.5)
            good = [prompt(f"ok {i}", max_tokens=8, ignore_eos=True) for i in range(3)]
            return await asyncio.gather(collect(engine, bad), *(collect(engine, r) for r in good))

        failed, *others = asyncio.run(together())
        leaked = engine.budget.used
    finally:
        engine.close()
    assert isinstance(failed[-1], Failed) and "injected sampling failure" in failed[-1].message
    assert all(isinstance(e[-1], Finished) and e[-1].completion_tokens == 8 for e in others)
    assert leaked == 0


def test_a_request_larger_than_kv_memory_is_refused(demo_dir: Path) -> None:
    engine = make_engine(demo_dir, kv_blocks=4, block_size=16)  # 64 tokens in all
    try:
        failed = run(engine, prompt("hi", max_tokens=100))[0]
    finally:
        engine.close()
    assert isinstance(failed, Failed) and failed.code == "context_length_exceeded"
    assert "64 tokens" in failed.message


async def _first_delta(stream: AsyncGenerator[Event, None]) -> float:
    async for event in stream:
        if isinstance(event, Delta):
            return time.perf_counter()
    raise AssertionError("no token")


def test_a_short_request_joins_a_running_long_one_and_finishes_first(engine: LLMEngine) -> None:
    async def scenario() -> tuple[float, float, float]:
        long_stream = engine.stream(prompt("long", max_tokens=3000, ignore_eos=True))
        await _first_delta(long_stream)  # the long one is decoding
        started = time.perf_counter()
        short = await collect(engine, prompt("short", max_tokens=8, ignore_eos=True))
        short_done = time.perf_counter()
        assert isinstance(short[-1], Finished)
        async for event in long_stream:
            if isinstance(event, Finished):
                break
        return started, short_done, time.perf_counter()

    started, short_done, long_done = asyncio.run(scenario())
    assert short_done - started < (long_done - started) / 5


def test_requests_beyond_kv_memory_wait_for_it_instead_of_failing(demo_dir: Path) -> None:
    # Each request reserves 3 blocks (prompt + 40 tokens); 6 blocks hold two at a time.
    engine = make_engine(demo_dir, kv_blocks=6, block_size=16)

    async def scenario() -> list[list[Event]]:
        return await asyncio.gather(
            *(collect(engine, prompt(f"p{i}", max_tokens=40, ignore_eos=True)) for i in range(5))
        )

    try:
        results = asyncio.run(scenario())
        assert engine.budget.used == 0
    finally:
        engine.close()
    assert all(isinstance(events[-1], Finished) for events in results)


def test_a_full_queue_answers_429_at_once(demo_dir: Path) -> None:
    engine = make_engine(demo_dir, max_running=1, max_waiting_requests=1)
    long = chat(max_tokens=20_000, ignore_eos=True)

    async def scenario() -> Failed:
        running = engine.stream(long)
        await _first_delta(running)  # admitted: it holds the only running slot
        waiting = engine.stream(long)
        assert isinstance(await anext(waiting), Started)  # queued
        refused = [event async for event in engine.stream(long)]
        # At once: it never joined the queue (which still holds the one waiting request).
        assert engine.load() == 2
        await running.aclose()
        await waiting.aclose()
        assert len(refused) == 1 and isinstance(refused[0], Failed)
        return refused[0]

    try:
        failed = asyncio.run(scenario())
    finally:
        engine.close()
    assert failed.status == 429 and failed.retry_after == 1.0


def test_a_request_waiting_too_long_gets_503(demo_dir: Path) -> None:
    engine = make_engine(demo_dir, max_running=1, max_queue_seconds=0.5)

    async def scenario() -> list[Event]:
        running = engine.stream(chat(max_tokens=20_000, ignore_eos=True))
        await _first_delta(running)
        events = await collect(engine, chat(max_tokens=4))
        await running.aclose()
        return events

    try:
        events = asyncio.run(scenario())
    finally:
        engine.close()
    failed = events[-1]
    assert isinstance(failed, Failed)
    assert (failed.status, failed.code, failed.retry_after) == (503, "queue_timeout", 1.0)


def test_a_cancelled_request_frees_its_slot_and_memory(demo_dir: Path) -> None:
    engine = make_engine(demo_dir, max_running=1)

    async def scenario() -> float:
        stream = engine.stream(chat(max_tokens=20_000, ignore_eos=True))
        await _first_delta(stream)
        assert engine.budget.used > 0
        await stream.aclose()  # the caller went away
        started = time.perf_counter()
        # With one slot, this only runs once the cancelled one has left.
        events = await collect(engine, chat(max_tokens=5, temperature=0.0))
        assert isinstance(events[-1], Finished)
        return time.perf_counter() - started

    try:
        assert asyncio.run(scenario()) < 2.0
        deadline = time.monotonic() + 5
        while engine.budget.used and time.monotonic() < deadline:
            time.sleep(0.05)
        assert engine.budget.used == 0
    finally:
        engine.close()


def test_end_of_sequence_stops_unless_ignored_or_below_min_tokens(demo_dir: Path) -> None:
    engine = make_engine(demo_dir)
    try:
        ids = engine.tokenizer("Once upon a time")["input_ids"]
        with torch.inference_mode():
            greedy = engine.model.generate(
                torch.tensor([ids]), max_new_tokens=3, min_new_tokens=3, do_sample=False
            )
        # Make the third greedy token this engine's end of sequence.
        engine.eos_ids = frozenset({int(greedy[0, -1])})
        request = "Once upon a time"
        stopped = run(engine, prompt(request, max_tokens=12, temperature=0))[-1]
        at_least = run(engine, prompt(request, max_tokens=12, min_tokens=8, temperature=0))[-1]
        ignored = run(engine, prompt(request, max_tokens=12, temperature=0, ignore_eos=True))[-1]
    finally:
        engine.close()
    assert isinstance(stopped, Finished)
    assert (stopped.finish_reason, stopped.completion_tokens) == ("stop", 3)
    assert isinstance(at_least, Finished) and at_least.completion_tokens >= 8
    assert isinstance(ignored, Finished)
    assert (ignored.finish_reason, ignored.completion_tokens) == ("length", 12)


def test_load_counts_running_and_waiting_sequences(demo_dir: Path) -> None:
    """What /load reports to least_load callers; it is back to zero once they are done."""
    engine = make_engine(demo_dir, max_running=1)

    async def scenario() -> tuple[int, int]:
        first = engine.stream(chat("one", max_tokens=2000, ignore_eos=True))
        second = engine.stream(chat("two", max_tokens=2000, ignore_eos=True))
        await anext(first)  # started
        await anext(second)
        while not isinstance(await anext(first), Delta):  # decoding: one runs, one waits
            pass
        busy = engine.load()
        await first.aclose()
        await second.aclose()
        await collect(engine, chat("three", max_tokens=3))
        return busy, engine.load()

    try:
        busy, idle = asyncio.run(scenario())
    finally:
        engine.close()
    assert (busy, idle) == (2, 0)


def test_the_engine_reports_kv_memory_in_use_and_the_token_rate(demo_dir: Path) -> None:
    from bentochain.engines.llm.metrics import NullMetrics
    from bentochain.observability.metrics import PrometheusEngineMetrics

    class Seen(NullMetrics):
        def __init__(self) -> None:
            self.kv: list[tuple[int, int]] = []

        def occupancy(self, *, running: int, waiting: int, kv_used: int, kv_total: int) -> None:
            self.kv.append((kv_used, kv_total))

    seen = Seen()
    engine = LLMEngine(
        demo_dir / "llama-tiny", replace(CONFIG, kv_blocks=6, block_size=16), metrics=seen
    )

    async def scenario() -> list[list[Event]]:
        return await asyncio.gather(
            *(collect(engine, prompt(f"p{i}", max_tokens=40, ignore_eos=True)) for i in range(2))
        )

    try:
        asyncio.run(scenario())
    finally:
        engine.close()
    assert {total for _, total in seen.kv} == {6}
    assert max(used for used, _ in seen.kv) == 6  # two requests of 3 blocks each, together
    assert seen.kv[-1][0] == 0  # all given back

    # The Prometheus side: a rate while tokens come, 0 once the engine is idle.
    from prometheus_client import REGISTRY

    def value(name: str) -> float | None:
        return REGISTRY.get_sample_value(f"bentochain_llm_{name}", {"model": "rate-test"})

    gauges = PrometheusEngineMetrics("rate-test")
    gauges.generated(10)
    gauges.occupancy(running=1, waiting=0, kv_used=2, kv_total=8)
    assert value("kv_cache_usage_ratio") == 0.25
    assert (value("generation_tokens_per_second") or 0) > 0
    gauges.occupancy(running=0, waiting=0, kv_used=0, kv_total=8)
    assert value("generation_tokens_per_second") == 0


def _until(condition: Any, what: str, polls: int = 2000) -> None:
    for _ in range(polls):
        if condition():
            return
        time.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_hung_step_makes_the_engine_not_live_until_it_returns(demo_dir: Path) -> None:
    import threading

    engine = make_engine(demo_dir, step_timeout_seconds=0.2)
    forward = engine.runner.forward
    entered, release = threading.Event(), threading.Event()

    def stuck(rows: Any, tokens: Any) -> Any:
        entered.set()
        release.wait(timeout=60)  # bounded: the test releases it
        return forward(rows, tokens)

    try:
        assert engine.health().alive
        engine.runner.forward = stuck  # type: ignore[method-assign]

        async def scenario() -> list[Event]:
            stream = collect(engine, prompt("hang", max_tokens=3, ignore_eos=True))
            task = asyncio.ensure_future(stream)
            await asyncio.to_thread(entered.wait, 60)
            await asyncio.to_thread(_until, lambda: not engine.health().alive, "not live")
            health = engine.health()
            assert "one engine step has run for" in health.reason and "limit 0.2s" in health.reason
            engine.runner.forward = forward  # type: ignore[method-assign]
            release.set()
            return await task

        events = asyncio.run(scenario())
        assert engine.health().alive  # the step returned: live again
    finally:
        release.set()
        engine.close()
    assert isinstance(events[-1], Finished) and events[-1].completion_tokens == 3


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_engine_thread_is_not_live_and_fails_what_it_held(demo_dir: Path) -> None:
    """Something that kills the thread itself (not an Exception a step can catch)."""

    class Fatal(BaseException):
        pass

    engine = make_engine(demo_dir, max_running=1)
    forward = engine.runner.forward

    def fatal(rows: Any, tokens: Any) -> Any:
        if len(tokens[0]) == 1 and engine.load() >= 2:  # a decode step with one waiting
            raise Fatal("the thread dies here")
        return forward(rows, tokens)

    engine.runner.forward = fatal  # type: ignore[method-assign]
    try:

        async def scenario() -> list[list[Event]]:
            running = collect(engine, prompt("first", max_tokens=50, ignore_eos=True))
            waiting = collect(engine, prompt("second", max_tokens=5, ignore_eos=True))
            return list(await asyncio.gather(running, waiting))

        results = asyncio.run(scenario())
        _until(lambda: not engine._thread.is_alive(), "the thread to end")
        health = engine.health()
    finally:
        engine.close()
    assert not health.alive and health.reason == "the engine thread has stopped"
    for events in results:  # both end, neither hangs
        assert isinstance(events[-1], Failed) and events[-1].status == 503
        assert events[-1].code == "engine_stopped"


def test_bfloat16_engine_keeps_weights_and_kv_in_bfloat16_and_generates(
    demo_dir: Path, engine: LLMEngine
) -> None:
    full = engine  # the module's engine: float32 on the CPU (auto)
    engine = make_engine(demo_dir, dtype="bfloat16")
    try:
        assert next(engine.model.parameters()).dtype == torch.bfloat16
        assert engine.kv_layout.dtype == torch.bfloat16
        assert engine.kv_layout.bytes_per_token * 2 == full.kv_layout.bytes_per_token
        events = run(engine, prompt("Hello", max_tokens=6, ignore_eos=True))
        end = events[-1]
        assert isinstance(end, Finished), events
        assert end.completion_tokens == 6
    finally:
        engine.close()


def test_an_unknown_dtype_is_refused_with_its_name() -> None:
    from bentochain.engines.llm.engine import resolve_dtype

    with pytest.raises(ValueError, match="'int8'"):
        resolve_dtype("int8", torch.device("cpu"))
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16


def test_a_cut_ends_every_generation_with_its_failure_and_the_time_it_needs_is_known(
    demo_dir: Path,
) -> None:
    """A drain whose grace ran out cuts the engine's work: each stream gets the failure as its
    last event. Before that, the engine can say how long what it holds needs."""
    engine = make_engine(demo_dir)
    cut = Failed(status=503, code="server_replaced", message="replaced; retry")

    async def scenario() -> tuple[list[Event], int, float | None, list[Event]]:
        stream = engine.stream(prompt("long", max_tokens=100_000, ignore_eos=True))
        events = [await anext(stream) for _ in range(5)]  # started, tokens of a few steps
        left, needed = engine.tokens_left(), engine.seconds_for(engine.tokens_left())
        engine.cut(cut)
        events += [event async for event in stream]
        return events, left, needed, await collect(engine, prompt("after"))

    try:
        events, left, needed, after = asyncio.run(scenario())
    finally:
        engine.close()
    assert isinstance(events[-1], Failed) and events[-1].code == "server_replaced"
    assert not any(isinstance(e, Finished) for e in events)
    assert 99_000 < left < 100_000
    assert needed is not None and needed > 0  # steps were measured: a rate is known
    assert after[-1] == cut  # what comes after the cut is cut too
