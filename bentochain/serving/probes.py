"""The paths that orchestrators, balancers and scrapers ask every service: declared once.

- ``/livez`` (BentoML's; ``/healthz`` is its older name) and ``/health`` (vLLM's, SGLang's and
  KServe's name, asked by guidellm and routers): 200 while the process serves; the LLM answers
  503 once its engine stopped or hangs (its watchdog), so that it is restarted.
- ``/readyz``: whether to send this server traffic (see ``serving.readiness``).
- ``/load``: the work it holds, for ``least_load`` callers (see ``serving.drain``).
- ``/metrics``: Prometheus.
"""

from __future__ import annotations

LIVEZ = "/livez"
HEALTHZ = "/healthz"
HEALTH = "/health"
READYZ = "/readyz"
LOAD = "/load"
METRICS = "/metrics"

OPEN = frozenset({LIVEZ, HEALTHZ, HEALTH, READYZ, METRICS})
"""Answered without the internal token or an API key: the kubelet and Prometheus have none."""
UNCOUNTED = OPEN | {LOAD}
"""Not requests: never refused while draining, never in the access log."""
