"""The SQL chain on a real PostgreSQL server: it reads the schema, answers, and cannot write.

The server is installed (if missing) and started by the ``postgres_shop`` fixture.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from langchain_core.language_models.fake_chat_models import FakeListChatModel

from bentochain.sql.database import QueryFailed, ReadOnlyDatabase
from bentochain.sql.validation import UnsafeQuery, ValidatedQuery, validate
from chains.sql import build_sql_chain
from tests.integration.conftest import SHOP_TABLES

TIMEOUT = 1.0

TOP_CUSTOMERS = """
SELECT c.name, SUM(oi.quantity * oi.unit_price) AS spent
FROM customers AS c
JOIN orders AS o ON o.customer_id = c.id
JOIN order_items AS oi ON oi.order_id = o.id
WHERE o.status <> 'cancelled' AND EXTRACT(YEAR FROM o.ordered_at) >= 2000
GROUP BY c.name
ORDER BY spent DESC, c.name
LIMIT 3
"""

HOSTILE = [
    "DROP TABLE customers",
    "DELETE FROM orders",
    "UPDATE products SET price = 0.01",
    "INSERT INTO products VALUES (999, 'x', 'y', 1)",
    "CREATE TABLE evil (a int)",
    "TRUNCATE orders",
    "WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d",
    "SELECT * INTO backup FROM customers",
    "COPY customers TO PROGRAM 'touch /tmp/pwned'",
    "SELECT pg_read_file('/etc/passwd')",
    "SELECT lo_import('/etc/passwd')",
    "SELECT set_config('default_transaction_read_only', 'off', false)",
    "SELECT * FROM pg_catalog.pg_authid",
    "SELECT usename, passwd FROM pg_shadow",
    "SET default_transaction_read_only = off",
    "SELECT 1; DROP TABLE customers",
    "SELECT 1 /* ; DROP TABLE customers */; DELETE FROM orders",
    "SELECT pg_sleep(30)",
    "SELECT count(*) FROM order_items a, order_items b, order_items c, order_items d, orders e",
]
RUNAWAY = {HOSTILE[-1]}


@pytest.fixture
def pg(postgres_shop: str) -> Iterator[ReadOnlyDatabase]:
    db = ReadOnlyDatabase(postgres_shop, statement_timeout=TIMEOUT)
    yield db
    db.dispose()


def fingerprint(url: str) -> dict[str, str]:
    """Every table's rows, hashed by PostgreSQL itself, and the list of tables."""
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as conn:
        prints = {
            t: conn.exec_driver_sql(
                f"SELECT md5(string_agg(t::text, ',' ORDER BY t::text)) FROM {t} AS t"
            ).scalar_one()
            for t in SHOP_TABLES
        }
        tables = conn.exec_driver_sql(
            "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables"
            " WHERE schemaname = 'public'"
        ).scalar_one()
    engine.dispose()
    return {**prints, "tables": tables}


def test_the_chain_answers_from_postgres(pg: ReadOnlyDatabase, postgres_shop: str) -> None:
    assert pg.dialect == "postgres"
    schema = pg.schema()
    assert schema.names == set(SHOP_TABLES)
    assert "FOREIGN KEY (customer_id) REFERENCES customers(id)" in schema.describe()

    llm = FakeListChatModel(
        responses=[f"```sql\n{TOP_CUSTOMERS}\n```", "The top three spent most."]
    )
    out = asyncio.run(build_sql_chain(llm, pg).ainvoke({"question": "Who spent most?"}))
    assert [a.error for a in out.attempts] == [None]
    assert out.columns == ["name", "spent"]

    engine = sa.create_engine(postgres_shop.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as conn:
        expected = [[name, float(spent)] for name, spent in conn.exec_driver_sql(TOP_CUSTOMERS)]
    engine.dispose()
    assert [[name, float(spent)] for name, spent in out.rows] == expected
    assert len(expected) == 3


def test_hostile_sql_is_refused_or_stopped_and_nothing_changes(
    pg: ReadOnlyDatabase, postgres_shop: str
) -> None:
    before = fingerprint(postgres_shop)
    names = pg.schema().names
    for sql in HOSTILE:
        with pytest.raises((UnsafeQuery, QueryFailed)) as refused:
            pg.run(validate(sql, tables=names, dialect=pg.dialect))
        if sql in RUNAWAY:  # valid reads that never end: PostgreSQL's own timeout stops them
            assert refused.type is QueryFailed, sql
            assert f"longer than the {TIMEOUT:g}s statement timeout" in str(refused.value), sql
        else:
            assert refused.type is UnsafeQuery, sql
    assert fingerprint(postgres_shop) == before


@pytest.mark.parametrize(
    "sql",
    [
        "DELETE FROM orders",
        "UPDATE products SET price = 0",
        "CREATE TABLE evil (a int)",
        "SELECT set_config('default_transaction_read_only', 'off', false); DELETE FROM orders",
    ],
)
def test_the_read_only_session_stops_writes_the_validator_would_have_refused(
    pg: ReadOnlyDatabase, postgres_shop: str, sql: str
) -> None:
    """Defence in depth: a statement that skipped validation still cannot write."""
    before = fingerprint(postgres_shop)
    with pytest.raises(QueryFailed):
        pg.run(ValidatedQuery(sql=sql, tables=frozenset()))
    assert fingerprint(postgres_shop) == before
