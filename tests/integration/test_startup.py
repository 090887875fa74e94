"""Start-up as a user meets it: bad profiles, missing models and missing keys stop it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bentochain.config.loader import PROJECT_ROOT
from bentochain.serving.topology import free_port

pytestmark = pytest.mark.integration

BENTOML = [sys.executable, "-m", "bentoml"]


def serve(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BENTOML, "serve", "services.gateway:Gateway", "--port", str(free_port())],
        env=env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_bentoml_serve_with_a_bad_profile_exits_with_one_message(
    served_env: dict[str, str], tmp_path: Path
) -> None:
    profile = tmp_path / "bad.yaml"
    profile.write_text((PROJECT_ROOT / "configs" / "default.yaml").read_text() + "\nextra: 1\n")
    result = serve(
        {**served_env, "BENTOCHAIN_CONFIG": str(profile), "BENTOCHAIN_LLM__WORKERS": "0"}
    )
    assert result.returncode == 2
    output = result.stdout + result.stderr
    assert f"bentochain: invalid profile {profile}:" in output
    assert "llm.workers (from environment BENTOCHAIN_LLM__WORKERS)" in output
    assert "extra: unknown key" in output
    assert "Traceback" not in output


def test_bentoml_serve_without_prepared_models_says_what_to_run(
    served_env: dict[str, str], tmp_path: Path
) -> None:
    result = serve({**served_env, "BENTOML_HOME": str(tmp_path / "empty-home")})
    assert result.returncode == 2
    output = result.stdout + result.stderr
    assert "is not in the BentoML model store; run `bentochain prepare`" in output
    assert "Traceback" not in output


def test_a_chain_provider_without_its_key_stops_the_start_naming_the_variable(
    served_env: dict[str, str],
) -> None:
    env = {k: v for k, v in served_env.items() if not k.endswith("_API_KEY")}
    env.update(
        {
            "BENTOCHAIN_CHAINS__RAG__LLM__PROVIDER": "anthropic",
            "BENTOCHAIN_CHAINS__RAG__LLM__MODEL": "claude-test",
            "BENTOCHAIN_CHAINS__RAG__LLM__API_KEY_ENV": "RAG_LLM_KEY",
        }
    )
    result = serve(env)
    assert result.returncode == 2
    output = result.stdout + result.stderr
    assert "chains.rag.llm: environment variable RAG_LLM_KEY (the API key) is not set" in output
    assert "Traceback" not in output
