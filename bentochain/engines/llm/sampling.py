"""Choose the next token of every sequence in a batch: greedy, temperature, nucleus (top-p).

The whole batch is sampled in one pass on the logits' own device, and the chosen ids come back
to the host in one transfer. Sampling is an exponential race (``argmax(p / E)`` with
``E ~ Exp(1)`` is a draw from ``p``, as vLLM samples): the noise is the only random part, so a
seeded request draws its noise from a generator of its own (its tokens never depend on what else
is in the batch) while every unseeded row shares one draw from the sampler's generator.
Generators live on the device of the logits: a CPU generator beside CUDA logits is refused by
torch, and that used to fail every running sequence of a GPU server.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from bentochain.engines.llm.types import SamplingParams

# Temperatures this small divide the logits into infinities (softmax of them is NaN): they
# mean greedy, as vLLM takes them.
GREEDY_BELOW = 1e-5


def make_generator(seed: int, device: torch.device | str) -> torch.Generator:
    """A random stream on ``device``; torch takes seeds in [-2**63, 2**64): any int, reduced."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed % 2**64)
    return generator


@dataclass(frozen=True)
class RowSampling:
    """How one row of a batch chooses its token."""

    params: SamplingParams
    generator: torch.Generator | None = None
    """The request's own stream when it gave a seed; None shares the sampler's."""
    banned: tuple[int, ...] = ()
    """Ids given zero probability (end of sequence until ``min_tokens`` is reached)."""


class Sampler:
    """Samples batches of logits on one device."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self._shared = make_generator(secrets.randbits(63), self.device)

    def generator_for(self, seed: int | None) -> torch.Generator | None:
        """A seeded request's own stream (on this device); None for an unseeded one."""
        return None if seed is None else make_generator(seed, self.device)

    def sample(self, logits: torch.Tensor, rows: Sequence[RowSampling]) -> list[int]:
        """One token id per row of ``logits`` [rows, vocab]."""
        if logits.shape[0] != len(rows):
            raise ValueError(f"{logits.shape[0]} rows of logits for {len(rows)} requests")
        logits = logits.float()
        banned = [(r, t) for r, row in enumerate(rows) for t in row.banned]
        if banned:
            logits = logits.clone()
            at = torch.tensor(banned, device=logits.device).T
            logits[at[0], at[1]] = float("-inf")
        greedy = [row.params.temperature < GREEDY_BELOW for row in rows]
        chosen = logits.argmax(dim=-1)
        if all(greedy):
            return [int(t) for t in chosen.tolist()]
        temperatures = torch.tensor(
            [1.0 if g else row.params.temperature for g, row in zip(greedy, rows, strict=True)],
            device=logits.device,
        )
        probs = torch.softmax(logits / temperatures[:, None], dim=-1)
        top_p = [row.params.top_p for row in rows]
        if any(p < 1.0 for p in top_p):
            probs = _nucleus(probs, torch.tensor(top_p, device=logits.device))
        sampled = (probs / self._noise(probs, rows)).argmax(dim=-1)
        mask = torch.tensor(greedy, device=logits.device)
        return [int(t) for t in torch.where(mask, chosen, sampled).tolist()]

    def _noise(self, probs: torch.Tensor, rows: Sequence[RowSampling]) -> torch.Tensor:
        noise = torch.empty_like(probs)
        shared = [r for r, row in enumerate(rows) if row.generator is None]
        if len(shared) == len(rows):
            return noise.exponential_(generator=self._shared)
        if shared:
            vocab = probs.shape[1]
            draw = torch.empty((len(shared), vocab), device=probs.device, dtype=probs.dtype)
            noise[shared] = draw.exponential_(generator=self._shared)
        for r, row in enumerate(rows):
            if row.generator is not None:
                noise[r].exponential_(generator=row.generator)
        return noise


def _nucleus(probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Each row keeps the smallest prefix of its tokens whose mass reaches its top_p."""
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
    cumulative = torch.cumsum(sorted_probs, dim=-1)
    outside = cumulative - sorted_probs >= top_p[:, None]
    outside[:, 0] = False  # top_p 0 (OpenAI allows it) leaves the most likely token
    sorted_probs = sorted_probs.masked_fill(outside, 0.0)
    return torch.zeros_like(probs).scatter_(1, order, sorted_probs)
