"""What a caller knows about each replica of a dependency: in flight, health, reported load.

Health is passive: a replica that refused a connection, timed out before answering, or said it
is draining is skipped for a backoff that doubles with each failure in a row, and comes back on
its first success (or a ``/load`` probe that answers). Nothing here does I/O, so the rules are
tested as plain data.
"""

from __future__ import annotations

from dataclasses import dataclass

STABLE = "stable"
CANARY = "canary"
TRACKS = (STABLE, CANARY)


@dataclass(eq=False)
class Replica:
    """One replica of a dependency, as one caller process sees it."""

    url: str
    track: str = STABLE
    weight: int = 1
    in_flight: int = 0
    failures: int = 0
    skip_until: float = 0.0
    draining: bool = False
    others_load: float = 0.0  # the last reported load, less this caller's share of it

    def available(self, now: float) -> bool:
        """Whether a new request may go here (not failing, not draining)."""
        return not self.draining and now >= self.skip_until

    @property
    def load_estimate(self) -> float:
        """Other callers' load as last reported, plus this caller's requests in flight now."""
        return self.others_load + self.in_flight

    def started(self) -> None:
        self.in_flight += 1

    def ended(self) -> None:
        self.in_flight = max(0, self.in_flight - 1)

    def failed(self, now: float, backoff: float, max_backoff: float) -> None:
        """It refused, timed out or dropped the connection: skip it for a while."""
        self.failures += 1
        self.skip_until = now + min(backoff * 2 ** (self.failures - 1), max_backoff)

    def drains(self, now: float, backoff: float) -> None:
        """It answered 503 ``draining``: it is going away; send nothing new unless nothing else
        is left."""
        self.draining = True
        self.skip_until = max(self.skip_until, now + backoff)

    def succeeded(self) -> None:
        self.failures = 0
        self.skip_until = 0.0

    def probed(self, load: float, draining: bool, ours: int) -> None:
        """What a ``/load`` probe found: its load, which counts ``ours`` (this caller's requests
        in flight when the replica measured it, taken out), and whether it drains."""
        self.others_load = max(0.0, load - ours)
        self.draining = draining
        if not draining:
            self.succeeded()
