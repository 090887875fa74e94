"""LangChain (LCEL) pipelines, importable and testable with no server and no BentoML.

The pipelines (natural-language SQL, retrieval QA, translate) arrive with the chains milestone;
they reach the model services through the same OpenAI-compatible protocol the gateway serves.
"""
