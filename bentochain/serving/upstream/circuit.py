"""A dependency's circuit: after enough calls in a row reached none of its replicas, calls fail
at once for a cooldown instead of each waiting for its own connection errors; then one trial
call goes through (half-open), and its outcome closes the circuit or opens it again."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

State = Literal["closed", "open", "half_open"]


class Circuit:
    def __init__(
        self, failures: int, cooldown: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.failures = failures
        self.cooldown = cooldown
        self.clock = clock
        self.state: State = "closed"
        self._in_a_row = 0
        self._opened_at = 0.0
        self._trial = False

    def wait(self) -> float | None:
        """None: the call may go. Otherwise the seconds until it may (the call fails now)."""
        if self.state == "closed":
            return None
        remaining = self.cooldown - (self.clock() - self._opened_at)
        if self.state == "open" and remaining <= 0:
            self.state = "half_open"
            self._trial = True
            return None  # this call is the trial
        return max(remaining, 1.0) if self.state == "open" else 1.0  # half-open: trial running

    def succeeded(self) -> None:
        self._in_a_row = 0
        self._trial = False
        self.state = "closed"

    def failed(self) -> None:
        self._in_a_row += 1
        if self.state == "half_open" or self._in_a_row >= self.failures:
            self.state = "open"
            self._opened_at = self.clock()
            self._trial = False

    def abandoned(self) -> None:
        """The trial call ended with neither verdict (cancelled): let another one try."""
        if self.state == "half_open" and self._trial:
            self.state = "open"
            self._opened_at = self.clock() - self.cooldown
