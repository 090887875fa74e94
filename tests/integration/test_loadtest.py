"""The locust scenarios and the soak's, 20 seconds each against the composed Bento: no request
may fail."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from loadtest.run import run_locust
from loadtest.soak import MIX, MemorySampler, locust
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


def test_the_soak_mix_and_its_memory_samples_against_a_served_bento(
    composed: Server, tmp_path: Path
) -> None:
    """``make soak``'s parts, briefly: its users (chat, embeddings, both chains) fail nothing
    and every process of the Bento is sampled."""
    root = composed.roots["Gateway"]
    with MemorySampler(root, period=5) as memory:
        found = locust(composed.url, seconds=20, rates=dict.fromkeys(MIX, 0.5), out=tmp_path)
    assert found["failures"] == 0, found["errors"]
    served = {name for name, row in found["by_name"].items() if row["requests"] > 0}
    assert {"chat (stream)", "embeddings", "chain sql", "chain rag"} <= served
    assert len(memory.samples) >= 2
    sampled = set(memory.samples[-1]) - {"minute"}
    assert {"arbiter", "Gateway", "LLM", "Embedder", "SQLChain", "RAGChain"} <= sampled
