"""The gateway's OpenAPI document: one document, valid for the version it declares (3.1).

FastAPI writes the routes' schemas in OpenAPI 3.1 (JSON Schema 2020-12). BentoML's own
``/docs.json`` copies them into a document it stamps 3.0.2, where some of them mean something
else or are invalid, so client generators and schemathesis met a broken document. The gateway
serves this one at ``/openapi.json`` and, in place of BentoML's, at ``/docs.json`` (BentoML's
Swagger UI reads 3.1). It adds what BentoML serves beside the app (health and metrics) and the
bearer-key scheme when the gateway asks for keys.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.types import ASGIApp, Receive, Scope, Send

from bentochain.api.registry import ModelRegistry
from bentochain.api.schemas import ChatCompletionChunk, ErrorResponse, TextCompletionChunk
from bentochain.config.schema import Settings
from bentochain.serving import probes
from bentochain.serving.readiness import Readiness

ERRORS: dict[int, str] = {
    400: "The request is invalid: the message names the parameter to fix.",
    401: "The API key is missing, wrong, revoked or expired.",
    404: "Unknown model, chain or path.",
    408: "The request body did not arrive in time.",
    413: "The request is over one of this server's limits (body, inputs, characters, messages).",
    422: "The chain's input or run config is invalid (chains only).",
    429: "Over a limit of the key or of the server: retry after Retry-After seconds.",
    500: "A bug of the server's: the message gives the request id found in its log.",
    502: "A service behind the gateway answered with an error.",
    503: "A service behind the gateway is down, draining or busy: retry after Retry-After.",
    504: "A service behind the gateway did not answer in time.",
}

SCHEMA_REF = "#/components/schemas/{model}"
# Models the document refers to that no route's body names (event payloads, /readyz).
EXTRA_MODELS: tuple[type[BaseModel], ...] = (
    ChatCompletionChunk,
    TextCompletionChunk,
    ErrorResponse,
    Readiness,
)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAI-shaped error responses, as FastAPI's ``responses`` argument takes them."""
    responses: dict[int | str, dict[str, Any]] = {
        s: {"model": ErrorResponse, "description": ERRORS[s]} for s in statuses
    }
    if 404 in responses:  # a path BentoML's router cannot match (a newline in it): its plain 404
        responses[404]["content"] = {"text/plain": {"schema": {"type": "string"}}}
    return responses


def ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": SCHEMA_REF.format(model=model.__name__)}


def event_stream(
    data: dict[str, Any], *, description: str, events: list[str] | None = None, done: bool = False
) -> dict[str, Any]:
    """A ``text/event-stream`` answer, its schema describing one event (as OpenAPI 3.2's
    ``itemSchema`` does, and schemathesis reads it): JSON ``data``, or ``[DONE]`` at the end."""
    payload: dict[str, Any] = {
        "type": "string",
        "contentMediaType": "application/json",
        "contentSchema": data,
    }
    if done:
        payload = {"type": "string", "if": {"const": "[DONE]"}, "then": True, "else": payload}
    event: dict[str, Any] = {
        "type": "object",
        "description": description,
        "properties": {"data": payload},
        "required": ["data"],
    }
    if events is not None:
        event["properties"]["event"] = {"enum": events}
        event["required"].append("event")
    return {"text/event-stream": {"schema": event}}


def _text(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"text/plain": {"schema": {"type": "string"}}}}


