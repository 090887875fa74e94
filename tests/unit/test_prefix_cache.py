"""Automatic prefix caching: reused KV never changes an answer, and stays within the budget."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from bentochain.engines.llm.engine import EngineConfig, LLMEngine
from bentochain.engines.llm.kv import BlockBudget, BufferPool, KVArena, KVLayout, SequenceKV
from bentochain.engines.llm.metrics import NullMetrics
from bentochain.engines.llm.prefix import PrefixCache, block_keys
from bentochain.engines.llm.types import (
    ChatMessage,
    Delta,
    Failed,
    Finished,
    GenerationRequest,
    SamplingParams,
    Started,
)

Event = Started | Delta | Finished | Failed
CONFIG = EngineConfig(default_max_tokens=16, max_tokens_limit=100_000, kv_blocks=4096)
SYSTEM = "You answer questions about the shop. Tables: " + ", ".join(
    f"table_{i}(id, name, price, created_at)" for i in range(12)
)
QUESTIONS = [f"Question {i}: how many rows are in table_{i}?" for i in range(6)]


class Counting(NullMetrics):
    def __init__(self) -> None:
        self.queried = 0
        self.hit = 0

    def prefix_cache(self, *, queried: int, hit: int) -> None:
        self.queried += queried
        self.hit += hit


def request(question: str, **params: object) -> GenerationRequest:
    return GenerationRequest(
        messages=(
            ChatMessage(role="system", content=SYSTEM),
            ChatMessage(role="user", content=question),
        ),
        params=SamplingParams(**{"temperature": 0, "max_tokens": 12, **params}),
    )


def text(events: list[Event]) -> str:
    assert isinstance(events[-1], Finished), events[-1]
    return "".join(e.text for e in events if isinstance(e, Delta))


async def collect(engine: LLMEngine, req: GenerationRequest) -> list[Event]:
    return [event async for event in engine.stream(req)]


def answers(engine: LLMEngine, concurrently: bool = False) -> list[str]:
    async def together() -> list[list[Event]]:
        return list(await asyncio.gather(*(collect(engine, request(q)) for q in QUESTIONS)))

    if concurrently:
        return [text(events) for events in asyncio.run(together())]
    return [text(asyncio.run(collect(engine, request(q)))) for q in QUESTIONS]


def test_greedy_answers_are_the_same_with_the_cache_on_and_off(demo_dir: Path) -> None:
    model = demo_dir / "llama-tiny"
    off = LLMEngine(model, replace(CONFIG, prefix_caching=False))
    try:
        expected = answers(off)
        assert off.prefix is None
    finally:
        off.close()
    metrics = Counting()
    on = LLMEngine(model, CONFIG, metrics=metrics)
    try:
        first = answers(on)  # the first request fills the cache, the next ones hit it
        again = answers(on, concurrently=True)
        prompt_tokens = len(on.encode(request(QUESTIONS[0])))
        leaked = on.budget.used
    finally:
        on.close()
    assert first == expected and again == expected
    assert leaked == 0  # sequences gave their blocks back; the cache keeps its own
    shared = len(on.encode(GenerationRequest(prompt=SYSTEM, params=SamplingParams()))) // 16
    assert shared >= 10  # the test means something: the system prompt spans many blocks
    assert metrics.hit >= (2 * len(QUESTIONS) - 1) * (shared - 1) * CONFIG.block_size
    assert metrics.queried >= 2 * len(QUESTIONS) * prompt_tokens - 2 * len(QUESTIONS)


def test_a_prompt_seen_before_is_prefilled_from_its_last_block_only(demo_dir: Path) -> None:
    metrics = Counting()
    engine = LLMEngine(demo_dir / "llama-tiny", CONFIG, metrics=metrics)
    try:
        once = text(asyncio.run(collect(engine, request(QUESTIONS[0]))))
        before = metrics.hit
        twice = text(asyncio.run(collect(engine, request(QUESTIONS[0]))))
        tokens = len(engine.encode(request(QUESTIONS[0])))
    finally:
        engine.close()
    assert once == twice
    assert before == 0
    # Every full block but one token's worth: at least one token is computed for its logits.
    assert metrics.hit == ((tokens - 1) // CONFIG.block_size) * CONFIG.block_size


def test_cached_blocks_give_way_to_sequences_that_need_the_memory(demo_dir: Path) -> None:
    """A budget that the cache alone could fill: requests still run, none waits forever."""
    engine = LLMEngine(demo_dir / "llama-tiny", replace(CONFIG, kv_blocks=40, max_running=2))
    try:
        first = answers(engine)
        filled = engine.budget.cached
        second = answers(engine, concurrently=True)
        budget = engine.budget
        assert budget.used == 0
        assert budget.cached + budget.pooled <= budget.total
    finally:
        engine.close()
    assert filled > 0 and first == second


def _kv(tokens: int, layers: int = 2, fill: float = 0.0) -> SequenceKV:
    shape = (layers, 1, tokens, 4)
    kv = SequenceKV(torch.full(shape, fill), torch.full(shape, -fill))
    kv.length = tokens
    return kv


def _arena(budget: BlockBudget) -> KVArena:
    """An arena the size of ``budget`` for ``_kv``'s shape, in blocks of 4 tokens."""
    layout = KVLayout(2, 1, 4, torch.float32, torch.device("cpu"))
    return KVArena(layout, budget.total, 4)


