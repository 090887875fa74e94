"""The dashboard and the SLO rules against a real Prometheus that scraped the served Bento
under a short load: every panel's query and every rule returns data, and the main panels
render from it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bentochain.config.loader import DEFAULT_PROFILE, load_settings
from bentochain.deploy.monitoring import dashboard, panel_queries, rule_queries, rules
from loadtest.dashboard import GATEWAY_REQUESTS, render, rule_file, scraped, traffic
from loadtest.prometheus import prometheus_server, query
from tests.integration.conftest import Server
from tests.support.serving import until
from tests.support.system import prometheus_tool

pytestmark = pytest.mark.integration


def test_every_panel_and_rule_returns_data_from_a_real_prometheus(
    composed: Server, served_env: dict[str, str], tmp_path: Path
) -> None:
    settings = load_settings(DEFAULT_PROFILE, environ=served_env)  # what `composed` serves
    board = dashboard(settings)
    rule = rule_file(settings, tmp_path)
    target = composed.url.removeprefix("http://")
    binary = prometheus_tool("prometheus")
    with prometheus_server(binary, tmp_path / "prometheus", [target], [rule]) as prometheus:
        until(lambda: scraped(prometheus, "up", 1), "Prometheus scrapes the Bento", 600)
        start = float(query(prometheus, "vector(time())")[0]["value"][1])
        sent = asyncio.run(traffic(composed.url, settings, rounds=6))
        total = f"sum({GATEWAY_REQUESTS})"
        until(lambda: scraped(prometheus, total, sent), "the load is scraped", 600)
        queries = {**panel_queries(board), **rule_queries(rules(settings))}

        def empty() -> dict[str, str]:
            return {name: expr for name, expr in queries.items() if not query(prometheus, expr)}

        # The rules run every second: once they have run on the load, every query has data.
        try:
            until(lambda: not empty(), "every query has data", 300)
        except AssertionError:
            raise AssertionError(f"queries without data: {empty()}") from None
        end = float(query(prometheus, "vector(time())")[0]["value"][1])
        png = render(prometheus, board, start, end, tmp_path / "dashboard.png")
    assert png.stat().st_size > 20_000  # six plotted panels, not an empty canvas
