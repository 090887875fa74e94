"""The Gateway: the entry service, OpenAI's API and /chains in front of the other services."""

from __future__ import annotations

from collections.abc import AsyncIterator

import bentoml

from bentochain.api.app import create_app
from bentochain.api.backends import EncodedText, TargetLang
from bentochain.engines.llm.types import GenerationRequest
from bentochain.serving.chains import ChainEndpoint, ChainRunner, RemoteChain, chain_llm
from bentochain.serving.options import service_options
from bentochain.serving.readiness import dependencies_ready
from bentochain.serving.startup import chain_llm_settings, profile
from bentochain.serving.streams import stream_call
from chains.catalog import CHAINS
from services.embedder import Embedder
from services.llm import LLM
from services.rag_chain import RAGChain
from services.sql_chain import SQLChain
from services.translator import TranslatorES, TranslatorFR

SETTINGS = profile()
TRANSLATE_LLM = chain_llm_settings(SETTINGS.chains.translate, "chains.translate")
app = create_app(SETTINGS, backends=bentoml.get_current_service)


@bentoml.service(
    **service_options("Gateway", SETTINGS.gateway, enforce_concurrency=False),
    runner_probe={"enabled": False},  # replaced by __is_ready__, see bentochain.serving.readiness
)
@bentoml.asgi_app(app, path="/")
class Gateway:
    llm = bentoml.depends(LLM)
    embedder = bentoml.depends(Embedder)
    translator_fr = bentoml.depends(TranslatorFR)
    translator_es = bentoml.depends(TranslatorES)
    sql_chain = bentoml.depends(SQLChain)
    rag_chain = bentoml.depends(RAGChain)

    def __init__(self) -> None:
        from chains.translate import build_translate_chain

        # The translate chain is two calls to services the gateway already holds: it runs here.
        model = chain_llm(SETTINGS, "translate", TRANSLATE_LLM, self.llm)
        translate = build_translate_chain(model, self.translate)
        chains = SETTINGS.chains
        self.chains: dict[str, ChainEndpoint] = {
            "sql": RemoteChain(self.sql_chain, idle_timeout=chains.sql.traffic.timeout),
            "rag": RemoteChain(self.rag_chain, idle_timeout=chains.rag.traffic.timeout),
            "translate": ChainRunner("translate", translate, CHAINS["translate"].steps),
        }

    async def __is_ready__(self) -> bool:
        return await dependencies_ready(
            (
                self.llm,
                self.embedder,
                self.translator_fr,
                self.translator_es,
                self.sql_chain,
                self.rag_chain,
            )
        )

    def generate(self, request: GenerationRequest) -> AsyncIterator[str]:
        return stream_call(
            self.llm, "generate", idle_timeout=SETTINGS.llm.traffic.timeout, request=request
        )

    async def embed(self, texts: list[str]) -> list[EncodedText]:
        return await self.embedder.to_async.encode(texts)  # type: ignore[no-any-return]

    async def translate(self, target_lang: TargetLang, texts: list[str]) -> list[str]:
        translator = self.translator_fr if target_lang == "fr" else self.translator_es
        return await translator.to_async.translate(texts)  # type: ignore[no-any-return]

    def chain(self, name: str) -> ChainEndpoint:
        return self.chains[name]
