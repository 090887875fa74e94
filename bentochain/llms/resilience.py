"""A chat model that survives its provider: retries with backoff, then fallbacks, all inside
one deadline.

LangChain's ``with_retry`` and ``with_fallbacks`` know nothing of time: three retries of a
60-second timeout can keep a request for minutes after its caller gave up. Here every call gets
at most what is left of the request's deadline, a retry waits ``backoff`` × 2^n (never past the
deadline), and an error that another try cannot fix (a 4xx other than 408/429) moves on to the
next provider at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict

from bentochain.llms.bento import AsyncChatModel

logger = logging.getLogger(__name__)

RETRYABLE_STATUS = {408, 409, 429}


@dataclass(frozen=True)
class Route:
    """One provider in the order they are tried."""

    name: str
    model: BaseChatModel
    timeout: float
    retries: int


class AllProvidersFailed(RuntimeError):
    """No provider answered before the deadline; ``errors`` has each try's failure."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("no LLM provider answered: " + "; ".join(errors))
        self.errors = errors


def status_of(exc: BaseException) -> int | None:
    """The HTTP status an error carries (LLM service, openai, anthropic), if any."""
    for attr in ("status", "status_code"):
        value = getattr(exc, attr, None)
        if isinstance(value, int):
            return value
    return None


def retryable(exc: BaseException) -> bool:
    status = status_of(exc)
    return status is None or status >= 500 or status in RETRYABLE_STATUS


class _Failures:
    """What went wrong so far in one call, and which routes are not worth another try."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.skipped: set[str] = set()

    def add(self, route: Route, exc: BaseException, timeout: float) -> None:
        if isinstance(exc, TimeoutError):
            reason = f"no answer within {timeout:.3g}s"
        else:
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        logger.warning("LLM provider %s failed: %s", route.name, reason)
        self.errors.append(f"{route.name}: {reason}")
        if not retryable(exc):
            self.skipped.add(route.name)

    def error(self) -> AllProvidersFailed:
        return AllProvidersFailed(self.errors or ["the deadline passed before any call"])


class ResilientChatModel(AsyncChatModel):
    """Try ``routes`` in order, each up to its retries, within ``deadline`` seconds a call."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    routes: list[Route]
    deadline: float = 120.0
    backoff: float = 0.5

    @property
    def _llm_type(self) -> str:
        return "bentochain-resilient"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        # The cache key: which models, with which parameters, in which order.
        return {"routes": [{"name": r.name, "llm": r.model._get_llm_string()} for r in self.routes]}

    async def _tries(self, failures: _Failures) -> AsyncIterator[tuple[Route, float]]:
        """Each (route, timeout) to try, sleeping between retries; stops at the deadline."""
        end = time.monotonic() + self.deadline
        for route in self.routes:
            for attempt in range(route.retries + 1):
                if route.name in failures.skipped:
                    break
                left = end - time.monotonic()
                if left <= 0:
                    return
                if attempt:
                    await asyncio.sleep(min(self.backoff * 2 ** (attempt - 1), left))
                    left = end - time.monotonic()
                    if left <= 0:
                        return
                yield route, min(route.timeout, left)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        failures = _Failures()
        async for route, timeout in self._tries(failures):
            try:
                message = await asyncio.wait_for(route.model.ainvoke(messages, stop=stop), timeout)
            except Exception as exc:  # every failure is a reason to go on
                failures.add(route, exc, timeout)
                continue
            return ChatResult(generations=[ChatGeneration(message=message)])
        raise failures.error()

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        """Fall back only until the first chunk: after that, the answer is this provider's."""
        failures = _Failures()
        async for route, timeout in self._tries(failures):
            stream = route.model.astream(messages, stop=stop)
            try:
                first = await asyncio.wait_for(anext(aiter(stream)), timeout)
            except StopAsyncIteration:
                return
            except Exception as exc:
                failures.add(route, exc, timeout)
                continue
            yield ChatGenerationChunk(message=first)
            async for chunk in stream:
                yield ChatGenerationChunk(message=chunk)
            return
        raise failures.error()
