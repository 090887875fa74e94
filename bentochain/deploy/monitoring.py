"""What an operator watches, from the profile: Prometheus rules for its SLOs and a Grafana
dashboard of the metrics every service exports.

Each SLO becomes recording rules (its error ratio over 5 minutes to 6 hours) and two
multiwindow burn-rate alerts, as the SRE workbook has them: a fast burn pages (14.4 times the
budget's rate over an hour and five minutes: 2% of a 30-day budget gone in an hour), a slow
burn opens a ticket (6 times over six hours and thirty minutes). The dashboard's panels and
the rules are plain PromQL, evaluated against a real Prometheus by the tests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from prometheus_client.utils import floatToGoString

from bentochain.config.schema import SLO, Settings
from bentochain.deploy.kubernetes import RenderError
from bentochain.observability.metrics import REQUEST_BUCKETS, TTFT_BUCKETS

WINDOWS = ("5m", "30m", "1h", "6h")
PROBE_FREE = 'endpoint!~"/readyz|/livez|/metrics|/load"'  # what users asked for, not probes


@dataclass(frozen=True)
class Burn:
    alert: str
    long: str
    short: str
    factor: float
    severity: str
    wait: str


BURNS = (
    Burn("FastBurn", "1h", "5m", 14.4, "page", "2m"),
    Burn("SlowBurn", "6h", "30m", 6.0, "ticket", "15m"),
)


def _requests(selector: str) -> str:
    """BentoML's request counter (its latency histogram's count) for ``selector``."""
    return f"bentoml_service_request_duration_seconds_count{{{selector}}}"


def _status(selector: str, pattern: str) -> str:
    return f'{selector},http_response_code=~"{pattern}"'


def error_ratio(slo: SLO, window: str) -> str:
    """The share of bad events over ``window``: what the SLO's budget is spent on."""
    if slo.sli == "ttft":
        assert slo.threshold_seconds is not None
        le = floatToGoString(slo.threshold_seconds)
        good = (
            f'sum(rate(bentochain_llm_time_to_first_token_seconds_bucket{{le="{le}"}}[{window}]))'
        )
        total = f"sum(rate(bentochain_llm_time_to_first_token_seconds_count[{window}]))"
        return f"1 - ({good} / {total})"
    service = f'service_name="{slo.service}"'
    if slo.sli == "latency":
        assert slo.threshold_seconds is not None
        where = f'{service},endpoint="{slo.endpoint}"'
        le = floatToGoString(slo.threshold_seconds)
        bucket = f'bentoml_service_request_duration_seconds_bucket{{{where},le="{le}"}}'
        good = f"sum(rate({bucket}[{window}]))"
        return f"1 - ({good} / sum(rate({_requests(where)}[{window}])))"
    where = f'{service},endpoint="{slo.endpoint}"' if slo.endpoint else f"{service},{PROBE_FREE}"
    # No 5xx series yet means none failed: 0, not "no data" (the total says whether any came).
    bad = f"(sum(rate({_requests(_status(where, '5..'))}[{window}])) or vector(0))"
    return f"{bad} / sum(rate({_requests(where)}[{window}]))"


def recorded(slo: SLO, window: str) -> str:
    return f"slo:bentochain_{slo.name}:error_ratio_rate{window}"


