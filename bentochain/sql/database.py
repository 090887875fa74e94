"""A database the SQL chain may read and never change: read-only connections, a statement
timeout, a row cap, and the schema described for a prompt (cached per schema version).

Read-only is enforced by the engine itself, not only by ``validation``: SQLite files are opened
with ``mode=ro`` and ``query_only``; PostgreSQL and MySQL sessions are read-only transactions that
are always rolled back. Production deployments should also connect as a role that can only read.
"""

from __future__ import annotations

import datetime as dt
import decimal
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine, make_url

from bentochain.sql.validation import ValidatedQuery

SQLGLOT_DIALECTS = {"sqlite": "sqlite", "postgresql": "postgres", "mysql": "mysql"}


class QueryFailed(RuntimeError):
    """The database refused or aborted the query; the message is the database's own."""


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    nullable: bool
    primary_key: bool


@dataclass(frozen=True)
class ForeignKey:
    columns: tuple[str, ...]
    table: str
    referred: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    foreign_keys: tuple[ForeignKey, ...]
    sample_columns: tuple[str, ...]
    sample_rows: tuple[tuple[Any, ...], ...]

    def describe(self) -> str:
        """The table as a prompt shows it: DDL-like, with a few sample rows."""
        lines = [f"CREATE TABLE {self.name} ("]
        parts = []
        key = [c.name for c in self.columns if c.primary_key]
        for c in self.columns:
            flags = (" PRIMARY KEY" if key == [c.name] else "") + (
                "" if c.nullable or key == [c.name] else " NOT NULL"
            )
            parts.append(f"  {c.name} {c.type}{flags}")
        if len(key) > 1:
            parts.append(f"  PRIMARY KEY ({', '.join(key)})")
        for fk in self.foreign_keys:
            parts.append(
                f"  FOREIGN KEY ({', '.join(fk.columns)}) REFERENCES "
                f"{fk.table}({', '.join(fk.referred)})"
            )
        lines.append(",\n".join(parts))
        lines.append(")")
        if self.sample_rows:
            lines.append(f"/* {len(self.sample_rows)} rows from {self.name}:")
            lines.append(" | ".join(self.sample_columns))
            lines.extend(" | ".join(_cell(v) for v in row) for row in self.sample_rows)
            lines.append("*/")
        return "\n".join(lines)


@dataclass(frozen=True)
class Schema:
    version: str
    tables: tuple[Table, ...]

    @property
    def names(self) -> frozenset[str]:
        return frozenset(t.name for t in self.tables)

    def describe(self) -> str:
        return "\n\n".join(t.describe() for t in self.tables)


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    rows: list[list[Any]]  # JSON-ready values
    truncated: bool  # more rows existed than the cap


