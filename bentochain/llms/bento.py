"""Our LLM service as a LangChain chat model, so a chain does not know which LLM it calls.

It sends a ``GenerationRequest`` through the same stream the gateway uses and reads the same
NDJSON events back (``bentochain.engines.llm.events``): one protocol, one set of error
statuses. How the stream reaches the service (the upstream layer) is injected as
``generate_fn``; a failure of that call propagates with its ``status``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import aclosing
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, Field

from bentochain.engines.llm.events import GenerationBroken, GenerationRefused, open_generation
from bentochain.engines.llm.types import (
    ChatMessage,
    Delta,
    Failed,
    Finished,
    GenerationRequest,
    SamplingParams,
)

ROLES = {"system": "system", "human": "user", "ai": "assistant", "tool": "tool"}


class LLMServiceError(RuntimeError):
    """The LLM service refused or failed a generation (``status`` as it would answer HTTP)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"LLM service {status}: {message}")
        self.status = status


class AsyncChatModel(BaseChatModel):
    """A chat model that works on an event loop; sync ``invoke`` runs it on a loop of its own."""

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return asyncio.run(self._agenerate(messages, stop, None, **kwargs))


class BentoChatModel(AsyncChatModel):
    """Chat with the ``LLM`` service through its ``generate`` stream (a ``bentoml.depends``)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    generate_fn: Callable[[GenerationRequest], AsyncIterator[str]] = Field(exclude=True)
    model_name: str = "llm"
    model_version: str | None = Field(
        None, description="what serves model_name (e.g. demo:llama-36m): part of the cache key"
    )
    temperature: float = 0.0
    max_tokens: int = 256
    top_p: float = 1.0
    seed: int | None = None

    @property
    def _llm_type(self) -> str:
        return "bentochain-llm"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "model_version": self.model_version,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "top_p": self.top_p,
            "seed": self.seed,
        }

    def _request(
        self, messages: Sequence[BaseMessage], stop: list[str] | None
    ) -> GenerationRequest:
        chat = tuple(ChatMessage(role=ROLES.get(m.type, "user"), content=m.text) for m in messages)
        params = SamplingParams(
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=tuple(stop or ()),
            seed=self.seed,
        )
        return GenerationRequest(messages=chat, params=params)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        try:
            stream = await open_generation(self.generate_fn(self._request(messages, stop)))
        except GenerationRefused as exc:
            raise LLMServiceError(exc.event.status, exc.event.message) from None
        except GenerationBroken as exc:
            raise LLMServiceError(502, str(exc)) from None
        prompt_tokens = stream.started.prompt_tokens
        async with aclosing(stream.events) as events:
            async for event in events:
                if isinstance(event, Delta):
                    if run_manager is not None:
                        await run_manager.on_llm_new_token(event.text)
                    yield ChatGenerationChunk(message=AIMessageChunk(content=event.text))
                elif isinstance(event, Finished):
                    yield ChatGenerationChunk(
                        message=AIMessageChunk(
                            content="",
                            usage_metadata={
                                "input_tokens": prompt_tokens,
                                "output_tokens": event.completion_tokens,
                                "total_tokens": prompt_tokens + event.completion_tokens,
                            },
                            response_metadata={"finish_reason": event.finish_reason},
                        )
                    )
                    return
                elif isinstance(event, Failed):
                    raise LLMServiceError(event.status, event.message)
        raise LLMServiceError(502, "the stream ended before the generation finished")

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        text: list[str] = []
        last: AIMessageChunk | None = None
        async for chunk in self._astream(messages, stop, run_manager, **kwargs):
            text.append(chunk.text)
            last = chunk.message  # type: ignore[assignment]
        message = AIMessage(
            content="".join(text),
            usage_metadata=last.usage_metadata if last else None,
            response_metadata=last.response_metadata if last else {},
        )
        return ChatResult(generations=[ChatGeneration(message=message)])
