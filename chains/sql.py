"""Natural-language questions answered from a SQL database, safely.

question → schema (tables, columns, keys, sample rows) → prompt → LLM → SQL → validation →
execution → answer. A query that fails validation or execution goes back to the LLM with the
error, up to ``max_repairs`` times; then the LLM writes a short answer from the rows. When no
attempt works, the answer says so and lists the attempts: a bad query is an answer, not an error.

Each step is a named runnable: ``schema``, then per try an ``attempt`` holding ``generate``,
``validate`` and ``execute``, then ``answer``; each attempt is also reported as a custom
``attempt`` event, so ``astream_events`` shows the pipeline's progress and LangChain's
callbacks (the traces) see every step.
"""

from __future__ import annotations

import json
import re
from typing import Any

from langchain_core.callbacks import adispatch_custom_event
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda
from opentelemetry import trace
from pydantic import BaseModel, Field

from bentochain.sql.database import QueryFailed, QueryResult, ReadOnlyDatabase, Schema
from bentochain.sql.validation import UnsafeQuery, ValidatedQuery, validate

NO_QUERY = "I could not produce a valid query for this question."
ANSWER_ROWS = 20  # rows the answer prompt shows


class SQLQuestion(BaseModel):
    question: str = Field(min_length=1, max_length=2000, description="a question about the data")


class Attempt(BaseModel):
    sql: str = Field(description="the SQL the LLM wrote (as it ran, when it ran)")
    error: str | None = Field(None, description="why it was refused or failed; None: it ran")


class SQLAnswer(BaseModel):
    question: str
    sql: str | None = Field(description="the query that answered; None when none did")
    columns: list[str]
    rows: list[list[Any]]
    truncated: bool = Field(False, description="more rows existed than the row cap")
    answer: str
    attempts: list[Attempt]


SYSTEM = """You translate questions into one {dialect} query over this database:

{schema}

Rules: write exactly one SELECT statement (WITH is allowed); use only the tables above; never \
change data; no comments. Reply with the SQL only, in a ```sql block."""


def examples(schema: Schema) -> list[BaseMessage]:
    """Two worked questions on this database's own tables, before the real one.

    Small models answer the question in prose unless they have seen the expected exchange;
    with these (built from the schema, so they fit any database) SmolLM2-135M writes a query
    for 13 of the 20 evaluation questions instead of 2 (docs/sql_eval.md).
    """
    tables = sorted(schema.tables, key=lambda t: t.name)
    if not tables:
        return []
    counted = tables[-1]
    listed = tables[0]
    text_columns = [
        c.name for c in listed.columns if "CHAR" in c.type.upper() or "TEXT" in c.type.upper()
    ]
    column = text_columns[0] if text_columns else listed.columns[0].name
    return [
        HumanMessage(f"How many rows are in {counted.name}?"),
        AIMessage(f"```sql\nSELECT COUNT(*) FROM {counted.name};\n```"),
        HumanMessage(f"Show the {column} of every row of {listed.name}."),
        AIMessage(f"```sql\nSELECT {column} FROM {listed.name};\n```"),
    ]


REPAIR = """That query failed: {error}
Write a corrected query. Reply with the SQL only, in a ```sql block."""

ANSWER_SYSTEM = """You state the answer to a question given the result of a database query. \
Reply with one short sentence, from the result only."""

ANSWER = """Question: {question}
Query result ({count} rows{more}):
{table}"""

# One worked exchange: without it SmolLM2-135M apologises that it cannot run SQL instead of
# reading the result (docs/sql_eval.md); with it, it states the value.
ANSWER_EXAMPLE: list[BaseMessage] = [
    HumanMessage("Question: How many rows are in items?\nQuery result (1 rows):\nCOUNT(*)\n7"),
    AIMessage("There are 7 rows in items."),
]


_QUERY_START = re.compile(r"\b(?:SELECT|WITH)\b", re.IGNORECASE)
_STATEMENT = re.compile(
    r"\b(?:SELECT|WITH|INSERT|UPDATE|DELETE|DROP|CREATE|ALTER|ATTACH|DETACH|PRAGMA|REPLACE|"
    r"VACUUM|GRANT|TRUNCATE|COPY|SET|LOAD)\b",
    re.IGNORECASE,
)


def extract_sql(text: str) -> str:
    """The SQL in an LLM's reply: a fenced block if there is one; else the query inside prose.

    Small models wrap a query in sentences ("Here is the query: SELECT …; It counts …"). The
    prose is cut only where it holds no other statement: anything that could be a second
    statement stays, so validation sees it and refuses it.
    """
    fenced = re.search(r"```(?:sql|SQL)?\s*\n?(.*?)```", text, re.DOTALL)
    if fenced:
        return fenced.group(1).strip()
    start = _QUERY_START.search(text)
    if start is None or _STATEMENT.search(text[: start.start()]):
        return text.strip()
    sql = text[start.start() :]
    head, semicolon, tail = sql.partition(";")
    if semicolon and not _STATEMENT.search(tail):
        sql = head + semicolon
    return sql.strip()