def _check(slo: SLO) -> None:
    if slo.threshold_seconds is None:
        return
    buckets = TTFT_BUCKETS if slo.sli == "ttft" else REQUEST_BUCKETS
    if slo.threshold_seconds not in buckets:
        allowed = ", ".join(f"{b:g}" for b in buckets)
        raise RenderError(
            f"observability.slos.{slo.name}.threshold_seconds: {slo.threshold_seconds:g} is "
            f"not a bucket of the histogram it reads; use one of {allowed}"
        )


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def rules(settings: Settings) -> dict[str, Any]:
    """A Prometheus rule file (``rule_files``) for the profile's SLOs."""
    recording: list[dict[str, Any]] = []
    alerting: list[dict[str, Any]] = []
    for slo in settings.observability.slos:
        _check(slo)
        labels = {"slo": slo.name, "objective": f"{slo.objective:g}"}
        for window in WINDOWS:
            recording.append(
                {
                    "record": recorded(slo, window),
                    "expr": error_ratio(slo, window),
                    "labels": labels,
                }
            )
        budget = 1 - slo.objective
        for burn in BURNS:
            limit = f"{burn.factor * budget:.6g}"
            alerting.append(
                {
                    "alert": f"{_camel(slo.name)}{burn.alert}",
                    "expr": (
                        f"{recorded(slo, burn.long)} > {limit} "
                        f"and {recorded(slo, burn.short)} > {limit}"
                    ),
                    "for": burn.wait,
                    "labels": {"severity": burn.severity, "slo": slo.name},
                    "annotations": {
                        "summary": f"{slo.name}: error budget burning {burn.factor:g}x too fast",
                        "description": (
                            f"{slo.description}. Over {burn.long} and {burn.short}, "
                            f"{{{{ $value | humanizePercentage }}}} of events were bad "
                            f"(budget: {budget:.4g})."
                        ),
                    },
                }
            )
    alerting += [
        {
            "alert": "BentochainRecordsDropped",
            "expr": "sum(rate(bentochain_records_dropped_total[10m])) > 0",
            "for": "10m",
            "labels": {"severity": "ticket"},
            "annotations": {
                "summary": "quality records are being lost (a full or slow disk)",
                "description": "{{ $value }} records a second are dropped for 10 minutes.",
            },
        },
        {
            "alert": "BentochainKVCacheFull",
            "expr": "max(bentochain_llm_kv_cache_usage_ratio) > 0.95",
            "for": "10m",
            "labels": {"severity": "ticket"},
            "annotations": {
                "summary": "the LLM's KV cache is full: requests wait for memory",
                "description": "Scale the LLM out or give it more kv_cache.blocks.",
            },
        },
    ]
    return {
        "groups": [
            {"name": "bentochain-slo-ratios", "interval": "30s", "rules": recording},
            {"name": "bentochain-alerts", "rules": alerting},
        ]
    }


def rule_queries(rule_file: dict[str, Any]) -> dict[str, str]:
    """What each rule measures, by name: a recording rule's expression, and for an alert
    the series it compares (its expression before the threshold)."""
    found: dict[str, str] = {}
    for group in rule_file["groups"]:
        for rule in group["rules"]:
            if "record" in rule:
                found[rule["record"]] = rule["expr"]
            else:
                parts = re.split(r" and ", rule["expr"])
                for i, part in enumerate(parts):
                    found[f"{rule['alert']}[{i}]"] = re.sub(r"\s*>\s*[0-9.e+-]+$", "", part)
    return found


# -- the dashboard ------------------------------------------------------------------------------

GATEWAY = f'service_name="Gateway",{PROBE_FREE}'


def _panel(title: str, unit: str, *queries: tuple[str, str]) -> dict[str, Any]:
    return {
        "type": "timeseries",
        "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [
            {"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend}
            for i, (expr, legend) in enumerate(queries)
        ],
    }


def _quantiles(metric: str, by: str, selector: str = "") -> list[tuple[str, str]]:
    inner = f"sum by (le{', ' + by if by else ''}) (rate({metric}_bucket{{{selector}}}[5m]))"
    legend = f"{{{{{by}}}}} " if by else ""
    return [
        (f"histogram_quantile({q}, {inner})", f"{legend}p{int(q * 100)}") for q in (0.5, 0.95, 0.99)
    ]


