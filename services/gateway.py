"""The Gateway: the entry service, OpenAI's API and /chains in front of the other services."""

from __future__ import annotations

from collections.abc import AsyncIterator

import bentoml

from bentochain.api.app import create_app
from bentochain.api.backends import TargetLang
from bentochain.api.openapi import DocsJson
from bentochain.engines.encoder import EncodedText
from bentochain.engines.llm.types import GenerationRequest
from bentochain.observability.metrics import PrometheusStepMetrics
from bentochain.serving.caller import Caller
from bentochain.serving.chains import ChainEndpoint, ChainRunner, RemoteChain, chain_llm
from bentochain.serving.metrics_port import MetricsElsewhere
from bentochain.serving.options import install_middleware, service_options
from bentochain.serving.shutdown import stop_callers_first
from bentochain.serving.startup import (
    chain_llm_settings,
    dependencies,
    key_access,
    profile,
    quality_recorder,
)
from chains.catalog import CHAINS
from services.embedder import Embedder
from services.llm import LLM
from services.rag_chain import RAGChain
from services.sql_chain import SQLChain
from services.translator import TranslatorES, TranslatorFR

SETTINGS = profile()
TRANSLATE_LLM = chain_llm_settings(SETTINGS.chains.translate, "chains.translate")
RECORDS = quality_recorder(SETTINGS)
app = create_app(
    SETTINGS, backends=bentoml.get_current_service, recorder=RECORDS, access=key_access(SETTINGS)
)


@bentoml.service(
    **service_options(SETTINGS, "Gateway", enforce_concurrency=False),
    runner_probe={"enabled": False},  # replaced by __is_ready__, see bentochain.serving.readiness
)
@bentoml.asgi_app(app, path="/")
class Gateway(Caller):
    needs = "any"  # ready while some route can serve; a down service's routes fail fast
    # What `bentoml serve` starts beside the Gateway and `bentoml build` packs; calls go
    # through the upstream layer (self.calls), which balances over each one's replicas.
    llm = bentoml.depends(LLM)
    embedder = bentoml.depends(Embedder)
    translator_fr = bentoml.depends(TranslatorFR)
    translator_es = bentoml.depends(TranslatorES)
    sql_chain = bentoml.depends(SQLChain)
    rag_chain = bentoml.depends(RAGChain)

    def __init__(self) -> None:
        from chains.translate import build_translate_chain

        self.calls = dependencies(
            SETTINGS, (LLM, Embedder, TranslatorFR, TranslatorES, SQLChain, RAGChain)
        )
        # The translate chain is two calls to services the gateway already holds: it runs here.
        model = chain_llm(SETTINGS, "translate", TRANSLATE_LLM, self.calls["LLM"])
        translate = build_translate_chain(model, self.translate)
        chains = SETTINGS.chains
        self.chains: dict[str, ChainEndpoint] = {
            "sql": RemoteChain(self.calls["SQLChain"], idle_timeout=chains.sql.traffic.timeout),
            "rag": RemoteChain(self.calls["RAGChain"], idle_timeout=chains.rag.traffic.timeout),
            "translate": ChainRunner(
                "translate", translate, CHAINS["translate"].steps, metrics=PrometheusStepMetrics()
            ),
        }

    def generate(self, request: GenerationRequest) -> AsyncIterator[str]:
        return self.calls["LLM"].stream(
            "generate", idle_timeout=SETTINGS.llm.traffic.timeout, request=request
        )

    async def embed(self, texts: list[str]) -> list[EncodedText]:
        return await self.calls["Embedder"].call("encode", texts=texts)  # type: ignore[no-any-return]

    async def translate(self, target_lang: TargetLang, texts: list[str]) -> list[str]:
        name = "TranslatorFR" if target_lang == "fr" else "TranslatorES"
        return await self.calls[name].call("translate", texts=texts)  # type: ignore[no-any-return]

    def chain(self, name: str) -> ChainEndpoint:
        return self.chains[name]

    @bentoml.on_shutdown
    def close_records(self) -> None:
        if RECORDS is not None:
            RECORDS.close()  # what is queued is written


# One OpenAPI document: the app's, served at /docs.json too, in place of BentoML's.
install_middleware(Gateway, SETTINGS).add_asgi_middleware(DocsJson, document=app.openapi)
if SETTINGS.gateway.metrics_port is not None:
    Gateway.add_asgi_middleware(MetricsElsewhere, port=SETTINGS.gateway.metrics_port)  # type: ignore[attr-defined]
stop_callers_first(Gateway)
