"""Natural-language questions answered from a SQL database, safely.

question → schema (tables, columns, keys, sample rows) → prompt → LLM → SQL → validation →
execution → answer. A query that fails validation or execution goes back to the LLM with the
error, up to ``max_repairs`` times; then the LLM writes a short answer from the rows. When no
attempt works, the answer says so and lists the attempts: a bad query is an answer, not an error.

Each step is a named runnable (``schema``, ``write_sql``, ``check_and_run``, ``answer``) and
each attempt is reported as a custom ``attempt`` event, so ``astream_events`` shows the
pipeline's progress.
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
from pydantic import BaseModel, Field

from bentochain.sql.database import QueryFailed, QueryResult, ReadOnlyDatabase, Schema
from bentochain.sql.validation import UnsafeQuery, validate

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

REPAIR = """That query failed: {error}
Write a corrected query. Reply with the SQL only, in a ```sql block."""

ANSWER = """Question: {question}
SQL: {sql}
Result ({count} rows{more}):
{table}

Answer the question in one or two sentences from this result only."""


def extract_sql(text: str) -> str:
    """The SQL in an LLM's reply: a fenced block if there is one, else the whole reply."""
    fenced = re.search(r"```(?:sql|SQL)?\s*\n?(.*?)```", text, re.DOTALL)
    sql = fenced.group(1) if fenced else text
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

    def check_and_run(attempt: dict[str, Any]) -> QueryResult:
        query = validate(attempt["sql"], tables=attempt["tables"], dialect=db.dialect)
        return db.run(query)

    schema_step = RunnableLambda(read_schema, name="schema")
    write_sql = (text | RunnableLambda(extract_sql)).with_config(run_name="write_sql")
    run_step = RunnableLambda(check_and_run, name="check_and_run")
    answer_step = text.with_config(run_name="answer")

    async def pipeline(raw: Any, config: RunnableConfig) -> SQLAnswer:
        question = SQLQuestion.model_validate(raw).question
        # One read of the schema per request: the prompt and every validation see the same one.
        schema = await schema_step.ainvoke(question, config)
        messages: list[BaseMessage] = [
            SystemMessage(SYSTEM.format(dialect=db.dialect, schema=schema.describe())),
            HumanMessage(question),
        ]
        attempts: list[Attempt] = []
        for _ in range(max_repairs + 1):
            sql = await write_sql.ainvoke(messages, config)
            try:
                if not sql:
                    raise UnsafeQuery("the reply held no SQL")
                result = await run_step.ainvoke({"sql": sql, "tables": schema.names}, config)
            except (UnsafeQuery, QueryFailed) as exc:
                attempts.append(Attempt(sql=sql, error=str(exc)))
                await adispatch_custom_event("attempt", attempts[-1].model_dump(), config=config)
                messages += [
                    AIMessage(f"```sql\n{sql}\n```"),
                    HumanMessage(REPAIR.format(error=exc)),
                ]
                continue
            attempts.append(Attempt(sql=sql))
            await adispatch_custom_event("attempt", attempts[-1].model_dump(), config=config)
            prompt = ANSWER.format(
                question=question,
                sql=sql,
                count=len(result.rows),
                more=", more not shown"
                if result.truncated or len(result.rows) > ANSWER_ROWS
                else "",
                table=_table(result),
            )
            answer = await answer_step.ainvoke([HumanMessage(prompt)], config)
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
