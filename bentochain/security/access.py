"""What keyed access to the gateway needs: the keys, the limiter, and where usage goes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from bentochain.security.keys import KeyRing
from bentochain.security.limits import Limiter


class KeyMetrics(Protocol):
    def request(self, key: str, outcome: str) -> None:
        """``outcome``: ok, unauthorized, or the limit that refused it."""

    def tokens(self, key: str, count: int) -> None: ...


class NullKeyMetrics:
    def request(self, key: str, outcome: str) -> None:
        pass

    def tokens(self, key: str, count: int) -> None:
        pass


@dataclass(frozen=True)
class Access:
    """What keyed access needs: the keys, the limiter, where usage is counted."""

    keys: KeyRing
    limiter: Limiter
    metrics: KeyMetrics
