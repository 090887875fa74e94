"""Readiness of a caller: each dependency has a replica that answers its own ``/readyz``.

BentoML's built-in check lets a connection error to a dependency that is still starting escape
the handler; its timeout middleware then never answers that probe, and the request (and the
worker's graceful shutdown) hangs for the whole ``traffic.timeout``. This check turns every
failure into "not ready" instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

logger = logging.getLogger(__name__)

PROBE_TIMEOUT = 5.0


async def _ready(dependency: Any, seconds: float) -> bool:
    try:
        return bool(await asyncio.wait_for(dependency.ready(seconds), seconds + 1))
    except Exception as exc:
        logger.debug("dependency not ready: %r", exc)
        return False


async def dependencies_ready(dependencies: Iterable[Any], seconds: float = PROBE_TIMEOUT) -> bool:
    """True when every dependency (an ``Upstream``) answers ready within ``seconds``."""
    results = await asyncio.gather(*(_ready(d, seconds) for d in dependencies))
    return all(results)
