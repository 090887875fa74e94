"""Questions answered from a document store, with the sources cited.

question → bring the store up to date with its documents (``sync`` step, when a ``sync`` is
given) → retrieve the top-k chunks (``retrieve`` step) → prompt with numbered sources → LLM
(``answer`` step) → the answer and the sources it was given. The store is any LangChain
``VectorStore``; retrieval is always real even when the LLM is a demo model, so ``sources``
shows what the answer was built from.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from langchain_core.documents import Document
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda
from langchain_core.vectorstores import VectorStore
from opentelemetry import trace
from pydantic import BaseModel, Field

NO_SOURCES = "There are no documents to answer from."

SYSTEM = """Answer the question from the numbered sources below only. Cite the sources you \
use like [1]. If they do not hold the answer, say that you do not know.

{sources}"""


def cite(answer: str, sources: list[Source]) -> str:
    """The answer with its sources cited: as the model cited them, or listed after it.

    Small models often ignore the instruction to cite; a reader must still see where the
    answer was meant to come from, so an answer citing none of its sources gets them appended.
    """
    given = {s.id for s in sources}
    if given & {int(n) for n in re.findall(r"\[(\d+)\]", answer)}:
        return answer
    listed = "; ".join(f"[{s.id}] {s.title or s.source} ({s.source})" for s in sources)
    return f"{answer}\n\nSources: {listed}"


class RAGQuestion(BaseModel):
    question: str = Field(min_length=1, max_length=2000, description="a question about the docs")


class Source(BaseModel):
    id: int = Field(description="the number the answer cites it by, [id]")
    source: str = Field(description="the document's path in the folder")
    title: str
    chunk: int = Field(description="the chunk's position in its document")
    score: float = Field(description="cosine similarity to the question")
    text: str


class RAGAnswer(BaseModel):
    question: str
    answer: str
    sources: list[Source]


def _sources(found: list[tuple[Document, float]]) -> list[Source]:
    return [
        Source(
            id=i,
            source=str(doc.metadata.get("source", "")),
            title=str(doc.metadata.get("title", "")),
            chunk=int(doc.metadata.get("chunk", 0)),
            score=round(score, 4),
            text=doc.page_content,
        )
        for i, (doc, score) in enumerate(found, start=1)
    ]


def build_rag_chain(
    llm: BaseChatModel,
    store: VectorStore,
    *,
    top_k: int = 4,
    sync: Callable[[], Awaitable[Any]] | None = None,
) -> Runnable[Any, RAGAnswer]:
    """The retrieval QA pipeline over ``store``; input ``{"question": ...}``. ``sync``, when
    given, runs first in each run (the store catching up with its document folder)."""

    async def search(question: str) -> list[Source]:
        found = _sources(await store.asimilarity_search_with_score(question, k=top_k))
        span = trace.get_current_span()  # the step's, when the run is traced
        span.set_attribute("bentochain.rag.source_ids", [f"{s.source}#{s.chunk}" for s in found])
        span.set_attribute("bentochain.rag.scores", [s.score for s in found])
        return found

    async def bring_up_to_date(_: Any) -> Any:
        return await sync() if sync is not None else None

    sync_step = RunnableLambda(bring_up_to_date, name="sync")
    retrieve = RunnableLambda(search, name="retrieve")
    answer_step = (llm | StrOutputParser()).with_config(run_name="answer")

    async def pipeline(raw: Any, config: RunnableConfig) -> RAGAnswer:
        question = RAGQuestion.model_validate(raw).question
        if sync is not None:
            await sync_step.ainvoke(None, config)
        sources = await retrieve.ainvoke(question, config)
        if not sources:
            return RAGAnswer(question=question, answer=NO_SOURCES, sources=[])
        context = "\n\n".join(f"[{s.id}] ({s.source}) {s.text}" for s in sources)
        messages = [SystemMessage(SYSTEM.format(sources=context)), HumanMessage(question)]
        answer = await answer_step.ainvoke(messages, config)
        return RAGAnswer(question=question, answer=cite(answer.strip(), sources), sources=sources)

    return RunnableLambda(pipeline, name="rag").with_types(
        input_type=RAGQuestion, output_type=RAGAnswer
    )
