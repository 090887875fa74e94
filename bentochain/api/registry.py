"""Which model ids the gateway serves, what each one does, and which service runs it."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

from bentochain.api.errors import APIError
from bentochain.api.schemas import ModelCard, ModelList
from bentochain.config.schema import ModelServiceSettings, Settings

Task = Literal["chat", "embedding", "translation"]
Backend = Literal["llm", "embedder", "translator_fr", "translator_es"]

_TASK_ENDPOINTS = {
    "chat": "/v1/chat/completions and /v1/completions",
    "embedding": "/v1/embeddings",
    "translation": "/translate",
}


@dataclass(frozen=True)
class ServedModel:
    id: str
    task: Task
    backend: Backend
    reference: str
    demo: bool

    def card(self, created: int) -> ModelCard:
        if self.demo:
            description = (
                f"{self.reference}: demo model with random weights built from a fixed seed; "
                "every code path is real, the output text is meaningless"
            )
        else:
            description = f"{self.reference}: real weights"
        return ModelCard(
            id=self.id,
            created=created,
            owned_by="bentochain",
            task=self.task,
            demo=self.demo,
            description=description,
        )


class ModelRegistry:
    def __init__(self, settings: Settings) -> None:
        entries: list[tuple[ModelServiceSettings, Task, Backend]] = [
            (settings.llm, "chat", "llm"),
            (settings.embedder, "embedding", "embedder"),
            (settings.translators.fr, "translation", "translator_fr"),
            (settings.translators.es, "translation", "translator_es"),
        ]
        self._models = {
            entry.served_id: ServedModel(
                id=entry.served_id,
                task=task,
                backend=backend,
                reference=str(entry.model),
                demo=entry.model.is_demo,
            )
            for entry, task, backend in entries
        }
        self._created = int(time.time())

    def list(self) -> ModelList:
        return ModelList(data=[m.card(self._created) for m in self._models.values()])

    def get(self, model_id: str) -> ServedModel:
        try:
            return self._models[model_id]
        except KeyError:
            known = ", ".join(sorted(self._models))
            raise APIError(
                404,
                f"The model '{model_id}' does not exist. Served models: {known}.",
                code="model_not_found",
                param="model",
            ) from None

    def for_task(self, model_id: str, task: Task) -> ServedModel:
        """The model ``model_id``, which must serve ``task``."""
        model = self.get(model_id)
        if model.task != task:
            served = [m.id for m in self._models.values() if m.task == task]
            raise APIError(
                404,
                f"'{model_id}' serves {model.task}, at {_TASK_ENDPOINTS[model.task]}; "
                f"models for {task} here: {', '.join(served)}.",
                code="model_not_found",
                param="model",
            )
        return model

    def translator(self, target_lang: str) -> ServedModel:
        return self._models_by_backend()[f"translator_{target_lang}"]

    def _models_by_backend(self) -> dict[str, ServedModel]:
        return {m.backend: m for m in self._models.values()}
