"""Fixtures of the unit tests that use the demo shop database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bentochain.sql.database import ReadOnlyDatabase
from bentochain.sql.demo import build_shop


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[tuple[Path, ReadOnlyDatabase]]:
    path = tmp_path / "shop.sqlite"
    build_shop(path)
    db = ReadOnlyDatabase(f"sqlite:///{path}", statement_timeout=1.0)
    yield path, db
    db.dispose()
