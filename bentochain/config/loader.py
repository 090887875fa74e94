"""Load a profile: a YAML file, overridden key by key by ``BENTOCHAIN_*`` environment variables.

``BENTOCHAIN_CONFIG`` picks the file (default: ``configs/default.yaml`` next to the package).
``BENTOCHAIN_<SECTION>__<KEY>`` overrides any key, ``__`` separating levels, for example
``BENTOCHAIN_LLM__TRAFFIC__TIMEOUT=900``. A bad profile raises ``ProfileError`` with one message
that names the file (or the variable), the key and what is wrong.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from bentochain.config.schema import Settings

CONFIG_ENV = "BENTOCHAIN_CONFIG"
INTERNAL_TOKEN_ENV = "BENTOCHAIN_INTERNAL_TOKEN"  # a secret of the run, not a profile key
NOT_PROFILE_KEYS = frozenset({CONFIG_ENV, INTERNAL_TOKEN_ENV})
ENV_PREFIX = "BENTOCHAIN_"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PROFILE = PROJECT_ROOT / "configs" / "default.yaml"


class ProfileError(Exception):
    """The profile cannot be used; the message says where and why."""


def project_path(value: str) -> Path:
    """A path from the profile: absolute as given, relative to the project otherwise."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else PROJECT_ROOT / path


def profile_path(environ: Mapping[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    chosen = environ.get(CONFIG_ENV)
    return Path(chosen).expanduser().resolve() if chosen else DEFAULT_PROFILE


def load_settings(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read, override and validate a profile."""
    env: dict[str, str] = dict(os.environ if environ is None else environ)
    path = path or profile_path(env)
    data = _read_yaml(path)

    class _Profile(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            # Environment first: an override wins over the file.
            return (_EnvSource(settings_cls, env), init_settings)

    try:
        unknown = _unknown_env_sections(env)
        if unknown:
            raise ProfileError(_format(path, [(name, "unknown section", None) for name in unknown]))
        loaded = _Profile(**data)
    except ValidationError as exc:
        problems = [_describe(err, env) for err in exc.errors()]
        raise ProfileError(_format(path, problems)) from None
    return loaded


@cache
def get_settings() -> Settings:
    """The profile of this process, read once: services call this at import time."""
    return load_settings()


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ProfileError(
            f"bentochain: profile {path} does not exist (set {CONFIG_ENV} to a YAML profile, "
            "for example configs/default.yaml)"
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ProfileError(
            f"bentochain: invalid profile {path}: not valid YAML{where}: {problem}"
        ) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ProfileError(
            f"bentochain: invalid profile {path}: the top level must be a mapping of sections "
            f"(llm, embedder, translators, gateway), not {type(data).__name__}"
        )
    return data


def _env_name(loc: tuple[str | int, ...]) -> str:
    return ENV_PREFIX + "__".join(str(part).upper() for part in loc)


def _unknown_env_sections(environ: Mapping[str, str]) -> list[str]:
    sections = {name.upper() for name in Settings.model_fields}
    return sorted(
        name
        for name in environ
        if name.upper().startswith(ENV_PREFIX)
        and name.upper() not in NOT_PROFILE_KEYS
        and name.upper()[len(ENV_PREFIX) :].split("__", 1)[0] not in sections
    )


def _describe(err: Any, environ: Mapping[str, str]) -> tuple[str, str, str | None]:
    loc = tuple(part for part in err["loc"] if not str(part).startswith("function-"))
    key = ".".join(str(part) for part in loc) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        message = "unknown key"
    elif kind == "missing":
        message = "required key is missing"
    else:
        message = str(err["msg"]).removeprefix("Value error, ")
        if "input" in err and not isinstance(err["input"], dict):
            message += f" (got {err['input']!r})"
    # The variable that set this key, one of its parents, or (for a section-level check)
    # one of its children.
    target = _env_name(loc) if loc else ENV_PREFIX
    sources = sorted(
        name
        for name in environ
        if (upper := name.upper()) == target
        or upper.startswith(target + "__")
        or target.startswith(upper + "__")
    )
    return key, message, ", ".join(sources) or None


def _format(path: Path, problems: list[tuple[str, str, str | None]]) -> str:
    lines = [f"bentochain: invalid profile {path}:"]
    for key, message, source in problems:
        origin = f" (from environment {source})" if source else ""
        lines.append(f"  {key}{origin}: {message}")
    return "\n".join(lines)


def _key_path(parts: list[str]) -> list[str]:
    """Profile keys are lower case, except the names inside an ``env`` mapping."""
    path: list[str] = []
    for part in parts:
        path.append(part if path and path[-1] == "env" else part.lower())
    return path


class _EnvSource(PydanticBaseSettingsSource):
    """``BENTOCHAIN_A__B__C=value`` as the nested mapping ``{a: {b: {c: value}}}``."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self._environ = environ

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        raise NotImplementedError  # __call__ builds the whole mapping at once

    def __call__(self) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for name, value in self._environ.items():
            upper = name.upper()
            if not upper.startswith(ENV_PREFIX) or upper in NOT_PROFILE_KEYS:
                continue
            parts = _key_path(name[len(ENV_PREFIX) :].split("__"))
            node = result
            for part in parts[:-1]:
                child = node.setdefault(part, {})
                if not isinstance(child, dict):
                    break
                node = child
            else:
                node[parts[-1]] = value
        return result
