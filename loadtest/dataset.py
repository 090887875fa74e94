"""A seeded synthetic workload: prompts and output lengths drawn from fixed ranges.

Like vLLM's random dataset: each request has a prompt of a chosen number of tokens and a fixed
number of output tokens (``ignore_eos`` makes every run generate exactly that many), so two
runs, or two ways of serving, do exactly the same work.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from bentochain.models.demo.corpus import PARALLEL


@dataclass(frozen=True)
class BenchRequest:
    id: int
    prompt: str
    prompt_tokens: int
    output_tokens: int


def _words() -> list[str]:
    return sorted({word for triple in PARALLEL for line in triple for word in line.split()})


def synthetic(
    tokenizer: Any,
    count: int,
    *,
    prompt_tokens: tuple[int, int],
    output_tokens: tuple[int, int],
    seed: int = 0,
) -> list[BenchRequest]:
    """``count`` requests with prompt and output lengths uniform in the given ranges."""
    rng = random.Random(seed)
    words = _words()
    requests = []
    for i in range(count):
        target = rng.randint(*prompt_tokens)
        text = ""
        ids: list[int] = []
        while len(ids) < target:
            text += " ".join(rng.choice(words) for _ in range(16)) + " "
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        prompt = tokenizer.decode(ids[:target])
        actual = len(tokenizer(prompt)["input_ids"])
        requests.append(BenchRequest(i, prompt, actual, rng.randint(*output_tokens)))
    return requests


def sentences(count: int, seed: int = 0) -> list[str]:
    """Texts for the embedder: corpus sentences with a seeded suffix, all distinct."""
    rng = random.Random(seed)
    base = [triple[0] for triple in PARALLEL]
    return [f"{rng.choice(base)} ({i})" for i in range(count)]
