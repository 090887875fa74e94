"""The locust scenarios, 20 seconds against the composed Bento: no request may fail."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from loadtest.run import run_locust
from tests.integration.conftest import Server

pytestmark = pytest.mark.integration


def test_locust_smoke_run_has_no_failures(composed: Server, tmp_path: Path) -> None:
    code = run_locust(composed.url, users=8, spawn_rate=8, duration="20s", out=tmp_path)
    rows = {row["Name"]: row for row in csv.DictReader((tmp_path / "locust_stats.csv").open())}
    assert code == 0, {name: row["Failure Count"] for name, row in rows.items()}
    assert (tmp_path / "locust.html").stat().st_size > 10_000
    aggregated = rows.pop("Aggregated")
    assert int(aggregated["Request Count"]) > 20
    assert int(aggregated["Failure Count"]) == 0
    exercised = {name for name, row in rows.items() if int(row["Request Count"]) > 0}
    assert {"chat", "chat (stream)", "embeddings"} <= exercised
    assert {"TTFT (ms)", "tokens/s per stream"} <= exercised  # streaming users' own metrics
