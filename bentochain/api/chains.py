"""``/chains/{name}/*``: each chain as invoke, batch, stream and its JSON Schemas (LangServe's
shape), in front of the chain services.

Input is checked against the chain's pydantic model here, before any service is called, so a
bad request costs no LLM call and gets a 422 naming the field.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bentochain.api.auth import estimate_tokens, reserve_tokens
from bentochain.api.backends import Backends, upstream_error
from bentochain.api.errors import APIError, validation_message
from bentochain.api.recording import note_model
from bentochain.config.schema import Limits
from bentochain.serving.chains import ChainError, RunConfig
from chains.catalog import CHAINS, ChainSpec

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class InvokeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: dict[str, Any]
    config: RunConfig = RunConfig()


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: list[dict[str, Any]] = Field(min_length=1)
    config: RunConfig = RunConfig()


def _spec(name: str) -> ChainSpec:
    spec = CHAINS.get(name)
    if spec is None:
        known = ", ".join(sorted(CHAINS))
        raise APIError(404, f"Unknown chain '{name}'. Chains: {known}.", code="unknown_chain")
    return spec


def _invalid(exc: ValidationError, prefix: str = "") -> APIError:
    message, param, code = validation_message(list(exc.errors()))
    if prefix:
        message = message.replace(f"'{param}'", f"'{prefix}.{param}'")
        param = f"{prefix}.{param}" if param else prefix
    return APIError(422, message, code=code, param=param)


Body = TypeVar("Body", bound=BaseModel)


async def _body(request: Request, model: type[Body]) -> Body:
    try:
        raw = await request.json()
    except ValueError:
        raise APIError(400, "The request body is not valid JSON.", code="invalid_json") from None
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise _invalid(exc) from None


def _check_input(spec: ChainSpec, value: dict[str, Any], where: str) -> dict[str, Any]:
    try:
        return spec.input_model.model_validate(value).model_dump(mode="json")
    except ValidationError as exc:
        raise _invalid(exc, where) from None


def _failure(exc: Exception, spec: ChainSpec) -> APIError:
    if isinstance(exc, ChainError):
        return APIError(exc.status, exc.message, code="chain_failed")
    return upstream_error(exc, f"'{spec.name}' chain")


def _sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


def chain_router(backends: Callable[[], Backends], limits: Limits) -> APIRouter:
    router = APIRouter(prefix="/chains")

    @router.get("")
    async def list_chains() -> dict[str, Any]:
        return {"chains": [{"name": s.name, "description": s.description} for s in CHAINS.values()]}

    @router.get("/{name}/input_schema")
    async def input_schema(name: str) -> dict[str, Any]:
        return _spec(name).input_model.model_json_schema()

    @router.get("/{name}/output_schema")
    async def output_schema(name: str) -> dict[str, Any]:
        return _spec(name).output_model.model_json_schema()

    @router.post("/{name}/invoke")
    async def invoke(name: str, request: Request) -> JSONResponse:
        spec = _spec(name)
        record = note_model(name)
        body = await _body(request, InvokeRequest)
        value = _check_input(spec, body.input, "input")
        await reserve_tokens(estimate_tokens(len(json.dumps(value))))
        run_id = str(uuid.uuid4())
        try:
            output = await backends().chain(name).invoke(value, body.config, run_id)
        except Exception as exc:
            raise _failure(exc, spec) from exc
        if record is not None:
            record.chain_output(output)
        return JSONResponse({"output": output, "metadata": {"run_id": run_id}})

    @router.post("/{name}/batch")
    async def batch(name: str, request: Request) -> JSONResponse:
        spec = _spec(name)
        record = note_model(name)
        body = await _body(request, BatchRequest)
        if len(body.inputs) > limits.max_inputs:
            raise APIError(
                413,
                f"'inputs' has {len(body.inputs)} items, over this server's limit of "
                f"{limits.max_inputs}.",
                code="input_too_large",
                param="inputs",
            )
        values = [_check_input(spec, v, f"inputs.{i}") for i, v in enumerate(body.inputs)]
        await reserve_tokens(sum(estimate_tokens(len(json.dumps(v))) for v in values))
        run_ids = [str(uuid.uuid4()) for _ in values]
        try:
            outputs = await backends().chain(name).batch(values, body.config, run_ids)
        except Exception as exc:
            raise _failure(exc, spec) from exc
        if record is not None:
            record.output = {"chains": outputs}
        return JSONResponse({"outputs": outputs, "metadata": {"run_ids": run_ids}})

    @router.post("/{name}/stream")
    async def stream(name: str, request: Request) -> StreamingResponse:
        spec = _spec(name)
        record = note_model(name)
        body = await _body(request, InvokeRequest)
        value = _check_input(spec, body.input, "input")
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

    return router
