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
    started_total: int = 0  # every request this caller sent here, for a probe's window

    def available(self, now: float) -> bool:
        """Whether a new request may go here (not failing, not draining)."""
        return not self.draining and now >= self.skip_until

    @property
    def load_estimate(self) -> float:
        """Other callers' load as last reported, plus this caller's requests in flight now."""
        return self.others_load + self.in_flight

    def started(self) -> None:
        self.in_flight += 1
        self.started_total += 1

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

    def probe_sent(self) -> ProbeSent:
        """What to remember as a ``/load`` probe leaves, for ``probed``."""
        return ProbeSent(self.in_flight, self.started_total)

    def probed(self, load: float, draining: bool, sent: ProbeSent) -> None:
        """What a ``/load`` probe found: its load, and whether it drains.

        The replica counted this caller's requests at one moment between the probe's send and
        its answer: at most those in flight at the send plus those started since, even if they
        have ended by now (a short request can start and end inside the window). All of them
        come out, so the estimate errs towards this caller's own share, which ``in_flight``
        counts exactly, and never makes an idle replica look as busy as one that really is.
        """
        ours = sent.in_flight + (self.started_total - sent.started_total)
        self.others_load = max(0.0, load - ours)
        self.draining = draining
        if not draining:
            self.succeeded()


@dataclass(frozen=True)
class ProbeSent:
    in_flight: int
    started_total: int
