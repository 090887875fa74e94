"""Readiness per route, served.

A frozen dependency (SIGSTOP: it accepts connections and answers nothing, as a hung process
does) leaves the gateway ready and answering its probes at once, chat working, and only its own
route failing, fast; everything recovers after SIGCONT. A dependency that cannot be reached
fails only its route too, and its circuit opens.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bentochain.serving.topology import composed_server, free_port
from tests.integration.conftest import Server
from tests.support.serving import chat, samples, until, worker

pytestmark = pytest.mark.integration

PROBE_TIMEOUT = 1.0  # a kubelet probe with timeoutSeconds: 1 (ours is 3)


def readyz(url: str) -> httpx.Response:
    """``/readyz`` as a kubelet asks it: one try, given up after ``PROBE_TIMEOUT``."""
    return httpx.get(f"{url}/readyz", timeout=PROBE_TIMEOUT)


def translate(url: str, lang: str) -> httpx.Response:
    body = {"texts": ["Good morning"], "target_lang": lang}
    return httpx.post(f"{url}/translate", json=body, timeout=30)


@contextlib.contextmanager
def frozen(root: int, service: str) -> Iterator[None]:
    process = worker(root, service)
    process.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGCONT)


def dependency(url: str, service: str) -> dict[str, Any]:
    found: dict[str, Any] = readyz(url).json()["dependencies"][service]
    return found


def test_a_frozen_dependency_fails_its_own_route_fast_and_nothing_else(gateway: Server) -> None:
    until(
        lambda: dependency(gateway.url, "TranslatorFR")["serving"] is True,
        "the gateway has probed TranslatorFR",
        polls=300,
    )
    with frozen(gateway.roots["TranslatorFR"], "TranslatorFR"):
        until(
            lambda: dependency(gateway.url, "TranslatorFR")["serving"] is False,
            "the gateway sees TranslatorFR stop answering",
            polls=300,
        )
        probe = readyz(gateway.url)
        assert probe.status_code == 200, probe.text  # the gateway stays in its Service
        report = probe.json()
        assert report["ready"] is True and report["needs"] == "any"
        (replica,) = report["dependencies"]["TranslatorFR"]["replicas"]
        assert replica["state"] == "unresponsive"
        assert report["dependencies"]["LLM"]["serving"] is True
        assert chat(gateway.url, "Still there?").status_code == 200
        assert translate(gateway.url, "es").status_code == 200  # the other translator
        failed = translate(gateway.url, "fr")
        assert failed.status_code == 503, failed.text
        assert failed.headers.get("retry-after")
        assert "TranslatorFR" in failed.json()["error"]["message"]
    until(
        lambda: translate(gateway.url, "fr").status_code == 200,
        "TranslatorFR serves again after SIGCONT",
        polls=300,
    )
    assert dependency(gateway.url, "TranslatorFR")["serving"] is True


def test_health_answers_on_the_gateway_and_every_service(gateway: Server) -> None:
    urls = {"Gateway": gateway.url, **gateway.services}  # the split topology's servers
    for service, url in urls.items():
        answer = httpx.get(f"{url}/health", timeout=10)  # no token, no key: as guidellm asks
        assert answer.status_code == 200, (service, answer.text)


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
    with composed_server(tmp_path / "serve.log", env=env, every_dependency=False) as url:
        until(
            lambda: (
                dependency(url, "RAGChain")["replicas"][0]["state"] == "failing"
                and dependency(url, "LLM")["serving"]
            ),
            "the gateway's probes find the LLM, and nothing at RAGChain's address",
        )
        probe = readyz(url)
        assert probe.status_code == 200, probe.text
        report = probe.json()
        assert report["ready"] is True
        assert report["dependencies"]["LLM"]["serving"] is True
        assert report["dependencies"]["LLM"]["circuit"] == "closed"
        assert report["dependencies"]["RAGChain"]["serving"] is False

        assert chat(url, "hi").status_code == 200
        question = {"input": {"question": "How do returns work?"}}
        failures = [
            httpx.post(f"{url}/chains/rag/invoke", json=question, timeout=60) for _ in range(5)
        ]
        assert [f.status_code for f in failures] == [503] * 5
        assert all(f.headers.get("retry-after") for f in failures)
        assert "'rag' chain service is unavailable" in failures[0].json()["error"]["message"]
        assert "is down" in failures[-1].json()["error"]["message"]  # the circuit is open
        circuit = {
            labels["service"]: value
            for labels, value in samples(url, "bentochain_upstream_circuit_state")
        }
        assert circuit["RAGChain"] == 2 and circuit["LLM"] == 0
        assert chat(url, "hi again").status_code == 200  # the other routes go on
        assert dependency(url, "RAGChain")["circuit"] == "open"
