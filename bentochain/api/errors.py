"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

Every failure the gateway answers (bad JSON, a wrong type, an unknown model, a busy model
service) goes through ``APIError`` so clients built for OpenAI read the status and message
they expect, and the gateway keeps serving.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

from bentochain.observability.context import request_id

logger = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "server_error",
    503: "service_unavailable",
    504: "timeout_error",
}


class APIError(Exception):
    """A failure with the HTTP status and OpenAI error fields the client should get."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
        allow: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.retry_after = retry_after
        self.allow = allow  # a 405's methods (RFC 9110 asks for them)

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, code=self.code, param=self.param)

    def headers(self) -> dict[str, str]:
        headers = {}
        if self.retry_after is not None:
            headers["Retry-After"] = str(max(1, round(self.retry_after)))
        if self.allow is not None:
            headers["Allow"] = self.allow
        return headers

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers())


def error_body(
    status: int, message: str, *, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": _TYPES.get(
                status, "server_error" if status >= 500 else "invalid_request_error"
            ),
            "param": param,
            "code": code,
        }
    }


def validation_message(errors: list[Mapping[str, Any]]) -> tuple[str, str | None, str]:
    """One readable sentence for the first problem, and the parameter it concerns."""
    first = errors[0]
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    if first.get("type") == "json_invalid":
        return (
            "We could not parse the JSON body of your request: "
            f"{first.get('ctx', {}).get('error', 'invalid JSON')}. Send a valid JSON object.",
            None,
            "invalid_json",
        )
    if not loc and first.get("type") in {"model_attributes_type", "dict_type", "missing"}:
        return ("The request body must be a JSON object.", None, "invalid_json")
    param = ".".join(loc) or None
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if first.get("type") == "missing":
        message = f"Missing required parameter: '{param}'."
    elif param:
        message = f"Invalid value for '{param}': {message}."
    more = len(errors) - 1
    if more:
        message += f" ({more} more problem{'s' if more > 1 else ''} in this request.)"
    return message, param, "invalid_value" if first.get("type") != "missing" else "missing"


def install_handlers(app: FastAPI) -> None:
    """Answer every error of ``app`` in OpenAI's shape."""

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param, code = validation_message(list(exc.errors()))
        # OpenAI's routes answer 400; the chains 422, as LangServe does; bad JSON is 400.
        chain = request.url.path.startswith("/chains/") and code != "invalid_json"
        return APIError(422 if chain else 400, message, code=code, param=param).response()

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        messages = {404: "Unknown path.", 405: "Method not allowed on this path."}
        message = messages.get(exc.status_code, str(exc.detail))
        return JSONResponse(
            error_body(exc.status_code, message, code=None),
            status_code=exc.status_code,
            headers=dict(exc.headers or {}),
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        return internal_error(exc).response()


def internal_error(exc: BaseException) -> APIError:
    """A bug of ours: logged with its traceback, answered 500 with the request's id (what the
    log line and the trace are found by), never passed off as a dependency's failure."""
    current = request_id() or "unknown"
    logger.error("internal error (request %s): %r", current, exc, exc_info=exc)
    return APIError(
        500,
        f"The server had an error while processing your request (request id {current}); "
        "it is in the server's log.",
        code="internal_error",
    )