def test_a_key_names_the_whole_prefix_not_just_its_block() -> None:
    a = block_keys([1, 2, 3, 4, 5, 6, 7, 8], 4)
    b = block_keys([9, 9, 9, 9, 5, 6, 7, 8], 4)
    assert len(a) == 2 and a[1] != b[1]  # same last block, other history
    assert block_keys([1, 2, 3, 4, 5], 4) == a[:1]  # partial blocks have no key


def test_eviction_takes_the_ends_of_prefixes_before_their_starts() -> None:
    budget = BlockBudget(100)
    cache = PrefixCache(4, budget, _arena(budget))
    old = list(range(16))
    new = list(range(100, 116))
    assert cache.store(old, _kv(16, fill=1.0)) == 4
    assert cache.store(new, _kv(16, fill=2.0)) == 4
    assert budget.cached == 8
    assert cache.evict(2) == 2  # the older prefix's last two blocks go first
    assert cache.lookup([*old, 0]).count == 2
    assert cache.lookup([*new, 0]).count == 4
    restored = _kv(20)
    restored.length = 0
    cache.restore(cache.lookup([*new, 0]), restored)
    assert restored.length == 16 and bool((restored.all_keys[:, :, :16] == 2.0).all())
    cache.clear()
    assert budget.cached == 0 and len(cache) == 0


def test_the_cache_never_takes_memory_lent_to_sequences() -> None:
    budget = BlockBudget(3)
    assert budget.take(2)
    cache = PrefixCache(4, budget, _arena(budget))
    assert cache.store(list(range(16)), _kv(16)) == 1  # one free block: one cached
    assert budget.free == 0 and budget.used == 2 and budget.cached == 1


def test_a_freed_buffer_is_lent_again_to_a_prompt_that_starts_alike() -> None:
    """Its prompt's blocks are there already: nothing of them is copied again."""
    budget = BlockBudget(20)
    arena = _arena(budget)
    pool = BufferPool(budget, arena)
    cache = PrefixCache(4, budget, arena, pool)
    prompt = list(range(16))
    assert budget.take(5)
    first = _kv(20, fill=1.0)
    first.length = 16
    cache.store(prompt, first)
    pool.keep(first, 5)
    assert (budget.used, budget.cached, budget.pooled) == (0, 4, 5)
    assert pool.reuse(6) is None  # too small for 6 blocks
    assert pool.reuse(3) is None  # more than an eighth too big for 3
    hit = cache.lookup([*prompt[:12], 99, 98])
    assert hit.count == 3
    lent = pool.reuse(5, hit.keys)
    assert lent is not None and lent[0] is first and lent[1] == 5
    assert (budget.used, budget.pooled) == (5, 0)
    first.all_keys[:, :, :12] = 7.0  # what a restore would have to overwrite, if it copied
    cache.restore(hit, first)
    assert first.length == 12 and bool((first.all_keys[:, :, :12] == 7.0).all())