def dashboard(settings: Settings) -> dict[str, Any]:
    """A Grafana dashboard (JSON model) of the metrics the services export."""
    panels = [
        _panel(
            "Requests per second (gateway, by endpoint)",
            "reqps",
            (f"sum by (endpoint) (rate({_requests(GATEWAY)}[1m]))", "{{endpoint}}"),
        ),
        _panel(
            "Errors per second (gateway, by status)",
            "reqps",
            (
                f"sum by (http_response_code) (rate({_requests(_status(GATEWAY, '[45]..'))}[1m]))",
                "{{http_response_code}}",
            ),
        ),
        _panel(
            "Latency (gateway, by endpoint)",
            "s",
            *_quantiles("bentoml_service_request_duration_seconds", "endpoint", GATEWAY),
        ),
        _panel(
            "Time to first token",
            "s",
            *_quantiles("bentochain_llm_time_to_first_token_seconds", ""),
        ),
        _panel(
            "Time per output token",
            "s",
            *_quantiles("bentochain_llm_time_per_output_token_seconds", ""),
        ),
        _panel(
            "Tokens per second",
            "short",
            ("sum(rate(bentochain_llm_generated_tokens_total[1m]))", "generated (1m rate)"),
            ("sum(rate(bentochain_llm_prompt_tokens_total[1m]))", "prompt (1m rate)"),
            ("sum(bentochain_llm_generation_tokens_per_second)", "generating now"),
        ),
        _panel(
            "Sequences (LLM)",
            "short",
            ("sum(bentochain_llm_running_requests)", "running"),
            ("sum(bentochain_llm_waiting_requests)", "waiting"),
            ("sum(bentochain_llm_batch_size)", "batch size"),
        ),
        _panel(
            "KV cache in use",
            "percentunit",
            ("max(bentochain_llm_kv_cache_usage_ratio)", "used / all blocks"),
        ),
        _panel(
            "Prefix cache: prompt tokens reused",
            "percentunit",
            (
                "sum(rate(bentochain_llm_prefix_cache_hits_total[5m])) / "
                "sum(rate(bentochain_llm_prefix_cache_queries_total[5m]))",
                "hit tokens / prompt tokens",
            ),
        ),
        _panel(
            "Chain answer cache hit rate",
            "percentunit",
            (
                "sum by (chain) (rate(bentochain_llm_cache_hits_total[5m])) / (sum by (chain) "
                "(rate(bentochain_llm_cache_hits_total[5m])) + sum by (chain) "
                "(rate(bentochain_llm_cache_misses_total[5m])))",
                "{{chain}}",
            ),
        ),
        _panel(
            "Chain steps p95",
            "s",
            (
                "histogram_quantile(0.95, sum by (le, chain, step) "
                "(rate(bentochain_chain_step_duration_seconds_bucket[5m])))",
                "{{chain}} {{step}}",
            ),
        ),
        _panel(
            "Chain step errors per second",
            "reqps",
            (
                "sum by (chain, step) (rate(bentochain_chain_step_errors_total[5m]))",
                "{{chain}} {{step}}",
            ),
        ),
        _panel(
            "Calls between services (by replica and version)",
            "reqps",
            (
                "sum by (service, replica, version) (rate(bentochain_upstream_requests_total[1m]))",
                "{{service}} {{replica}} {{version}}",
            ),
        ),
        _panel(
            "Quality records",
            "short",
            ("sum(rate(bentochain_records_written_total[5m]))", "written / s"),
            (
                "sum by (reason) (rate(bentochain_records_dropped_total[5m]))",
                "dropped / s {{reason}}",
            ),
        ),
        _panel(
            "SLO error ratio (1h) against the budget",
            "percentunit",
            *[(recorded(slo, "1h"), slo.name) for slo in settings.observability.slos],
        ),
    ]
    width, height = 12, 8
    for i, panel in enumerate(panels):
        panel["id"] = i + 1
        panel["gridPos"] = {"x": (i % 2) * width, "y": (i // 2) * height, "w": width, "h": height}
    return {
        "title": "bentochain",
        "uid": "bentochain",
        "tags": ["bentochain", "llm"],
        "timezone": "browser",
        "schemaVersion": 39,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "type": "datasource",
                    "query": "prometheus",
                    "label": "Prometheus",
                }
            ]
        },
        "panels": panels,
    }


def panel_queries(board: dict[str, Any]) -> dict[str, str]:
    """Every query of the dashboard, by ``panel title [refId]``."""
    return {
        f"{panel['title']} [{target['refId']}]": target["expr"]
        for panel in board["panels"]
        for target in panel["targets"]
    }
