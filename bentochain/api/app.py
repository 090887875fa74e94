"""The gateway's HTTP face: OpenAI's ``/v1/*``, ``/translate`` and ``/chains/*``, as a FastAPI
app.

The app knows the served models from the profile and reaches the model services through a
``Backends`` provider, so the same app runs inside the Gateway service (BentoML dependencies)
and in unit tests (engines in process).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, StreamingResponse

from bentochain.api.auth import (
    KeyAuth,
    estimate_tokens,
    reserve_tokens,
    settle_tokens,
)
from bentochain.api.backends import Backends, upstream_error
from bentochain.api.chains import chain_router
from bentochain.api.errors import APIError, install_handlers
from bentochain.api.generation import (
    chat_generation,
    chat_response,
    collect,
    completion_generations,
    completion_response,
    open_stream,
    sse_stream,
)
from bentochain.api.limits import BodyGuard, ConcurrencyLimit
from bentochain.api.openapi import error_responses, event_stream, install_openapi, ref
from bentochain.api.recording import RecordingMiddleware, note_model
from bentochain.api.registry import ModelRegistry
from bentochain.api.schemas import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    EmbeddingResponse,
    ErrorResponse,
    FeedbackAccepted,
    FeedbackRequest,
    ModelCard,
    ModelList,
    TextCompletion,
    TextCompletionChunk,
    TranslateRequest,
    TranslateResponse,
)
from bentochain.config.schema import Limits, Settings
from bentochain.engines.encoder import EncodedText
from bentochain.observability.records import FeedbackRecord, Recorder, Usage
from bentochain.security.access import Access

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _too_large(what: str, limit: int, unit: str, param: str) -> APIError:
    # 400, as OpenAI answers too many inputs: an invalid value, not a body too large (413).
    return APIError(
        400,
        f"{what} is over this server's limit of {limit} {unit}.",
        code="input_too_large",
        param=param,
    )


def _check_texts(texts: list[str], limits: Limits, param: str, *, allow_empty: bool) -> None:
    if not texts:
        raise APIError(400, f"'{param}' must not be empty.", code="invalid_value", param=param)
    if len(texts) > limits.max_inputs:
        raise _too_large(
            f"'{param}' has {len(texts)} items, which", limits.max_inputs, "items", param
        )
    for i, text in enumerate(texts):
        if not allow_empty and not text:
            raise APIError(
                400, f"'{param}[{i}]' is an empty string.", code="invalid_value", param=param
            )
        if len(text) > limits.max_input_chars:
            raise _too_large(
                f"'{param}[{i}]' has {len(text)} characters, which",
                limits.max_input_chars,
                "characters",
                param,
            )


def create_app(
    settings: Settings,
    backends: Callable[[], Backends],
    recorder: Recorder | None = None,
    access: Access | None = None,
) -> FastAPI:
    """The gateway app for ``settings``; ``backends()`` gives the model services per request;
    with a ``recorder``, requests become quality records (sampled as the profile says); with
    ``gateway.auth.mode: keys``, ``access`` checks keys and their limits."""
    if settings.gateway.auth.mode == "keys" and access is None:
        raise ValueError("gateway.auth.mode is 'keys': the app needs the keys (access)")
    registry = ModelRegistry(settings)
    default_max_tokens = settings.llm.generation.default_max_tokens
    limits = settings.gateway.limits
    max_tokens_limit = settings.llm.generation.max_tokens_limit

    keys = settings.gateway.auth.mode == "keys"
    app = FastAPI(
        title="bentochain gateway",
        description="OpenAI-compatible API over self-hosted models served with BentoML.",
        docs_url=None,  # BentoML's Swagger UI at / reads the same document (/docs.json)
        redoc_url=None,
        responses=error_responses(
            *(400, 404, 408, 413, 429, 500, 502, 503, 504), *((401,) if keys else ())
        ),
    )
    install_handlers(app)
    app.add_middleware(
        BodyGuard,
        max_bytes=limits.max_body_bytes,
        timeout=limits.body_timeout_seconds,
        max_depth=limits.max_json_depth,
    )
    app.add_middleware(ConcurrencyLimit, limit=settings.gateway.traffic.max_concurrency)
    if recorder is not None:  # outside the limits: refused requests are recorded too
        sample_rate = settings.observability.records.sample_rate
        app.add_middleware(RecordingMiddleware, recorder=recorder, sample_rate=sample_rate)
    if keys and access is not None:  # outermost: no key, no work
        app.add_middleware(KeyAuth, access=access)

    def check_generation(prompt_chars: int, max_tokens: int | None, param: str) -> None:
        if prompt_chars > limits.max_input_chars:
            raise _too_large(
                f"The prompt has {prompt_chars} characters, which",
                limits.max_input_chars,
                "characters",
                param,
            )
        if max_tokens is not None and max_tokens > max_tokens_limit:
            raise APIError(
                400,
                f"max_tokens is {max_tokens}, above this server's limit of {max_tokens_limit}.",
                code="invalid_value",
                param="max_tokens",
            )

    @app.get("/v1/models", response_model=ModelList)
    async def list_models() -> ModelList:
        return registry.list()

    @app.get("/v1/models/{model_id:path}", response_model=ModelCard)
    async def get_model(model_id: str) -> ModelCard:
        cards = {card.id: card for card in registry.list().data}
        registry.get(model_id)  # 404 in OpenAI's shape for an unknown id
        return cards[model_id]

    @app.post(
        "/v1/chat/completions",
        response_model=None,
        responses={
            200: {
                "model": ChatCompletion,
                "content": event_stream(
                    {"anyOf": [ref(ChatCompletionChunk), ref(ErrorResponse)]},
                    description="a chat.completion.chunk (or an error), then [DONE]",
                    done=True,
                ),
            }
        },
    )
    async def chat_completions(request: ChatCompletionRequest) -> Any:
        model = registry.for_task(request.model, "chat")
        record = note_model(model.id, model.reference)
        if len(request.messages) > limits.max_messages:
            raise _too_large(
                f"'messages' has {len(request.messages)} items, which",
                limits.max_messages,
                "messages",
                "messages",
            )
        chars = sum(len(m.text()) for m in request.messages)
        asked = [t for t in (request.max_tokens, request.max_completion_tokens) if t is not None]
        check_generation(chars, max(asked, default=None), "messages")
        await reserve_tokens(
            estimate_tokens(chars) + (request.token_budget() or default_max_tokens)
        )
        stream = await open_stream(backends().generate, chat_generation(request))
        if request.stream:
            body = sse_stream("chat", model.id, stream, request.include_usage())
            return StreamingResponse(body, media_type="text/event-stream", headers=SSE_HEADERS)
        result = await collect(stream)
        await settle_tokens(result.prompt_tokens + result.completion_tokens)
        if record is not None:
            record.generated(
                [result.text], result.finish_reason, result.prompt_tokens, result.completion_tokens
            )
        return JSONResponse(chat_response(model.id, result))

    @app.post(
        "/v1/completions",
        response_model=None,
        responses={
            200: {
                "model": TextCompletion,
                "content": event_stream(
                    {"anyOf": [ref(TextCompletionChunk), ref(ErrorResponse)]},
                    description="a text_completion chunk (or an error), then [DONE]",
                    done=True,
                ),
            }
        },
    )
    async def completions(request: CompletionRequest) -> Any:
        model = registry.for_task(request.model, "chat")
        record = note_model(model.id, model.reference)
        check_generation(max(len(p) for p in request.prompts()), request.max_tokens, "prompt")
        if len(request.prompts()) > limits.max_inputs:
            raise _too_large("'prompt'", limits.max_inputs, "prompts", "prompt")
        generations = completion_generations(request)
        budget = request.max_tokens or default_max_tokens
        await reserve_tokens(sum(estimate_tokens(len(p)) + budget for p in request.prompts()))
        if request.stream:
            stream = await open_stream(backends().generate, generations[0])
            body = sse_stream("completion", model.id, stream, request.include_usage())
            return StreamingResponse(body, media_type="text/event-stream", headers=SSE_HEADERS)

        async def run(generation: Any) -> Any:
            return await collect(await open_stream(backends().generate, generation))

        results = await asyncio.gather(*(run(g) for g in generations))
        await settle_tokens(sum(r.prompt_tokens + r.completion_tokens for r in results))
        if record is not None:
            record.generated(
                [r.text for r in results],
                results[0].finish_reason if len(results) == 1 else None,
                sum(r.prompt_tokens for r in results),
                sum(r.completion_tokens for r in results),
            )
        return JSONResponse(completion_response(model.id, list(results)))

    @app.post("/v1/embeddings", response_model=EmbeddingResponse)
    async def embeddings(request: EmbeddingRequest) -> JSONResponse:
        model = registry.for_task(request.model, "embedding")
        record = note_model(model.id, model.reference)
        texts = request.texts()
        _check_texts(texts, limits, "input", allow_empty=False)
        await reserve_tokens(sum(estimate_tokens(len(t)) for t in texts))
        try:
            encoded = await backends().embed(texts)
        except Exception as exc:
            raise upstream_error(exc, "Embedder") from exc
        dimensions = encoded[0].dimensions
        if request.dimensions is not None and request.dimensions != dimensions:
            raise APIError(
                400,
                f"'{model.id}' produces {dimensions}-dimensional embeddings and cannot shorten "
                f"them to {request.dimensions}.",
                code="invalid_value",
                param="dimensions",
            )
        tokens = sum(e.tokens for e in encoded)
        await settle_tokens(tokens)
        if record is not None:
            # As OpenAI's base64 format: a fifth of the JSON floats' size and no per-float
            # formatting (ingestion recorded as floats wrote ~8 KB a text and cost the gateway
            # a tenth of a core at 500 texts/s).
            record.output = {"embeddings": [_vector(e, "base64") for e in encoded]}
            record.usage = Usage(prompt_tokens=tokens)
        # Built as plain JSON: validating hundreds of floats per text again costs more than
        # the rest of the request.
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {
                        "object": "embedding",
                        "index": i,
                        "embedding": _vector(e, request.encoding_format),
                    }
                    for i, e in enumerate(encoded)
                ],
                "model": model.id,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    @app.post("/translate", response_model=TranslateResponse)
    async def translate(request: TranslateRequest) -> TranslateResponse:
        _check_texts(request.texts, limits, "texts", allow_empty=True)
        model = registry.translator(request.target_lang)
        record = note_model(model.id, model.reference)
        await reserve_tokens(sum(2 * estimate_tokens(len(t)) for t in request.texts))
        try:
            translations = await backends().translate(request.target_lang, request.texts)
        except Exception as exc:
            raise upstream_error(exc, f"Translator{request.target_lang.upper()}") from exc
        if record is not None:
            record.texts = translations
        return TranslateResponse(translations=translations, model=model.id)

    app.include_router(chain_router(backends, limits))

    @app.post("/v1/feedback", response_model=FeedbackAccepted)
    async def feedback(request: FeedbackRequest) -> FeedbackAccepted:
        if recorder is None:
            raise APIError(
                404,
                "Feedback is not recorded here: observability.records.enabled is false.",
                code="unknown_url",
            )
        recorder.submit(
            FeedbackRecord(
                request_id=request.request_id,
                time=datetime.now(UTC),
                score=request.score,
                comment=request.comment,
            )
        )
        return FeedbackAccepted(request_id=request.request_id)

    known_paths: dict[str, set[str]] = {}
    for route in app.routes:
        path, methods = getattr(route, "path", None), getattr(route, "methods", None)
        if path is not None and methods:
            known_paths.setdefault(path, set()).update(methods)

    @app.api_route(
        "/v1/{path:path}",
        methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
        include_in_schema=False,
    )
    async def unknown_path(path: str) -> None:
        methods = known_paths.get(f"/v1/{path}")
        if methods:
            raise APIError(
                405,
                f"Method not allowed on /v1/{path}.",
                code="method_not_allowed",
                allow=", ".join(sorted(methods)),
            )
        raise APIError(404, f"Unknown path: /v1/{path}.", code="unknown_url")

    install_openapi(app, settings)
    return app


def _vector(encoded: EncodedText, encoding: str) -> list[float] | str:
    """OpenAI's ``base64`` format is the float32 bytes themselves (the openai client's default)."""
    if encoding == "base64":
        return base64.b64encode(encoded.vector).decode("ascii")
    return encoded.floats()
