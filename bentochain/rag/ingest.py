"""Keep a vector store in step with a folder of text and markdown documents.

A document is re-chunked and re-embedded only when its bytes changed (SHA-256), and removed
when its file is gone, so a sync after an edit costs one document, not the folder. The folder's
listing (names, sizes, mtimes) is checked before each question; hashing happens only when it
moved.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

from langchain_core.documents import Document
from langchain_text_splitters import Language, RecursiveCharacterTextSplitter

from bentochain.rag.store import SQLiteVectorStore

logger = logging.getLogger(__name__)

SUFFIXES = frozenset({".md", ".markdown", ".txt"})


@dataclass
class SyncReport:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    chunks: int = 0  # chunks written by this sync


def document_files(folder: Path) -> dict[str, Path]:
    """The folder's documents by their path relative to it (what answers cite)."""
    if not folder.is_dir():
        return {}
    return {
        path.relative_to(folder).as_posix(): path
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.suffix.lower() in SUFFIXES and not path.name.startswith(".")
    }


def _title(text: str, source: str) -> str:
    for line in text.splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return source


def chunk_document(
    source: str, text: str, splitter: RecursiveCharacterTextSplitter
) -> list[Document]:
    title = _title(text, source)
    return [
        Document(page_content=piece, metadata={"source": source, "chunk": i, "title": title})
        for i, piece in enumerate(splitter.split_text(text))
    ]


def markdown_splitter(chunk_size: int, chunk_overlap: int) -> RecursiveCharacterTextSplitter:
    """Split at headings first, then paragraphs, then sentences: chunks stay on one topic."""
    return RecursiveCharacterTextSplitter.from_language(
        Language.MARKDOWN, chunk_size=chunk_size, chunk_overlap=chunk_overlap
    )


async def sync_folder(
    folder: Path, store: SQLiteVectorStore, splitter: RecursiveCharacterTextSplitter
) -> SyncReport:
    report = SyncReport()
    stored = store.digests()
    files = document_files(folder)
    for source, path in files.items():
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if stored.get(source) == digest:
            report.unchanged.append(source)
            continue
        chunks = chunk_document(source, data.decode("utf-8", errors="replace"), splitter)
        await store.areplace(source, digest, chunks)
        report.chunks += len(chunks)
        (report.updated if source in stored else report.added).append(source)
    for source in stored.keys() - files.keys():
        store.remove(source)
        report.removed.append(source)
    return report


class FolderIndex:
    """A folder and its vector store, synced lazily: before a search, if the folder moved."""

    def __init__(
        self, folder: Path, store: SQLiteVectorStore, splitter: RecursiveCharacterTextSplitter
    ) -> None:
        self.folder = folder
        self.store = store
        self.splitter = splitter
        self._lock = asyncio.Lock()
        self._seen: tuple[tuple[str, int, int], ...] | None = None

    def _listing(self) -> tuple[tuple[str, int, int], ...]:
        listing = []
        for source, path in document_files(self.folder).items():
            stat = path.stat()
            listing.append((source, stat.st_size, stat.st_mtime_ns))
        return tuple(listing)

    async def ensure_synced(self) -> SyncReport | None:
        """Sync if the folder changed since the last sync; the report, or None when it had not."""
        async with self._lock:
            listing = self._listing()
            if listing == self._seen:
                return None
            report = await sync_folder(self.folder, self.store, self.splitter)
            self._seen = listing
            if report.added or report.updated or report.removed:
                logger.info(
                    "documents synced from %s: %d added, %d updated, %d removed, %d chunks",
                    self.folder,
                    len(report.added),
                    len(report.updated),
                    len(report.removed),
                    report.chunks,
                )
            return report
