"""A persistent vector store in one SQLite file, searched exactly with numpy.

Why not Chroma or FAISS: a chain's document folder holds thousands of chunks, not millions; an
exact cosine search over them is one matrix product (milliseconds), and one SQLite file needs no
server, survives restarts, and is shared safely by every worker of the service. Vectors are
re-read only when another writer bumped the store's generation.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents (source TEXT PRIMARY KEY, digest TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL,
    text TEXT NOT NULL,
    metadata TEXT NOT NULL,
    vector BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_source ON chunks (source);
"""


class SQLiteVectorStore(VectorStore):
    """Chunks, their metadata and unit vectors; ``embedding_id`` names the model that made them
    (vectors of another model are dropped at open, since they are not comparable)."""

    def __init__(self, path: Path, embedding: Embeddings, *, embedding_id: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._embedding = embedding
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, timeout=30)
        self._loaded: tuple[int, np.ndarray, np.ndarray] | None = None  # generation, ids, vectors
        with self._lock, self._db:
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.executescript(SCHEMA)
            row = self._db.execute("SELECT value FROM meta WHERE key = 'embedding'").fetchone()
            if row is None or row[0] != embedding_id:
                self._db.execute("DELETE FROM chunks")
                self._db.execute("DELETE FROM documents")
                self._db.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('embedding', ?)", (embedding_id,)
                )
                self._bump()

    @property
    def embeddings(self) -> Embeddings:
        return self._embedding

    # -- writing ------------------------------------------------------------------------------

    def _bump(self) -> None:
        self._db.execute(
            "INSERT INTO meta VALUES ('generation', '1') ON CONFLICT(key) "
            "DO UPDATE SET value = CAST(value AS INTEGER) + 1"
        )

    def _insert(
        self, documents: Sequence[Document], vectors: Sequence[Sequence[float]]
    ) -> list[str]:
        ids = []
        for doc, vector in zip(documents, vectors, strict=True):
            unit = np.asarray(vector, dtype="<f4")
            unit = unit / max(float(np.linalg.norm(unit)), 1e-12)
            cursor = self._db.execute(
                "INSERT INTO chunks (source, text, metadata, vector) VALUES (?, ?, ?, ?)",
                (
                    str(doc.metadata.get("source", "")),
                    doc.page_content,
                    json.dumps(doc.metadata),
                    unit.tobytes(),
                ),
            )
            ids.append(str(cursor.lastrowid))
        return ids

    def digests(self) -> dict[str, str]:
        """Each stored document's source and the digest of the text its chunks came from."""
        with self._lock:
            return dict(self._db.execute("SELECT source, digest FROM documents").fetchall())

    async def areplace(self, source: str, digest: str, documents: Sequence[Document]) -> None:
        """Swap ``source``'s chunks for ``documents`` in one transaction (embedded first, so a
        failed embedding leaves the old chunks searchable)."""
        vectors = await self._embedding.aembed_documents([d.page_content for d in documents])
        with self._lock, self._db:
            self._db.execute("DELETE FROM chunks WHERE source = ?", (source,))
            self._db.execute("INSERT OR REPLACE INTO documents VALUES (?, ?)", (source, digest))
            self._insert(documents, vectors)
            self._bump()

    def remove(self, source: str) -> None:
        with self._lock, self._db:
            self._db.execute("DELETE FROM chunks WHERE source = ?", (source,))
            self._db.execute("DELETE FROM documents WHERE source = ?", (source,))
            self._bump()

    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        if ids is not None:
            raise ValueError("SQLiteVectorStore assigns its own ids")
        texts = list(texts)
        documents = [
            Document(page_content=t, metadata=(metadatas[i] if metadatas else {}))
            for i, t in enumerate(texts)
        ]
        vectors = self._embedding.embed_documents(texts)
        with self._lock, self._db:
            new_ids = self._insert(documents, vectors)
            self._bump()
        return new_ids

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        with self._lock, self._db:
            if ids is None:
                self._db.execute("DELETE FROM chunks")
                self._db.execute("DELETE FROM documents")
            else:
                self._db.executemany("DELETE FROM chunks WHERE id = ?", [(int(i),) for i in ids])
            self._bump()
        return True

    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings,
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> SQLiteVectorStore:
        store = cls(Path(kwargs["path"]), embedding, embedding_id=kwargs.get("embedding_id", ""))
        store.add_texts(texts, metadatas, ids=ids)
        return store

    # -- searching ----------------------------------------------------------------------------

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0])

    def _vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """Every chunk's id and unit vector, re-read only after a write (by any process)."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        generation = int(row[0]) if row else 0
        if self._loaded is None or self._loaded[0] != generation:
            rows = self._db.execute("SELECT id, vector FROM chunks ORDER BY id").fetchall()
            ids = np.array([r[0] for r in rows], dtype=np.int64)
            matrix = (
                np.stack([np.frombuffer(r[1], dtype="<f4") for r in rows])
                if rows
                else np.zeros((0, 0), dtype="<f4")
            )
            self._loaded = (generation, ids, matrix)
        return self._loaded[1], self._loaded[2]

    def _search(self, query: Sequence[float], k: int) -> list[tuple[Document, float]]:
        q = np.asarray(query, dtype="<f4")
        q = q / max(float(np.linalg.norm(q)), 1e-12)
        with self._lock:
            ids, matrix = self._vectors()
            if not len(ids):
                return []
            scores = matrix @ q
            top = np.argsort(-scores, kind="stable")[:k]
            found = []
            for i in top:
                text, metadata = self._db.execute(
                    "SELECT text, metadata FROM chunks WHERE id = ?", (int(ids[i]),)
                ).fetchone()
                doc = Document(id=str(ids[i]), page_content=text, metadata=json.loads(metadata))
                found.append((doc, float(scores[i])))
        return found

    def similarity_search_with_score(
        self, query: str, k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        return self._search(self._embedding.embed_query(query), k)

    async def asimilarity_search_with_score(
        self, query: str, k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        return self._search(await self._embedding.aembed_query(query), k)

    def similarity_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        return [doc for doc, _ in self.similarity_search_with_score(query, k)]

    async def asimilarity_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        return [doc for doc, _ in await self.asimilarity_search_with_score(query, k)]

    def close(self) -> None:
        with self._lock:
            self._db.close()
