"""The soak's verdict: memory growth per process after the warm-up, and failed requests."""

from __future__ import annotations

from loadtest.soak import growth, targets


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