def test_kept_buffers_give_way_to_the_prefix_cache_and_to_sequences() -> None:
    budget = BlockBudget(10)
    arena = _arena(budget)
    pool = BufferPool(budget, arena)
    cache = PrefixCache(4, budget, arena, pool)
    for _ in range(2):
        assert budget.take(5)
        pool.keep(_kv(20), 5)
    assert budget.free == 0 and len(pool) == 2
    assert cache.store(list(range(8)), _kv(8)) == 2  # one kept buffer is given up for them
    assert (budget.cached, budget.pooled, len(pool)) == (2, 5, 1)
    assert pool.drop(3) == 5 and budget.free == 8 and len(pool) == 0


def test_memory_taken_back_from_the_cache_is_lent_once(demo_dir: Path) -> None:
    """Ever longer distinct prompts: the cache fills what sequences leave, and each prompt must
    take some of it back to run. Every block lent comes back once the requests are done."""
    engine = LLMEngine(demo_dir / "llama-tiny", replace(CONFIG, kv_blocks=48, max_running=1))
    try:
        evicted = 0
        for i in range(8):
            prompt = f"{i} " + " ".join(f"w{i}x{j}" for j in range(8 + 6 * i))
            req = GenerationRequest(
                prompt=prompt, params=SamplingParams(temperature=0, max_tokens=4)
            )
            cached = engine.budget.cached
            events = asyncio.run(collect(engine, req))
            assert isinstance(events[-1], Finished), events[-1]
            assert engine.budget.used == 0, f"request {i} left blocks lent"
            evicted += engine.budget.cached < cached
        assert evicted, "no request had to take memory back from the cache"
    finally:
        engine.close()


def test_the_arena_lends_runs_of_blocks_and_merges_what_comes_back() -> None:
    budget = BlockBudget(10)
    arena = _arena(budget)
    a, b, c = arena.sequence(3), arena.sequence(3), arena.sequence(4)
    assert (a.span, b.span, c.span, arena.free_blocks) == ((0, 3), (3, 3), (6, 4), 0)
    assert a.all_keys.shape == (2, 1, 12, 4)
    b.all_keys.fill_(5.0)
    assert bool((a.all_keys == 0).all()) and bool((c.all_keys == 0).all())  # runs never overlap
    arena.release(a)
    arena.release(c)
    spare = arena.sequence(5)  # 3 + 4 blocks free, in two pieces: memory of its own
    assert spare.span is None and spare.all_keys.shape == (2, 1, 20, 4)
    arena.release(b)
    arena.release(b)  # a second release gives nothing back twice
    assert arena.free_blocks == 10
    whole = arena.sequence(10)  # the three runs merged into one again
    assert whole.span == (0, 10) and arena.free_blocks == 0


def test_cached_blocks_and_kept_buffers_live_in_the_arena_and_leave_it_when_dropped() -> None:
    budget = BlockBudget(12)
    arena = _arena(budget)
    pool = BufferPool(budget, arena)
    cache = PrefixCache(4, budget, arena, pool)
    assert budget.take(4)
    seq = arena.sequence(4)
    seq.all_keys[:, :, :16] = 3.0
    seq.length = 16
    assert cache.store(list(range(16)), seq) == 4
    pool.keep(seq, 4)
    assert arena.free_blocks == budget.free == 4
    hit = cache.lookup([*range(16), 0])
    assert hit.count == 4 and bool((hit.blocks[3].keys == 3.0).all())
    assert cache.evict(4) == 4 and pool.drop(4) == 4
    assert arena.free_blocks == budget.free == 12


def test_a_kv_budget_larger_than_the_memory_is_refused_with_what_to_lower() -> None:
    layout = KVLayout(64, 64, 128, torch.float32, torch.device("cpu"))  # 4 MiB a token
    with pytest.raises(MemoryError, match=r"lower llm\.kv_cache\.blocks") as refused:
        KVArena(layout, 2**30, 16)  # 64 PiB: checked before anything is allocated
    assert "llm.kv_cache.blocks = 1073741824" in str(refused.value)
