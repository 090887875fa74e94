"""The SQLChain service: natural-language questions answered from a read-only database."""

from __future__ import annotations

import bentoml

from bentochain.observability.metrics import PrometheusStepMetrics
from bentochain.serving.caller import Caller
from bentochain.serving.chains import ChainRunner, ChainService, chain_llm
from bentochain.serving.options import install_middleware, service_options
from bentochain.serving.startup import chain_llm_settings, dependencies, profile
from chains.catalog import CHAINS
from services.llm import LLM

SETTINGS = profile()
CHAIN = SETTINGS.chains.sql
LLM_SETTINGS = chain_llm_settings(CHAIN.llm, "chains.sql.llm")


@bentoml.service(**service_options(SETTINGS, "SQLChain"), runner_probe={"enabled": False})
class SQLChain(ChainService, Caller):
    llm = bentoml.depends(LLM)  # started and packed by BentoML; called through self.calls

    def __init__(self) -> None:
        from bentochain.sql.database import ReadOnlyDatabase
        from bentochain.sql.demo import build_shop
        from bentochain.sql.source import DEMO, database_url, demo_database
        from chains.sql import build_sql_chain

        if CHAIN.database == DEMO:
            # A fresh container has no state yet: the same seed gives the same rows `prepare`
            # wrote (and an existing current file is left alone).
            build_shop(demo_database(SETTINGS.chains))

        self.db = ReadOnlyDatabase(
            database_url(SETTINGS.chains),
            statement_timeout=CHAIN.statement_timeout,
            max_rows=CHAIN.max_rows,
            sample_rows=CHAIN.sample_rows,
        )
        self.calls = dependencies(SETTINGS, (LLM,))
        model = chain_llm(SETTINGS, "sql", LLM_SETTINGS, self.calls["LLM"])
        chain = build_sql_chain(model, self.db, max_repairs=CHAIN.max_repairs)
        self.runner = ChainRunner(
            "sql", chain, CHAINS["sql"].steps, metrics=PrometheusStepMetrics()
        )


install_middleware(SQLChain, SETTINGS)
