"""Chat and text completions: OpenAI requests in, LLM service events out, OpenAI answers back.

The gateway reads the LLM service's first event before it answers, so a refused generation
(prompt too long, queue full) gets its real status code even when the client asked to stream.
Once a stream has started, a failure is reported as a final SSE error event, never a silent cut.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Literal

from bentochain.api.auth import settle_tokens
from bentochain.api.backends import upstream_error
from bentochain.api.errors import APIError
from bentochain.api.recording import draft
from bentochain.api.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    CompletionChoice,
    CompletionRequest,
    TextCompletion,
    Usage,
)
from bentochain.engines.llm.events import (
    GenerationBroken,
    GenerationRefused,
    OpenedGeneration,
    open_generation,
)
from bentochain.engines.llm.types import (
    ChatMessage,
    Delta,
    Failed,
    Finished,
    GenerationRequest,
    SamplingParams,
)

logger = logging.getLogger(__name__)

Kind = Literal["chat", "completion"]


def sampling(
    request: ChatCompletionRequest | CompletionRequest, max_tokens: int | None
) -> SamplingParams:
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if request.temperature is None else request.temperature,
        top_p=1.0 if request.top_p is None else request.top_p,
        stop=request.stops(),
        seed=request.seed,
        ignore_eos=request.ignore_eos,
        min_tokens=request.min_tokens,
    )


def chat_generation(request: ChatCompletionRequest) -> GenerationRequest:
    messages = tuple(ChatMessage(role=m.role, content=m.text()) for m in request.messages)
    return GenerationRequest(messages=messages, params=sampling(request, request.token_budget()))


def completion_generations(request: CompletionRequest) -> list[GenerationRequest]:
    params = sampling(request, request.max_tokens)
    return [GenerationRequest(prompt=prompt, params=params) for prompt in request.prompts()]


def _refusal(event: Failed) -> APIError:
    return APIError(
        event.status,
        event.message,
        code=event.code,
        param=event.param,
        retry_after=event.retry_after,
    )


async def open_stream(
    generate: Callable[[GenerationRequest], AsyncIterator[str]], request: GenerationRequest
) -> OpenedGeneration:
    """Start a generation and wait for the LLM service to accept or refuse it."""
    try:
        return await open_generation(generate(request))
    except GenerationRefused as exc:
        raise _refusal(exc.event) from None
    except GenerationBroken as exc:
        raise APIError(502, f"{str(exc).capitalize()}.") from None
    except Exception as exc:
        raise upstream_error(exc, "LLM") from exc


@dataclass
class Generated:
    text: str
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    completion_tokens: int


async def collect(stream: OpenedGeneration) -> Generated:
    """Run a generation to its end (non-streaming responses)."""
    pieces: list[str] = []
    record = draft()
    try:
        async with aclosing(stream.events) as events:
            async for event in events:
                if isinstance(event, Delta):
                    if record is not None:
                        record.first_token()
                    pieces.append(event.text)
                elif isinstance(event, Finished):
                    return Generated(
                        "".join(pieces),
                        event.finish_reason,
                        event.prompt_tokens,
                        event.completion_tokens,
                    )
                elif isinstance(event, Failed):
                    raise _refusal(event)
    except APIError:
        raise
    except Exception as exc:
        raise upstream_error(exc, "LLM") from exc
    raise APIError(502, "The LLM service stopped before the generation finished.")


def _ids(kind: Kind) -> tuple[str, int]:
    prefix = "chatcmpl" if kind == "chat" else "cmpl"
    return f"{prefix}-{uuid.uuid4().hex}", int(time.time())


def _usage(prompt_tokens: int, completion_tokens: int) -> Usage:
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )


def chat_response(model: str, result: Generated) -> dict[str, Any]:
    response_id, created = _ids("chat")
    return ChatCompletion(
        id=response_id,
        created=created,
        model=model,
        choices=[
            ChatChoice(
                index=0,
                message=AssistantMessage(content=result.text),
                finish_reason=result.finish_reason,
            )
        ],
        usage=_usage(result.prompt_tokens, result.completion_tokens),
    ).model_dump(mode="json")


def completion_response(model: str, results: list[Generated]) -> dict[str, Any]:
    response_id, created = _ids("completion")
    return TextCompletion(
        id=response_id,
        created=created,
        model=model,
        choices=[
            CompletionChoice(index=i, text=r.text, finish_reason=r.finish_reason)
            for i, r in enumerate(results)
        ],
        usage=_usage(
            sum(r.prompt_tokens for r in results), sum(r.completion_tokens for r in results)
        ),
    ).model_dump(mode="json")


def _sse(payload: dict[str, Any] | str) -> str:
    # ASCII-escaped: generated text can hold U+2028, U+0085 and other characters that many
    # clients' line splitters (Python's str.splitlines among them) treat as line breaks.
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=True)
    return f"data: {data}\n\n"


async def sse_stream(
    kind: Kind, model: str, stream: OpenedGeneration, include_usage: bool
) -> AsyncIterator[str]:
    """The SSE body of a streamed chat or text completion, ending with ``data: [DONE]``."""
    response_id, created = _ids(kind)
    obj = "chat.completion.chunk" if kind == "chat" else "text_completion"

    def chunk(text: str | None, finish: str | None, *, first: bool = False) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
        if kind == "chat":
            delta: dict[str, Any] = {"role": "assistant"} if first else {}
            if text is not None:
                delta["content"] = text
            choice["delta"] = delta
        else:
            choice["text"] = text or ""
        body: dict[str, Any] = {
            "id": response_id,
            "object": obj,
            "created": created,
            "model": model,
            "choices": [choice],
        }
        if include_usage:
            body["usage"] = None
        return body

    record = draft()
    pieces: list[str] = []
    if kind == "chat":
        yield _sse(chunk("", None, first=True))
    try:
        # Closing the events when this body is closed (client gone) stops the generation.
        async with aclosing(stream.events) as events:
            async for event in events:
                if isinstance(event, Delta):
                    if record is not None:
                        record.first_token()
                        pieces.append(event.text)
                    yield _sse(chunk(event.text, None))
                elif isinstance(event, Finished):
                    await settle_tokens(event.prompt_tokens + event.completion_tokens)
                    if record is not None:
                        record.generated(
                            ["".join(pieces)],
                            event.finish_reason,
                            event.prompt_tokens,
                            event.completion_tokens,
                        )
                    yield _sse(chunk(None if kind == "chat" else "", event.finish_reason))
                    if include_usage:
                        yield _sse(
                            {
                                "id": response_id,
                                "object": obj,
                                "created": created,
                                "model": model,
                                "choices": [],
                                "usage": _usage(
                                    event.prompt_tokens, event.completion_tokens
                                ).model_dump(),
                            }
                        )
                    yield _sse("[DONE]")
                    return
                elif isinstance(event, Failed):
                    if record is not None:
                        record.error = event.message
                    yield _sse(_refusal(event).body())
                    return
        error = APIError(502, "The LLM service stopped before the generation finished.")
    except Exception as exc:
        logger.warning("stream from the LLM service failed: %r", exc)
        error = upstream_error(exc, "LLM")
    if record is not None:
        record.error = error.message
    yield _sse(error.body())
