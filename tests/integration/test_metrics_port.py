"""``gateway.metrics_port``: the public port no longer answers ``/metrics``; the other port
serves every worker's metrics, as Prometheus scrapes them."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from bentochain.serving.topology import composed_server, free_port
from tests.support.serving import chat, samples

pytestmark = pytest.mark.integration


def test_metrics_move_to_their_own_port(served_env: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    env = {**served_env, "BENTOCHAIN_GATEWAY__METRICS_PORT": str(port)}
    with composed_server(tmp_path / "serve.log", env=env) as url:
        assert chat(url, "count me").status_code == 200
        public = httpx.get(f"{url}/metrics", timeout=30)
        assert public.status_code == 404 and str(port) in public.json()["error"]["message"]
        assert "/metrics" not in httpx.get(f"{url}/openapi.json", timeout=30).json()["paths"]
        scraped = f"http://127.0.0.1:{port}"
        generated = samples(scraped, "bentochain_llm_generated_tokens_total")
        assert sum(value for _, value in generated) >= 1  # the LLM worker's files
        calls = samples(scraped, "bentochain_upstream_requests_total")
        assert any(labels["service"] == "LLM" for labels, _ in calls)  # and the Gateway's
