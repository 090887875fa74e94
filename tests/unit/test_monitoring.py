"""SLO rules and the dashboard as rendered from the profiles: promtool accepts the rules, the
burn-rate alerts fire (and only) when a budget burns too fast, and the committed files are
what the profile renders. Against a real Prometheus and a served Bento:
tests/integration/test_dashboard.py."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from bentochain.cli import PRODUCTION_PROFILE
from bentochain.config.loader import PROJECT_ROOT, load_settings
from bentochain.config.schema import SLO, Settings
from bentochain.deploy.kubernetes import RenderError
from bentochain.deploy.monitoring import dashboard, panel_queries, rules
from tests.support.system import prometheus_tool

COMMITTED = PROJECT_ROOT / "deploy" / "k8s" / "monitoring"
PROD = load_settings(PRODUCTION_PROFILE, environ={})

REQUESTS = "bentoml_service_request_duration_seconds_count"
GATEWAY = 'service_name="Gateway",endpoint="/v1/chat/completions"'
TTFT = "bentochain_llm_time_to_first_token_seconds"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [prometheus_tool("promtool"), *args], capture_output=True, text=True, timeout=120
    )


def test_the_committed_rules_pass_promtool() -> None:
    done = promtool("check", "rules", str(COMMITTED / "prometheus-rules.yaml"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {4 * 4 + 4 * 2 + 2} rules found" in done.stdout  # 4 SLOs, 2 others


def alert(name: str, slo: str, severity: str, description: str, summary: str) -> dict[str, Any]:
    return {
        "alertname": name,
        "exp_alerts": [
            {
                "exp_labels": {"severity": severity, "slo": slo, "objective": _objective(slo)},
                "exp_annotations": {"summary": summary, "description": description},
            }
        ],
    }


def _objective(slo: str) -> str:
    return next(f"{s.objective:g}" for s in PROD.observability.slos if s.name == slo)


def test_burn_rate_alerts_fire_when_the_budget_burns_too_fast_and_only_then(
    tmp_path: Path,
) -> None:
    """Input series chosen so each alert's verdict is known: 20% of the gateway's answers fail
    (20x its 1% budget: the fast burn pages); half of the first tokens are late (10x a 5%
    budget: a slow burn, not a fast one); the SQL chain has no traffic (no alert)."""
    rule_file = tmp_path / "rules.yaml"
    rule_file.write_text((COMMITTED / "prometheus-rules.yaml").read_text())
    busy = [
        {"series": f'{REQUESTS}{{{GATEWAY},http_response_code="200"}}', "values": "0+80x480"},
        {"series": f'{REQUESTS}{{{GATEWAY},http_response_code="500"}}', "values": "0+20x480"},
        # Probes fail during start-up: they are not the users' answers.
        {
            "series": f'{REQUESTS}{{service_name="Gateway",endpoint="/readyz",'
            'http_response_code="503"}',
            "values": "0+1000x480",
        },
        {"series": f'{TTFT}_bucket{{le="2.5",model="m"}}', "values": "0+50x480"},
        {"series": f'{TTFT}_count{{model="m"}}', "values": "0+100x480"},
    ]
    healthy = [
        {"series": f'{REQUESTS}{{{GATEWAY},http_response_code="200"}}', "values": "0+100x480"},
        {"series": f'{TTFT}_bucket{{le="2.5",model="m"}}', "values": "0+100x480"},
        {"series": f'{TTFT}_count{{model="m"}}', "values": "0+100x480"},
    ]
    availability = next(s for s in PROD.observability.slos if s.name == "gateway_availability")
    ttft = next(s for s in PROD.observability.slos if s.name == "chat_ttft")
    tests = {
        "rule_files": [str(rule_file)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": busy,
                "alert_rule_test": [
                    {
                        "eval_time": "70m",
                        **alert(
                            "GatewayAvailabilityFastBurn",
                            "gateway_availability",
                            "page",
                            f"{availability.description}. Over 1h and 5m, 20% of events were "
                            "bad (budget: 0.01).",
                            "gateway_availability: error budget burning 14.4x too fast",
                        ),
                    },
                    {"eval_time": "70m", "alertname": "ChatTtftFastBurn", "exp_alerts": []},
                    {
                        "eval_time": "7h",
                        **alert(
                            "ChatTtftSlowBurn",
                            "chat_ttft",
                            "ticket",
                            f"{ttft.description}. Over 6h and 30m, 50% of events were bad "
                            "(budget: 0.05).",
                            "chat_ttft: error budget burning 6x too fast",
                        ),
                    },
                    {"eval_time": "70m", "alertname": "SqlChainLatencyFastBurn", "exp_alerts": []},
                ],
            },
            {
                "interval": "1m",
                "input_series": healthy,
                "alert_rule_test": [
                    {"eval_time": "7h", "alertname": name, "exp_alerts": []}
                    for name in (
                        "GatewayAvailabilityFastBurn",
                        "GatewayAvailabilitySlowBurn",
                        "ChatTtftFastBurn",
                        "ChatTtftSlowBurn",
                    )
                ],
            },
        ],
    }
    test_file = tmp_path / "test.yaml"
    test_file.write_text(yaml.safe_dump(tests, sort_keys=False))
    done = promtool("test", "rules", str(test_file))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_a_threshold_between_buckets_is_refused_naming_the_key() -> None:
    slo = SLO(
        name="slow",
        description="d",
        sli="latency",
        endpoint="/v1/embeddings",
        threshold_seconds=3.0,
        objective=0.9,
    )
    settings = Settings.model_validate(
        {**PROD.model_dump(mode="json"), "observability": {"slos": [slo.model_dump()]}}
    )
    with pytest.raises(
        RenderError, match=r"observability\.slos\.slow\.threshold_seconds: 3 .*2\.5, 5"
    ):
        rules(settings)


def test_the_dashboard_shows_what_the_issue_asks_and_is_committed_as_rendered() -> None:
    board = dashboard(PROD)
    assert json.loads((COMMITTED / "grafana-dashboard.json").read_text()) == board
    titles = " | ".join(p["title"] for p in board["panels"]).lower()
    for wanted in (
        "requests per second",
        "errors",
        "latency",
        "time to first token",
        "time per output token",
        "tokens per second",
        "sequences",
        "kv cache",
        "cache hit rate",
        "chain steps",
        "by replica and version",
        "slo",
    ):
        assert wanted in titles, wanted
    queries = panel_queries(board)
    assert all(queries.values()) and len(set(queries.values())) == len(queries)
    kustomization = yaml.safe_load((COMMITTED / "kustomization.yaml").read_text())
    dashboard_map = kustomization["configMapGenerator"][1]
    assert dashboard_map["options"]["labels"] == {"grafana_dashboard": "1"}  # Grafana's sidecar


@pytest.mark.parametrize("version", ["1.30.0", "1.33.0"])
def test_the_monitoring_configmaps_build_and_are_valid(version: str) -> None:
    import kubernetes_validate

    from tests.unit.test_deploy import build

    objects = build(COMMITTED)
    assert sorted(o["metadata"]["name"] for o in objects) == [
        "bentochain-grafana-dashboard",
        "bentochain-prometheus-rules",
    ]
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)
    rules_map = next(o for o in objects if o["metadata"]["name"].endswith("rules"))
    assert yaml.safe_load(rules_map["data"]["prometheus-rules.yaml"]) == rules(PROD)
