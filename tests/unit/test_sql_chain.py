"""The SQL chain's logic with LangChain's scripted fake chat models: no server, a real SQLite."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel

from bentochain.sql.database import ReadOnlyDatabase
from chains.sql import NO_QUERY, SQLAnswer, build_sql_chain, extract_sql


def ask(chain: Any, question: str) -> SQLAnswer:
    result: SQLAnswer = asyncio.run(chain.ainvoke({"question": question}))
    return result


def test_a_good_query_is_run_and_answered(shop: tuple[Path, ReadOnlyDatabase]) -> None:
    _, db = shop
    llm = FakeListChatModel(
        responses=[
            "```sql\nSELECT category, COUNT(*) AS n FROM products"
            " GROUP BY category ORDER BY n DESC\n```",
            "Equipment is the largest category.",
        ]
    )
    out = ask(build_sql_chain(llm, db), "Which category has most products?")
    assert out.columns == ["category", "n"]
    assert out.rows[0] == ["equipment", 5]
    assert out.answer == "Equipment is the largest category."
    assert [a.error for a in out.attempts] == [None]
    assert out.sql is not None and out.sql.startswith("SELECT category")


def test_failed_queries_go_back_to_the_llm_with_the_error(
    shop: tuple[Path, ReadOnlyDatabase],
) -> None:
    path, db = shop
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    llm = FakeListChatModel(
        responses=[
            "DELETE FROM orders",
            "SELECT * FROM invoices",
            "SELECT COUNT(*) FROM orders WHERE status = 'cancelled'",
            "There are some cancelled orders.",
        ]
    )
    chain = build_sql_chain(llm, db, max_repairs=2)
    out = ask(chain, "How many orders were cancelled?")
    assert len(out.attempts) == 3
    assert "DELETE" in (out.attempts[0].error or "")
    assert "unknown table invoices" in (out.attempts[1].error or "")
    assert out.attempts[2].error is None
    assert out.rows[0][0] > 0
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_the_repair_prompt_carries_the_error(shop: tuple[Path, ReadOnlyDatabase]) -> None:
    _, db = shop
    seen: list[str] = []

    class Recording(FakeListChatModel):
        def _call(self, messages: Any, *args: Any, **kwargs: Any) -> str:
            seen.append(messages[-1].text)
            return super()._call(messages, *args, **kwargs)

    llm = Recording(responses=["SELECT nope FROM customers", "SELECT 1", "ok"])
    ask(build_sql_chain(llm, db), "anything")
    assert "no such column: nope" in seen[1]


def test_when_every_attempt_fails_the_answer_says_so(shop: tuple[Path, ReadOnlyDatabase]) -> None:
    _, db = shop
    llm = FakeListChatModel(responses=["DROP TABLE customers", "PRAGMA x", "lol"])
    out = ask(build_sql_chain(llm, db, max_repairs=2), "delete everything")
    assert out.sql is None and out.rows == []
    assert out.answer.startswith(NO_QUERY)
    assert len(out.attempts) == 3 and all(a.error for a in out.attempts)


def test_max_repairs_zero_means_one_attempt(shop: tuple[Path, ReadOnlyDatabase]) -> None:
    _, db = shop
    llm = FakeListChatModel(responses=["bad", "SELECT 1"])
    out = ask(build_sql_chain(llm, db, max_repairs=0), "q")
    assert len(out.attempts) == 1 and out.sql is None


def test_steps_and_attempts_are_streamed_as_events(shop: tuple[Path, ReadOnlyDatabase]) -> None:
    _, db = shop
    llm = FakeListChatModel(
        responses=["SELECT * FROM nope", "SELECT COUNT(*) FROM customers", "40"]
    )

    async def events() -> list[tuple[str, str]]:
        chain = build_sql_chain(llm, db)
        return [
            (e["event"], e["name"])
            async for e in chain.astream_events({"question": "how many?"}, version="v2")
            if e["event"] in ("on_custom_event", "on_chain_end")
        ]

    names = asyncio.run(events())
    assert ("on_chain_end", "schema") in names
    assert names.count(("on_custom_event", "attempt")) == 2
    assert names[-1] == ("on_chain_end", "sql")


def test_bad_input_is_a_validation_error(shop: tuple[Path, ReadOnlyDatabase]) -> None:
    _, db = shop
    chain = build_sql_chain(FakeListChatModel(responses=["x"]), db)
    with pytest.raises(ValueError):
        asyncio.run(chain.ainvoke({"question": ""}))


@pytest.mark.parametrize(
    ("reply", "sql"),
    [
        ("```sql\nSELECT 1\n```", "SELECT 1"),
        ("Here you go:\n```\nSELECT 2;\n```\nEnjoy", "SELECT 2;"),
        ("  SELECT 3  ", "SELECT 3"),
        (
            "Here is the query: SELECT COUNT(*) FROM x; It counts the rows.",
            "SELECT COUNT(*) FROM x;",
        ),
        ("Answer: select a from t where b = 2", "select a from t where b = 2"),
        # A second statement around the query is never cut away: validation must see it.
        ("Sure: SELECT 1; DELETE FROM customers", "SELECT 1; DELETE FROM customers"),
        ("DROP TABLE orders; SELECT 1", "DROP TABLE orders; SELECT 1"),
        ("There are 12 products.", "There are 12 products."),
    ],
)
def test_extract_sql(reply: str, sql: str) -> None:
    assert extract_sql(reply) == sql
