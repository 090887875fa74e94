"""A replay's report: Markdown for people, JSON for machines, one plot of the answers."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from bentochain.quality.replay import Comparison, Measure

FILES = ("report.md", "report.json", "report.png")


def _value(measure: Measure) -> str:
    if measure.value is None:
        return "n/a"
    if measure.name == "requests":
        return f"{measure.value:.0f}"
    return f"{measure.value:.3f}"


def _verdict(measure: Measure) -> str:
    return {True: "pass", False: "**FAIL**", None: "not judged"}[measure.passed]


def markdown(comparison: Comparison) -> str:
    lines = [
        f"# Replay against {comparison.target}",
        "",
        f"{comparison.requests} recorded requests replayed: the gate "
        + ("**passed**." if comparison.passed else "**failed**."),
        "",
        "| measure | value | threshold | requests | verdict | what |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for m in comparison.measures:
        bound = ">=" if m.higher_is_better else "<="
        lines.append(
            f"| {m.name} | {_value(m)} | {bound} {m.threshold:g} | {m.samples} | "
            f"{_verdict(m)} | {m.description} |"
        )
    failures = [r for r in comparison.replayed if not r.ok][:10]
    if failures:
        lines += ["", "## Errors (first 10)", ""]
        lines += [
            f"- `{r.record.endpoint}` (recorded as {r.record.request_id}): HTTP {r.status}: "
            f"{(r.error or '').strip()[:200]}"
            for r in failures
        ]
    lines += ["", "![answers and latency](report.png)", ""]
    return "\n".join(lines)


def as_json(comparison: Comparison) -> dict[str, Any]:
    return {
        "target": comparison.target,
        "requests": comparison.requests,
        "passed": comparison.passed,
        "failed": [m.name for m in comparison.failed],
        "measures": {
            m.name: {
                "value": None if m.value is None or math.isnan(m.value) else m.value,
                "samples": m.samples,
                "threshold": m.threshold,
                "higher_is_better": m.higher_is_better,
                "passed": m.passed,
            }
            for m in comparison.measures
        },
        "requests_replayed": [
            {
                "request_id": r.record.request_id,
                "endpoint": r.record.endpoint,
                "status": r.status,
                "recorded_latency_s": r.record.latency_s,
                "latency_s": round(r.latency_s, 6),
                "cosine": r.cosine,
                "error": r.error,
            }
            for r in comparison.replayed
        ],
    }


def plot(comparison: Comparison, path: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        raise SystemExit(
            "bentochain: the replay's plot needs matplotlib: pip install 'bentochain[tools]'"
        ) from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    answered = [r for r in comparison.replayed if r.ok]
    cosines = [r.cosine for r in answered if r.cosine is not None]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.hist(cosines, bins=20, range=(-1.0, 1.0) if min(cosines, default=0) < 0 else (0.0, 1.0))
    left.set_title(f"Cosine similarity to the recorded answer ({len(cosines)})")
    left.set_xlabel("cosine similarity")
    left.set_ylabel("requests")
    recorded = [r.record.latency_s for r in answered]
    candidate = [r.latency_s for r in answered]
    right.scatter(recorded, candidate, s=12)
    top = max([*recorded, *candidate, 1e-3])
    right.plot([0, top], [0, top], linestyle="--", linewidth=1, color="grey")
    right.set_title("Latency per request (s)")
    right.set_xlabel("recorded")
    right.set_ylabel("candidate")
    figure.suptitle(f"Replay against {comparison.target}")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write(comparison: Comparison, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    md, js, png = (out / name for name in FILES)
    md.write_text(markdown(comparison))
    js.write_text(json.dumps(as_json(comparison), indent=2) + "\n")
    plot(comparison, png)
    return [md, js, png]
