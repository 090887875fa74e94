"""``bentochain replay``: recorded requests sent to a candidate and judged by the quality gate.
The same server passes; a server with another model under the same name fails, with a
non-zero exit and a report saying why."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from bentochain.config.loader import PROJECT_ROOT
from bentochain.observability.records import read_records
from bentochain.serving.topology import composed_server
from tests.integration.conftest import RECORDS_DIR, Server
from tests.support.serving import until

pytestmark = pytest.mark.integration

# Timing is not what this test judges (the machine is shared): the latency bounds are opened.
UNTIMED = {
    "BENTOCHAIN_QUALITY_GATE__MAX_LATENCY_P50_RATIO": "1000",
    "BENTOCHAIN_QUALITY_GATE__MAX_LATENCY_P99_RATIO": "1000",
}


def record_traffic(server: Server, out: Path) -> int:
    """Greedy requests of every recorded kind; their records, copied to ``out``."""
    marker = uuid.uuid4().hex[:8]
    chat = {"model": "llama-tiny", "max_tokens": 8, "temperature": 0, "ignore_eos": True}
    sent = [
        (
            "/v1/chat/completions",
            {**chat, "messages": [{"role": "user", "content": f"a {marker}"}]},
        ),
        (
            "/v1/chat/completions",
            {**chat, "messages": [{"role": "user", "content": f"b {marker}"}]},
        ),
        (
            "/v1/chat/completions",
            {**chat, "stream": True, "messages": [{"role": "user", "content": f"c {marker}"}]},
        ),
        ("/v1/completions", {**chat, "prompt": f"d {marker}"}),
        ("/v1/embeddings", {"model": "all-MiniLM-L6-v2", "input": [f"e {marker}"]}),
        ("/translate", {"texts": [f"f {marker}"], "target_lang": "fr"}),
        ("/chains/sql/invoke", {"input": {"question": f"How many orders? {marker}"}}),
        ("/chains/rag/invoke", {"input": {"question": f"How do returns work? {marker}"}}),
    ]
    ids = set()
    for path, body in sent:
        response = httpx.post(f"{server.url}{path}", json=body, timeout=180)
        assert response.status_code == 200, response.text
        ids.add(response.headers["x-request-id"])

    def mine() -> list[str]:
        if not server.records.exists():
            return []
        return [
            r.model_dump_json()
            for r in read_records([server.records])
            if r.kind == "request" and r.request_id in ids
        ]

    until(lambda: len(mine()) == len(sent), "the requests' records", 300)
    out.write_text("\n".join(mine()) + "\n")
    return len(sent)


def replay(records: Path, target: str, out: Path) -> subprocess.CompletedProcess[str]:
    command = ["replay", str(records), "--target", target, "--out", str(out)]
    return subprocess.run(
        [sys.executable, "-m", "bentochain.cli", *command],
        env={**os.environ, **UNTIMED},
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_replay_passes_on_the_same_server_and_fails_on_another_model(
    composed: Server, served_env: dict[str, str], tmp_path: Path
) -> None:
    records = tmp_path / "records.jsonl"
    count = record_traffic(composed, records)

    same = replay(records, composed.url, tmp_path / "same")
    assert same.returncode == 0, same.stdout + same.stderr
    assert "the quality gate passed" in same.stdout
    report = json.loads((tmp_path / "same" / "report.json").read_text())
    measures = report["measures"]
    assert report["passed"] and report["requests"] == count
    assert measures["error_rate"]["value"] == 0
    assert measures["exact_match"]["value"] == 1.0 and measures["exact_match"]["samples"] == 7
    assert measures["cosine"]["value"] > 0.999 and measures["cosine"]["samples"] == count
    assert measures["sql_rows_match"] == {**measures["sql_rows_match"], "value": 1.0}
    assert measures["source_overlap"]["value"] == 1.0
    assert (tmp_path / "same" / "report.png").stat().st_size > 0
    assert "**passed**" in (tmp_path / "same" / "report.md").read_text()

    # Another model answering under the same name: what a bad release would look like.
    other = {
        **served_env,
        "BENTOCHAIN_LLM__MODEL": "demo:llama-36m",
        "BENTOCHAIN_LLM__KV_CACHE__BLOCKS": "2048",  # allocated at start: 1.2 GB of this model
        "BENTOCHAIN_LLM__SERVED_NAME": "llama-tiny",
        "BENTOCHAIN_CHAINS__STATE_DIR": str(tmp_path / "state"),
        RECORDS_DIR: str(tmp_path / "other-records"),
    }
    subprocess.run(
        [sys.executable, "-m", "bentochain.cli", "prepare"],
        env=other,
        cwd=PROJECT_ROOT,
        check=True,
        timeout=600,
        capture_output=True,
    )
    with composed_server(tmp_path / "other.log", env=other) as url:
        changed = replay(records, url, tmp_path / "other")
    assert changed.returncode == 1, changed.stdout + changed.stderr
    assert "the quality gate failed: exact_match" in changed.stderr
    report = json.loads((tmp_path / "other" / "report.json").read_text())
    assert not report["passed"] and "exact_match" in report["failed"]
    assert report["measures"]["exact_match"]["value"] < 0.5
    assert report["measures"]["error_rate"]["value"] == 0  # it answered: only worse
    assert "**FAIL**" in (tmp_path / "other" / "report.md").read_text()
