"""The Gateway: the entry service, speaking OpenAI's API in front of the model services."""

from __future__ import annotations

from collections.abc import AsyncIterator

import bentoml

from bentochain.api.app import create_app
from bentochain.api.backends import EncodedText, TargetLang
from bentochain.engines.llm.types import GenerationRequest
from bentochain.serving.options import service_options
from bentochain.serving.readiness import dependencies_ready
from bentochain.serving.startup import profile
from bentochain.serving.streams import stream_call
from services.embedder import Embedder
from services.llm import LLM
from services.translator import TranslatorES, TranslatorFR

SETTINGS = profile()
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

    async def __is_ready__(self) -> bool:
        return await dependencies_ready(
            (self.llm, self.embedder, self.translator_fr, self.translator_es)
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
