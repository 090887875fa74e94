"""A Prometheus server of our own, and queries to it: what the dashboard and its tests read.

The server scrapes the given targets every second and evaluates the given rule files every
second, so a short run has data for every rate window a panel or rule uses.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

from bentochain.serving.topology import free_port, stop_server

Series = tuple[dict[str, str], list[tuple[float, float]]]


@contextlib.contextmanager
def prometheus_server(
    binary: str, root: Path, targets: list[str], rule_files: list[Path]
) -> Iterator[str]:
    """``binary`` (a ``prometheus``) scraping ``targets`` (host:port) and evaluating
    ``rule_files``, its data and log in ``root``; yields its URL once it is ready."""
    root.mkdir(parents=True, exist_ok=True)
    config = root / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(p) for p in rule_files],
                "scrape_configs": [
                    {"job_name": "bentochain", "static_configs": [{"targets": targets}]}
                ],
            }
        )
    )
    port = free_port()
    with (root / "prometheus.log").open("wb") as log:
        server = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={root / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):  # bounded: 60 s
            if server.poll() is not None:
                raise RuntimeError(f"prometheus exited: {(root / 'prometheus.log').read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    break
            time.sleep(0.1)
        else:
            raise RuntimeError("prometheus was not ready in 60 s")
        yield url
    finally:
        stop_server(server)


def query(prometheus: str, expr: str, at: float | None = None) -> list[dict[str, Any]]:
    """An instant query's result vector (raises on a query Prometheus refuses)."""
    params: dict[str, Any] = {"query": expr}
    if at is not None:
        params["time"] = at
    answer = httpx.get(f"{prometheus}/api/v1/query", params=params, timeout=30).json()
    if answer.get("status") != "success":
        raise ValueError(f"{expr}: {answer.get('error')}")
    return list(answer["data"]["result"])


def query_range(prometheus: str, expr: str, start: float, end: float, step: float) -> list[Series]:
    params: dict[str, str | float] = {"query": expr, "start": start, "end": end, "step": step}
    answer = httpx.get(f"{prometheus}/api/v1/query_range", params=params, timeout=30).json()
    if answer.get("status") != "success":
        raise ValueError(f"{expr}: {answer.get('error')}")
    return [
        (dict(item["metric"]), [(float(t), float(v)) for t, v in item["values"]])
        for item in answer["data"]["result"]
    ]
