"""Balancing strategies: which of a dependency's available replicas gets the next request.

Every strategy breaks ties in turn, so idle replicas share requests evenly instead of the first
one taking them all. ``SmoothWeighted`` is nginx's smooth weighted round robin: over any window
of ``sum(weights)`` picks each item gets exactly its weight, spread out rather than in runs; it
also splits requests between a service's stable and canary versions.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Protocol, TypeVar

from bentochain.serving.upstream.replicas import Replica

T = TypeVar("T")


class Balancer(Protocol):
    def pick(self, candidates: Sequence[Replica]) -> Replica:
        """One of ``candidates`` (never empty)."""
        ...


class RoundRobin:
    def __init__(self) -> None:
        self._turn = 0

    def pick(self, candidates: Sequence[Replica]) -> Replica:
        chosen = candidates[self._turn % len(candidates)]
        self._turn += 1
        return chosen


class SmoothWeighted:
    """Smooth weighted round robin over items identified by ``key``."""

    def __init__(self) -> None:
        self._current: dict[Hashable, float] = {}

    def choose(
        self, items: Sequence[T], weight: Callable[[T], float], key: Callable[[T], Hashable]
    ) -> T:
        total = 0.0
        best: T | None = None
        best_score = 0.0
        for item in items:
            w = weight(item)
            total += w
            score = self._current.get(key(item), 0.0) + w
            self._current[key(item)] = score
            if best is None or score > best_score:
                best, best_score = item, score
        assert best is not None, "choose() needs at least one item"
        self._current[key(best)] -= total
        return best


class WeightedRoundRobin:
    def __init__(self) -> None:
        self._smooth = SmoothWeighted()

    def pick(self, candidates: Sequence[Replica]) -> Replica:
        return self._smooth.choose(candidates, lambda r: r.weight, lambda r: r.url)


class _Least:
    """The replicas with the lowest score, in turn when several tie."""

    def __init__(self, score: Callable[[Replica], float]) -> None:
        self._score = score
        self._tie = RoundRobin()

    def pick(self, candidates: Sequence[Replica]) -> Replica:
        lowest = min(self._score(r) for r in candidates)
        return self._tie.pick([r for r in candidates if self._score(r) == lowest])


class LeastConnections(_Least):
    """Fewest requests in flight from this caller."""

    def __init__(self) -> None:
        super().__init__(lambda r: r.in_flight)


class LeastLoad(_Least):
    """Fewest running + waiting requests as the replica last reported them, counting what this
    caller sent it since (every caller's load, not only ours)."""

    def __init__(self) -> None:
        super().__init__(lambda r: r.load_estimate)


STRATEGIES: dict[str, Callable[[], Balancer]] = {
    "round_robin": RoundRobin,
    "weighted_round_robin": WeightedRoundRobin,
    "least_connections": LeastConnections,
    "least_load": LeastLoad,
}
