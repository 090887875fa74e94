"""How requests arrive: all at once, a closed loop at a concurrency, or open-loop Poisson."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

from loadtest.clients import Client, Result
from loadtest.dataset import BenchRequest


@dataclass
class Run:
    """The results of one load pattern and how long it took, first send to last answer."""

    label: str
    results: list[Result]
    duration: float


async def burst(client: Client, requests: Sequence[BenchRequest], label: str = "burst") -> Run:
    """Every request at once (vLLM's ``--request-rate inf``): the saturated throughput."""
    started = time.perf_counter()
    results = await asyncio.gather(*(client.run(r) for r in requests))
    return Run(label, list(results), time.perf_counter() - started)


async def closed_loop(client: Client, requests: Sequence[BenchRequest], concurrency: int) -> Run:
    """``concurrency`` users, each sending its next request when the previous one ends."""
    queue = list(requests)
    results: list[Result] = []
    started = time.perf_counter()

    async def user() -> None:
        while queue:
            results.append(await client.run(queue.pop(0)))

    await asyncio.gather(*(user() for _ in range(concurrency)))
    return Run(f"closed c={concurrency}", results, time.perf_counter() - started)


async def poisson(
    client: Client, requests: Sequence[BenchRequest], rate: float, seed: int = 0
) -> Run:
    """Open loop: requests arrive at ``rate`` per second on average, whatever the server does."""
    rng = random.Random(seed)
    started = time.perf_counter()
    tasks = []
    when = 0.0
    for request in requests:
        delay = when - (time.perf_counter() - started)
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(client.run(request)))
        when += rng.expovariate(rate)
    results = await asyncio.gather(*tasks)
    return Run(f"poisson {rate:.2f}/s", list(results), time.perf_counter() - started)
