"""Token choice: greedy, temperature and top-p behave as OpenAI documents them, a batch at once."""

from __future__ import annotations

import torch

from bentochain.engines.llm.sampling import RowSampling, Sampler
from bentochain.engines.llm.types import SamplingParams

LOGITS = torch.tensor([0.0, 3.0, 2.5, -1.0, 1.0])
SAMPLER = Sampler("cpu")


def pick(params: SamplingParams, seed: int, banned: tuple[int, ...] = ()) -> int:
    row = RowSampling(params, SAMPLER.generator_for(seed), banned)
    return SAMPLER.sample(LOGITS[None], [row])[0]


def test_temperature_zero_is_greedy() -> None:
    params = SamplingParams(temperature=0.0)
    assert {pick(params, seed) for seed in range(20)} == {1}


def test_banned_tokens_are_never_chosen() -> None:
    assert pick(SamplingParams(temperature=0.0), 0, banned=(1,)) == 2
    hot = SamplingParams(temperature=2.0)
    picks = {pick(hot, s, banned=(1, 2)) for s in range(200)}
    assert picks and not picks & {1, 2}


def test_same_seed_same_tokens_different_seed_different_tokens() -> None:
    params = SamplingParams(temperature=1.5)
    logits = torch.randn(1, 500, generator=torch.Generator().manual_seed(0))

    def draw(seed: int) -> list[int]:
        row = RowSampling(params, SAMPLER.generator_for(seed))
        return [SAMPLER.sample(logits, [row])[0] for _ in range(30)]

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


def test_top_p_keeps_only_the_nucleus() -> None:
    # Probabilities at temperature 1: ~[.03, .52, .32, .005, .09]; top_p .5 keeps token 1 only.
    params = SamplingParams(temperature=1.0, top_p=0.5)
    assert {pick(params, s) for s in range(200)} == {1}
    wider = SamplingParams(temperature=1.0, top_p=0.8)
    assert {pick(wider, s) for s in range(400)} == {1, 2}


def test_high_temperature_spreads_choices() -> None:
    picks = [pick(SamplingParams(temperature=2.0), s) for s in range(400)]
    assert set(picks) == {0, 1, 2, 3, 4}
    assert picks.count(1) > picks.count(3)


def test_frequencies_follow_the_softmax() -> None:
    """The exponential race is a draw from softmax(logits / T): counts match it."""
    rows = [RowSampling(SamplingParams(temperature=1.0)) for _ in range(4000)]
    picks = SAMPLER.sample(LOGITS.expand(len(rows), -1), rows)
    expected = torch.softmax(LOGITS, dim=-1)
    for token in range(5):
        seen = picks.count(token) / len(picks)
        assert abs(seen - float(expected[token])) < 0.03, (token, seen, float(expected[token]))


def test_a_seeded_row_draws_the_same_tokens_whatever_shares_its_batch() -> None:
    logits = torch.randn(6, 300, generator=torch.Generator().manual_seed(1))
    hot = SamplingParams(temperature=1.3, top_p=0.9)

    def alone(seed: int) -> list[int]:
        row = RowSampling(hot, SAMPLER.generator_for(seed))
        return [SAMPLER.sample(logits[2:3], [row])[0] for _ in range(10)]

    def in_a_batch(seed: int) -> list[int]:
        mine = RowSampling(hot, SAMPLER.generator_for(seed))
        others = [
            RowSampling(SamplingParams(temperature=0.0)),
            RowSampling(SamplingParams(temperature=0.7)),
            RowSampling(SamplingParams(temperature=2.0), SAMPLER.generator_for(99)),
            RowSampling(SamplingParams(temperature=1.0, top_p=0.2)),
            RowSampling(SamplingParams(temperature=0.9), banned=(3, 4)),
        ]
        rows = [others[0], others[1], mine, *others[2:]]
        return [SAMPLER.sample(logits, rows)[2] for _ in range(10)]

    assert alone(5) == in_a_batch(5)


def test_each_row_keeps_its_own_parameters_in_a_mixed_batch() -> None:
    logits = torch.stack([LOGITS, LOGITS, LOGITS])
    rows = [
        RowSampling(SamplingParams(temperature=0.0)),
        RowSampling(SamplingParams(temperature=0.0), banned=(1,)),
        RowSampling(SamplingParams(temperature=1.0, top_p=0.5)),
    ]
    for _ in range(50):
        assert SAMPLER.sample(logits, rows) == [1, 2, 1]


def test_generators_live_on_the_device_of_the_logits() -> None:
    """A CPU generator beside CUDA logits is what failed every sampled request on a GPU."""
    logits = torch.randn(2, 50)
    sampler = Sampler(logits.device)
    generator = sampler.generator_for(3)
    assert generator is not None and generator.device == logits.device
    assert sampler.generator_for(None) is None  # unseeded rows share one draw
