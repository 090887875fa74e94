"""The series the Kubernetes autoscalers read, as each service's own server exposes them.

On a cluster Prometheus scrapes every pod alone and prometheus-adapter turns these series into
the HPAs' Pods metrics (deploy/k8s/prometheus-adapter/values.yaml). The split topology runs
each service as its own server, as a pod does, so each one's /metrics is checked here.
"""

from __future__ import annotations

import re

import httpx

from bentochain.deploy.kubernetes import ADAPTER_SERIES
from tests.integration.conftest import Server
from tests.support.serving import chat


def series(url: str) -> set[str]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)\{", text, flags=re.MULTILINE))


def test_each_server_exposes_what_its_autoscaler_reads(split: Server) -> None:
    assert chat(split.url, "scale me").status_code == 200  # every label set gets a value
    queue = {s for s in ADAPTER_SERIES if s.startswith("bentochain_llm_")}
    assert queue <= series(split.services["LLM"])
    for service, url in split.services.items():
        assert "bentoml_service_request_in_progress" in series(url), service
