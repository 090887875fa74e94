"""Real servers for integration tests: the composed Bento and the split topology.

Both run the default profile with the tiny demo LLM, from a BentoML home of their own that
``bentochain prepare`` fills once per session. Servers listen on free loopback ports and are
stopped (their whole process group) when the session ends.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bentochain.config.loader import DEFAULT_PROFILE, PROJECT_ROOT
from bentochain.serving.internal import TOKEN_ENV
from bentochain.serving.topology import SERVICES, SplitTopology, composed_process, free_port
from bentochain.sql.demo import SCHEMA, build_shop
from tests.support.otlp import Collector, otlp_collector
from tests.support.system import postgres_server

pytestmark = pytest.mark.integration

START_TIMEOUT = 300.0
RECORDS_DIR = "BENTOCHAIN_OBSERVABILITY__RECORDS__DIR"
JSON_LOGS = "BENTOCHAIN_OBSERVABILITY__LOGS__FORMAT"


@pytest.fixture(scope="session")
def collector() -> Iterator[Collector]:
    """The OTLP/HTTP receiver every test server sends its spans to."""
    with otlp_collector() as found:
        yield found


@pytest.fixture(scope="session")
def served_env(tmp_path_factory: pytest.TempPathFactory, collector: Collector) -> dict[str, str]:
    """Environment of every test server: its own model store, the tiny LLM, long generations,
    traces sent to ``collector`` (in batches a tenth of a second apart)."""
    home = tmp_path_factory.mktemp("bentoml-home")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("BENTOCHAIN_")}
    env.update(
        {
            "BENTOML_HOME": str(home),
            "BENTOCHAIN_CONFIG": str(DEFAULT_PROFILE),
            "BENTOCHAIN_LLM__MODEL": "demo:llama-tiny",
            "BENTOCHAIN_LLM__GENERATION__MAX_TOKENS_LIMIT": "120000",
            "BENTOCHAIN_LLM__KV_CACHE__BLOCKS": "16384",  # 262k tokens of the tiny model: 128 MiB
            # Streams outlive the LLM's traffic.timeout: test_long_stream streams for longer.
            "BENTOCHAIN_LLM__TRAFFIC__TIMEOUT": "30",
            "BENTOCHAIN_LLM__BATCHING__MAX_LATENCY_MS": "20000",
            "BENTOML_DO_NOT_TRACK": "True",
            "BENTOCHAIN_CHAINS__STATE_DIR": str(home / "state"),  # not the checkout's var/
            "BENTOCHAIN_OBSERVABILITY__TRACING__ENDPOINT": collector.endpoint,
            TOKEN_ENV: secrets.token_hex(16),  # known here: tests call model services directly
            RECORDS_DIR: str(home / "records"),  # each server of its own: see the fixtures
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
    )
    subprocess.run(
        [sys.executable, "-m", "bentochain.cli", "prepare"],
        env=env,
        check=True,
        timeout=600,
        cwd=PROJECT_ROOT,
    )
    return env


@dataclass
class Server:
    url: str
    log: Path
    records: Path  # the gateway's quality records
    services: dict[str, str] = field(default_factory=dict)  # split topology: each server's URL
    roots: dict[str, int] = field(default_factory=dict)  # each service's server process

    @property
    def v1(self) -> str:
        return f"{self.url}/v1"


@pytest.fixture(scope="session")
def composed(
    served_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """``bentochain serve``: the whole Bento under one ``bentoml serve``."""
    folder = tmp_path_factory.mktemp("composed")
    env = {**served_env, RECORDS_DIR: str(folder / "records")}
    with composed_process(folder / "serve.log", env=env, timeout=START_TIMEOUT) as (url, process):
        roots = dict.fromkeys(SERVICES, process.pid)  # one arbiter runs them all
        yield Server(url, folder / "serve.log", folder / "records", roots=roots)


@pytest.fixture(scope="session")
def split(served_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server per service, the Gateway pointed at the others by URL (``--depends``)."""
    logs = tmp_path_factory.mktemp("split")
    port = free_port()
    # JSON log lines here, text in the composed Bento: both formats are served.
    env = {**served_env, RECORDS_DIR: str(logs / "records"), JSON_LOGS: "json"}
    topology = SplitTopology(port=port, env=env, log_dir=logs)
    topology.start(timeout=START_TIMEOUT)
    log = logs / f"Gateway-{port}.log"
    roots = {service: servers[0].process.pid for service, servers in topology.servers.items()}
    yield Server(topology.urls["Gateway"], log, logs / "records", dict(topology.urls), roots)
    topology.stop()


@pytest.fixture(scope="session", params=["composed", "split"])
def gateway(request: pytest.FixtureRequest) -> Server:
    """Each API test runs against both topologies."""
    server: Server = request.getfixturevalue(request.param)
    return server


SHOP_TABLES = ("customers", "products", "orders", "order_items")  # in foreign-key order


@pytest.fixture(scope="session")
def postgres_shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real PostgreSQL server holding the demo shop (same schema and rows as ``demo:shop``)."""
    import sqlalchemy as sa

    root = tmp_path_factory.mktemp("postgres")
    source = root / "shop.sqlite"
    build_shop(source)
    with postgres_server() as url:
        engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
        sqlite = sa.create_engine(f"sqlite:///{source}")
        with engine.begin() as pg, sqlite.connect() as lite:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    pg.exec_driver_sql(statement)
            for table in SHOP_TABLES:
                result = lite.exec_driver_sql(f"SELECT * FROM {table}")
                columns = list(result.keys())
                rows = [dict(zip(columns, row, strict=True)) for row in result]
                names = ", ".join(columns)
                values = ", ".join(f":{c}" for c in columns)
                pg.execute(sa.text(f"INSERT INTO {table} ({names}) VALUES ({values})"), rows)
        engine.dispose()
        sqlite.dispose()
        yield url
