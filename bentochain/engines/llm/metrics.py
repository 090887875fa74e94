"""What the engine reports as it works; the service decides where it goes (Prometheus).

The engine only calls this protocol, so it stays free of any metrics library and unit tests can
read what it reported.
"""

from __future__ import annotations

from typing import Protocol


class EngineMetrics(Protocol):
    def admitted(self, *, prompt_tokens: int, queued_seconds: float) -> None:
        """A request left the queue and its prompt is being prefilled."""

    def prefix_cache(self, *, queried: int, hit: int) -> None:
        """An admitted prompt's tokens, and how many of them came from the prefix cache."""

    def first_token(self, *, seconds: float) -> None:
        """Time from submission to the first generated token."""

    def generated(self, tokens: int) -> None:
        """Tokens generated (all requests)."""

    def finished(self, *, seconds: float, per_output_token: float | None) -> None:
        """A request ended: its end-to-end time, and its time per output token after the first."""

    def step(self, *, batch: int) -> None:
        """A decode step ran with ``batch`` sequences."""

    def occupancy(self, *, running: int, waiting: int, kv_used: int, kv_total: int) -> None:
        """Sequences running, requests waiting and KV blocks lent out (of all) after a step."""


class NullMetrics:
    """Reports nothing."""

    def admitted(self, *, prompt_tokens: int, queued_seconds: float) -> None:
        pass

    def prefix_cache(self, *, queried: int, hit: int) -> None:
        pass

    def first_token(self, *, seconds: float) -> None:
        pass

    def generated(self, tokens: int) -> None:
        pass

    def finished(self, *, seconds: float, per_output_token: float | None) -> None:
        pass

    def step(self, *, batch: int) -> None:
        pass

    def occupancy(self, *, running: int, waiting: int, kv_used: int, kv_total: int) -> None:
        pass
