"""Streaming text: characters are never split, stop strings cut exactly, even across tokens."""

from __future__ import annotations

from pathlib import Path

import pytest

from bentochain.engines.llm.text import IncrementalDecoder, StopMatcher


@pytest.fixture(scope="module")
def tokenizer(demo_dir: Path) -> object:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(demo_dir / "llama-tiny")


@pytest.mark.parametrize(
    "text", ["plain ascii words", "café crème brûlée", "日本語のテキスト 😀👍🏽"]
)
def test_incremental_decoding_reassembles_text_without_broken_characters(
    tokenizer: object, text: str
) -> None:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    decoder = IncrementalDecoder(tokenizer)  # type: ignore[arg-type]
    pieces = [decoder.push(i) for i in ids]
    pieces.append(decoder.flush())
    assert "".join(pieces) == text
    assert all("\ufffd" not in piece for piece in pieces)
    # Byte-level BPE splits these characters over several tokens, so some steps emit nothing.
    if not text.isascii():
        assert len(ids) > len([p for p in pieces if p])


def test_stop_string_split_across_tokens_is_cut_and_never_sent() -> None:
    matcher = StopMatcher(["END"])
    sent = [matcher.feed(piece) for piece in ["Hello E", "N", "D and more"]]
    assert "".join(sent) == "Hello "
    assert matcher.stopped
    assert matcher.feed("ignored") == ""


def test_text_resembling_a_stop_prefix_is_released_when_it_is_not_one() -> None:
    matcher = StopMatcher(["###"])
    assert matcher.feed("a#") == "a"  # '#' could begin '###': held back
    assert matcher.feed("#b") == "##b"  # it did not: released
    assert matcher.flush() == ""
    assert not matcher.stopped


def test_earliest_of_several_stops_wins() -> None:
    matcher = StopMatcher(["world", "lo w"])
    assert matcher.feed("hello world") == "hel"
    assert matcher.stopped


def test_held_back_text_is_flushed_at_the_end() -> None:
    matcher = StopMatcher(["STOP"])
    assert matcher.feed("the ST") == "the "
    assert matcher.flush() == "ST"


def test_no_stops_pass_everything_through() -> None:
    matcher = StopMatcher([])
    assert matcher.feed("abc") == "abc"
    assert matcher.flush() == ""
