"""Summaries in vLLM's serving-benchmark terms: throughput, TTFT, TPOT, ITL, end-to-end."""

from __future__ import annotations

import statistics
from typing import Any

from loadtest.patterns import Run


def _describe(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean_ms": None, "median_ms": None, "p99_ms": None}
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {
        "mean_ms": 1000 * statistics.fmean(ordered),
        "median_ms": 1000 * statistics.median(ordered),
        "p99_ms": 1000 * p99,
    }


def summarize(run: Run) -> dict[str, Any]:
    ok = [r for r in run.results if r.ok]
    tokens = sum(r.output_tokens for r in ok)
    return {
        "label": run.label,
        "requests": len(run.results),
        "errors": len(run.results) - len(ok),
        "first_error": next((r.error for r in run.results if not r.ok), None),
        "duration_s": run.duration,
        "request_throughput": len(ok) / run.duration,
        "output_tokens": tokens,
        "output_tokens_per_s": tokens / run.duration,
        "ttft": _describe([r.ttft for r in ok if r.ttft is not None]),
        "tpot": _describe([t for r in ok if (t := r.tpot) is not None]),
        "itl": _describe([gap for r in ok for gap in r.itl]),
        "e2e": _describe([r.e2e for r in ok if r.e2e is not None]),
    }


def median_latency(run: Run, ids: set[int] | None = None) -> float:
    """Median end-to-end seconds of the run's successful requests (or those in ``ids``)."""
    values = [
        r.e2e for r in run.results if r.ok and r.e2e is not None and (ids is None or r.id in ids)
    ]
    return statistics.median(values) if values else float("nan")
