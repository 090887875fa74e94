"""Readiness per dependency, served: with RAGChain out of reach, the gateway stays ready (its
LLM is), says which dependency is down, serves chat, and fails the RAG route fast once that
dependency's circuit opens."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from bentochain.serving.topology import composed_server, free_port
from tests.support.serving import samples

pytestmark = pytest.mark.integration


def test_a_dependency_down_fails_only_its_own_route(
    served_env: dict[str, str], tmp_path: Path
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = {
        **served_env,
        "BENTOCHAIN_CHAINS__RAG__UPSTREAM__REPLICAS": nowhere,
        "BENTOCHAIN_CHAINS__RAG__UPSTREAM__CIRCUIT_FAILURES": "3",
        "BENTOCHAIN_CHAINS__RAG__UPSTREAM__CIRCUIT_COOLDOWN_SECONDS": "600",
        "BENTOCHAIN_OBSERVABILITY__RECORDS__DIR": str(tmp_path / "records"),
    }
    with composed_server(tmp_path / "serve.log", env=env) as url:
        readyz = httpx.get(f"{url}/readyz", timeout=30)
        assert readyz.status_code == 200, readyz.text
        report = readyz.json()
        assert report["ready"] is True
        assert report["dependencies"]["LLM"] == {
            "ready": True,
            "required": True,
            "circuit": "closed",
        }
        assert report["dependencies"]["RAGChain"]["ready"] is False
        assert report["dependencies"]["RAGChain"]["required"] is False

        chat = {"model": "llama-tiny", "messages": [{"role": "user", "content": "hi"}]}
        answer = httpx.post(
            f"{url}/v1/chat/completions", json={**chat, "max_tokens": 2}, timeout=60
        )
        assert answer.status_code == 200

        question = {"input": {"question": "How do returns work?"}}
        failures = [
            httpx.post(f"{url}/chains/rag/invoke", json=question, timeout=60) for _ in range(5)
        ]
        assert [f.status_code for f in failures] == [503] * 5
        assert all(f.headers.get("retry-after") for f in failures)
        assert "unreachable" in failures[0].json()["error"]["message"]
        assert "is down" in failures[-1].json()["error"]["message"]  # the circuit is open
        circuit = {
            labels["service"]: value
            for labels, value in samples(url, "bentochain_upstream_circuit_state")
        }
        assert circuit["RAGChain"] == 2 and circuit["LLM"] == 0
        after = httpx.post(f"{url}/v1/chat/completions", json={**chat, "max_tokens": 2}, timeout=60)
        assert after.status_code == 200  # the other routes go on
        assert (
            httpx.get(f"{url}/readyz", timeout=30).json()["dependencies"]["RAGChain"]["circuit"]
            == "open"
        )
