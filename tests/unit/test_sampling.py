"""Token choice: greedy, temperature and top-p behave as OpenAI documents them."""

from __future__ import annotations

import torch

from bentochain.engines.llm.sampling import make_generator, next_token
from bentochain.engines.llm.types import SamplingParams

LOGITS = torch.tensor([0.0, 3.0, 2.5, -1.0, 1.0])


def test_temperature_zero_is_greedy() -> None:
    params = SamplingParams(temperature=0.0)
    picks = {next_token(LOGITS, params, make_generator(seed)) for seed in range(20)}
    assert picks == {1}


def test_banned_tokens_are_never_chosen() -> None:
    greedy = SamplingParams(temperature=0.0)
    assert next_token(LOGITS, greedy, make_generator(0), banned=(1,)) == 2
    hot = SamplingParams(temperature=2.0)
    picks = {next_token(LOGITS, hot, make_generator(s), banned=(1, 2)) for s in range(200)}
    assert picks and not picks & {1, 2}


def test_same_seed_same_tokens_different_seed_different_tokens() -> None:
    params = SamplingParams(temperature=1.5)
    logits = torch.randn(500, generator=torch.Generator().manual_seed(0))

    def draw(seed: int) -> list[int]:
        generator = make_generator(seed)
        return [next_token(logits, params, generator) for _ in range(30)]

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


def test_top_p_keeps_only_the_nucleus() -> None:
    # Probabilities at temperature 1: ~[.03, .52, .32, .005, .09]; top_p .5 keeps token 1 only.
    params = SamplingParams(temperature=1.0, top_p=0.5)
    picks = {next_token(LOGITS, params, make_generator(s)) for s in range(200)}
    assert picks == {1}
    wider = SamplingParams(temperature=1.0, top_p=0.8)
    picks = {next_token(LOGITS, wider, make_generator(s)) for s in range(400)}
    assert picks == {1, 2}


def test_high_temperature_spreads_choices() -> None:
    params = SamplingParams(temperature=2.0)
    picks = [next_token(LOGITS, params, make_generator(s)) for s in range(400)]
    assert set(picks) == {0, 1, 2, 3, 4}
    assert picks.count(1) > picks.count(3)