def _table(result: QueryResult) -> str:
    lines = [" | ".join(result.columns)]
    lines += [" | ".join(json.dumps(v) for v in row) for row in result.rows[:ANSWER_ROWS]]
    return "\n".join(lines)


def build_sql_chain(
    llm: BaseChatModel, db: ReadOnlyDatabase, *, max_repairs: int = 2
) -> Runnable[Any, SQLAnswer]:
    """The SQL pipeline over ``db``; input ``{"question": ...}`` (or a ``SQLQuestion``)."""
    text = llm | StrOutputParser()

    def read_schema(_: Any) -> Schema:
        return db.schema()

    def check(attempt: dict[str, Any]) -> ValidatedQuery:
        if not attempt["sql"]:
            raise UnsafeQuery("the reply held no SQL")
        return validate(attempt["sql"], tables=attempt["tables"], dialect=db.dialect)

    def execute(query: ValidatedQuery) -> QueryResult:
        # The step's span is current here (when the run is traced): what ran, and on what.
        span = trace.get_current_span()
        span.set_attribute("db.system", db.backend)
        span.set_attribute("db.statement", query.sql)
        result = db.run(query)
        span.set_attribute("db.response.returned_rows", len(result.rows))
        return result

    schema_step = RunnableLambda(read_schema, name="schema")
    generate = (text | RunnableLambda(extract_sql)).with_config(run_name="generate")
    validate_step = RunnableLambda(check, name="validate")
    execute_step = RunnableLambda(execute, name="execute")
    answer_step = text.with_config(run_name="answer")

    async def attempt(state: dict[str, Any], config: RunnableConfig) -> tuple[str, Any]:
        """One try: write the SQL, check it, run it. Its rows, or why it failed."""
        number = state["number"]
        span = trace.get_current_span()
        span.set_attribute("bentochain.attempt", number)
        span.set_attribute("bentochain.repair", number > 1)
        sql = await generate.ainvoke(state["messages"], config)
        try:
            query = await validate_step.ainvoke({"sql": sql, "tables": state["tables"]}, config)
            return sql, await execute_step.ainvoke(query, config)
        except (UnsafeQuery, QueryFailed) as exc:
            return sql, exc

    attempt_step = RunnableLambda(attempt, name="attempt")

    async def pipeline(raw: Any, config: RunnableConfig) -> SQLAnswer:
        question = SQLQuestion.model_validate(raw).question
        # One read of the schema per request: the prompt and every validation see the same one.
        schema = await schema_step.ainvoke(question, config)
        messages: list[BaseMessage] = [
            SystemMessage(SYSTEM.format(dialect=db.dialect, schema=schema.describe())),
            *examples(schema),
            HumanMessage(question),
        ]
        attempts: list[Attempt] = []
        for number in range(1, max_repairs + 2):
            state = {"number": number, "messages": list(messages), "tables": schema.names}
            sql, outcome = await attempt_step.ainvoke(state, config)
            if isinstance(outcome, Exception):
                attempts.append(Attempt(sql=sql, error=str(outcome)))
                await adispatch_custom_event("attempt", attempts[-1].model_dump(), config=config)
                messages += [
                    AIMessage(f"```sql\n{sql}\n```"),
                    HumanMessage(REPAIR.format(error=outcome)),
                ]
                continue
            result: QueryResult = outcome
            attempts.append(Attempt(sql=sql))
            await adispatch_custom_event("attempt", attempts[-1].model_dump(), config=config)
            prompt = ANSWER.format(
                question=question,
                count=len(result.rows),
                more=", more not shown"
                if result.truncated or len(result.rows) > ANSWER_ROWS
                else "",
                table=_table(result),
            )
            answer = await answer_step.ainvoke(
                [SystemMessage(ANSWER_SYSTEM), *ANSWER_EXAMPLE, HumanMessage(prompt)], config
            )
            return SQLAnswer(
                question=question,
                sql=sql,
                columns=result.columns,
                rows=result.rows,
                truncated=result.truncated,
                answer=answer.strip(),
                attempts=attempts,
            )
        return SQLAnswer(
            question=question,
            sql=None,
            columns=[],
            rows=[],
            answer=f"{NO_QUERY} Tried {len(attempts)} times; see attempts.",
            attempts=attempts,
        )

    return RunnableLambda(pipeline, name="sql").with_types(
        input_type=SQLQuestion, output_type=SQLAnswer
    )
