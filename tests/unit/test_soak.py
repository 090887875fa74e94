"""The soak's verdict: memory growth per process after the warm-up, and failed requests."""

from __future__ import annotations

from loadtest.soak import MIX, growth, half_rates, targets


def samples(*rows: tuple[float, float, float]) -> list[dict[str, float]]:
    return [{"minute": m, "LLM": llm, "Gateway": gw} for m, llm, gw in rows]


def test_growth_is_measured_from_the_end_of_the_warm_up() -> None:
    found = growth(samples((0, 100, 50), (5, 2000, 200), (10, 2040, 200), (30, 2050, 210)), 5)
    assert found == {"LLM": 2050 / 2000 - 1, "Gateway": 210 / 200 - 1}


def test_a_run_shorter_than_the_warm_up_has_no_growth_to_judge() -> None:
    assert growth(samples((0, 100, 50), (1, 100, 50)), 5) == {}
    verdict = targets({"soak": {"failures": 0}, "growth": {}, "warm_minutes": 5})
    assert [t["met"] for t in verdict] == [True, False]


def test_the_verdict_fails_on_a_failed_request_or_a_process_that_grew() -> None:
    grown = {"LLM": 0.01, "Gateway": 0.08}
    verdict = targets({"soak": {"failures": 2}, "growth": grown, "warm_minutes": 5})
    assert {t["name"]: t["met"] for t in verdict} == {
        "failed requests": False,
        "Gateway RSS growth from minute 5 to the end": False,
        "LLM RSS growth from minute 5 to the end": True,
    }


def test_each_kind_of_request_soaks_at_half_the_rate_it_reached_saturated() -> None:
    saturated = {
        "chat (stream)": {"requests_per_s": 1.2},
        "embeddings": {"requests_per_s": 60.0},
        "chain sql": {"requests_per_s": 0.1},
        "chain rag": {"requests_per_s": 0.3},
    }
    rates = half_rates(saturated)
    users = {name: count for name, (count, _) in MIX.items()}
    assert rates["SoakChat"] * users["SoakChat"] == 0.6
    assert rates["SoakEmbeddings"] * users["SoakEmbeddings"] == 30.0
    assert abs(rates["SoakChains"] * users["SoakChains"] - 0.2) < 1e-9
