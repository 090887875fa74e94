"""Calls between services carry a token that only the services have.

BentoML's non-entry services take pickled request bodies (CVE-2025-27520, CVE-2025-32375): one
that anyone can reach runs anyone's code. Besides keeping them off the network (loopback or
Unix sockets here, NetworkPolicies on a cluster), every non-entry service refuses a request
without the run's internal token in ``x-bentochain-internal``, before it reads a byte of the
body. The callers (the upstream layer) send it. The probes and ``/metrics`` stay open.

The token comes from ``BENTOCHAIN_INTERNAL_TOKEN``: on Kubernetes from the Secret, locally made
per run by ``bentochain serve`` / ``serve-split``, or, under a bare ``bentoml serve``, by the
first process that imports a service (its workers inherit its environment).
"""

from __future__ import annotations

import hmac
import os
import secrets
from collections.abc import MutableMapping

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from bentochain.config.loader import INTERNAL_TOKEN_ENV
from bentochain.serving import probes

TOKEN_ENV = INTERNAL_TOKEN_ENV
HEADER = "x-bentochain-internal"


def internal_token(environ: MutableMapping[str, str] = os.environ) -> str:
    """This run's token; made (and put in ``environ``, for the processes started from here)
    when there is none yet."""
    token = environ.get(TOKEN_ENV, "").strip()
    if not token:
        token = secrets.token_hex(32)
        environ[TOKEN_ENV] = token
    return token


class InternalOnly:
    """ASGI middleware of a non-entry service: 401 for a call without the token."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in probes.OPEN:
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope.get("headers", ()) if k == HEADER.encode()), b"")
        if hmac.compare_digest(given, self.token):
            await self.app(scope, receive, send)
            return
        refusal = JSONResponse(
            {"error": "this service takes calls from the other bentochain services only"},
            status_code=401,
        )
        await refusal(scope, receive, send)
