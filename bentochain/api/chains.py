"""``/chains/{name}/*``: each chain as invoke, batch, stream and its JSON Schemas (LangServe's
shape), in front of the chain services.

Each chain has its own routes, whose bodies are its own input and output models, so the OpenAPI
document tells a client (and schemathesis) what each chain takes and answers. Input is checked
here, before any service is called: a bad request costs no LLM call and gets a 422 naming the
field (as LangServe answers).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, create_model

from bentochain.api.auth import estimate_tokens, reserve_tokens
from bentochain.api.backends import Backends, upstream_error
from bentochain.api.errors import APIError
from bentochain.api.openapi import error_responses, event_stream
from bentochain.api.recording import note_model
from bentochain.config.schema import Limits
from bentochain.serving.chains import ChainError, RunConfig
from chains.catalog import CHAINS, ChainSpec

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class RunMetadata(BaseModel):
    run_id: str


class BatchMetadata(BaseModel):
    run_ids: list[str]


class ChainInfo(BaseModel):
    name: str
    description: str


class ChainList(BaseModel):
    chains: list[ChainInfo]


@dataclass(frozen=True)
class ChainModels:
    """A chain's request and response bodies, named after it in the OpenAPI document."""

    invoke: type[BaseModel]
    batch: type[BaseModel]
    invoked: type[BaseModel]
    batched: type[BaseModel]

    @classmethod
    def of(cls, spec: ChainSpec) -> ChainModels:
        title = spec.name.capitalize()
        closed = ConfigDict(extra="forbid")
        config = (RunConfig, Field(default_factory=RunConfig))
        return cls(
            invoke=create_model(
                f"{title}InvokeRequest",
                __config__=closed,
                input=(spec.input_model, ...),
                config=config,
            ),
            batch=create_model(
                f"{title}BatchRequest",
                __config__=closed,
                inputs=(list[spec.input_model], Field(min_length=1)),  # type: ignore[name-defined]
                config=config,
            ),
            invoked=create_model(
                f"{title}InvokeResponse",
                output=(spec.output_model, ...),
                metadata=(RunMetadata, ...),
            ),
            batched=create_model(
                f"{title}BatchResponse",
                outputs=(list[spec.output_model], ...),  # type: ignore[name-defined]
                metadata=(BatchMetadata, ...),
            ),
        )


def _spec(name: str) -> ChainSpec:
    spec = CHAINS.get(name)
    if spec is None:
        known = ", ".join(sorted(CHAINS))
        raise APIError(404, f"Unknown chain '{name}'. Chains: {known}.", code="unknown_chain")
    return spec


def _failure(exc: Exception, spec: ChainSpec) -> APIError:
    if isinstance(exc, ChainError):
        return APIError(exc.status, exc.message, code="chain_failed")
    return upstream_error(exc, f"'{spec.name}' chain")


def _sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


def chain_router(backends: Callable[[], Backends], limits: Limits) -> APIRouter:
    router = APIRouter(prefix="/chains", responses=error_responses(422))

    @router.get("", response_model=ChainList)
    async def list_chains() -> ChainList:
        return ChainList(
            chains=[ChainInfo(name=s.name, description=s.description) for s in CHAINS.values()]
        )

    @router.get("/{name}/input_schema", response_model=dict[str, Any])
    async def input_schema(name: str) -> dict[str, Any]:
        return _spec(name).input_model.model_json_schema()

    @router.get("/{name}/output_schema", response_model=dict[str, Any])
    async def output_schema(name: str) -> dict[str, Any]:
        return _spec(name).output_model.model_json_schema()

    for spec in CHAINS.values():
        _add_routes(router, spec, backends, limits)

    @router.post("/{name}/{operation}", include_in_schema=False)
    async def unknown_chain(name: str, operation: str) -> None:
        _spec(name)
        raise APIError(404, f"Unknown path: /chains/{name}/{operation}.", code="unknown_url")

    return router


