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
