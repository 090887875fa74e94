"""The embedder matches sentence-transformers; the translators translate batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bentochain.engines.encoder import SentenceEncoder
from bentochain.engines.translator import Translator

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A monkey is playing drums.",
    "Deux hommes poussent des chariots dans les bois.",
    "x",
    "word " * 400,  # longer than max_seq_length: truncated the same way
]


@pytest.fixture(scope="module")
def encoder(embedder_dir: Path) -> SentenceEncoder:
    return SentenceEncoder(embedder_dir)


def test_embeddings_match_sentence_transformers(
    encoder: SentenceEncoder, embedder_dir: Path
) -> None:
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(embedder_dir), device="cpu").encode(
        SENTENCES, normalize_embeddings=True, convert_to_numpy=True
    )
    ours = np.asarray(encoder.encode(SENTENCES).vectors)
    assert ours.shape == reference.shape == (len(SENTENCES), 384)
    assert np.abs(ours - reference).max() < 1e-5


def test_vectors_are_unit_length_and_tokens_are_counted(encoder: SentenceEncoder) -> None:
    result = encoder.encode(SENTENCES)
    norms = np.linalg.norm(np.asarray(result.vectors), axis=1)
    assert np.allclose(norms, 1.0, atol=1e-5)
    assert result.token_counts[-1] == encoder.max_seq_length == 256
    assert result.token_counts == encoder.count_tokens(SENTENCES)


def test_batch_composition_does_not_change_a_vector(encoder: SentenceEncoder) -> None:
    alone = np.asarray(encoder.encode([SENTENCES[0]]).vectors[0])
    padded = np.asarray(encoder.encode(SENTENCES).vectors[0])
    assert np.abs(alone - padded).max() < 1e-5


def test_close_sentences_are_closer_than_unrelated_ones(encoder: SentenceEncoder) -> None:
    v = np.asarray(encoder.encode(SENTENCES[:4]).vectors)
    similar = v[0] @ v[1]
    assert similar > v[0] @ v[2] + 0.3
    assert similar > v[0] @ v[3] + 0.3


@pytest.mark.parametrize("pair", ["marian-en-fr", "marian-en-es"])
def test_translator_answers_one_text_per_input(demo_dir: Path, pair: str) -> None:
    translator = Translator(demo_dir / pair, max_new_tokens=8, num_beams=1)
    texts = ["Hello world", "", "The cat sleeps on the warm chair. " * 3]
    out = translator.translate(texts)
    assert len(out) == len(texts) and all(isinstance(t, str) for t in out)
    # Same input, same output, whatever else is in the batch (greedy decoding).
    assert translator.translate([texts[0]])[0] == out[0]
    assert translator.translate([]) == []
