"""Fixtures of the unit tests: the demo shop database, the engines in process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bentochain.sql.database import ReadOnlyDatabase
from bentochain.sql.demo import build_shop
from tests.unit.test_gateway_app import LocalBackends


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[tuple[Path, ReadOnlyDatabase]]:
    path = tmp_path / "shop.sqlite"
    build_shop(path)
    db = ReadOnlyDatabase(f"sqlite:///{path}", statement_timeout=1.0)
    yield path, db
    db.dispose()


@pytest.fixture(scope="module")
def engines(demo_dir: Path, embedder_dir: Path) -> Iterator[LocalBackends]:
    """The tiny LLM, the real embedder and both demo translators, called in process."""
    from bentochain.engines.encoder import SentenceEncoder
    from bentochain.engines.llm.engine import EngineConfig, LLMEngine
    from bentochain.engines.translator import Translator

    llm = LLMEngine(demo_dir / "llama-tiny", EngineConfig(default_max_tokens=16))
    translators = {
        lang: Translator(demo_dir / f"marian-en-{lang}", max_new_tokens=8, num_beams=1)
        for lang in ("fr", "es")
    }
    yield LocalBackends(llm, SentenceEncoder(embedder_dir), translators)
    llm.close()
