"""Which LLM a chain calls is configuration: build it from the profile's ``ChainLLM``.

``self`` is our LLM service (through ``bentoml.depends``); ``openai`` is any OpenAI-compatible
server (OpenAI, vLLM, or our own gateway) through langchain-openai's ``ChatOpenAI``;
``anthropic`` is langchain-anthropic's ``ChatAnthropic``. Keys are read from the environment
variable the profile names, never from the profile. Retries happen in ``ResilientChatModel``,
so the clients' own retries are off.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Mapping

from langchain_core.caches import BaseCache
from langchain_core.language_models import BaseChatModel

from bentochain.config.schema import ChainLLM, ProviderSettings
from bentochain.engines.llm.types import GenerationRequest
from bentochain.llms.bento import BentoChatModel
from bentochain.llms.resilience import ResilientChatModel, Route

DEFAULT_KEY_ENV = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}

Generate = Callable[[GenerationRequest], AsyncIterator[str]]


class ProviderConfigError(ValueError):
    """A provider cannot be built from the profile and environment (says which and why)."""


def _api_key(p: ProviderSettings, environ: Mapping[str, str], where: str) -> str:
    name = p.api_key_env or DEFAULT_KEY_ENV[p.provider]
    key = environ.get(name)
    if key:
        return key
    if p.provider == "openai" and p.base_url and not p.api_key_env:
        return "EMPTY"  # a self-hosted OpenAI-compatible server (vLLM) that wants no key
    raise ProviderConfigError(f"{where}: environment variable {name} (the API key) is not set")


def _label(where: str, i: int) -> str:
    return where if i == 0 else f"{where}.fallbacks[{i - 1}]"


def check_keys(settings: ChainLLM, environ: Mapping[str, str], where: str) -> None:
    """Fail now, naming the variable, if an external provider's API key is not set."""
    for i, p in enumerate([settings, *settings.fallbacks]):
        if p.provider != "self":
            _api_key(p, environ, _label(where, i))


def build_provider(
    p: ProviderSettings,
    *,
    generate: Generate | None,
    served_model: str,
    environ: Mapping[str, str],
    where: str,
    served_version: str | None = None,
) -> BaseChatModel:
    if p.provider == "self":
        if generate is None:
            raise ProviderConfigError(f"{where}: provider 'self' needs the LLM service")
        return BentoChatModel(
            generate_fn=generate,
            model_name=served_model,
            model_version=served_version,
            temperature=p.temperature,
            max_tokens=p.max_tokens,
        )
    if p.provider == "openai":
        from langchain_openai import ChatOpenAI

        return ChatOpenAI(
            model=p.model or "",
            base_url=p.base_url,
            api_key=_api_key(p, environ, where),
            temperature=p.temperature,
            max_completion_tokens=p.max_tokens,
            timeout=p.timeout,
            max_retries=0,
        )
    from langchain_anthropic import ChatAnthropic

    return ChatAnthropic(
        model=p.model or "",
        base_url=p.base_url,
        api_key=_api_key(p, environ, where),
        temperature=p.temperature,
        max_tokens=p.max_tokens,
        timeout=p.timeout,
        max_retries=0,
    )


def build_chain_llm(
    settings: ChainLLM,
    *,
    generate: Generate | None,
    served_model: str,
    served_version: str | None = None,
    cache: BaseCache | None = None,
    environ: Mapping[str, str] | None = None,
    where: str = "chains",
) -> ResilientChatModel:
    """The chain's model: its provider, then its fallbacks, cached only when deterministic.
    ``served_version`` (the LLM service's model reference) keys the cache with the model: a
    new model under the same served name does not answer from the old one's entries."""
    env = os.environ if environ is None else environ
    providers = [settings, *settings.fallbacks]
    routes = []
    for i, p in enumerate(providers):
        model = build_provider(
            p,
            generate=generate,
            served_model=served_model,
            served_version=served_version,
            environ=env,
            where=_label(where, i),
        )
        name = f"{i}:{p.provider}:{p.model or served_model}"
        routes.append(Route(name=name, model=model, timeout=p.timeout, retries=p.max_retries))
    deterministic = all(p.temperature == 0 for p in providers)
    return ResilientChatModel(
        routes=routes,
        deadline=settings.deadline,
        backoff=settings.backoff,
        cache=cache if (cache is not None and deterministic) else False,
    )