def _add_routes(
    router: APIRouter, spec: ChainSpec, backends: Callable[[], Backends], limits: Limits
) -> None:
    """``/chains/{spec.name}/invoke``, ``batch`` and ``stream``, with the chain's own models."""
    name = spec.name
    models = ChainModels.of(spec)

    async def invoke(body: Any) -> JSONResponse:
        record = note_model(name)
        value = body.input.model_dump(mode="json")
        await reserve_tokens(estimate_tokens(len(json.dumps(value))))
        run_id = str(uuid.uuid4())
        try:
            output = await backends().chain(name).invoke(value, body.config, run_id)
        except Exception as exc:
            raise _failure(exc, spec) from exc
        if record is not None:
            record.chain_output(output)
        return JSONResponse({"output": output, "metadata": {"run_id": run_id}})

    async def batch(body: Any) -> JSONResponse:
        record = note_model(name)
        if len(body.inputs) > limits.max_inputs:
            raise APIError(
                400,
                f"'inputs' has {len(body.inputs)} items, over this server's limit of "
                f"{limits.max_inputs}.",
                code="input_too_large",
                param="inputs",
            )
        values = [v.model_dump(mode="json") for v in body.inputs]
        await reserve_tokens(sum(estimate_tokens(len(json.dumps(v))) for v in values))
        run_ids = [str(uuid.uuid4()) for _ in values]
        try:
            outputs = await backends().chain(name).batch(values, body.config, run_ids)
        except Exception as exc:
            raise _failure(exc, spec) from exc
        if record is not None:
            record.output = {"chains": outputs}
        return JSONResponse({"outputs": outputs, "metadata": {"run_ids": run_ids}})

    async def stream(body: Any) -> StreamingResponse:
        record = note_model(name)
        value = body.input.model_dump(mode="json")
        await reserve_tokens(estimate_tokens(len(json.dumps(value))))
        run_id = str(uuid.uuid4())
        events = backends().chain(name).stream(value, body.config, run_id)

        async def sse() -> AsyncIterator[str]:
            yield _sse("metadata", {"run_id": run_id})
            try:
                try:
                    async for event in events:
                        kind = event.pop("event")
                        data = event.get("data", event)
                        if record is not None and kind == "output":
                            record.chain_output(data)
                        elif record is not None and kind == "error":
                            record.error = str(data.get("message"))
                        yield _sse(kind, data)
                except Exception as exc:
                    error = _failure(exc, spec)
                    if record is not None:
                        record.error = error.message
                    yield _sse("error", {"status": error.status, "message": error.message})
                yield _sse("end", {})
            finally:
                close = getattr(events, "aclose", None)
                if close is not None:
                    await close()  # a client that left stops the run

        return StreamingResponse(sse(), media_type="text/event-stream", headers=SSE_HEADERS)

    # FastAPI reads the body's model from the annotation: this chain's own.
    invoke.__annotations__ = {"body": models.invoke, "return": JSONResponse}
    batch.__annotations__ = {"body": models.batch, "return": JSONResponse}
    stream.__annotations__ = {"body": models.invoke, "return": StreamingResponse}
    events = event_stream(
        {"type": "object"},
        description="metadata (the run id), each step's output, the chain's output or an "
        "error, then end",
        events=["metadata", "step", "attempt", "output", "error", "end"],
    )
    router.add_api_route(
        f"/{name}/invoke",
        invoke,
        methods=["POST"],
        response_model=None,
        responses={200: {"model": models.invoked}},
        summary=f"Run the {name} chain once",
        description=spec.description,
        operation_id=f"{name}_invoke",
    )
    router.add_api_route(
        f"/{name}/batch",
        batch,
        methods=["POST"],
        response_model=None,
        responses={200: {"model": models.batched}},
        summary=f"Run the {name} chain on several inputs",
        description=spec.description,
        operation_id=f"{name}_batch",
    )
    router.add_api_route(
        f"/{name}/stream",
        stream,
        methods=["POST"],
        response_model=None,
        responses={200: {"content": events}},
        summary=f"Run the {name} chain, streaming its steps",
        description=spec.description,
        operation_id=f"{name}_stream",
    )
