"""The chains the gateway serves: their names, input and output models, and named steps."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from chains.rag import RAGAnswer, RAGQuestion
from chains.sql import SQLAnswer, SQLQuestion
from chains.translate import TranslatedAnswer, TranslateQuestion


@dataclass(frozen=True)
class ChainSpec:
    name: str
    description: str
    input_model: type[BaseModel]
    output_model: type[BaseModel]
    steps: frozenset[str]  # runnables whose ends the stream reports, traced and timed


CHAINS: dict[str, ChainSpec] = {
    spec.name: spec
    for spec in (
        ChainSpec(
            "sql",
            "Answers a question from the SQL database: writes, checks and runs a read-only query.",
            SQLQuestion,
            SQLAnswer,
            frozenset({"schema", "attempt", "generate", "validate", "execute", "answer"}),
        ),
        ChainSpec(
            "rag",
            "Answers a question from the document folder, citing the chunks it used.",
            RAGQuestion,
            RAGAnswer,
            frozenset({"sync", "retrieve", "answer"}),
        ),
        ChainSpec(
            "translate",
            "Answers in English, then translates the answer to French or Spanish.",
            TranslateQuestion,
            TranslatedAnswer,
            frozenset({"answer", "translate"}),
        ),
    )
}
