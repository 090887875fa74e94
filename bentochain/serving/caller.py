"""What every service that calls others shares: readiness over its dependencies, and closing
its connections to them at shutdown."""

from __future__ import annotations

import bentoml

from bentochain.serving.readiness import Needs, readiness
from bentochain.serving.upstream import Upstream


class Caller:
    """A service base: ``__init__`` sets ``self.calls`` (``startup.dependencies``). ``needs``:
    ready while ``all`` its dependencies can serve (a chain), or ``any`` of them (the Gateway,
    whose routes fail alone)."""

    calls: dict[str, Upstream]
    needs: Needs = "all"

    def ready_now(self) -> bool:
        return readiness(self.calls, self.needs).ready

    async def __is_ready__(self) -> bool:
        return self.ready_now()

    @bentoml.on_shutdown
    async def close_upstreams(self) -> None:
        for upstream in self.calls.values():
            await upstream.aclose()
