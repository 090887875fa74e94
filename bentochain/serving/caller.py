"""What every service that calls others shares: readiness over its dependencies, and closing
its connections to them at shutdown."""

from __future__ import annotations

import bentoml

from bentochain.serving.readiness import dependencies_ready
from bentochain.serving.upstream import Upstream


class Caller:
    """A service base: ``__init__`` sets ``self.calls`` (``startup.dependencies``)."""

    calls: dict[str, Upstream]

    async def __is_ready__(self) -> bool:
        return await dependencies_ready(self.calls.values())

    @bentoml.on_shutdown
    async def close_upstreams(self) -> None:
        for upstream in self.calls.values():
            await upstream.aclose()
