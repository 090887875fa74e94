"""The generation engine: a causal LM behind a bounded queue, streaming each request's tokens.

The model runs on a thread of its own, so the service's event loop stays free to accept, stream
and cancel requests while a decode step computes. Requests wait in a bounded queue: past it,
the caller gets a 429 with ``Retry-After`` at once instead of an unbounded wait. A request whose
caller went away is dropped before its next decode step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bentochain.engines.llm.sampling import make_generator, next_token
from bentochain.engines.llm.text import IncrementalDecoder, StopMatcher
from bentochain.engines.llm.types import (
    Delta,
    Failed,
    Finished,
    GenerationRequest,
    SamplingParams,
    Started,
)

logger = logging.getLogger(__name__)

EventOut = Started | Delta | Finished | Failed


@dataclass(frozen=True)
class EngineLimits:
    default_max_tokens: int
    max_tokens_limit: int
    max_waiting_requests: int


@dataclass
class _Job:
    prompt_ids: list[int]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[EventOut] = field(default_factory=asyncio.Queue)
    cancelled: bool = False

    def emit(self, event: EventOut) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is listening
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)


class LLMEngine:
    """Load a causal LM from a Hugging Face folder and serve generations from it."""

    def __init__(self, model_dir: Path, limits: EngineLimits) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.limits = limits
        self.tokenizer: Any = AutoTokenizer.from_pretrained(model_dir)
        dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
        self.model: Any = model.to(self.device).eval()
        self.context_length = int(
            getattr(self.model.config, "max_position_embeddings", None) or 2048
        )
        self.eos_ids = self._eos_ids()
        self._queue: queue.Queue[_Job | None] = queue.Queue(limits.max_waiting_requests)
        self._thread = threading.Thread(target=self._run, name="llm-engine", daemon=True)
        self._thread.start()

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

    def close(self) -> None:
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)

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

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[EventOut, None]:
        """Events for one generation: ``started`` or ``error`` first, then deltas, then the end."""
        try:
            prompt_ids = self.encode(request)
        except Exception as exc:  # a chat template may reject a conversation
            yield Failed(
                status=400, code="invalid_prompt", message=f"cannot build the prompt: {exc}"
            )
            return
        params, problem = self._resolve(request.params, len(prompt_ids))
        if problem is not None:
            yield problem
            return
        job = _Job(prompt_ids, params, asyncio.get_running_loop())
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            yield Failed(
                status=429,
                code="queue_full",
                message=(
                    f"the model is busy: {self.limits.max_waiting_requests} requests are already "
                    "waiting; retry shortly"
                ),
                retry_after=1.0,
            )
            return
        try:
            yield Started(prompt_tokens=len(prompt_ids))
            while True:
                event = await job.events.get()
                yield event
                if isinstance(event, Finished | Failed):
                    return
        finally:
            job.cancelled = True  # the caller stopped listening: free the engine

    def _resolve(
        self, params: SamplingParams, prompt_tokens: int
    ) -> tuple[SamplingParams, Failed | None]:
        room = self.context_length - prompt_tokens
        if room <= 0:
            return params, Failed(
                status=400,
                code="context_length_exceeded",
                param="messages",
                message=(
                    f"This model's maximum context length is {self.context_length} tokens, "
                    f"but the prompt has {prompt_tokens} tokens."
                ),
            )
        if params.max_tokens is None:
            default = min(self.limits.default_max_tokens, room)
            return params.model_copy(update={"max_tokens": default}), None
        max_tokens = params.max_tokens
        if max_tokens > self.limits.max_tokens_limit:
            return params, Failed(
                status=400,
                code="invalid_value",
                param="max_tokens",
                message=(
                    f"max_tokens is {max_tokens}, above this server's limit of "
                    f"{self.limits.max_tokens_limit}"
                ),
            )
        if max_tokens > room:
            return params, Failed(
                status=400,
                code="context_length_exceeded",
                param="max_tokens",
                message=(
                    f"This model's maximum context length is {self.context_length} tokens. "
                    f"However, you requested {prompt_tokens + max_tokens} tokens "
                    f"({prompt_tokens} in the prompt, {max_tokens} in the completion)."
                ),
            )
        return params, None

    # -- engine side (its own thread) -------------------------------------------------------

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            if job.cancelled:
                continue
            try:
                self._generate(job)
            except Exception as exc:
                logger.exception("generation failed")
                job.emit(Failed(status=500, code="internal_error", message=str(exc)))

    def _generate(self, job: _Job) -> None:
        import torch
        from transformers import DynamicCache

        params = job.params
        generator = make_generator(params.seed)
        decoder = IncrementalDecoder(self.tokenizer)
        stopper = StopMatcher(params.stop)
        cache = DynamicCache(config=self.model.config)
        produced = 0
        finish: str = "length"
        with torch.inference_mode():
            inputs = torch.tensor([job.prompt_ids], device=self.device)
            logits = self.model(
                input_ids=inputs, past_key_values=cache, use_cache=True, logits_to_keep=1
            ).logits
            while not job.cancelled:
                banned = self.eos_ids if produced < params.min_tokens else ()
                token = next_token(logits[0, -1], params, generator, banned=tuple(banned))
                produced += 1
                if token in self.eos_ids and not params.ignore_eos:
                    finish = "stop"
                    break
                text = stopper.feed(decoder.push(token))
                if text:
                    job.emit(Delta(text=text, completion_tokens=produced))
                if stopper.stopped:
                    finish = "stop"
                    break
                if produced >= (params.max_tokens or 0):
                    break
                step = torch.tensor([[token]], device=self.device)
                logits = self.model(input_ids=step, past_key_values=cache, use_cache=True).logits
        if job.cancelled:
            return
        tail = stopper.feed(decoder.flush()) + stopper.flush()
        if tail:
            job.emit(Delta(text=tail, completion_tokens=produced))
        job.emit(
            Finished(
                finish_reason="stop" if finish == "stop" else "length",
                prompt_tokens=len(job.prompt_ids),
                completion_tokens=produced,
            )
        )
