"""An answer in English, translated: the LLM and a translator service composed in one chain.

question → LLM answers in English (``answer`` step) → TranslatorFR or TranslatorES
(``translate`` step). Both texts are in the output, so a reader can check the translation.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda
from pydantic import BaseModel, Field

Language = Literal["fr", "es"]
Translate = Callable[[Language, list[str]], Awaitable[list[str]]]

SYSTEM = "Answer the user's question in English, in at most three sentences."


class TranslateQuestion(BaseModel):
    question: str = Field(min_length=1, max_length=2000)
    target_lang: Language = Field(description="the answer's language: 'fr' or 'es'")


class TranslatedAnswer(BaseModel):
    question: str
    target_lang: Language
    english: str = Field(description="the LLM's answer, before translation")
    answer: str = Field(description="the answer in target_lang")


def build_translate_chain(
    llm: BaseChatModel, translate: Translate
) -> Runnable[Any, TranslatedAnswer]:
    """``translate(lang, texts)`` is the translator service for ``lang``."""
    answer_step = (llm | StrOutputParser()).with_config(run_name="answer")

    async def to_target(item: dict[str, Any]) -> str:
        return (await translate(item["lang"], [item["text"]]))[0]

    translate_step = RunnableLambda(to_target, name="translate")

    async def pipeline(raw: Any, config: RunnableConfig) -> TranslatedAnswer:
        request = TranslateQuestion.model_validate(raw)
        messages = [SystemMessage(SYSTEM), HumanMessage(request.question)]
        english = (await answer_step.ainvoke(messages, config)).strip()
        translated = await translate_step.ainvoke(
            {"lang": request.target_lang, "text": english}, config
        )
        return TranslatedAnswer(
            question=request.question,
            target_lang=request.target_lang,
            english=english,
            answer=translated,
        )

    return RunnableLambda(pipeline, name="translate").with_types(
        input_type=TranslateQuestion, output_type=TranslatedAnswer
    )
