"""Streaming from a ``bentoml.depends`` dependency without two traps of BentoML 1.4's client.

The dependency client reads a streamed answer under one *total* timeout (the callee's
``traffic.timeout``), so a long generation is cut off in mid-stream; and when its reader stops
early, the HTTP response is left to the garbage collector, so the callee keeps generating for a
client that is gone. This adapter sends the call through the same client (its session, its
serialisation, its trace headers) but reads the stream with an *idle* timeout, and closes the
connection as soon as the reader stops: the callee sees the disconnect and cancels at once.

It relies on the client's private ``_session_manager`` and ``_build_payload``, which is why
bentoml is pinned exactly; ``tests/integration/test_llm_serving.py`` and
``test_long_stream.py`` fail if either behaviour regresses.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import aiohttp
from multidict import CIMultiDict


async def stream_call(
    dependency: Any, api: str, *, idle_timeout: float, **kwargs: Any
) -> AsyncGenerator[str, None]:
    """Call streaming ``api`` of ``dependency`` with ``kwargs``; yield its text chunks."""
    from _bentoml_impl.client.proxy2 import map_exception

    client = dependency.to_async
    endpoint = client.endpoints[api]
    headers: CIMultiDict[str] = CIMultiDict({"Content-Type": client.media_type})
    body = client._build_payload(endpoint, (), kwargs, headers)
    session = await client._session_manager.get_session()
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=idle_timeout)
    response = await session.post(endpoint.route, data=body, headers=headers, timeout=timeout)
    finished = False
    try:
        if not response.ok:
            raise await map_exception(response)
        async for chunk in response.content.iter_any():
            yield chunk.decode()
        finished = True
    finally:
        if finished:
            response.release()
        else:
            response.close()  # drop the connection: the callee sees its client leave
