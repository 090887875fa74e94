"""Quality records of served requests, in both topologies: one per request, matching what the
client was answered; a full disk costs records (counted on /metrics), never a request."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest

from bentochain.observability.records import RequestRecord, read_records
from bentochain.quality.replay import vector_of
from bentochain.serving.topology import composed_server
from tests.integration.conftest import RECORDS_DIR, Server
from tests.support.serving import samples, until

pytestmark = pytest.mark.integration


def recorded(folder: Path, ids: set[str]) -> dict[str, RequestRecord]:
    if not folder.exists():
        return {}
    return {
        r.request_id: r
        for r in read_records([folder])
        if isinstance(r, RequestRecord) and r.request_id in ids
    }


def test_each_request_is_one_record_with_the_usage_it_was_answered(gateway: Server) -> None:
    marker = uuid.uuid4().hex
    responses = []
    for n in range(4):
        body = {
            "model": "llama-tiny",
            "messages": [{"role": "user", "content": f"{marker} {n}"}],
            "max_tokens": 3 + n,
            "temperature": 0,
            "ignore_eos": True,
        }
        responses.append(httpx.post(f"{gateway.v1}/chat/completions", json=body, timeout=120))
    embedded = {"model": "all-MiniLM-L6-v2", "input": [marker]}
    responses.append(httpx.post(f"{gateway.v1}/embeddings", json=embedded, timeout=120))
    assert [r.status_code for r in responses] == [200] * 5
    ids = {r.headers["x-request-id"] for r in responses}
    until(lambda: len(recorded(gateway.records, ids)) == 5, "five records on disk", 300)
    records = recorded(gateway.records, ids)
    for response in responses:
        record = records[response.headers["x-request-id"]]
        body = response.json()
        assert record.usage is not None
        assert record.usage.prompt_tokens == body["usage"]["prompt_tokens"]
        assert record.usage.completion_tokens == body["usage"].get("completion_tokens", 0)
        assert record.trace_id == response.headers["traceresponse"].split("-")[1]
        assert record.status == 200 and record.latency_s > 0
        if record.endpoint == "/v1/chat/completions":
            assert record.output == {"texts": [body["choices"][0]["message"]["content"]]}
            assert record.model_version == "LLM=stable"
            assert record.ttft_s is not None and record.finish_reason == "length"
        else:
            assert record.output is not None
            (kept,) = record.output["embeddings"]  # base64 float32, as OpenAI's format
            assert vector_of(kept) == body["data"][0]["embedding"]


def test_a_full_disk_loses_records_counted_and_no_request_fails(
    served_env: dict[str, str], tmp_path: Path
) -> None:
    folder = tmp_path / "records"
    folder.mkdir()
    for worker in range(4):  # whichever worker index the gateway gets: its file is full
        (folder / f"records.{worker}.jsonl").symlink_to("/dev/full")
    env = {**served_env, RECORDS_DIR: str(folder)}
    with composed_server(tmp_path / "serve.log", env=env) as url:
        chat = {"model": "llama-tiny", "messages": [{"role": "user", "content": "hi"}]}
        statuses = [
            httpx.post(
                f"{url}/v1/chat/completions", json={**chat, "max_tokens": 2}, timeout=120
            ).status_code
            for _ in range(5)
        ]

        def lost() -> float:
            found = samples(url, "bentochain_records_dropped_total")
            return sum(value for labels, value in found if labels["reason"] == "write_error")

        until(lambda: lost() >= 5, "five lost records counted", 300)
        assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200
    assert statuses == [200] * 5
    assert all(p.is_symlink() for p in folder.iterdir())  # no record reached a disk
