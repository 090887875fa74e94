"""The RAGChain service: questions answered from a document folder, with sources."""

from __future__ import annotations

import bentoml

from bentochain.config.loader import project_path
from bentochain.engines.encoder import EncodedText
from bentochain.observability.metrics import PrometheusStepMetrics
from bentochain.serving.caller import Caller
from bentochain.serving.chains import ChainRunner, ChainService, chain_llm
from bentochain.serving.options import install_middleware, service_options
from bentochain.serving.startup import chain_llm_settings, dependencies, existing_dir, profile
from chains.catalog import CHAINS
from services.embedder import Embedder
from services.llm import LLM

SETTINGS = profile()
CHAIN = SETTINGS.chains.rag
LLM_SETTINGS = chain_llm_settings(CHAIN.llm, "chains.rag.llm")
DOCUMENTS = existing_dir(project_path(CHAIN.documents), "chains.rag.documents")


@bentoml.service(**service_options(SETTINGS, "RAGChain"), runner_probe={"enabled": False})
class RAGChain(ChainService, Caller):
    # Started and packed by BentoML; called through self.calls.
    llm = bentoml.depends(LLM)
    embedder = bentoml.depends(Embedder)

    def __init__(self) -> None:
        from bentochain.llms.embeddings import BentoEmbeddings
        from bentochain.rag.ingest import FolderIndex, markdown_splitter
        from bentochain.rag.store import SQLiteVectorStore
        from bentochain.sql.source import state_dir
        from chains.rag import build_rag_chain

        self.calls = dependencies(SETTINGS, (LLM, Embedder))
        embedder = SETTINGS.embedder
        store = SQLiteVectorStore(
            state_dir(SETTINGS.chains) / "vectors.sqlite",
            BentoEmbeddings(self.encode),
            embedding_id=f"{embedder.model}|{embedder.max_seq_length}",
        )
        self.index = FolderIndex(
            DOCUMENTS,
            store,
            markdown_splitter(CHAIN.chunk_size, CHAIN.chunk_overlap),
        )
        model = chain_llm(SETTINGS, "rag", LLM_SETTINGS, self.calls["LLM"])
        chain = build_rag_chain(model, store, top_k=CHAIN.top_k, sync=self.index.ensure_synced)
        self.runner = ChainRunner(
            "rag", chain, CHAINS["rag"].steps, metrics=PrometheusStepMetrics()
        )

    async def encode(self, texts: list[str]) -> list[EncodedText]:
        return await self.calls["Embedder"].call("encode", texts=texts)  # type: ignore[no-any-return]


install_middleware(RAGChain, SETTINGS)
