"""What crosses the boundary between the gateway and the LLM service.

A generation is requested with a ``GenerationRequest`` and answered with a stream of events,
one JSON object per line. The first event is always ``started`` (the prompt was accepted and
tokenized) or ``error`` (it was not, with the HTTP status the gateway should answer), so the
gateway can still choose its status code before it commits to a streamed 200.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

Role = Literal["system", "user", "assistant", "tool", "developer"]
FinishReason = Literal["stop", "length"]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    role: Role
    content: str


class SamplingParams(BaseModel):
    """Per-request decoding controls, with OpenAI's meaning (and vLLM's two extensions)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_tokens: int | None = Field(None, ge=1, description="None: the server's default")
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, ge=0.0, le=1.0, description="0: only the most likely token")
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False
    min_tokens: int = Field(0, ge=0)


class GenerationRequest(BaseModel):
    """Either a raw ``prompt`` (completions) or chat ``messages`` (chat template applied)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str | None = None
    messages: tuple[ChatMessage, ...] | None = None
    params: SamplingParams


class Started(BaseModel):
    type: Literal["started"] = "started"
    prompt_tokens: int


class Delta(BaseModel):
    type: Literal["delta"] = "delta"
    text: str
    completion_tokens: int


class Finished(BaseModel):
    type: Literal["finished"] = "finished"
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int


class Failed(BaseModel):
    type: Literal["error"] = "error"
    status: int
    code: str
    message: str
    param: str | None = None
    retry_after: float | None = None


Event = Annotated[Started | Delta | Finished | Failed, Field(discriminator="type")]
EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


def encode_event(event: Started | Delta | Finished | Failed) -> str:
    """One NDJSON line. ASCII-only, so a line never splits inside a UTF-8 character."""
    return json.dumps(event.model_dump(), ensure_ascii=True, separators=(",", ":")) + "\n"


def decode_event(line: str) -> Event:
    return EVENT_ADAPTER.validate_json(line)
