"""A local stand-in for paid LLM providers: OpenAI's and Anthropic's HTTP APIs on loopback.

The real LangChain clients (``ChatOpenAI``, ``ChatAnthropic``) are pointed at it, so the whole
client path (serialisation, HTTP, error mapping) runs; only the provider's model is replaced by
a canned reply. ``fail`` and ``delay`` script the provider's bad days.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bentochain.serving.topology import free_port


@dataclass
class Script:
    reply: str = "stand-in answer"
    replies: list[str] = field(default_factory=list)  # answered first, in order, then `reply`
    fail: int = 0  # the next `fail` calls answer `status`
    status: int = 500
    delay: float = 0.0  # seconds before answering
    calls: list[dict[str, Any]] = field(default_factory=list)


def _app(script: Script) -> Starlette:
    async def behave(request: Request) -> JSONResponse | None:
        body = await request.json()
        script.calls.append(
            {"path": request.url.path, "body": body, "headers": dict(request.headers)}
        )
        if script.delay:
            await asyncio.sleep(script.delay)
        if script.fail > 0:
            script.fail -= 1
            return JSONResponse(
                {"error": {"message": "scripted failure", "type": "server_error"}},
                status_code=script.status,
            )
        return None

    def next_reply() -> str:
        return script.replies.pop(0) if script.replies else script.reply

    async def openai_chat(request: Request) -> JSONResponse:
        failed = await behave(request)
        if failed is not None:
            return failed
        model = script.calls[-1]["body"].get("model")
        return JSONResponse(
            {
                "id": "chatcmpl-standin",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": next_reply()},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
            }
        )

    async def anthropic_messages(request: Request) -> JSONResponse:
        failed = await behave(request)
        if failed is not None:
            return failed
        model = script.calls[-1]["body"].get("model")
        return JSONResponse(
            {
                "id": "msg_standin",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{"type": "text", "text": next_reply()}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": 5, "output_tokens": 3},
            }
        )

    return Starlette(
        routes=[
            Route("/v1/chat/completions", openai_chat, methods=["POST"]),
            Route("/v1/messages", anthropic_messages, methods=["POST"]),
        ]
    )


@dataclass
class StandIn:
    url: str
    script: Script


@contextmanager
def stand_in(script: Script | None = None) -> Iterator[StandIn]:
    """Serve the stand-in on a free loopback port for the duration of the block."""
    script = script or Script()
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(_app(script), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the stand-in server did not start")
        time.sleep(0.02)
    try:
        yield StandIn(f"http://127.0.0.1:{port}", script)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
