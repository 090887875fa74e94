"""Fetch ``hf:`` models from the Hugging Face hub into a folder, at prepare time only.

Downloads go through ``huggingface_hub``'s cache, so ``HF_HUB_CACHE``, ``HF_TOKEN``,
``HF_ENDPOINT`` and ``HF_HUB_OFFLINE`` behave as every Hugging Face user expects: with
``HF_HUB_OFFLINE=1`` the model comes from the cache or not at all.
"""

from __future__ import annotations

import shutil
from pathlib import Path

WEIGHTS_AND_CONFIG = [
    "*.json",
    "*.safetensors",
    "*.txt",
    "*.model",
    "*.spm",
    "*.jinja",
    "*.py",
    "*/*.json",  # sentence-transformers modules such as 1_Pooling/config.json
]
LEGACY_WEIGHTS = ["*.bin"]
"""Only fetched when a repository has no safetensors weights."""


def download(repo_id: str, revision: str | None, target: Path) -> str:
    """Copy ``repo_id`` at ``revision`` into ``target``; return the commit it resolved to."""
    from huggingface_hub import snapshot_download

    snapshot = Path(
        snapshot_download(repo_id, revision=revision, allow_patterns=WEIGHTS_AND_CONFIG)
    )
    if not any(snapshot.glob("*.safetensors")):
        snapshot = Path(
            snapshot_download(
                repo_id, revision=revision, allow_patterns=WEIGHTS_AND_CONFIG + LEGACY_WEIGHTS
            )
        )
    if not (snapshot / "config.json").is_file():
        raise FileNotFoundError(f"hf:{repo_id} has no config.json: it is not a transformers model")
    # The cache holds symlinks into its blob store; the model store needs real files.
    shutil.copytree(snapshot, target, symlinks=False)
    return snapshot.name
