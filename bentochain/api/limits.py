"""ASGI guards that refuse work the gateway should not start: bodies too big, too slow or too
deep, and overload.

Both answer before any model sees the request, in OpenAI's error shape, so a flood of large
or excessive requests costs the server almost nothing and never takes it down.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bentochain.api.errors import APIError


class BodyGuard:
    """The body, read whole before the app sees it, within bounds: 413 past ``max_bytes``
    (declared in Content-Length, or found while reading), 408 when it takes longer than
    ``timeout`` seconds to arrive (a client sending a byte a second holds no worker), 400 when
    its JSON nests deeper than ``max_depth`` (the JSON parser would recurse until it fails).

    Every endpoint takes a small JSON body, so reading it first costs nothing, and a chunked
    upload cannot slip past the limits; the app then gets it replayed.
    """

    def __init__(
        self, app: ASGIApp, max_bytes: int, timeout: float = 30.0, max_depth: int = 64
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.max_depth = max_depth

    def _too_large(self) -> APIError:
        return APIError(
            413,
            f"The request body is larger than this server's limit of {self.max_bytes} bytes.",
            code="request_too_large",
        )

    async def _read(self, receive: Receive) -> bytes | APIError | None:
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return None
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                return self._too_large()
            if not message.get("more_body", False):
                return bytes(body)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await self._too_large().response()(scope, receive, send)
                return
        try:
            read = await asyncio.wait_for(self._read(receive), self.timeout)
        except TimeoutError:
            read = APIError(
                408,
                f"The request body did not arrive within {self.timeout:g} seconds.",
                code="request_timeout",
            )
        if read is None:
            return
        if isinstance(read, APIError):
            await read.response()(scope, receive, send)
            return
        if json_depth(read) > self.max_depth:
            problem = APIError(
                400,
                f"The JSON body nests deeper than this server's limit of {self.max_depth} levels.",
                code="invalid_json",
            )
            await problem.response()(scope, receive, send)
            return
        body = read
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def json_depth(body: bytes) -> int:
    """How deep the arrays and objects of a JSON text nest (strings skipped), without parsing
    it: the check has to be cheaper than what it protects."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


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
