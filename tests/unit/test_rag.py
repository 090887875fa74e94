"""Retrieval with the real all-MiniLM-L6-v2: the right document comes back, the store persists,
and a sync re-embeds only what changed."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel

from bentochain.config.loader import PROJECT_ROOT
from bentochain.engines.encoder import EncodedText, SentenceEncoder
from bentochain.llms.embeddings import BentoEmbeddings
from bentochain.rag.ingest import FolderIndex, SyncReport, markdown_splitter
from bentochain.rag.store import SQLiteVectorStore
from chains.rag import NO_SOURCES, build_rag_chain

DOCS = PROJECT_ROOT / "data" / "docs"


class CountingEncoder:
    """The encoder as the Embedder service answers, counting the texts it is sent."""

    def __init__(self, encoder: SentenceEncoder) -> None:
        self.encoder = encoder
        self.texts = 0

    async def __call__(self, texts: list[str]) -> list[EncodedText]:
        self.texts += len(texts)
        result = await asyncio.to_thread(self.encoder.encode, texts)
        return EncodedText.batch(result)


@pytest.fixture(scope="module")
def encoder(embedder_dir: Path) -> SentenceEncoder:
    return SentenceEncoder(embedder_dir)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    target = tmp_path / "docs"
    shutil.copytree(DOCS, target)
    return target


@pytest.fixture
def index(
    folder: Path, tmp_path: Path, encoder: SentenceEncoder
) -> Iterator[tuple[FolderIndex, CountingEncoder]]:
    counting = CountingEncoder(encoder)
    store = SQLiteVectorStore(
        tmp_path / "vectors.sqlite", BentoEmbeddings(counting), embedding_id="minilm"
    )
    yield FolderIndex(folder, store, markdown_splitter(400, 50)), counting
    store.close()


@pytest.mark.parametrize(
    ("question", "document"),
    [
        ("How many days do I have to send a product back?", "returns.md"),
        ("Which credit cards can I pay with?", "payments.md"),
        ("When does the shop in Lyon close on Thursdays?", "store-hours.md"),
        ("How long does delivery to Germany take?", "shipping.md"),
        ("Is a broken knife covered?", "warranty.md"),
        ("How do I get Gold status?", "loyalty.md"),
    ],
)
def test_the_right_document_is_retrieved(
    index: tuple[FolderIndex, CountingEncoder], question: str, document: str
) -> None:
    folder_index, _ = index

    async def go() -> list[str]:
        await folder_index.ensure_synced()
        found = await folder_index.store.asimilarity_search_with_score(question, k=3)
        return [doc.metadata["source"] for doc, _ in found]

    assert asyncio.run(go())[0] == document


def test_sync_re_embeds_only_what_changed_and_the_store_persists(
    index: tuple[FolderIndex, CountingEncoder], folder: Path, tmp_path: Path
) -> None:
    folder_index, counting = index

    async def sync() -> SyncReport | None:
        return await folder_index.ensure_synced()

    first = asyncio.run(sync())
    assert first is not None
    assert sorted(first.added) == sorted(p.name for p in DOCS.glob("*.md"))
    embedded = counting.texts
    assert embedded == len(folder_index.store) > len(first.added)

    assert asyncio.run(sync()) is None  # nothing moved: no hashing, no embedding
    (folder / "warranty.md").write_text("# Warranty\n\nEverything is covered for ten years.\n")
    (folder / "payments.md").unlink()
    report = asyncio.run(sync())
    assert report is not None
    assert report.updated == ["warranty.md"] and report.removed == ["payments.md"]
    assert counting.texts == embedded + 1  # the one new chunk

    # Reopened (a restart): the vectors are on disk, nothing is embedded again.
    again = CountingEncoder(counting.encoder)
    store = SQLiteVectorStore(
        tmp_path / "vectors.sqlite", BentoEmbeddings(again), embedding_id="minilm"
    )
    fresh = FolderIndex(folder, store, markdown_splitter(400, 50))
    report = asyncio.run(fresh.ensure_synced())
    assert report is not None and not (report.added or report.updated or report.removed)
    assert again.texts == 0
    found = asyncio.run(store.asimilarity_search_with_score("ten years of cover", k=1))
    assert found[0][0].page_content.endswith("Everything is covered for ten years.")
    store.close()


def test_another_embedding_model_starts_the_store_over(
    index: tuple[FolderIndex, CountingEncoder], tmp_path: Path
) -> None:
    folder_index, counting = index
    asyncio.run(folder_index.ensure_synced())
    assert len(folder_index.store) > 0
    other = SQLiteVectorStore(
        tmp_path / "vectors.sqlite", BentoEmbeddings(counting), embedding_id="another-model"
    )
    assert len(other) == 0 and other.digests() == {}
    other.close()


def test_the_answer_cites_what_was_retrieved(
    index: tuple[FolderIndex, CountingEncoder], tmp_path: Path
) -> None:
    folder_index, _ = index
    asyncio.run(folder_index.ensure_synced())
    llm = FakeListChatModel(responses=["Within 30 days [1]."])
    chain = build_rag_chain(llm, folder_index.store, top_k=2)
    out = asyncio.run(chain.ainvoke({"question": "What is the return window?"}))
    assert out.answer == "Within 30 days [1]."
    assert [s.id for s in out.sources] == [1, 2]
    assert out.sources[0].source == "returns.md" and "30 days" in out.sources[0].text
    assert out.sources[0].score >= out.sources[1].score

    # A model that cites nothing (or a source it was not given): the sources are listed after.
    for reply in ("Within 30 days.", "Within 30 days [7]."):
        uncited = build_rag_chain(FakeListChatModel(responses=[reply]), folder_index.store, top_k=2)
        got = asyncio.run(uncited.ainvoke({"question": "What is the return window?"}))
        first, second = got.sources
        assert got.answer == (
            f"{reply}\n\nSources: [1] {first.title} ({first.source}); "
            f"[2] {second.title} ({second.source})"
        )

    empty = SQLiteVectorStore(
        tmp_path / "empty.sqlite", folder_index.store.embeddings, embedding_id="minilm"
    )
    none = asyncio.run(build_rag_chain(llm, empty).ainvoke({"question": "anything?"}))
    assert none.answer == NO_SOURCES and none.sources == []
    empty.close()
