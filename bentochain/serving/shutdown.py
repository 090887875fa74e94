"""Stop the composed Bento callers first: the Gateway, then the chains, then the models.

BentoML's arbiter (circus) stops every service's watcher at once on SIGTERM, so a chain run in
flight at the Gateway could lose the LLM it still has to call. Each service drains on SIGTERM
(``drain.py``); stopping them in dependency order means a service only starts to drain once
everything that calls it has finished. The arbiter is circus's, in the process that runs
``bentoml serve``, which imports the entry service (before circus): the Gateway module installs
this there.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

ENTRY_WATCHER = "service"  # BentoML's name for the entry service's watcher


def depths(entry: Any) -> dict[str, int]:
    """Each service's distance from the entry along the longest chain of dependencies."""
    found: dict[str, int] = {entry.name: 0}

    def visit(service: Any, depth: int) -> None:
        for dependency in service.dependencies.values():
            callee = dependency.on
            if callee is not None and found.get(callee.name, -1) < depth + 1:
                found[callee.name] = depth + 1
                visit(callee, depth + 1)

    visit(entry, 0)
    return found


def stages(watchers: Iterable[Any], entry: str, depth: Mapping[str, int]) -> list[list[Any]]:
    """Watchers grouped to stop together, callers' group first (unknown ones last)."""
    last = max(depth.values(), default=0) + 1
    groups: dict[int, list[Any]] = {}
    for watcher in watchers:
        name = entry if watcher.name == ENTRY_WATCHER else watcher.name.removeprefix("service_")
        groups.setdefault(depth.get(name, last), []).append(watcher)
    return [groups[level] for level in sorted(groups)]


def stop_callers_first(entry: Any) -> None:
    """Make the arbiter of this process stop ``entry``'s services in dependency order."""
    from bentoml._internal.context import server_context

    if server_context.worker_index is not None:  # a worker: its arbiter is another process
        return
    import circus.arbiter
    from tornado import gen

    arbiter_cls: Any = circus.arbiter.Arbiter
    if getattr(arbiter_cls, "_bentochain_ordered", False):
        return
    depth = depths(entry)

    @gen.coroutine
    def _stop_watchers(
        self: Any, close_output_streams: bool = False, watcher_iter_func: Any = None
    ) -> Any:
        iterate = watcher_iter_func or self.iter_watchers
        for group in stages(iterate(reverse=False), entry.name, depth):
            yield gen.multi([w._stop(close_output_streams) for w in group])

    arbiter_cls._stop_watchers = _stop_watchers
    arbiter_cls._bentochain_ordered = True
