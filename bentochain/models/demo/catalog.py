"""The demo models a profile can name with ``demo:<name>``, and their build recipes.

Every recipe has a fingerprint: a hash of the recipe, the builder's version and the versions of
the libraries that initialise the weights. The fingerprint is the model's version in the BentoML
store, so the same recipe on the same pinned stack always maps to the same, bit-identical model.
"""

from __future__ import annotations

import hashlib
import json
from importlib.metadata import version
from typing import Literal

from pydantic import BaseModel, ConfigDict

BUILDER_VERSION = 1
"""Bump when the builder's code changes what it writes."""

Task = Literal["chat", "embedding", "translation"]


class CausalLMRecipe(BaseModel):
    """A Llama-architecture causal LM with a ChatML byte-level BPE tokenizer."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["causal-lm"] = "causal-lm"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int
    seed: int = 0

    @property
    def task(self) -> Task:
        return "chat"


class TranslationRecipe(BaseModel):
    """A Marian-architecture encoder-decoder (the opus-mt family) with a shared BPE vocabulary."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["seq2seq"] = "seq2seq"
    source_lang: str
    target_lang: str
    vocab_size: int
    d_model: int
    ffn_dim: int
    layers: int
    attention_heads: int
    max_position_embeddings: int
    seed: int = 0

    @property
    def task(self) -> Task:
        return "translation"


Recipe = CausalLMRecipe | TranslationRecipe


def _marian(target_lang: str, *, seed: int) -> TranslationRecipe:
    """A ~1M-parameter en→``target_lang`` translator: small enough to batch fast on a CPU."""
    return TranslationRecipe(
        source_lang="en",
        target_lang=target_lang,
        vocab_size=2048,
        d_model=128,
        ffn_dim=256,
        layers=2,
        attention_heads=4,
        max_position_embeddings=512,
        seed=seed,
    )


CATALOG: dict[str, Recipe] = {
    # For tests: builds in well under a second and generates hundreds of tokens per second.
    "llama-tiny": CausalLMRecipe(
        vocab_size=2048,
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=131072,
    ),
    # For benchmarks and `make serve`: ~36M parameters, the size of a real small model's
    # per-token cost on a CPU.
    "llama-36m": CausalLMRecipe(
        vocab_size=8192,
        hidden_size=512,
        intermediate_size=1664,
        num_hidden_layers=9,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=4096,
    ),
    "marian-en-fr": _marian("fr", seed=0),
    "marian-en-es": _marian("es", seed=1),
}


def recipe(name: str) -> Recipe:
    try:
        return CATALOG[name]
    except KeyError:
        known = ", ".join(f"demo:{n}" for n in CATALOG)
        raise ValueError(f"there is no demo model {name!r}; known demo models: {known}") from None


def fingerprint(name: str) -> str:
    """The store version of demo model ``name``: changes whenever its bytes could."""
    payload = {
        "name": name,
        "recipe": recipe(name).model_dump(),
        "builder": BUILDER_VERSION,
        "libraries": {lib: version(lib) for lib in ("torch", "transformers", "tokenizers")},
    }
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    return digest[:16]
