"""LangChain (LCEL) pipelines, importable and testable with no server and no BentoML.

``sql`` (natural-language questions over a database), ``rag`` (retrieval QA with sources) and
``translate`` (an English answer translated). Each takes its chat model and stores as values,
so the same pipeline runs over our LLM service, OpenAI, Anthropic or a scripted fake model.
``catalog`` names them for the gateway.
"""
