"""The dashboard drawn from real data: a served Bento under a short mixed load, scraped by a
real Prometheus, its main panels rendered with matplotlib (``make dashboard`` writes
``docs/dashboard.png``; the tests do the same into a temporary folder).

Usage: ``python -m loadtest.dashboard [--out docs/dashboard.png] [--rounds 30]``; needs
Prometheus on PATH (Debian: ``apt-get install prometheus``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import yaml

from bentochain.config.loader import DEFAULT_PROFILE, PROJECT_ROOT, load_settings
from bentochain.config.schema import Settings
from bentochain.deploy.monitoring import dashboard, rules
from bentochain.serving.topology import composed_server
from loadtest.prometheus import prometheus_server, query, query_range

GATEWAY_REQUESTS = 'bentoml_service_request_duration_seconds_count{service_name="Gateway"}'
MAIN_PANELS = {  # title: the queries drawn (all of them when None)
    "Requests per second (gateway, by endpoint)": None,
    "Latency (gateway, by endpoint)": ("B",),  # p95: three quantiles of six endpoints crowd it
    "Time to first token": None,
    "Tokens per second": None,
    "Sequences (LLM)": None,
    "KV cache in use": None,
}


def rule_file(settings: Settings, folder: Path) -> Path:
    """The profile's rules, evaluated every second (the rendered file says every 30 s)."""
    rendered = rules(settings)
    for group in rendered["groups"]:
        group["interval"] = "1s"
    path = folder / "rules.yaml"
    path.write_text(yaml.safe_dump(rendered, sort_keys=False))
    return path


async def traffic(url: str, settings: Settings, rounds: int, concurrency: int = 4) -> int:
    """A mix of what clients send (chat, streams, completions, embeddings, translations, both
    chains, and a request for a model that does not exist) to the models ``settings`` serves;
    returns the requests sent."""
    marker = uuid.uuid4().hex[:6]
    chat = {"model": settings.llm.served_id, "max_tokens": 24, "ignore_eos": True}
    embedder = settings.embedder.served_id

    def requests(n: int) -> list[tuple[str, dict[str, Any]]]:
        message = [{"role": "user", "content": f"question {n} {marker}"}]
        found: list[tuple[str, dict[str, Any]]] = [
            ("/v1/chat/completions", {**chat, "messages": message}),
            ("/v1/chat/completions", {**chat, "messages": message, "stream": True}),
            ("/v1/completions", {**chat, "prompt": f"prompt {n}"}),
            ("/v1/embeddings", {"model": embedder, "input": [f"text {n}"]}),
            ("/translate", {"texts": [f"Hello {n}"], "target_lang": "fr" if n % 2 else "es"}),
            ("/v1/chat/completions", {**chat, "model": "no-such-model", "messages": message}),
        ]
        if n % 5 == 0:  # a chain run is several LLM calls
            found.append(("/chains/sql/invoke", {"input": {"question": f"Orders? {n} {marker}"}}))
            found.append(("/chains/rag/invoke", {"input": {"question": f"Returns? {n}"}}))
        return found

    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:

        async def send(path: str, body: dict[str, Any]) -> None:
            async with limit:
                await client.post(path, json=body)

        work = [send(p, b) for n in range(rounds) for p, b in requests(n)]
        await asyncio.gather(*work)
    return len(work)


def scraped(prometheus: str, expr: str, at_least: float) -> bool:
    found = query(prometheus, expr)
    return bool(found) and float(found[0]["value"][1]) >= at_least


def render(prometheus: str, board: dict[str, Any], start: float, end: float, out: Path) -> Path:
    """The main panels over ``start``..``end``, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = {p["title"]: p for p in board["panels"]}
    figure, axes = plt.subplots(3, 2, figsize=(13, 10))
    step = max((end - start) / 120, 1.0)
    for ax, (title, chosen) in zip(axes.flat, MAIN_PANELS.items(), strict=True):
        panel = panels[title]
        for target in panel["targets"]:
            if chosen is not None and target["refId"] not in chosen:
                continue
            for labels, values in query_range(prometheus, target["expr"], start, end, step):
                legend = target["legendFormat"]
                for key, value in labels.items():
                    legend = legend.replace(f"{{{{{key}}}}}", value)
                points = [(t - start, v) for t, v in values if v == v]  # NaN: no data then
                if points:
                    ax.plot(*zip(*points, strict=True), label=legend, linewidth=1.2)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("seconds", fontsize=8)
        ax.tick_params(labelsize=8)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper left")
    figure.suptitle("bentochain dashboard: main panels, from a real Prometheus (make dashboard)")
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=90)
    plt.close(figure)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.dashboard", description=__doc__)
    parser.add_argument("--out", default=str(PROJECT_ROOT / "docs" / "dashboard.png"))
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args(argv)
    binary = shutil.which("prometheus")
    if binary is None:
        print("prometheus is not on PATH: apt-get install prometheus", file=sys.stderr)
        return 2
    settings = load_settings(DEFAULT_PROFILE, environ={})
    board = dashboard(settings)
    with tempfile.TemporaryDirectory(prefix="bentochain-dashboard-") as tmp:
        folder = Path(tmp)
        env = {k: v for k, v in os.environ.items() if not k.startswith("BENTOCHAIN_")}
        env["BENTOCHAIN_OBSERVABILITY__RECORDS__DIR"] = str(folder / "records")
        with composed_server(folder / "serve.log", env=env) as url:
            target = url.removeprefix("http://")
            rule = rule_file(settings, folder)
            with prometheus_server(binary, folder / "prometheus", [target], [rule]) as prom:
                start = time.time()
                sent = asyncio.run(traffic(url, settings, args.rounds))
                total = (
                    'sum(bentoml_service_request_duration_seconds_count{service_name="Gateway"})'
                )
                for _ in range(600):  # until the last requests are scraped (60 s at most)
                    if scraped(prom, total, sent):
                        break
                    time.sleep(0.1)
                time.sleep(5)  # a few more points after the load, for the plots' tails
                written = render(prom, board, start - 5, time.time(), Path(args.out))
    print(f"{sent} requests; wrote {written}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
