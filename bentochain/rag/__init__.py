"""Retrieval for the ``rag`` chain: an on-disk vector store and the folder that fills it."""
