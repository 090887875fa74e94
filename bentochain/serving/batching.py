"""Dynamic batching for the encoder services (Embedder, TranslatorFR, TranslatorES).

BentoML's adaptive batcher (``batchable=True``) refuses a queued request (503) when a linear
fit of past batch times says it can no longer make ``max_latency_ms``. The fit is trained on the
service's first twenty or so requests, sent in batches of one to three, and extrapolated to full
batches: a burst at start-up is served a few requests at a time while the rest wait, then refused
although a real batch would have served them in time (30 of 384 requests in a CI run of the
concurrency test). This batcher has no estimate. While the model runs, requests queue; when it is
free, everything queued (up to ``max_batch_size`` items) runs as one batch. Only a request that
really waited ``max_wait_seconds`` without starting is refused.

Each service's model lives on one thread of its own (``ModelThread``): loaded there and run
there, never on the event loop's thread or a pool of threads. torch's CPU operators run on
OpenMP, which keeps a team of worker threads for every thread that calls a parallel operator;
with more of those than cores, libgomp stops spin-waiting between operators and every operator
pays a kernel wake-up (the LLM engine's module docstring has the measurement).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, ParamSpec, TypeVar

from bentoml.exceptions import ServiceUnavailable

from bentochain.engines.cores import CoreShare

logger = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")
P = ParamSpec("P")


class ModelThread:
    """The one thread a service loads its model on and runs it on (see the module docstring),
    with the process's share of the cores (``engines.cores``): each batch takes it first and
    gives it back after, so a neighbour's model may run while this one waits for requests."""

    def __init__(self, name: str, threads: int | None = None) -> None:
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self.cores = CoreShare(threads)

    def load(self, fn: Callable[P, Out], *args: P.args, **kwargs: P.kwargs) -> Out:
        """``fn(*args, **kwargs)`` on the thread, waited for: build the model there."""
        return self.executor.submit(self.cores.around(fn, wait=False), *args, **kwargs).result()

    def batches(
        self, fn: Callable[[list[In]], Sequence[Out]]
    ) -> Callable[[list[In]], Sequence[Out]]:
        """``fn`` as ``Batcher`` runs it on this thread: within the process's share of cores."""
        return self.cores.around(fn)


class BatchRefused(ServiceUnavailable):
    """A request that waited its whole ``max_wait_seconds`` for the model: 503, retry later."""


@dataclass
class _Job(Generic[In, Out]):
    items: list[In]
    queued_at: float
    future: asyncio.Future[list[Out]] = field(repr=False)


class Batcher(Generic[In, Out]):
    """Runs ``fn`` (items → one result per item, blocking) on ``executor``, on the items of every
    request queued while the previous batch ran. A request's items stay together in one batch;
    one larger than ``max_batch_size`` runs alone. A batch that fails is run again one request
    at a time, so a bad input fails only its own request."""

    def __init__(
        self,
        fn: Callable[[list[In]], Sequence[Out]],
        *,
        max_batch_size: int,
        max_wait_seconds: float,
        executor: ThreadPoolExecutor | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fn = fn
        self._executor = executor
        self.max_batch_size = max_batch_size
        self.max_wait_seconds = max_wait_seconds
        self._clock = clock
        self._queue: deque[_Job[In, Out]] = deque()
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None

    async def __call__(self, items: list[In]) -> list[Out]:
        if not items:
            return []
        job: _Job[In, Out] = _Job(
            list(items), self._clock(), asyncio.get_running_loop().create_future()
        )
        self._queue.append(job)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._run(), name="batcher")
        self._wake.set()
        # A caller that goes away cancels its future; the worker then skips the job.
        return await job.future

    @property
    def waiting(self) -> int:
        return sum(not job.future.done() for job in self._queue)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while batch := self._take():
                await self._serve(batch)

    def _take(self) -> list[_Job[In, Out]]:
        """The next batch: whole requests in arrival order, without those that went away or
        waited too long (refused)."""
        now = self._clock()
        batch: list[_Job[In, Out]] = []
        size = 0
        while self._queue:
            job = self._queue[0]
            if job.future.done():
                self._queue.popleft()
                continue
            waited = now - job.queued_at
            if waited > self.max_wait_seconds:
                self._queue.popleft()
                job.future.set_exception(
                    BatchRefused(
                        f"the request waited {waited:.1f}s for the model (batching."
                        f"max_latency_ms is {self.max_wait_seconds * 1000:.0f}); retry shortly"
                    )
                )
                continue
            if batch and size + len(job.items) > self.max_batch_size:
                break
            self._queue.popleft()
            batch.append(job)
            size += len(job.items)
        return batch

    async def _serve(self, batch: list[_Job[In, Out]]) -> None:
        try:
            results = await self._compute([item for job in batch for item in job.items])
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0], exc)
                return
            logger.warning("a batch of %d requests failed (%r); one at a time", len(batch), exc)
            for job in batch:
                if not job.future.done():
                    await self._serve([job])
            return
        start = 0
        for job in batch:
            _settle(job, results[start : start + len(job.items)])
            start += len(job.items)

    async def _compute(self, items: list[In]) -> list[Out]:
        call = functools.partial(contextvars.copy_context().run, self._fn, items)
        results = list(await asyncio.get_running_loop().run_in_executor(self._executor, call))
        if len(results) != len(items):
            raise RuntimeError(f"the model answered {len(results)} results for {len(items)} items")
        return results


def _settle(job: _Job[In, Out], outcome: list[Out] | Exception) -> None:
    if job.future.done():  # its caller went away while the batch ran
        return
    if isinstance(outcome, Exception):
        job.future.set_exception(outcome)
    else:
        job.future.set_result(outcome)