class ReadOnlyDatabase:
    """One database, reached through SQLAlchemy, that the chain can only read."""

    def __init__(
        self,
        url: str | URL,
        *,
        statement_timeout: float = 5.0,
        max_rows: int = 200,
        sample_rows: int = 3,
    ) -> None:
        self.url = make_url(url)
        if self.url.drivername == "postgresql":
            self.url = self.url.set(drivername="postgresql+psycopg")  # psycopg 3 is installed
        backend = self.url.get_backend_name()
        if backend not in SQLGLOT_DIALECTS:
            raise ValueError(
                f"{backend}: read-only execution is implemented for "
                f"{', '.join(sorted(SQLGLOT_DIALECTS))}"
            )
        self.backend = backend
        self.dialect = SQLGLOT_DIALECTS[backend]
        self.statement_timeout = statement_timeout
        self.max_rows = max_rows
        self.sample_rows = sample_rows
        self.engine = self._create_engine()
        self._schema: Schema | None = None
        self._lock = threading.Lock()

    def _create_engine(self) -> Engine:
        ms = int(self.statement_timeout * 1000)
        if self.backend == "sqlite":
            database = self.url.database
            if not database or database == ":memory:":
                raise ValueError("the SQL chain needs a SQLite file, not an in-memory database")
            url = self.url.set(database=f"file:{database}", query={"mode": "ro", "uri": "true"})
            engine = sa.create_engine(url, connect_args={"check_same_thread": False})

            @sa.event.listens_for(engine, "connect")
            def _query_only(dbapi_connection: Any, _: Any) -> None:
                dbapi_connection.execute("PRAGMA query_only = ON")

            return engine
        if self.backend == "postgresql":
            options = f"-c default_transaction_read_only=on -c statement_timeout={ms}"
            return sa.create_engine(self.url, connect_args={"options": options}, pool_pre_ping=True)
        return sa.create_engine(self.url, pool_pre_ping=True)  # mysql: see _session

    @contextmanager
    def _session(self, *, untrusted: bool = False) -> Iterator[Connection]:
        """A connection inside a read-only transaction that is always rolled back.

        ``untrusted``: the SQL came from outside; on SQLite an authorizer then lets it only read
        tables and call functions that are not file or extension access.
        """
        with self.engine.connect() as conn:
            deadline = time.monotonic() + self.statement_timeout
            raw = conn.connection.driver_connection
            assert raw is not None
            if self.backend == "sqlite":
                # SQLite has no statement timeout: abort from the VM's progress callback.
                raw.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
                if untrusted:
                    raw.set_authorizer(_sqlite_read_only)
            elif self.backend == "mysql":
                conn.exec_driver_sql("SET SESSION TRANSACTION READ ONLY")
                ms = int(self.statement_timeout * 1000)
                conn.exec_driver_sql(f"SET SESSION max_execution_time = {ms}")
            try:
                yield conn
            finally:
                conn.rollback()
                if self.backend == "sqlite":
                    raw.set_progress_handler(None, 0)
                    raw.set_authorizer(None)

    def run(self, query: ValidatedQuery) -> QueryResult:
        """Run a validated query; at most ``max_rows`` rows come back."""
        try:
            with self._session(untrusted=True) as conn:
                result = conn.execution_options(stream_results=True).exec_driver_sql(query.sql)
                if not result.returns_rows:
                    raise QueryFailed("the statement returned no rows: only queries may run")
                columns = list(result.keys())
                rows = result.fetchmany(self.max_rows + 1)
                result.close()
        except sa.exc.DBAPIError as exc:
            raise QueryFailed(_db_message(exc, self.statement_timeout)) from None
        truncated = len(rows) > self.max_rows
        return QueryResult(
            columns=columns,
            rows=[[_json_value(v) for v in row] for row in rows[: self.max_rows]],
            truncated=truncated,
        )

    def schema(self) -> Schema:
        """The schema as the prompt shows it, read again only when its version changed."""
        with self._lock:
            version = self._version()
            if self._schema is None or self._schema.version != version:
                self._schema = self._read_schema(version)
            return self._schema

    def _version(self) -> str:
        with self._session() as conn:
            if self.backend == "sqlite":
                return str(conn.exec_driver_sql("PRAGMA schema_version").scalar())
            if self.backend == "postgresql":
                sql = (
                    "SELECT md5(string_agg(table_name || '.' || column_name || ':' || data_type,"
                    " ',' ORDER BY table_name, ordinal_position)) FROM information_schema.columns"
                    " WHERE table_schema = current_schema()"
                )
                return str(conn.exec_driver_sql(sql).scalar())
            # No cheap version elsewhere: re-read at most once a minute.
            return str(int(time.time() // 60))

    def _read_schema(self, version: str) -> Schema:
        tables = []
        with self._session() as conn:
            inspector = sa.inspect(conn)
            names = sorted(inspector.get_table_names())
            for name in names:
                pk = set(inspector.get_pk_constraint(name).get("constrained_columns") or [])
                columns = tuple(
                    Column(
                        name=c["name"],
                        type=str(c["type"]),
                        nullable=bool(c.get("nullable", True)),
                        primary_key=c["name"] in pk,
                    )
                    for c in inspector.get_columns(name)
                )
                fks = tuple(
                    ForeignKey(
                        tuple(fk["constrained_columns"]),
                        fk["referred_table"],
                        tuple(fk["referred_columns"]),
                    )
                    for fk in inspector.get_foreign_keys(name)
                )
                sample = conn.execute(
                    sa.select(sa.table(name, *(sa.column(c.name) for c in columns))).limit(
                        self.sample_rows
                    )
                )
                tables.append(
                    Table(
                        name=name,
                        columns=columns,
                        foreign_keys=fks,
                        sample_columns=tuple(sample.keys()),
                        sample_rows=tuple(
                            tuple(_json_value(v) for v in row) for row in sample.fetchall()
                        ),
                    )
                )
        return Schema(version=version, tables=tuple(tables))

    def dispose(self) -> None:
        self.engine.dispose()


_SQLITE_ALLOWED = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_RECURSIVE}
_SQLITE_FORBIDDEN_FUNCTIONS = {"load_extension", "readfile", "writefile", "edit", "fts3_tokenizer"}


def _sqlite_read_only(action: int, arg1: str | None, arg2: str | None, *_: object) -> int:
    if action == sqlite3.SQLITE_READ and (arg1 or "").lower().startswith("sqlite_"):
        return sqlite3.SQLITE_DENY  # the catalog: what the chain reads comes from schema()
    if action in _SQLITE_ALLOWED:
        return sqlite3.SQLITE_OK
    if (
        action == sqlite3.SQLITE_FUNCTION
        and (arg2 or "").lower() not in _SQLITE_FORBIDDEN_FUNCTIONS
    ):
        return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


def _db_message(exc: sa.exc.DBAPIError, timeout: float) -> str:
    text = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
    if "not authorized" in text:
        return f"{text}: only reading the schema's tables is allowed"
    if "interrupted" in text or "statement timeout" in text or "max_execution_time" in text:
        return f"the query ran longer than the {timeout:g}s statement timeout and was stopped"
    return text


def _json_value(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(bytes(value))} bytes>"
    return str(value)


def _cell(value: Any) -> str:
    text = "NULL" if value is None else str(value)
    return text if len(text) <= 40 else text[:37] + "..."
