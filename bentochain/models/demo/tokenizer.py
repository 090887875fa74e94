"""Train byte-level BPE tokenizers for the demo models, deterministically.

Byte-level BPE (the GPT-2 / Llama 3 / Qwen family) encodes any UTF-8 text, so the demo models
accept every input a real model would, even though their vocabularies are small.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bentochain.models.demo.corpus import Language, sentences

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
END_OF_TEXT = "<|endoftext|>"
PAD = "<pad>"

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""ChatML, the template of Qwen and many instruction-tuned models."""


def train_bpe(
    languages: tuple[Language, ...],
    *,
    vocab_size: int,
    special_tokens: list[str],
    seed: int,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on the fixed corpus; the same inputs give the same file."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = list(sentences(languages, count=4000, seed=seed))
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer)


def chat_tokenizer(*, vocab_size: int, seed: int) -> PreTrainedTokenizerFast:
    """A ChatML tokenizer for the demo causal LM (English, French and Spanish corpus)."""
    tokenizer = train_bpe(
        ("en", "fr", "es"),
        vocab_size=vocab_size,
        special_tokens=[END_OF_TEXT, IM_START, IM_END, PAD],
        seed=seed,
    )
    tokenizer.eos_token = IM_END
    tokenizer.pad_token = PAD
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def translation_tokenizer(
    source: Language, target: Language, *, vocab_size: int, seed: int
) -> PreTrainedTokenizerFast:
    """A tokenizer shared by source and target languages, as most opus-mt models use."""
    tokenizer = train_bpe(
        (source, target),
        vocab_size=vocab_size,
        special_tokens=[PAD, END_OF_TEXT],
        seed=seed,
    )
    tokenizer.pad_token = PAD
    tokenizer.eos_token = END_OF_TEXT
    # Marian appends </s> to every source; a fast tokenizer does it through a post-processor.
    from tokenizers import processors

    eos_id = tokenizer.convert_tokens_to_ids(END_OF_TEXT)
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {END_OF_TEXT}",
        pair=f"$A $B {END_OF_TEXT}",
        special_tokens=[(END_OF_TEXT, eos_id)],
    )
    return tokenizer
