"""Where the SQL chain's database is: ``demo:shop`` (built by ``prepare``) or a SQLAlchemy URL."""

from __future__ import annotations

from pathlib import Path

from bentochain.config.loader import project_path
from bentochain.config.schema import Chains

DEMO = "demo:shop"


def state_dir(chains: Chains) -> Path:
    """Chain state (demo database, vector store, LLM cache); relative paths are the project's."""
    return project_path(chains.state_dir)


def demo_database(chains: Chains) -> Path:
    return state_dir(chains) / "shop.sqlite"


def database_url(chains: Chains) -> str:
    if chains.sql.database == DEMO:
        return f"sqlite:///{demo_database(chains)}"
    return chains.sql.database
