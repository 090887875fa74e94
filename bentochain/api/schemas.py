"""The OpenAI wire format the gateway speaks, as pydantic models.

Requests ignore fields they do not know (clients send many optional ones), but every field that
changes the answer is checked: a parameter this server cannot honour is refused with a 400
rather than silently ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bentochain.config.types import Int, Whole
from bentochain.engines.llm.types import Role

MAX_STOP_SEQUENCES = 4
# OpenAI parameters this server takes only at their "off" value: the validators refuse the rest
# with a message that says so, and the document says what is accepted.
UNSUPPORTED_0: dict[str, Any] = {"minimum": 0, "maximum": 0, "description": "not supported: 0"}
UNSUPPORTED_OFF: dict[str, Any] = {"not": {"const": True}, "description": "not supported"}


# Strict types, as OpenAI checks them: "5" is not a number of tokens and false is not a score
# (lax coercion accepted both, and the fuzzer found it).
STRICT = ConfigDict(extra="ignore", strict=True)


class _Request(BaseModel):
    model_config = STRICT


class TextPart(BaseModel):
    model_config = STRICT

    type: Literal["text"]
    text: str


class ChatMessageIn(BaseModel):
    model_config = STRICT

    role: Role
    content: str | list[TextPart] | None = None
    name: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _only_text_parts(cls, value: Any) -> Any:
        if isinstance(value, list):
            for part in value:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind != "text":
                    raise ValueError(f"only text content parts are supported, not {kind!r}")
        return value

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    model_config = STRICT

    include_usage: bool = False


# Bounds as minimum/maximum, never exclusiveMinimum: its meaning differs between OpenAPI 3.0
# and 3.1, and BentoML's /docs.json stamps 3.0 on what FastAPI writes for 3.1.
PositiveTokens = Annotated[int, Field(ge=1, description="tokens to generate at most"), Whole]
Text = Annotated[str, Field(min_length=1)]


class _Sampling(_Request):
    model: str
    max_tokens: PositiveTokens | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    n: Int = Field(1, ge=1, le=1, description="this server returns one choice per request")
    stop: (
        str | Annotated[list[str], Field(json_schema_extra={"maxItems": MAX_STOP_SEQUENCES})] | None
    ) = None
    seed: Int | None = Field(None, description="any integer (used modulo 2**64)")
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0, json_schema_extra=UNSUPPORTED_0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0, json_schema_extra=UNSUPPORTED_0)
    # vLLM's extensions, for benchmarks that need fixed output lengths.
    ignore_eos: bool = False
    min_tokens: Int = Field(0, ge=0)

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed")
        return value

    @model_validator(mode="after")
    def _supported(self) -> _Sampling:
        if self.n != 1:
            raise ValueError("n must be 1: this server returns one choice per request")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                raise ValueError(f"{name} is not supported by this server; leave it at 0")
        return self

    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessageIn] = Field(json_schema_extra={"minItems": 1})
    max_completion_tokens: PositiveTokens | None = None
    logprobs: bool | None = Field(None, json_schema_extra=UNSUPPORTED_OFF)
    tools: list[Any] | None = Field(
        None, json_schema_extra={"maxItems": 0, "description": "not supported"}
    )

    @field_validator("messages")
    @classmethod
    def _not_empty(cls, value: list[ChatMessageIn]) -> list[ChatMessageIn]:
        if not value:
            raise ValueError("messages must hold at least one message")
        return value

    @model_validator(mode="after")
    def _chat_supported(self) -> ChatCompletionRequest:
        if self.logprobs:
            raise ValueError("logprobs are not supported by this server")
        if self.tools:
            raise ValueError("tools are not supported by this server")
        return self

    def token_budget(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Sampling):
    model_config = ConfigDict(
        json_schema_extra={  # what _completion_supported checks: one prompt per stream
            "if": {"properties": {"stream": {"const": True}}, "required": ["stream"]},
            "then": {"properties": {"prompt": {"not": {"type": "array", "minItems": 2}}}},
        }
    )

    # Not empty: a prompt of no tokens leaves the model nothing to continue from.
    prompt: Text | Annotated[list[Text], Field(min_length=1)]
    echo: bool = Field(False, json_schema_extra=UNSUPPORTED_OFF)
    logprobs: Int | None = Field(None, json_schema_extra=UNSUPPORTED_0)
    best_of: Int | None = Field(None, json_schema_extra={"maximum": 1})
    suffix: str | None = Field(None, json_schema_extra={"maxLength": 0})

    @field_validator("prompt", mode="before")
    @classmethod
    def _text_prompts(cls, value: Any) -> Any:
        if isinstance(value, list) and value and not all(isinstance(p, str) for p in value):
            raise ValueError("prompts must be text; token-id prompts are not supported")
        return value

    @model_validator(mode="after")
    def _completion_supported(self) -> CompletionRequest:
        if isinstance(self.prompt, list) and not self.prompt:
            raise ValueError("prompt must hold at least one prompt")
        if self.echo or self.logprobs or self.suffix or (self.best_of or 1) > 1:
            raise ValueError("echo, logprobs, suffix and best_of are not supported by this server")
        if self.stream and isinstance(self.prompt, list) and len(self.prompt) > 1:
            raise ValueError("stream one prompt at a time")
        return self

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


class EmbeddingRequest(_Request):
    model: str
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(ge=1), Whole] | None = None
    user: str | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _text_inputs(cls, value: Any) -> Any:
        if isinstance(value, list) and value and not all(isinstance(v, str) for v in value):
            raise ValueError(
                "input must be a string or a list of strings; token arrays are not supported "
                "(with LangChain, use OpenAIEmbeddings(check_embedding_ctx_length=False))"
            )
        return value

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class TranslateRequest(_Request):
    texts: list[str]
    target_lang: Literal["fr", "es"]


# -- responses ------------------------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int


FinishReason = Literal["stop", "length"]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: None = None


class ChatCompletion(BaseModel):
    """A whole chat answer; streamed, the same arrives as ``chat.completion.chunk`` events."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ChunkDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChunkDelta
    finish_reason: FinishReason | None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    """One event of a streamed chat; with ``include_usage``, the last has no choices and the
    usage."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionChunkChoice(BaseModel):
    index: int
    text: str
    finish_reason: FinishReason | None
    logprobs: None = None


class TextCompletionChunk(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChunkChoice]
    usage: Usage | None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: FinishReason
    logprobs: None = None


class TextCompletion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """Every error the gateway answers, in OpenAI's shape."""

    error: ErrorDetail


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    task: Literal["chat", "embedding", "translation"]
    demo: bool = Field(description="true when the weights are random (demo models)")
    description: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: Usage


class TranslateResponse(BaseModel):
    translations: list[str]
    model: str


class FeedbackRequest(_Request):
    request_id: str = Field(
        min_length=1, max_length=128, description="the x-request-id of the answer rated"
    )
    score: float = Field(ge=0.0, le=1.0, description="0 (bad) to 1 (good); a thumbs up is 1")
    comment: str | None = Field(None, max_length=4000)


class FeedbackAccepted(BaseModel):
    object: Literal["feedback"] = "feedback"
    request_id: str
    recorded: bool = True
