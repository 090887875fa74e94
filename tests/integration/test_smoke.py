"""`.ci/smoke`, the release pipeline's check of a deployment, against real servers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bentochain.config.loader import PROJECT_ROOT
from bentochain.serving.topology import free_port
from tests.integration.conftest import Server

pytestmark = pytest.mark.integration

SMOKE = PROJECT_ROOT / ".ci" / "smoke"


def smoke(url: str) -> subprocess.CompletedProcess[str]:
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return subprocess.run(
        [str(SMOKE), url],
        env={**os.environ, "PATH": path},
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_smoke_passes_against_a_served_bentochain(gateway: Server) -> None:
    done = smoke(gateway.url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"smoke: ok ({gateway.url}: llama-tiny answered")


def test_smoke_fails_naming_the_call_when_no_gateway_answers(split: Server) -> None:
    refused = smoke(f"http://127.0.0.1:{free_port()}")
    assert refused.returncode == 1
    assert "smoke: GET /readyz: no answer" in refused.stderr
    # A model service is not a gateway, and it refuses callers without the internal token.
    wrong = smoke(split.services["LLM"])
    assert wrong.returncode == 1
    assert "smoke: GET /v1/models: HTTP 401" in wrong.stderr  # it takes calls from services