def _served_beside(readiness: dict[str, Any]) -> dict[str, Any]:
    """What BentoML and the serving middleware answer next to the app."""
    ready_json = {"application/json": {"schema": readiness}}
    infra = {"tags": ["infrastructure"], "security": []}
    alive = {"200": _text("Alive."), "503": _text("Not serving: restart it.")}
    liveness = {
        probes.LIVEZ: "Liveness: the process serves",
        probes.HEALTHZ: "Liveness (BentoML's older name)",
        probes.HEALTH: "Liveness (vLLM's name, which guidellm and routers ask)",
    }
    return {
        **{
            path: {
                "get": {
                    **infra,
                    "operationId": path.strip("/"),
                    "summary": summary,
                    "responses": alive,
                }
            }
            for path, summary in liveness.items()
        },
        probes.READYZ: {
            "get": {
                **infra,
                "operationId": "readyz",
                "summary": "Readiness, with each dependency's state and replicas",
                "responses": {
                    "200": {"description": "Ready: some route can serve.", "content": ready_json},
                    "503": {
                        "description": "Not ready (starting, draining, or no route can serve).",
                        "content": {**ready_json, "text/plain": {"schema": {"type": "string"}}},
                    },
                },
            }
        },
        probes.METRICS: {
            "get": {
                **infra,
                "operationId": "metrics",
                "summary": "Prometheus metrics",
                "responses": {"200": _text("Prometheus text exposition format.")},
            }
        },
    }


def _bound(schemas: dict[str, Any], model: str, field: str, **keywords: Any) -> None:
    schemas[model]["properties"][field].update(keywords)


def _deployment_bounds(schemas: dict[str, Any], settings: Settings) -> None:
    """What this deployment accepts that its models cannot say: the served model ids and the
    profile's limits (a client generator, and schemathesis, then send what is served)."""
    served = ModelRegistry(settings).list().data
    chat = [m.id for m in served if m.task == "chat"]
    embedding = [m.id for m in served if m.task == "embedding"]
    limits = settings.gateway.limits
    tokens = settings.llm.generation.max_tokens_limit
    for request in ("ChatCompletionRequest", "CompletionRequest"):
        _bound(schemas, request, "model", enum=chat)
        _bound(schemas, request, "max_tokens", maximum=tokens)
    _bound(schemas, "ChatCompletionRequest", "max_completion_tokens", maximum=tokens)
    _bound(schemas, "ChatCompletionRequest", "messages", maxItems=limits.max_messages)
    _bound(
        schemas,
        "CompletionRequest",
        "prompt",
        maxItems=limits.max_inputs,
        maxLength=limits.max_input_chars,
    )
    _bound(schemas, "EmbeddingRequest", "model", enum=embedding)
    _bound(
        schemas,
        "EmbeddingRequest",
        "input",
        minItems=1,
        maxItems=limits.max_inputs,
        minLength=1,
        maxLength=limits.max_input_chars,
    )
    _bound(schemas, "TranslateRequest", "texts", minItems=1, maxItems=limits.max_inputs)
    for name, schema in schemas.items():
        if name.endswith("BatchRequest"):
            schema["properties"]["inputs"]["maxItems"] = limits.max_inputs


def install_openapi(app: FastAPI, settings: Settings) -> None:
    """Make ``app.openapi()`` (and so ``/openapi.json``) build the gateway's whole document."""

    def build() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            components = document.setdefault("components", {})
            schemas = components.setdefault("schemas", {})
            _, definitions = models_json_schema(
                [(model, "serialization") for model in EXTRA_MODELS], ref_template=SCHEMA_REF
            )
            for name, schema in definitions.get("$defs", {}).items():
                schemas.setdefault(name, schema)
            _deployment_bounds(schemas, settings)
            beside = _served_beside(ref(Readiness))
            if settings.gateway.metrics_port is not None:  # served on its own port
                del beside[probes.METRICS]
            document["paths"].update(beside)
            if settings.gateway.auth.mode == "keys":
                components["securitySchemes"] = {
                    "apiKey": {
                        "type": "http",
                        "scheme": "bearer",
                        "description": "A key from `bentochain keys create`.",
                    }
                }
                document["security"] = [{"apiKey": []}]
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = build  # type: ignore[method-assign]


class DocsJson:
    """``GET /docs.json`` answered with the gateway's document instead of BentoML's."""

    def __init__(self, app: ASGIApp, document: Callable[[], dict[str, Any]]) -> None:
        self.app = app
        self.document = document
        self._body: bytes | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") != "/docs.json" or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        if self._body is None:
            self._body = json.dumps(self.document(), separators=(",", ":")).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(self._body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": self._body})
