"""What a caller knows about each replica of a dependency: in flight, health, reported load.

Health is passive, plus a probe: a replica that refused a connection, timed out before
answering, or said it is draining is skipped for a backoff that doubles with each failure in a
row, and comes back on its first success (or a ``/load`` probe that answers). The probe also
says whether it is ready, and one that has gone unanswered for ``unresponsive_seconds`` marks a
replica that accepts connections but no longer answers (a stopped process, a stuck event loop).
Nothing here does I/O, so the rules are tested as plain data.
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
    ready: bool = True  # as its last probe said
    heard: float | None = None  # when its last probe answered
    asked: float | None = None  # when the probe still unanswered was sent

    def available(self, now: float, unresponsive_after: float = float("inf")) -> bool:
        """Whether a new request may go here (not failing, draining, unready or silent)."""
        return (
            not self.draining
            and now >= self.skip_until
            and self.ready
            and not self.unresponsive(now, unresponsive_after)
        )

    def unresponsive(self, now: float, after: float) -> bool:
        """A probe has waited more than ``after`` seconds for its answer."""
        return self.asked is not None and now - self.asked > after

    def state(self, now: float, unresponsive_after: float) -> str:
        """One word for ``/readyz``: what keeps it from taking requests, else ``healthy``."""
        if self.unresponsive(now, unresponsive_after):
            return "unresponsive"
        if self.draining:
            return "draining"
        if not self.ready:
            return "not_ready"
        if now < self.skip_until:
            return "failing"
        return "healthy" if self.heard is not None else "unknown"

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

    def probe_sent(self, now: float) -> ProbeSent:
        """What to remember as a ``/load`` probe leaves, for ``probed``."""
        if self.asked is None:
            self.asked = now
        return ProbeSent(self.in_flight, self.started_total)

    def probed(
        self, load: float, draining: bool, sent: ProbeSent, now: float, ready: bool = True
    ) -> None:
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
        self.ready = ready
        self.answered(now)
        if not draining:
            self.succeeded()

    def answered(self, now: float) -> None:
        """A probe came back (with a load report or an error status): it answers."""
        self.heard = now
        self.asked = None


@dataclass(frozen=True)
class ProbeSent:
    in_flight: int
    started_total: int
