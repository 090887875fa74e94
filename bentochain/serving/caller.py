"""What every service that calls others shares: readiness over its dependencies, and closing
its connections to them at shutdown."""

from __future__ import annotations

import bentoml

from bentochain.serving.readiness import dependency_states
from bentochain.serving.upstream import Upstream


class Caller:
    """A service base: ``__init__`` sets ``self.calls`` (``startup.dependencies``).
    ``required`` names the dependencies it cannot serve without (default: all of them)."""

    calls: dict[str, Upstream]
    required: tuple[str, ...] | None = None

    def required_dependencies(self) -> tuple[str, ...]:
        return self.required if self.required is not None else tuple(self.calls)

    async def __is_ready__(self) -> bool:
        report = await dependency_states(self.calls, self.required_dependencies())
        return report.ready

    @bentoml.on_shutdown
    async def close_upstreams(self) -> None:
        for upstream in self.calls.values():
            await upstream.aclose()
