"""No SQL an LLM writes may change the demo database or read outside it.

Each hostile statement goes the way the SQL chain sends it: ``validate`` and then ``run`` on the
read-only connection. It must be refused by one or stopped by the statement timeout, and the
database file must be byte for byte what it was.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bentochain.sql.database import QueryFailed, ReadOnlyDatabase
from bentochain.sql.demo import build_shop
from bentochain.sql.validation import UnsafeQuery, ValidatedQuery, validate

TIMEOUT = 1.0

HOSTILE = [
    # DDL and DML
    "DROP TABLE customers",
    "DROP VIEW IF EXISTS v",
    "DELETE FROM orders",
    "UPDATE products SET price = 0.01",
    "INSERT INTO customers (name, email, country, signed_up) VALUES ('x', 'x', 'x', '2025-01-01')",
    "INSERT INTO products VALUES (1, 'x', 'y', 1) ON CONFLICT (id) DO UPDATE SET price = 0",
    "REPLACE INTO products VALUES (1, 'x', 'y', 1)",
    "CREATE TABLE evil (a)",
    "CREATE TEMP TABLE stolen AS SELECT * FROM customers",
    "ALTER TABLE customers ADD COLUMN owned INTEGER",
    "SELECT * INTO backup FROM customers",
    "WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d",
    # engine commands
    "PRAGMA writable_schema = 1",
    "PRAGMA table_info(customers)",
    "ATTACH DATABASE '{tmp}/evil.db' AS evil",
    "DETACH DATABASE main",
    "VACUUM",
    "VACUUM INTO '{tmp}/copy.db'",
    "REINDEX",
    "ANALYZE",
    "SAVEPOINT s",
    "BEGIN; DELETE FROM orders; COMMIT",
    # stacked statements, and statements hidden in comments or strings
    "SELECT 1; DROP TABLE customers",
    "SELECT * FROM customers; DELETE FROM orders",
    "SELECT 1 -- harmless\n; DROP TABLE customers",
    "SELECT 1 /* ; DROP TABLE customers */",
    "SELECT 1 /*! ; DROP TABLE customers */",
    "SELECT * FROM customers WHERE name = ''; DROP TABLE customers; --'",
    "SELECT * FROM customers WHERE name = 'a' OR 1 = 1; UPDATE products SET price = 0",
    # reading outside the schema
    "SELECT * FROM sqlite_master",
    'SeLeCt sql FrOm "sqlite_schema"',
    "SELECT id, name, email, country, signed_up FROM customers"
    " UNION SELECT 1, name, sql, 1, 1 FROM sqlite_master",
    "SELECT * FROM pragma_table_info('customers')",
    "SELECT * FROM secrets",
    "SELECT * FROM evil.customers",
    # functions that touch files or load code
    "SELECT load_extension('{tmp}/evil.so')",
    "SELECT readfile('/etc/passwd')",
    "SELECT writefile('{tmp}/dropped.txt', 'pwned')",
    "SELECT fts3_tokenizer('simple')",
    # queries that would run for minutes
    "SELECT count(*) FROM order_items a, order_items b, order_items c, order_items d, orders e",
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r",
]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[tuple[Path, ReadOnlyDatabase]]:
    path = tmp_path / "shop.sqlite"
    build_shop(path)
    db = ReadOnlyDatabase(f"sqlite:///{path}", statement_timeout=TIMEOUT, max_rows=50)
    yield path, db
    db.dispose()


def test_the_corpus_is_large() -> None:
    assert len(HOSTILE) >= 30


def test_every_hostile_statement_is_refused_or_stopped(
    shop: tuple[Path, ReadOnlyDatabase], tmp_path: Path
) -> None:
    path, db = shop
    before = digest(path)
    files_before = sorted(p.name for p in tmp_path.iterdir())
    tables = db.schema().names
    for template in HOSTILE:
        sql = template.format(tmp=tmp_path)
        started = time.monotonic()
        with pytest.raises((UnsafeQuery, QueryFailed)) as refused:
            db.run(validate(sql, tables=tables, dialect=db.dialect))
        assert time.monotonic() - started < TIMEOUT * 5, sql
        assert str(refused.value), sql  # a reason the LLM can read
    assert digest(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == files_before  # no file created


def test_the_engine_refuses_writes_even_without_validation(
    shop: tuple[Path, ReadOnlyDatabase], tmp_path: Path
) -> None:
    """Defence in depth: the read-only connection alone stops what the validator would."""
    path, db = shop
    before = digest(path)
    for sql in [
        "DELETE FROM orders",
        "DROP TABLE customers",
        "CREATE TABLE evil (a)",
        "PRAGMA journal_mode = WAL",
        f"ATTACH DATABASE '{tmp_path}/evil.db' AS evil",
        "SELECT * FROM sqlite_master",
        "SELECT load_extension('x')",
    ]:
        with pytest.raises(QueryFailed):
            db.run(ValidatedQuery(sql=sql, tables=frozenset()))
    assert digest(path) == before
    assert not (tmp_path / "evil.db").exists()


def test_a_runaway_query_is_stopped_at_the_timeout(shop: tuple[Path, ReadOnlyDatabase]) -> None:
    _, db = shop
    query = validate(HOSTILE[-2], tables=db.schema().names, dialect=db.dialect)
    started = time.monotonic()
    with pytest.raises(QueryFailed, match="statement timeout"):
        db.run(query)
    assert time.monotonic() - started < TIMEOUT * 3


def test_good_queries_run_and_are_capped(shop: tuple[Path, ReadOnlyDatabase]) -> None:
    _, db = shop
    tables = db.schema().names
    result = db.run(
        validate(
            "WITH totals AS (SELECT o.customer_id, SUM(i.quantity * i.unit_price) AS spent "
            "FROM orders o JOIN order_items i ON i.order_id = o.id GROUP BY o.customer_id) "
            "SELECT c.name, t.spent FROM customers c JOIN totals t ON t.customer_id = c.id "
            "ORDER BY t.spent DESC LIMIT 3",
            tables=tables,
            dialect=db.dialect,
        )
    )
    assert result.columns == ["name", "spent"]
    assert len(result.rows) == 3
    assert result.rows[0][1] >= result.rows[2][1]
    everything = db.run(validate("SELECT * FROM orders", tables=tables, dialect=db.dialect))
    assert len(everything.rows) == 50 and everything.truncated


def test_the_regenerated_sql_drops_comments() -> None:
    query = validate(
        "SELECT name -- the customer's name\nFROM customers", tables={"customers"}, dialect="sqlite"
    )
    assert query.sql == "SELECT name FROM customers"


def test_schema_describes_tables_keys_and_samples(shop: tuple[Path, ReadOnlyDatabase]) -> None:
    _, db = shop
    schema = db.schema()
    assert schema.names == {"customers", "products", "orders", "order_items"}
    text = schema.describe()
    assert "FOREIGN KEY (customer_id) REFERENCES customers(id)" in text
    assert "PRIMARY KEY (order_id, product_id)" in text
    assert "/* 3 rows from products:" in text
    assert db.schema() is schema  # cached while the schema version stays


def test_the_demo_database_is_reproducible(tmp_path: Path) -> None:
    first, second = tmp_path / "a.sqlite", tmp_path / "b.sqlite"
    assert build_shop(first) and build_shop(second)
    assert digest(first) == digest(second)
    assert build_shop(first) is False  # current: left alone


def test_the_schema_is_read_again_when_it_changes(shop: tuple[Path, ReadOnlyDatabase]) -> None:
    path, db = shop
    first = db.schema()
    with sqlite3.connect(path) as owner:  # the database's owner migrates it
        owner.execute("CREATE TABLE reviews (id INTEGER PRIMARY KEY, stars INTEGER)")
    assert "reviews" in db.schema().names
    assert db.schema().version != first.version
