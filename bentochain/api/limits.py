"""ASGI guards that refuse work the gateway should not start: oversized bodies, overload.

Both answer before any model sees the request, in OpenAI's error shape, so a flood of large
or excessive requests costs the server almost nothing and never takes it down.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bentochain.api.errors import APIError


class BodySizeLimit:
    """413 for a body over ``max_bytes``: declared in Content-Length, or found while reading.

    The body is read (up to the limit) before the app sees the request, then replayed to it:
    every endpoint takes a small JSON body, and a chunked upload cannot slip past the limit.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> APIError:
        return APIError(
            413,
            f"The request body is larger than this server's limit of {self.max_bytes} bytes.",
            code="request_too_large",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await self._too_large().response()(scope, receive, send)
                return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await self._too_large().response()(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class ConcurrencyLimit:
    """429 with ``Retry-After`` once ``limit`` requests are in flight (streams included)."""

    def __init__(self, app: ASGIApp, limit: int | None) -> None:
        self.app = app
        self.limit = limit
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.limit is None:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            error = APIError(
                429,
                f"The server is handling {self.limit} requests already; retry shortly.",
                code="too_many_requests",
                retry_after=1.0,
            )
            await error.response()(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
