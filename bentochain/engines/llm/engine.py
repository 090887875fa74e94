"""The generation engine: iteration-level (continuous) batching.

Every step decodes one token for every running sequence in a single forward pass. Between
steps, finished and cancelled sequences leave (their KV blocks return to the budget) and waiting
requests join: each new prompt is prefilled, gets its first token, and decodes with the others
from the next step on. Each request streams its own tokens as they are produced.

Limits are configuration, not guesses: at most ``max_running`` sequences decode together, KV
memory holds ``kv_blocks`` × ``block_size`` tokens, a step prefills at most ``max_batch_tokens``
prompt tokens, at most ``max_waiting_requests`` wait (past that: 429 at once), and a request that
waited ``max_queue_seconds`` gets a 503. The model runs on a thread of its own, so the service's
event loop stays free to accept, stream and cancel requests while a step computes.

That thread also loads the model, and no other thread runs torch's parallel operators. With
OpenMP (torch's CPU threading), every thread that runs parallel operators keeps a team of worker
threads; once there are more of those than cores, libgomp stops spin-waiting between parallel
regions and wakes its workers through the kernel each time. A model loaded on the service's
main thread left such a team behind, and every small operator of a decode step then paid a
wake-up: 1.5x slower steps on 2 cores (docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bentochain.engines.cores import CoreShare
from bentochain.engines.llm.kv import (
    BlockBudget,
    BufferPool,
    KVArena,
    KVLayout,
    SequenceKV,
    blocks_for,
    register_attention,
)
from bentochain.engines.llm.metrics import EngineMetrics, NullMetrics
from bentochain.engines.llm.prefix import NO_HIT, Hit, PrefixCache
from bentochain.engines.llm.runner import ModelRunner
from bentochain.engines.llm.sampling import RowSampling, Sampler
from bentochain.engines.llm.text import IncrementalDecoder, StopMatcher
from bentochain.engines.llm.types import (
    Delta,
    Failed,
    Finished,
    GenerationRequest,
    SamplingParams,
    Started,
)
from bentochain.engines.memory import keep_freed_memory
from bentochain.engines.packing import pack_if_possible

logger = logging.getLogger(__name__)

EventOut = Started | Delta | Finished | Failed
STEP_SMOOTHING = 0.1
"""Weight of the newest step in the engine's running mean of step times."""


@dataclass(frozen=True)
class EngineConfig:
    default_max_tokens: int = 256
    max_tokens_limit: int = 4096
    max_waiting_requests: int = 256
    max_running: int = 32
    max_queue_seconds: float = 60.0
    block_size: int = 16
    kv_blocks: int = 2048
    max_batch_tokens: int = 2048
    device: str = "auto"
    """``auto`` (CUDA when torch sees it, else the CPU), or a torch device such as ``cuda:1``."""
    dtype: str = "auto"
    """``auto`` (bfloat16 on CUDA, float32 on the CPU), ``float32``, ``bfloat16``, ``float16``."""
    prefix_caching: bool = True
    """Reuse the KV of full prompt blocks across requests (see ``prefix``)."""
    step_timeout_seconds: float = 120.0
    """A step running longer makes the engine not live (see ``health``)."""
    packed_weights: bool = True
    """On the CPU, run linear layers on weights packed for oneDNN (see ``engines.packing``)."""
    keep_freed_memory: bool = True
    """Have this process's ``malloc`` keep freed memory for reuse (see ``engines.memory``)."""
    threads: int | None = None
    """torch threads of the engine; None shares the cores with busy neighbours (``cores``)."""


@dataclass(frozen=True)
class Health:
    """Whether the engine still generates: what the LLM's ``/livez`` and ``/readyz`` report."""

    alive: bool
    reason: str = ""


@dataclass
class _Job:
    """A request as the event loop sees it: what to generate and where its events go."""

    prompt_ids: list[int]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    submitted: float = field(default_factory=time.monotonic)
    events: asyncio.Queue[EventOut] = field(default_factory=asyncio.Queue)
    cancelled: bool = False

    def emit(self, event: EventOut) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is listening
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)


