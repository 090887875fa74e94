"""``/chains/*`` of the gateway app, in process: scripted LLMs, the real demo database and the
real embedder. The served chains are tested the same way in ``tests/integration``."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from langchain_core.language_models.fake_chat_models import FakeListChatModel

from bentochain.api.app import create_app
from bentochain.config.loader import PROJECT_ROOT
from bentochain.engines.encoder import SentenceEncoder
from bentochain.llms.embeddings import BentoEmbeddings
from bentochain.rag.ingest import FolderIndex, markdown_splitter
from bentochain.rag.store import SQLiteVectorStore
from bentochain.serving.chains import ChainEndpoint, ChainRunner
from bentochain.sql.database import ReadOnlyDatabase
from chains.catalog import CHAINS
from chains.rag import build_rag_chain
from chains.sql import NO_QUERY, build_sql_chain
from tests.unit.test_gateway_app import assert_openai_error, call, profile
from tests.unit.test_rag import CountingEncoder


class ChainBackends:
    """Only the chains: the model APIs are not called by these tests."""

    def __init__(self, chains: dict[str, ChainEndpoint]) -> None:
        self.chains = chains

    def chain(self, name: str) -> ChainEndpoint:
        return self.chains[name]

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the chain API called the model API {name}")


def app_with(**chains: ChainEndpoint) -> FastAPI:
    backends = ChainBackends(chains)
    return create_app(profile(gateway__limits__max_inputs="4"), lambda: backends)


def sql_runner(db: ReadOnlyDatabase, *replies: str) -> ChainRunner:
    llm = FakeListChatModel(responses=list(replies))
    return ChainRunner("sql", build_sql_chain(llm, db, max_repairs=2), CHAINS["sql"].steps)


def sse_events(text: str) -> list[tuple[str, Any]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def test_invoke_answers_with_the_rows_and_attempts(shop: tuple[Path, ReadOnlyDatabase]) -> None:
    path, db = shop
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    app = app_with(
        sql=sql_runner(
            db, "DELETE FROM customers", "SELECT COUNT(*) AS n FROM customers", "There are 40."
        )
    )
    response = call(app, "POST", "/chains/sql/invoke", json={"input": {"question": "How many?"}})
    assert response.status_code == 200, response.text
    body = response.json()
    uuid.UUID(body["metadata"]["run_id"])
    output = body["output"]
    assert output["columns"] == ["n"] and output["rows"] == [[40]]
    assert output["answer"] == "There are 40."
    assert [a["sql"] for a in output["attempts"]] == [
        "DELETE FROM customers",
        "SELECT COUNT(*) AS n FROM customers",
    ]
    assert "only a SELECT" in output["attempts"][0]["error"]
    assert output["attempts"][1]["error"] is None
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_when_every_attempt_fails_the_answer_says_so(shop: tuple[Path, ReadOnlyDatabase]) -> None:
    _, db = shop
    app = app_with(sql=sql_runner(db, "DROP TABLE orders"))
    response = call(app, "POST", "/chains/sql/invoke", json={"input": {"question": "Drop?"}})
    assert response.status_code == 200, response.text
    output = response.json()["output"]
    assert output["answer"].startswith(NO_QUERY) and output["sql"] is None
    assert len(output["attempts"]) == 3 and all(a["error"] for a in output["attempts"])


def test_batch_keeps_the_order_of_its_inputs(shop: tuple[Path, ReadOnlyDatabase]) -> None:
    _, db = shop
    # One reply per LLM call, the same for every question: each run writes SQL, then answers.
    app = app_with(sql=sql_runner(db, "SELECT COUNT(*) AS n FROM products", "Counted."))
    questions = [{"question": f"question {i}"} for i in range(3)]
    body = {"inputs": questions, "config": {"max_concurrency": 1, "tags": ["t"]}}
    response = call(app, "POST", "/chains/sql/batch", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    assert [o["question"] for o in data["outputs"]] == [q["question"] for q in questions]
    assert all(o["rows"] == [[12]] for o in data["outputs"])
    assert len(set(data["metadata"]["run_ids"])) == 3


def test_stream_reports_each_step_and_attempt_then_the_output(
    shop: tuple[Path, ReadOnlyDatabase],
) -> None:
    _, db = shop
    app = app_with(
        sql=sql_runner(db, "SELECT * FROM invoices", "SELECT name FROM products LIMIT 2", "Two.")
    )
    body = {"input": {"question": "Two products?"}}
    response = call(app, "POST", "/chains/sql/stream", json=body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    kinds = [kind if kind != "step" else f"step:{data['name']}" for kind, data in events]
    assert kinds == [
        "metadata",
        "step:schema",
        "step:generate",  # the refused query: `validate` raised, so it reports no end
        "step:attempt",
        "attempt",
        "step:generate",
        "step:validate",
        "step:execute",
        "step:attempt",
        "attempt",
        "step:answer",
        "output",
        "end",
    ]
    assert "invoices" in events[4][1]["error"]
    assert [t["name"] for t in events[1][1]["output"]["tables"]] == [
        "customers",
        "order_items",
        "orders",
        "products",
    ]
    assert events[-2][1]["answer"] == "Two." and len(events[-2][1]["rows"]) == 2


def test_schemas_come_from_the_chains_models() -> None:
    app = app_with()
    for name, spec in CHAINS.items():
        got = call(app, "GET", f"/chains/{name}/input_schema").json()
        assert got == spec.input_model.model_json_schema()
        assert call(app, "GET", f"/chains/{name}/output_schema").status_code == 200
    sql_in = call(app, "GET", "/chains/sql/input_schema").json()
    assert sql_in["required"] == ["question"]
    sql_out = call(app, "GET", "/chains/sql/output_schema").json()
    assert {"question", "sql", "columns", "rows", "answer", "attempts"} <= set(sql_out["required"])
    listed = call(app, "GET", "/chains").json()["chains"]
    assert [c["name"] for c in listed] == ["sql", "rag", "translate"]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "param"),
    [
        ("POST", "/chains/nope/invoke", {"input": {"question": "x"}}, 404, None),
        ("GET", "/chains/nope/input_schema", None, 404, None),
        ("POST", "/chains/sql/invoke", {"input": {}}, 422, "input.question"),
        ("POST", "/chains/sql/invoke", {"input": {"question": ""}}, 422, "input.question"),
        ("POST", "/chains/sql/invoke", {"question": "x"}, 422, "input"),
        ("POST", "/chains/sql/invoke", {"input": {"question": "x"}, "config": {"x": 1}}, 422,
         "config.x"),
        ("POST", "/chains/sql/batch", {"inputs": []}, 422, "inputs"),
        ("POST", "/chains/sql/batch", {"inputs": [{"question": "x"}, {}]}, 422,
         "inputs.1.question"),
        ("POST", "/chains/sql/batch", {"inputs": [{"question": "x"}] * 5}, 400, "inputs"),
        ("POST", "/chains/translate/invoke", {"input": {"question": "x", "target_lang": "de"}},
         422, "input.target_lang"),
    ],
)  # fmt: skip
def test_bad_requests_get_a_clear_error_and_no_run(
    shop: tuple[Path, ReadOnlyDatabase],
    method: str,
    path: str,
    body: Any,
    status: int,
    param: str | None,
) -> None:
    _, db = shop
    llm = FakeListChatModel(responses=["SELECT 1"])
    runner = ChainRunner("sql", build_sql_chain(llm, db), CHAINS["sql"].steps)
    app = app_with(sql=runner, translate=runner)
    error = assert_openai_error(call(app, method, path, json=body), status)
    assert error["param"] == param
    assert llm.i == 0  # the chain never ran
    bad_json = call(app, "POST", "/chains/sql/invoke", content=b"{not json")
    assert_openai_error(bad_json, 400, "invalid_json")


def test_a_failing_llm_is_a_5xx_and_an_error_event(shop: tuple[Path, ReadOnlyDatabase]) -> None:
    from bentochain.llms.resilience import ResilientChatModel, Route

    _, db = shop

    class Down(FakeListChatModel):
        async def _agenerate(self, *args: Any, **kwargs: Any) -> Any:
            raise ConnectionError("provider unreachable")

    llm = ResilientChatModel(
        routes=[Route("0:down", Down(responses=[""]), timeout=1.0, retries=1)],
        deadline=2.0,
        backoff=0.01,
    )
    app = app_with(sql=ChainRunner("sql", build_sql_chain(llm, db), CHAINS["sql"].steps))
    body = {"input": {"question": "anything"}}
    error = assert_openai_error(call(app, "POST", "/chains/sql/invoke", json=body), 502)
    assert "provider unreachable" in error["message"]
    events = sse_events(call(app, "POST", "/chains/sql/stream", json=body).text)
    assert [kind for kind, _ in events][-2:] == ["error", "end"]
    assert events[-2][1]["status"] == 502


def test_rag_invoke_cites_the_document_it_found(tmp_path: Path, embedder_dir: Path) -> None:
    embeddings = BentoEmbeddings(CountingEncoder(SentenceEncoder(embedder_dir)))
    store = SQLiteVectorStore(tmp_path / "v.sqlite", embeddings, embedding_id="minilm")
    index = FolderIndex(PROJECT_ROOT / "data" / "docs", store, markdown_splitter(800, 100))
    llm = FakeListChatModel(responses=["Free above 60 euros [1]."])
    runner = ChainRunner(
        "rag", build_rag_chain(llm, store, top_k=3, sync=index.ensure_synced), CHAINS["rag"].steps
    )
    body = {"input": {"question": "How much does shipping cost in France?"}}
    response = call(app_with(rag=runner), "POST", "/chains/rag/invoke", json=body)
    assert response.status_code == 200, response.text
    output = response.json()["output"]
    assert output["answer"] == "Free above 60 euros [1]."
    assert output["sources"][0]["source"] == "shipping.md"
    assert output["sources"][0]["title"] == "Shipping" and output["sources"][0]["id"] == 1
    store.close()
