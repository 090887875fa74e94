"""The encoder services' batcher: what queues while the model runs goes in the next batch,
whole requests only, a bad input fails alone, and only a request that really waited is refused."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from bentochain.serving.batching import Batcher, BatchRefused, ModelThread


class Model:
    """Upper-cases texts; holds its first call until released; fails on 'bad'."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, texts: list[str]) -> list[str]:
        self.calls.append(texts)
        self.started.set()
        assert self.release.wait(10), "the test never released the model"
        if "bad" in texts:
            raise ValueError("cannot read 'bad'")
        return [t.upper() for t in texts]


async def _until(condition: Callable[[], bool]) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


async def _hold_first_batch(batcher: Batcher[str, str], model: Model) -> asyncio.Task[list[str]]:
    first = asyncio.create_task(batcher(["first"]))
    assert await asyncio.to_thread(model.started.wait, 10)
    return first


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


def test_requests_queued_while_the_model_runs_go_in_one_batch() -> None:
    async def scenario() -> None:
        model = Model()
        batcher: Batcher[str, str] = Batcher(model, max_batch_size=64, max_wait_seconds=60)
        first = await _hold_first_batch(batcher, model)
        rest = [asyncio.create_task(batcher([f"a{i}", f"b{i}"])) for i in range(5)]
        await _until(lambda: batcher.waiting == 5)
        model.release.set()
        assert await first == ["FIRST"]
        assert await asyncio.gather(*rest) == [[f"A{i}", f"B{i}"] for i in range(5)]
        assert model.calls == [["first"], [t for i in range(5) for t in (f"a{i}", f"b{i}")]]

    run(scenario)


def test_a_batch_holds_whole_requests_up_to_max_batch_size() -> None:
    async def scenario() -> None:
        model = Model()
        batcher: Batcher[str, str] = Batcher(model, max_batch_size=4, max_wait_seconds=60)
        first = await _hold_first_batch(batcher, model)
        pairs = [asyncio.create_task(batcher([f"p{i}", f"q{i}"])) for i in range(3)]
        big = asyncio.create_task(batcher([f"x{i}" for i in range(6)]))
        await _until(lambda: batcher.waiting == 4)
        model.release.set()
        await asyncio.gather(first, *pairs, big)
        assert [len(call) for call in model.calls] == [1, 4, 2, 6]
        assert big.result() == [f"X{i}" for i in range(6)]

    run(scenario)


def test_a_bad_input_fails_its_own_request_and_the_batch_is_served() -> None:
    async def scenario() -> None:
        model = Model()
        batcher: Batcher[str, str] = Batcher(model, max_batch_size=64, max_wait_seconds=60)
        first = await _hold_first_batch(batcher, model)
        good = asyncio.create_task(batcher(["good"]))
        bad = asyncio.create_task(batcher(["bad"]))
        after = asyncio.create_task(batcher(["after"]))
        await _until(lambda: batcher.waiting == 3)
        model.release.set()
        await first
        assert await good == ["GOOD"]
        assert await after == ["AFTER"]
        with pytest.raises(ValueError, match="cannot read 'bad'"):
            await bad
        assert await batcher(["later"]) == ["LATER"]

    run(scenario)


def test_only_a_request_that_waited_too_long_is_refused() -> None:
    async def scenario() -> None:
        now = [0.0]
        model = Model()
        batcher: Batcher[str, str] = Batcher(
            model, max_batch_size=64, max_wait_seconds=5, clock=lambda: now[0]
        )
        first = await _hold_first_batch(batcher, model)
        early = asyncio.create_task(batcher(["early"]))
        await _until(lambda: batcher.waiting == 1)
        now[0] = 4.0
        late = asyncio.create_task(batcher(["late"]))
        await _until(lambda: batcher.waiting == 2)
        now[0] = 6.0  # early has waited 6 s, late 2 s
        model.release.set()
        await first
        with pytest.raises(BatchRefused, match=r"waited 6\.0s"):
            await early
        assert await late == ["LATE"]
        assert model.calls == [["first"], ["late"]]

    run(scenario)


def test_a_caller_that_went_away_is_not_computed() -> None:
    async def scenario() -> None:
        model = Model()
        batcher: Batcher[str, str] = Batcher(model, max_batch_size=64, max_wait_seconds=60)
        first = await _hold_first_batch(batcher, model)
        gone = asyncio.create_task(batcher(["gone"]))
        kept = asyncio.create_task(batcher(["kept"]))
        await _until(lambda: batcher.waiting == 2)
        gone.cancel()
        await _until(lambda: batcher.waiting == 1)
        model.release.set()
        await first
        assert await kept == ["KEPT"]
        assert gone.cancelled()
        assert model.calls == [["first"], ["kept"]]

    run(scenario)


def test_a_model_that_answers_the_wrong_number_of_results_fails_the_request() -> None:
    async def scenario() -> None:
        batcher: Batcher[str, str] = Batcher(
            lambda texts: texts[:1], max_batch_size=8, max_wait_seconds=60
        )
        with pytest.raises(RuntimeError, match="1 results for 2 items"):
            await batcher(["a", "b"])
        assert await batcher([]) == []

    run(scenario)


def test_a_refusal_is_a_503() -> None:
    assert BatchRefused("x").error_code == 503


def test_every_batch_runs_on_the_model_thread_it_was_loaded_on() -> None:
    """One thread owns the model (see ``ModelThread``), however many batches run."""
    thread = ModelThread("test-model")
    loaded_on = thread.load(threading.get_ident)
    ran_on: set[int] = set()

    def model(texts: list[str]) -> list[str]:
        ran_on.add(threading.get_ident())
        return [t.upper() for t in texts]

    async def scenario() -> None:
        batcher: Batcher[str, str] = Batcher(
            thread.batches(model), max_batch_size=2, max_wait_seconds=60, executor=thread.executor
        )
        answers = await asyncio.gather(*(batcher([f"t{i}"]) for i in range(8)))
        assert answers == [[f"T{i}"] for i in range(8)]

    try:
        run(scenario)
    finally:
        thread.executor.shutdown()
        thread.cores.close()
    assert ran_on == {loaded_on}
    assert loaded_on != threading.get_ident()