@dataclass
class _Sequence:
    """A running generation, as the engine thread sees it."""

    job: _Job
    kv: SequenceKV
    reserved_blocks: int
    decoder: IncrementalDecoder
    stopper: StopMatcher
    generator: torch.Generator | None
    admitted: float
    generated: int = 0
    last_token: int = -1
    first_token_at: float | None = None
    done: bool = False


class LLMEngine:
    """Load a causal LM from a Hugging Face folder and serve generations from it."""

    def __init__(
        self, model_dir: Path, config: EngineConfig, metrics: EngineMetrics | None = None
    ) -> None:
        from transformers import AutoTokenizer

        self.config = config
        self.metrics = metrics or NullMetrics()
        self.tokenizer: Any = AutoTokenizer.from_pretrained(model_dir)
        self.device = resolve_device(config.device)
        self._lock = threading.Condition()
        self._waiting: deque[_Job] = deque()
        self._running: list[_Sequence] = []
        self._closed = False
        self._step_started: float | None = None
        self._step_seconds: float | None = None  # decode steps' recent mean: a token per stream
        self._cut: Failed | None = None
        loaded: Future[None] = Future()
        self._thread = threading.Thread(
            target=self._run, args=(model_dir, loaded), name="llm-engine", daemon=True
        )
        self._thread.start()
        loaded.result()  # a model that cannot load fails the constructor, as a load here would
        per_token = self.kv_layout.bytes_per_token
        logger.info(
            "KV memory: %d blocks x %d tokens = %d tokens, %.1f MiB allocated (%d bytes a token)",
            config.kv_blocks,
            config.block_size,
            self.kv_capacity_tokens,
            self.kv_capacity_tokens * per_token / 2**20,
            per_token,
        )

    def _load(self, model_dir: Path) -> None:
        """Load the model (on the engine thread: see the module's docstring for why)."""
        from transformers import AutoModelForCausalLM

        config = self.config
        if config.keep_freed_memory:
            keep_freed_memory()
        dtype = resolve_dtype(config.dtype, self.device)
        model: Any = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=dtype, attn_implementation=register_attention()
        )
        self.model: Any = model.to(self.device).eval()
        if config.packed_weights:
            pack_if_possible(self.model)
        text_config = self.model.config.get_text_config()
        self.context_length = int(getattr(text_config, "max_position_embeddings", None) or 2048)
        self.eos_ids = self._eos_ids()
        self.kv_layout = KVLayout.of(text_config, dtype, self.device)
        self.budget = BlockBudget(config.kv_blocks)
        self.arena = KVArena(self.kv_layout, config.kv_blocks, config.block_size)
        self.pool = BufferPool(self.budget, self.arena)
        self.prefix = (
            PrefixCache(config.block_size, self.budget, self.arena, self.pool)
            if config.prefix_caching
            else None
        )
        self.runner = ModelRunner(self.model, self.device)
        self.sampler = Sampler(self.device)

    def _eos_ids(self) -> frozenset[int]:
        ids: set[int] = set()
        configured = getattr(self.model.generation_config, "eos_token_id", None)
        if isinstance(configured, int):
            ids.add(configured)
        elif configured:
            ids.update(configured)
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        return frozenset(ids)

    def load(self) -> int:
        """Sequences running plus requests waiting: the work this engine holds.

        A sequence that finished in the current step is not counted: its caller may already
        have its last token, and a balancer must not see it as still busy."""
        with self._lock:
            return sum(1 for seq in self._running if not seq.done) + len(self._waiting)

    def health(self) -> Health:
        """Not alive when the engine thread is gone or one step has run past its bound: the
        server still answers, but nothing would be generated, so an orchestrator must restart
        it."""
        if not self._thread.is_alive() and not self._closed:
            return Health(False, "the engine thread has stopped")
        started = self._step_started
        limit = self.config.step_timeout_seconds
        if started is not None and (ran := time.monotonic() - started) > limit:
            return Health(False, f"one engine step has run for {ran:.0f}s (limit {limit:g}s)")
        return Health(True)

    def seconds_for(self, tokens: int) -> float | None:
        """How long a sequence takes to generate ``tokens`` at the rate measured lately (one
        token per decode step, at the batch the engine runs now); None before any step."""
        step = self._step_seconds
        return None if step is None else tokens * step

    def tokens_left(self) -> int:
        """The most tokens any request held now may still generate (its ``max_tokens`` less
        what it has): how far a drain may have to wait."""
        with self._lock:
            running = [(s.job.params.max_tokens or 0) - s.generated for s in self._running]
            waiting = [j.params.max_tokens or 0 for j in self._waiting]
        return max([0, *running, *waiting])

    def cut(self, failure: Failed) -> None:
        """End every request held now, and any that comes, with ``failure`` (a drain's grace
        ran out): each stream gets it as its last event instead of a dropped connection."""
        with self._lock:
            self._cut = failure
            self._lock.notify()

    @property
    def kv_capacity_tokens(self) -> int:
        return self.config.kv_blocks * self.config.block_size

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        self._thread.join(timeout=10)

    # -- request side (event loop) ----------------------------------------------------------

    def encode(self, request: GenerationRequest) -> list[int]:
        """The prompt's token ids: the chat template for messages, plain text otherwise."""
        if request.messages is not None:
            text = self.tokenizer.apply_chat_template(
                [m.model_dump() for m in request.messages],
                add_generation_prompt=True,
                tokenize=False,
            )
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return list(self.tokenizer(request.prompt or "")["input_ids"])

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[EventOut, None]:
        """Events for one generation: ``started`` or ``error`` first, then deltas, then the end."""
        async with contextlib.aclosing(self.stream_batches(request)) as batches:
            async for batch in batches:
                for event in batch:
                    yield event

    async def stream_batches(
        self, request: GenerationRequest
    ) -> AsyncGenerator[list[EventOut], None]:
        """``stream``, with the events that are ready together handed over together.

        When the reader falls behind the engine, its next read takes every event waiting for
        it: the service then writes them as one chunk instead of one chunk per token.
        """
        try:
            prompt_ids = self.encode(request)
        except Exception as exc:  # a chat template may reject a conversation
            yield [
                Failed(status=400, code="invalid_prompt", message=f"cannot build the prompt: {exc}")
            ]
            return
        params, problem = self._resolve(request.params, len(prompt_ids))
        if problem is not None:
            yield [problem]
            return
        job = _Job(prompt_ids, params, asyncio.get_running_loop())
        with self._lock:
            if len(self._waiting) >= self.config.max_waiting_requests:
                refused = True
            else:
                refused = False
                self._waiting.append(job)
                self._lock.notify()
        if refused:
            yield [
                Failed(
                    status=429,
                    code="queue_full",
                    message=(
                        f"the model is busy: {self.config.max_waiting_requests} requests are "
                        "already waiting; retry shortly"
                    ),
                    retry_after=1.0,
                )
            ]
            return
        try:
            yield [Started(prompt_tokens=len(prompt_ids))]
            while True:
                batch = [await job.events.get()]
                while not job.events.empty():
                    batch.append(job.events.get_nowait())
                yield batch
                if isinstance(batch[-1], Finished | Failed):
                    return
        finally:
            job.cancelled = True  # the caller stopped listening: the engine drops it next step

    def _resolve(
        self, params: SamplingParams, prompt_tokens: int
    ) -> tuple[SamplingParams, Failed | None]:
        if prompt_tokens == 0:  # nothing to prefill: the model has no state to continue from
            return params, Failed(
                status=400,
                code="invalid_value",
                param="prompt",
                message="The prompt is empty (it encodes to no tokens): send some text.",
            )
        limit = min(self.context_length, self.kv_capacity_tokens)
        room = limit - prompt_tokens
        if room <= 0:
            return params, Failed(
                status=400,
                code="context_length_exceeded",
                param="messages",
                message=(
                    f"This model's maximum context length is {limit} tokens, "
                    f"but the prompt has {prompt_tokens} tokens."
                ),
            )
        if params.max_tokens is None:
            default = min(self.config.default_max_tokens, room)
            return params.model_copy(update={"max_tokens": default}), None
        max_tokens = params.max_tokens
        if max_tokens > self.config.max_tokens_limit:
            return params, Failed(
                status=400,
                code="invalid_value",
                param="max_tokens",
                message=(
                    f"max_tokens is {max_tokens}, above this server's limit of "
                    f"{self.config.max_tokens_limit}"
                ),
            )
        if max_tokens > room:
            return params, Failed(
                status=400,
                code="context_length_exceeded",
                param="max_tokens",
                message=(
                    f"This model's maximum context length is {limit} tokens. "
                    f"However, you requested {prompt_tokens + max_tokens} tokens "
                    f"({prompt_tokens} in the prompt, {max_tokens} in the completion)."
                ),
            )
        return params, None

    # -- engine side (its own thread) -------------------------------------------------------

    def _run(self, model_dir: Path, loaded: Future[None]) -> None:
        self.cores = CoreShare(self.config.threads)
        try:
            try:
                self.cores.working(wait=False)  # loading is work, too long to hold tokens
                self._load(model_dir)
            except BaseException as exc:  # handed to the constructor, which raises it
                loaded.set_exception(exc)
                return
            loaded.set_result(None)
            try:
                self._loop()
            finally:  # closed, or the thread dies: nobody is left waiting for an answer
                self._abandon()
        finally:
            self.cores.close()

    def _loop(self) -> None:
        while True:
            with self._lock:
                if not (self._closed or self._waiting or self._running):
                    self.cores.paused()  # nothing to compute: the cores are free for others
                while not self._closed and not self._waiting and not self._running:
                    self._lock.wait()
                if self._closed:
                    return
            self.cores.working()
            self._step_started = started = time.monotonic()
            try:
                self._step()
            except Exception as exc:  # a failed step fails its sequences, not the engine
                logger.exception("generation step failed")
                for seq in self._running:
                    self._finish(seq, Failed(status=500, code="internal_error", message=str(exc)))
                self._running = []
            finally:
                self._step_started = None
            if self._running:
                took = time.monotonic() - started
                mean = self._step_seconds
                self._step_seconds = took if mean is None else mean + STEP_SMOOTHING * (took - mean)

    def _abandon(self) -> None:
        """Every request still here ends with a 503: the engine will not serve it."""
        self._end_all(
            Failed(
                status=503,
                code="engine_stopped",
                message="the model's engine stopped; retry on another replica",
                retry_after=1.0,
            )
        )
        if not self._closed:
            logger.critical("the engine thread stopped: this server is no longer live")

    def _end_all(self, failure: Failed) -> None:
        with self._lock:
            waiting, self._waiting = list(self._waiting), deque()
        for seq in self._running:
            self._finish(seq, failure)
        self._running = []
        for job in waiting:
            job.emit(failure)

    def _step(self) -> None:
        now = time.monotonic()
        if self._cut is not None:
            self._end_all(self._cut)
        for seq in self._running:
            if seq.job.cancelled:
                self._finish(seq, None)
        self._running = [seq for seq in self._running if not seq.done]
        self._expire_waiting(now)
        self._admit()
        self._running = [seq for seq in self._running if not seq.done]
        if self._running:
            self.metrics.step(batch=len(self._running))
            self._decode(self._running)
            self._running = [seq for seq in self._running if not seq.done]
        with self._lock:
            waiting = len(self._waiting)
        self.metrics.occupancy(
            running=len(self._running),
            waiting=waiting,
            kv_used=self.budget.used,
            kv_total=self.budget.total,
        )

    def _expire_waiting(self, now: float) -> None:
        limit = self.config.max_queue_seconds
        with self._lock:
            expired = [j for j in self._waiting if j.cancelled or now - j.submitted > limit]
            for job in expired:
                self._waiting.remove(job)
        for job in expired:
            if not job.cancelled:
                job.emit(
                    Failed(
                        status=503,
                        code="queue_timeout",
                        message=f"the request waited {limit:.0f}s for the model; retry shortly",
                        retry_after=1.0,
                    )
                )

    def _admit(self) -> None:
        """Prefill waiting prompts, in order, while sequences, memory and the step budget allow."""
        budget = self.config.max_batch_tokens
        admitted = 0
        while len(self._running) < self.config.max_running:
            with self._lock:
                job = self._waiting[0] if self._waiting else None
            if job is None:
                return
            prompt = len(job.prompt_ids)
            hit = self.prefix.lookup(job.prompt_ids) if self.prefix is not None else NO_HIT
            cached = hit.count * self.config.block_size
            if admitted and prompt - cached > budget:
                return  # the next step takes it: one long prompt at least goes every step
            need = blocks_for(prompt + (job.params.max_tokens or 0), self.config.block_size)
            reused = self.pool.reuse(need, hit.keys)
            if reused is None:
                kept = self._reserve(need, hit)
                if kept is None:
                    return  # wait for running sequences to give memory back, in arrival order
                hit, cached = kept, kept.count * self.config.block_size
            now = time.monotonic()
            params = job.params
            kv, reserved = reused or (None, need)
            try:
                kv = kv or self.arena.sequence(need)
                seq = _Sequence(
                    job=job,
                    kv=kv,
                    reserved_blocks=reserved,
                    decoder=IncrementalDecoder(self.tokenizer),
                    stopper=StopMatcher(params.stop),
                    generator=self.sampler.generator_for(params.seed),
                    admitted=now,
                )
            except Exception as exc:  # this request fails alone: its blocks go back, no hang
                logger.exception("admitting a request failed")
                with self._lock:
                    self._waiting.popleft()
                self.budget.give_back(reserved)
                if kv is not None:
                    self.arena.release(kv)
                job.emit(Failed(status=500, code="internal_error", message=f"admission: {exc}"))
                continue
            with self._lock:  # in one move, so that load() never misses it
                self._waiting.popleft()
                self._running.append(seq)
            self.metrics.admitted(prompt_tokens=prompt, queued_seconds=now - job.submitted)
            if self.prefix is not None:
                self.metrics.prefix_cache(queried=prompt, hit=cached)
            try:
                if self.prefix is not None:
                    self.prefix.restore(hit, seq.kv)
                logits = self.runner.forward([seq.kv], [job.prompt_ids[cached:]])
                if self.prefix is not None:
                    self.prefix.store(job.prompt_ids, seq.kv)
            except Exception as exc:
                self._fail(seq, "prefill failed", exc)
                continue
            self._choose([seq], logits)
            budget -= prompt - cached
            admitted += 1

    def _reserve(self, blocks: int, hit: Hit) -> Hit | None:
        """Lend ``blocks`` to a new sequence, giving up kept buffers and then cached prefixes
        if memory is short, the prompt's own (``hit``) last. Returns the part of ``hit`` still
        cached (an evicted block's memory may be the new sequence's), or None when the memory
        is not there."""
        if self.budget.take(blocks):
            return hit
        self.pool.drop(blocks - self.budget.free)
        if self.budget.take(blocks):
            return hit
        if self.prefix is None:
            return None
        self.prefix.evict(blocks - self.budget.free, keep=hit.keys)
        if self.budget.take(blocks):
            return hit
        self.prefix.evict(blocks - self.budget.free)
        return self.prefix.still_cached(hit) if self.budget.take(blocks) else None

    def _decode(self, batch: list[_Sequence]) -> None:
        """One token for every sequence of ``batch``, in one forward pass.

        When the batched pass fails, each sequence runs alone: the one that cannot fails by
        itself (its blocks go back) and the others go on. A failed pass wrote keys and values
        past each row's length only, so running a row again overwrites them.
        """
        try:
            logits = self.runner.forward([s.kv for s in batch], [[s.last_token] for s in batch])
        except Exception as exc:
            if len(batch) == 1:
                self._fail(batch[0], "decode step failed", exc)
                return
            logger.exception("a decode step of %d sequences failed: each runs alone", len(batch))
            for seq in batch:
                self._decode([seq])
            return
        self._choose(batch, logits)

    def _choose(self, batch: list[_Sequence], logits: torch.Tensor) -> None:
        """Sample the batch's next tokens at once, then stream each; a failure is per sequence."""
        for seq in batch:
            if seq.job.cancelled:
                self._finish(seq, None)
        live = [r for r, seq in enumerate(batch) if not seq.done]
        if len(live) < len(batch):
            batch = [batch[r] for r in live]
            logits = logits[live]
        if not batch:
            return
        try:
            tokens = self.sampler.sample(logits, [self._sampling(seq) for seq in batch])
        except Exception as exc:
            if len(batch) == 1:
                self._fail(batch[0], "sampling failed", exc)
                return
            logger.exception("sampling a batch of %d failed: each row alone", len(batch))
            for r, seq in enumerate(batch):
                self._choose([seq], logits[r : r + 1])
            return
        for seq, token in zip(batch, tokens, strict=True):
            try:
                self._accept(seq, token)
            except Exception as exc:
                self._fail(seq, "streaming its token failed", exc)

    def _sampling(self, seq: _Sequence) -> RowSampling:
        params = seq.job.params
        banned = tuple(self.eos_ids) if seq.generated < params.min_tokens else ()
        return RowSampling(params=params, generator=seq.generator, banned=banned)

    def _accept(self, seq: _Sequence, token: int) -> None:
        """Stream the sequence's new token, and maybe finish it."""
        params = seq.job.params
        seq.generated += 1
        seq.last_token = token
        now = time.monotonic()
        if seq.first_token_at is None:
            seq.first_token_at = now
            self.metrics.first_token(seconds=now - seq.job.submitted)
        self.metrics.generated(1)
        if token in self.eos_ids and not params.ignore_eos:
            self._finish(seq, "stop")
            return
        text = seq.stopper.feed(seq.decoder.push(token))
        if text:
            seq.job.emit(Delta(text=text, completion_tokens=seq.generated))
        if seq.stopper.stopped:
            self._finish(seq, "stop")
        elif seq.generated >= (params.max_tokens or 0):
            self._finish(seq, "length")

    def _fail(self, seq: _Sequence, what: str, exc: Exception) -> None:
        """This sequence alone ends with a 500; its blocks return to the budget."""
        logger.error("%s for one sequence: %s", what, exc, exc_info=exc)
        self._finish(seq, Failed(status=500, code="internal_error", message=f"{what}: {exc}"))

    def _finish(self, seq: _Sequence, outcome: str | Failed | None) -> None:
        """End a sequence: ``stop``/``length``, a failure, or None when its caller went away."""
        if seq.done:
            return
        seq.done = True
        self.pool.keep(seq.kv, seq.reserved_blocks)
        if outcome is None:
            return
        if isinstance(outcome, Failed):
            seq.job.emit(outcome)
            return
        try:
            tail = seq.stopper.feed(seq.decoder.flush()) + seq.stopper.flush()
        except Exception as exc:  # done already: the caller still gets its end, as an error
            logger.exception("finishing a sequence failed")
            message = f"finishing the answer failed: {exc}"
            seq.job.emit(Failed(status=500, code="internal_error", message=message))
            return
        if tail:
            seq.job.emit(Delta(text=tail, completion_tokens=seq.generated))
        end = time.monotonic()
        first = seq.first_token_at or end
        self.metrics.finished(
            seconds=end - seq.job.submitted,
            per_output_token=(end - first) / (seq.generated - 1) if seq.generated > 1 else None,
        )
        seq.job.emit(
            Finished(
                finish_reason="stop" if outcome == "stop" else "length",
                prompt_tokens=len(seq.job.prompt_ids),
                completion_tokens=seq.generated,
            )
        )


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The torch dtype a profile names; ``auto`` is bfloat16 on CUDA and float32 elsewhere,
    where bfloat16 is only fast on CPUs with native support (AVX512-BF16, AMX)."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"llm.dtype {name!r} is not a torch floating-point type")
    return dtype


def resolve_device(name: str) -> torch.device:
    """The torch device a profile names; ``auto`` is CUDA when torch sees one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"llm.device is {name!r}, but torch sees no CUDA device here")
    return device
