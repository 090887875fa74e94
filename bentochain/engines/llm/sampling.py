"""Choose the next token from logits, per request: greedy, temperature, nucleus (top-p)."""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import torch

from bentochain.engines.llm.types import SamplingParams

# Temperatures this small divide the logits into infinities (softmax of them is NaN): they
# mean greedy, as vLLM takes them.
GREEDY_BELOW = 1e-5


def make_generator(seed: int | None) -> torch.Generator:
    """A private random stream per request, so one request's seed never depends on another's."""
    generator = torch.Generator(device="cpu")
    # torch takes seeds in [-2**63, 2**64): any integer, reduced, is one of them.
    generator.manual_seed(seed % 2**64 if seed is not None else secrets.randbits(63))
    return generator


def next_token(
    logits: torch.Tensor,
    params: SamplingParams,
    generator: torch.Generator,
    *,
    banned: Sequence[int] = (),
) -> int:
    """Pick one token id from a 1-D row of logits.

    ``banned`` ids (the end-of-sequence tokens until ``min_tokens`` is reached) get zero
    probability.
    """
    logits = logits.float()
    if banned:
        logits = logits.clone()
        logits[list(banned)] = float("-inf")
    if params.temperature < GREEDY_BELOW:
        return int(torch.argmax(logits).item())
    probs = torch.softmax(logits / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        cumulative = torch.cumsum(sorted_probs, dim=-1)
        # Keep the smallest prefix whose mass reaches top_p (always at least one token).
        outside = cumulative - sorted_probs >= params.top_p
        outside[0] = False  # top_p 0 (OpenAI allows it) leaves the most likely token
        sorted_probs[outside] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator).item())
