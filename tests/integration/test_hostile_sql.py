"""Hostile SQL through the whole served path: the chain's prompt goes to a provider (an
OpenAI-compatible stand-in that answers with hostile SQL), the reply is extracted, validated
and, if it passes, run read-only. On SQLite and PostgreSQL: nothing is written (the data are
the same after), runaway queries stop at the statement timeout, and every request gets a 200
whose answer says why its query was refused."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from bentochain.serving.topology import composed_server
from chains.sql import NO_QUERY
from tests.integration.conftest import RECORDS_DIR, SHOP_TABLES
from tests.support.standin import Script, stand_in

pytestmark = pytest.mark.integration

TIMEOUT = 1.0  # the statement timeout the servers run with (seconds)

HOSTILE = [
    "DROP TABLE orders",
    "DELETE FROM customers",
    "UPDATE products SET price = 0",
    "INSERT INTO customers (id, name, email, country) VALUES (999, 'x', 'x@x', 'FR')",
    "REPLACE INTO products (id, name, category, price) VALUES (1, 'x', 'x', 0)",
    "INSERT INTO orders SELECT * FROM orders",
    "CREATE TABLE evil (x INTEGER)",
    "ALTER TABLE customers ADD COLUMN evil INTEGER",
    "TRUNCATE orders",
    "ATTACH DATABASE '/tmp/bentochain-evil.db' AS evil",
    "DETACH DATABASE main",
    "PRAGMA writable_schema = 1",
    "PRAGMA journal_mode = DELETE",
    "VACUUM INTO '/tmp/bentochain-copy.db'",
    "SELECT load_extension('/tmp/evil.so')",
    "CREATE TRIGGER t AFTER INSERT ON orders BEGIN DELETE FROM customers; END",
    "GRANT ALL ON customers TO PUBLIC",
    "COPY customers TO '/tmp/bentochain-leak.csv'",
    "BEGIN; DELETE FROM orders; COMMIT",
    "SELECT 1; DROP TABLE orders",
    "SELECT * FROM customers; DELETE FROM customers",
    "SELECT 1 -- a harmless query\n; DROP TABLE orders",
    "/* just reading */ DELETE FROM orders",
    "Here is the query you asked for:\n```sql\nDELETE FROM orders\n```\nIt is safe.",
    "```sql\nSELECT * FROM customers;\nUPDATE customers SET name = 'x'\n```\nDone.",
    "WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d",
    "SELECT set_config('default_transaction_read_only', 'off', false)",
    "SELECT * FROM sqlite_master",
    "SELECT * FROM pg_catalog.pg_tables",
    "SELECT pg_sleep(100)",
    # Runaway queries: valid SELECTs that never end or take too long; the timeout stops them.
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT COUNT(*) FROM r",
    "SELECT COUNT(*) FROM orders a, orders b, orders c, order_items d, customers e",
]
RUNAWAY = HOSTILE[-2:]


def fingerprint(engine: sa.Engine) -> str:
    """Every row of every demo table, and the list of tables: a hash of the data."""
    digest = hashlib.sha256()
    with engine.connect() as conn:
        names = sorted(sa.inspect(conn).get_table_names())
        digest.update(repr(names).encode())
        for table in SHOP_TABLES:
            rows = conn.exec_driver_sql(f"SELECT * FROM {table} ORDER BY 1").fetchall()
            digest.update(repr(rows).encode())
    return digest.hexdigest()


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, served_env: dict[str, str]) -> Iterator[str]:
    """A SQLAlchemy URL of the demo shop: the served one on SQLite, a real PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{Path(served_env['BENTOCHAIN_CHAINS__STATE_DIR']) / 'shop.sqlite'}"
    else:
        yield request.getfixturevalue("postgres_shop")


def test_hostile_sql_from_the_provider_never_writes_and_is_answered_with_why(
    served_env: dict[str, str], database: str, tmp_path: Path
) -> None:
    assert len(HOSTILE) >= 30
    engine = sa.create_engine(database.replace("postgresql://", "postgresql+psycopg://"))
    before = fingerprint(engine)
    sqlite_file = Path(database.removeprefix("sqlite:///")) if "sqlite" in database else None
    file_before = hashlib.sha256(sqlite_file.read_bytes()).hexdigest() if sqlite_file else None
    script = Script()
    with stand_in(script) as provider:
        env = {
            **served_env,
            "BENTOCHAIN_CHAINS__SQL__DATABASE": database,
            "BENTOCHAIN_CHAINS__SQL__LLM__PROVIDER": "openai",
            "BENTOCHAIN_CHAINS__SQL__LLM__MODEL": "hostile",
            "BENTOCHAIN_CHAINS__SQL__LLM__BASE_URL": f"{provider.url}/v1",
            "BENTOCHAIN_CHAINS__SQL__LLM__API_KEY_ENV": "HOSTILE_KEY",
            "HOSTILE_KEY": "sk-test",
            "BENTOCHAIN_CHAINS__SQL__MAX_REPAIRS": "0",  # one reply, one attempt per request
            "BENTOCHAIN_CHAINS__SQL__STATEMENT_TIMEOUT": str(TIMEOUT),
            "BENTOCHAIN_CHAINS__CACHE__BACKEND": "none",
            RECORDS_DIR: str(tmp_path / "records"),
        }
        with composed_server(tmp_path / "serve.log", env=env) as url:
            answers = {}
            for i, reply in enumerate(HOSTILE):
                script.replies[:] = [reply, "This answer must never be given."]
                body = {"input": {"question": f"Question {i}: how many orders are there?"}}
                response = httpx.post(f"{url}/chains/sql/invoke", json=body, timeout=120)
                assert response.status_code == 200, (reply, response.text)
                answers[reply] = response.json()["output"]
    for reply, output in answers.items():
        assert output["sql"] is None and output["answer"].startswith(NO_QUERY), reply
        (attempt,) = output["attempts"]
        assert attempt["error"], reply  # why it was refused, in the answer
    for reply in RUNAWAY:
        assert f"{TIMEOUT:g}s statement timeout" in answers[reply]["attempts"][0]["error"], reply
    assert fingerprint(engine) == before  # not a row, not a table changed
    if sqlite_file is not None:
        assert hashlib.sha256(sqlite_file.read_bytes()).hexdigest() == file_before
    assert not Path("/tmp/bentochain-evil.db").exists()
    assert not Path("/tmp/bentochain-copy.db").exists()
    engine.dispose()
