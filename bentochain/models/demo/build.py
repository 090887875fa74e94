"""Build demo models from their recipes into a folder in Hugging Face layout.

The folder is what ``save_pretrained`` writes, so the services load demo models through exactly
the code that loads hub models (``AutoModel*.from_pretrained``). Weights are random, drawn from
a seeded generator: the same recipe gives the same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

from bentochain.models.demo.catalog import (
    CausalLMRecipe,
    TranslationRecipe,
    fingerprint,
    recipe,
)
from bentochain.models.demo.tokenizer import (
    END_OF_TEXT,
    IM_END,
    chat_tokenizer,
    translation_tokenizer,
)

DEMO_MARKER = "bentochain-demo.json"
"""Written next to the weights so anyone opening the folder learns they are random."""


def build(name: str, target: Path) -> None:
    """Write demo model ``name`` (weights, config, tokenizer) into ``target``."""
    spec = recipe(name)
    target.mkdir(parents=True, exist_ok=True)
    if isinstance(spec, CausalLMRecipe):
        _build_causal_lm(spec, target)
    else:
        _build_translator(spec, target)
    marker = {
        "name": f"demo:{name}",
        "weights": "random (seeded); output text is meaningless",
        "fingerprint": fingerprint(name),
        "recipe": spec.model_dump(),
    }
    (target / DEMO_MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")


def _build_causal_lm(spec: CausalLMRecipe, target: Path) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = chat_tokenizer(vocab_size=spec.vocab_size, seed=spec.seed)
    vocabulary = tokenizer.get_vocab()
    eos = [vocabulary[IM_END], vocabulary[END_OF_TEXT]]
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )
    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=eos, pad_token_id=tokenizer.pad_token_id, do_sample=False
    )
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)


def _build_translator(spec: TranslationRecipe, target: Path) -> None:
    import torch
    from transformers import GenerationConfig, MarianConfig, MarianMTModel

    tokenizer = translation_tokenizer(
        spec.source_lang, spec.target_lang, vocab_size=spec.vocab_size, seed=spec.seed
    )
    pad_id = tokenizer.pad_token_id
    eos_id = tokenizer.eos_token_id
    config = MarianConfig(
        vocab_size=len(tokenizer),
        d_model=spec.d_model,
        encoder_layers=spec.layers,
        decoder_layers=spec.layers,
        encoder_attention_heads=spec.attention_heads,
        decoder_attention_heads=spec.attention_heads,
        encoder_ffn_dim=spec.ffn_dim,
        decoder_ffn_dim=spec.ffn_dim,
        max_position_embeddings=spec.max_position_embeddings,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
        decoder_start_token_id=pad_id,
        forced_eos_token_id=eos_id,
        share_encoder_decoder_embeddings=True,
    )
    torch.manual_seed(spec.seed)
    model = MarianMTModel(config)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=pad_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        forced_eos_token_id=eos_id,
        num_beams=1,
    )
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
