"""The SQL chain on its evaluation set: how many questions get a valid query, and a correct one.

Each question of ``data/eval/sql_questions.yaml`` goes to a served Bento's
``/chains/sql/invoke``. A query is *valid* when it passed validation and ran; it is *correct*
when its rows equal those of the question's reference query, run here on the same database (in
any order, unless the reference orders them; numbers compared to 1e-6). The table is printed and
written to ``docs/sql_eval.md``.

Usage: ``python -m loadtest.sql_eval [--target http://127.0.0.1:3000] [--no-markdown]``
(serve the Bento first: ``make serve``).
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import yaml
from pydantic import BaseModel

from bentochain.config.loader import PROJECT_ROOT, load_settings

QUESTIONS = PROJECT_ROOT / "data" / "eval" / "sql_questions.yaml"
REPORT = PROJECT_ROOT / "docs" / "sql_eval.md"


class Case(BaseModel):
    question: str
    sql: str


class Outcome(BaseModel):
    question: str
    sql: str | None
    valid: bool
    correct: bool
    attempts: int
    answer: str
    seconds: float


def _normal(value: Any) -> Any:
    return round(float(value), 6) if isinstance(value, int | float) else value


def same_rows(got: list[list[Any]], expected: list[tuple[Any, ...]], ordered: bool) -> bool:
    left = [tuple(_normal(v) for v in row) for row in got]
    right = [tuple(_normal(v) for v in row) for row in expected]
    return left == right if ordered else Counter(left) == Counter(right)


def evaluate(target: str, database: Path, cases: list[Case]) -> list[Outcome]:
    outcomes: list[Outcome] = []
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db, httpx.Client() as http:
        for case in cases:
            expected = db.execute(case.sql).fetchall()
            started = time.perf_counter()
            response = http.post(
                f"{target}/chains/sql/invoke",
                json={"input": {"question": case.question}},
                timeout=600,
            )
            response.raise_for_status()
            output = response.json()["output"]
            valid = output["sql"] is not None
            ordered = "order by" in case.sql.lower()
            outcomes.append(
                Outcome(
                    question=case.question,
                    sql=output["sql"],
                    valid=valid,
                    correct=valid and same_rows(output["rows"], expected, ordered),
                    attempts=len(output["attempts"]),
                    answer=output["answer"],
                    seconds=time.perf_counter() - started,
                )
            )
            mark = "correct" if outcomes[-1].correct else "valid" if valid else "no query"
            print(f"{mark:>8}  {case.question}  ->  {output['sql']}", flush=True)
    return outcomes


def report(outcomes: list[Outcome], model: str) -> list[str]:
    valid = sum(o.valid for o in outcomes)
    correct = sum(o.correct for o in outcomes)
    lines = [
        "# SQL chain evaluation",
        "",
        f"Model: `{model}`. Questions: `data/eval/sql_questions.yaml`. "
        "Reproduce: `make serve`, then `.venv/bin/python -m loadtest.sql_eval`.",
        "",
        f"**{valid}/{len(outcomes)} produced a valid query; {correct}/{len(outcomes)} a correct "
        "one** (its rows equal the reference query's).",
        "",
        "| question | query the chain ran | valid | correct | attempts | answer |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for o in outcomes:
        sql = f"`{' '.join(o.sql.split())}`" if o.sql else "none"
        answer = " ".join(o.answer.split()).replace("|", "\\|")[:160]
        lines.append(
            f"| {o.question} | {sql.replace('|', chr(92) + '|')} | {'yes' if o.valid else 'no'} "
            f"| {'yes' if o.correct else 'no'} | {o.attempts} | {answer} |"
        )
    return [*lines, ""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="http://127.0.0.1:3000")
    parser.add_argument("--no-markdown", action="store_true")
    args = parser.parse_args(argv)
    settings = load_settings()
    database = Path(settings.chains.state_dir)
    if not database.is_absolute():
        database = PROJECT_ROOT / database
    cases = [Case.model_validate(c) for c in yaml.safe_load(QUESTIONS.read_text())]
    outcomes = evaluate(args.target.rstrip("/"), database / "shop.sqlite", cases)
    lines = report(outcomes, str(settings.llm.model))
    print("\n".join(lines[:6]))
    if not args.no_markdown:
        REPORT.write_text("\n".join(lines))
        print(f"wrote {REPORT.relative_to(PROJECT_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
