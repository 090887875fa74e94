"""Is this SQL one read-only query over the tables we know? Decided on the parse tree.

An LLM's SQL is untrusted input. It is parsed with sqlglot in the database's dialect and accepted
only when it is exactly one ``SELECT`` (set operations and ``WITH`` included) that reads tables
of the connected schema and calls no function that reaches outside the database. What runs is
the SQL regenerated from the accepted tree, comments dropped, so nothing the validator did not
see (a second statement in a comment, MySQL's executable ``/*! */`` comments) reaches the engine.
The read-only connection and the statement timeout (``bentochain.sql.database``) stay in place
behind this check: either alone would stop a write.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

# Functions that read or write files, load code, reach other databases or servers, run SQL
# given as a string, or change server state. Matched on the lower-cased function name.
FORBIDDEN_FUNCTIONS = re.compile(
    r"""^(
        load_extension | readfile | writefile | edit | fts3_tokenizer | zipfile | sqlar_.*
      | pg_.* | lo_.* | dblink.* | set_config | current_setting | query_to_xml.*
      | cursor_to_xml.* | table_to_xml.* | schema_to_xml.* | database_to_xml.* | xmlparse
      | load_file | sys_exec | sys_eval | benchmark | sleep | get_lock | release_lock
      | copy | export_data | read_csv.* | read_parquet.* | read_json.* | glob
    )$""",
    re.VERBOSE,
)

# Statement kinds that may appear nowhere in an accepted tree (a data-modifying CTE is a
# DELETE inside a SELECT).
FORBIDDEN_NODES: tuple[type, ...] = (
    exp.DML,
    exp.DDL,
    exp.Command,
    exp.Pragma,
    exp.Attach,
    exp.Detach,
    exp.Copy,
    exp.Transaction,
    exp.Commit,
    exp.Rollback,
    exp.Set,
    exp.Use,
    exp.Grant,
    exp.TruncateTable,
    exp.LoadData,
    exp.Analyze,
    exp.Into,
    exp.Lock,
)


# A comment an LLM writes to explain a query needs none of these; one that holds them is hiding
# a statement (or, with "!", is MySQL's executable comment).
HIDDEN_STATEMENT = re.compile(
    r";|^\s*!|\b(drop|delete|insert|update|alter|create|attach|detach|pragma|grant|revoke"
    r"|truncate|replace|merge|copy|vacuum|exec|execute|call|load)\b",
    re.IGNORECASE,
)


class UnsafeQuery(ValueError):
    """The SQL was refused; the message says why, in words an LLM can act on."""


@dataclass(frozen=True)
class ValidatedQuery:
    sql: str  # regenerated from the tree: what will run
    tables: frozenset[str]


def validate(sql: str, *, tables: Collection[str], dialect: str) -> ValidatedQuery:
    """Accept ``sql`` if it is one read-only query over ``tables``; else raise ``UnsafeQuery``.

    ``tables`` are the names the connected schema has (compared case-insensitively); anything
    else, system catalogs included, is refused.
    """
    known = {name.lower() for name in tables}
    try:
        statements = [s for s in sqlglot.parse(sql, read=dialect) if s is not None]
    except SqlglotError as exc:
        raise UnsafeQuery(f"the SQL does not parse: {_first_line(exc)}") from None
    if len(statements) != 1:
        raise UnsafeQuery(
            f"expected exactly one statement, got {len(statements)}: write a single SELECT"
        )
    (tree,) = statements
    if not isinstance(tree, exp.Select | exp.SetOperation):
        raise UnsafeQuery(f"only a SELECT query may run; this is a {_kind(tree)}")

    ctes = {cte.alias_or_name.lower() for cte in tree.find_all(exp.CTE)}
    used: set[str] = set()
    for node in tree.walk():
        for comment in node.comments or ():
            if HIDDEN_STATEMENT.search(comment):
                raise UnsafeQuery("a comment hides a statement: write the query with no comments")
        if isinstance(node, FORBIDDEN_NODES):
            raise UnsafeQuery(f"{_kind(node)} is not allowed in a read-only query")
        if isinstance(node, exp.Func):
            name = _function_name(node)
            if FORBIDDEN_FUNCTIONS.match(name):
                raise UnsafeQuery(f"function {name}() is not allowed")
        if isinstance(node, exp.Table):
            used.add(_table(node, known, ctes))
    return ValidatedQuery(sql=tree.sql(dialect=dialect, comments=False), tables=frozenset(used))


def _table(node: exp.Table, known: set[str], ctes: set[str]) -> str:
    if not isinstance(node.this, exp.Identifier):
        raise UnsafeQuery(f"table function {node.this.sql()} is not allowed: query tables only")
    name = node.name.lower()
    qualifier = ".".join(p.lower() for p in (node.catalog, node.db) if p)
    if not qualifier and name in ctes:
        return name
    if name not in known or qualifier not in ("", "main", "public"):
        full = f"{qualifier}.{name}" if qualifier else name
        raise UnsafeQuery(
            f"unknown table {full}: use only {', '.join(sorted(known)) or '(no tables)'}"
        )
    return name


def _function_name(node: exp.Func) -> str:
    if isinstance(node, exp.Anonymous):
        return str(node.name).lower()
    return node.sql_name().lower()


def _kind(node: Any) -> str:
    return str(node.key).upper()


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
