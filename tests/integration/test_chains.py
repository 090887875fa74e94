"""The chains served: ``/chains/{name}/*`` through the gateway to SQLChain, RAGChain and the
translate chain, with the demo models (composed and split topologies), then with the SQL
chain switched by environment variables to PostgreSQL and an OpenAI-compatible server."""

from __future__ import annotations

import hashlib
import re
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from bentochain.serving.topology import composed_server
from chains.sql import NO_QUERY
from tests.integration.conftest import RECORDS_DIR, Server
from tests.support.standin import Script, stand_in
from tests.unit.test_chain_api import sse_events

pytestmark = pytest.mark.integration

TIMEOUT = 180


def post(server: Server, path: str, body: Any) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, timeout=TIMEOUT)


def counter(metrics: str, name: str, chain: str) -> float:
    found = re.search(rf'^{name}{{chain="{chain}"}} ([0-9.e+]+)$', metrics, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_sql_invoke_is_well_formed_and_leaves_the_database_alone(
    gateway: Server, served_env: dict[str, str]
) -> None:
    database = Path(served_env["BENTOCHAIN_CHAINS__STATE_DIR"]) / "shop.sqlite"
    before = hashlib.sha256(database.read_bytes()).hexdigest()
    response = post(gateway, "/chains/sql/invoke", {"input": {"question": "How many orders?"}})
    assert response.status_code == 200, response.text
    body = response.json()
    uuid.UUID(body["metadata"]["run_id"])
    output = body["output"]
    assert output["question"] == "How many orders?"
    assert output["attempts"] and all(set(a) == {"sql", "error"} for a in output["attempts"])
    # The demo LLM has random weights and decodes greedily, the same every run: it cannot
    # write SQL, so every attempt fails with the validator's reason and the answer says so,
    # instead of a server error. (A query that runs: the stand-in provider's test below.)
    assert output["sql"] is None and output["answer"].startswith(NO_QUERY)
    assert len(output["attempts"]) == 3 and all(a["error"] for a in output["attempts"])
    assert hashlib.sha256(database.read_bytes()).hexdigest() == before


def test_rag_invoke_answers_with_its_sources(gateway: Server) -> None:
    question = {"question": "How many days do I have to return a product?"}
    response = post(gateway, "/chains/rag/invoke", {"input": question})
    assert response.status_code == 200, response.text
    output = response.json()["output"]
    assert output["answer"]
    sources = output["sources"]
    assert [s["id"] for s in sources] == [1, 2, 3, 4]
    assert sources[0]["source"] == "returns.md" and "30 days" in sources[0]["text"]
    assert sources[0]["score"] > sources[-1]["score"]


def test_translate_chain_composes_llm_and_translator(gateway: Server) -> None:
    body = {"input": {"question": "Where is the shop?", "target_lang": "fr"}}
    response = post(gateway, "/chains/translate/invoke", body)
    assert response.status_code == 200, response.text
    output = response.json()["output"]
    assert output["english"] and output["answer"] and output["target_lang"] == "fr"


def test_batch_and_stream(gateway: Server) -> None:
    questions = [{"question": "Is knife damage covered?"}, {"question": "Which cards work?"}]
    response = post(gateway, "/chains/rag/batch", {"inputs": questions})
    assert response.status_code == 200, response.text
    outputs = response.json()["outputs"]
    assert [o["question"] for o in outputs] == [q["question"] for q in questions]
    assert [o["sources"][0]["source"] for o in outputs] == ["warranty.md", "payments.md"]

    response = post(gateway, "/chains/sql/stream", {"input": {"question": "Top products?"}})
    assert response.status_code == 200
    events = sse_events(response.text)
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "metadata" and kinds[-2:] == ["output", "end"]
    steps = [data["name"] for kind, data in events if kind == "step"]
    assert steps[0] == "schema" and "generate" in steps
    attempts = [data for kind, data in events if kind == "attempt"]
    assert attempts == events[-2][1]["attempts"]


def test_bad_requests_are_refused_and_the_chains_keep_serving(gateway: Server) -> None:
    for path, body, status in [
        ("/chains/nope/invoke", {"input": {"question": "x"}}, 404),
        ("/chains/sql/invoke", {"input": {"question": ""}}, 422),
        ("/chains/rag/invoke", {"input": {"question": "x"}, "config": {"evil": 1}}, 422),
    ]:
        response = post(gateway, path, body)
        assert response.status_code == status, response.text
        assert response.json()["error"]["message"]
    schema = httpx.get(f"{gateway.url}/chains/rag/input_schema", timeout=10).json()
    assert schema["required"] == ["question"]
    assert post(gateway, "/chains/rag/invoke", {"input": {"question": "Hours?"}}).status_code == 200


def test_deterministic_llm_calls_are_cached_and_counted(gateway: Server) -> None:
    metrics_url = gateway.services.get("RAGChain", gateway.url) + "/metrics"
    hits = "bentochain_llm_cache_hits_total"
    misses = "bentochain_llm_cache_misses_total"
    before = httpx.get(metrics_url, timeout=10).text
    question = {"question": f"Is gift wrapping available? ({uuid.uuid4()})"}
    first = post(gateway, "/chains/rag/invoke", {"input": question}).json()["output"]
    second = post(gateway, "/chains/rag/invoke", {"input": question}).json()["output"]
    assert first["answer"] == second["answer"]
    after = httpx.get(metrics_url, timeout=10).text
    assert counter(after, misses, "rag") == counter(before, misses, "rag") + 1
    assert counter(after, hits, "rag") == counter(before, hits, "rag") + 1


def test_env_vars_switch_the_sql_chain_to_postgres_and_an_openai_server(
    served_env: dict[str, str], postgres_shop: str, tmp_path: Path
) -> None:
    """No code change: the profile's keys, set by environment, pick the database and the LLM."""
    sql = "SELECT country, COUNT(*) AS customers FROM customers GROUP BY country ORDER BY 2 DESC"
    script = Script(replies=[f"```sql\n{sql}\n```", "Most customers live in one country."])
    with stand_in(script) as provider:
        env = {
            **served_env,
            "BENTOCHAIN_CHAINS__SQL__DATABASE": postgres_shop,
            "BENTOCHAIN_CHAINS__SQL__LLM__PROVIDER": "openai",
            "BENTOCHAIN_CHAINS__SQL__LLM__MODEL": "stand-in-sql",
            "BENTOCHAIN_CHAINS__SQL__LLM__BASE_URL": f"{provider.url}/v1",
            "BENTOCHAIN_CHAINS__SQL__LLM__API_KEY_ENV": "SQL_LLM_KEY",
            "SQL_LLM_KEY": "sk-test-key",
            "BENTOCHAIN_CHAINS__CACHE__BACKEND": "none",
            RECORDS_DIR: str(tmp_path / "records"),
        }
        with composed_server(tmp_path / "serve.log", env=env, timeout=300) as url:
            server = Server(url, tmp_path / "serve.log", tmp_path / "records")
            response = post(server, "/chains/sql/invoke", {"input": {"question": "Where?"}})
    assert response.status_code == 200, response.text
    output = response.json()["output"]
    assert output["answer"] == "Most customers live in one country."
    assert output["columns"] == ["country", "customers"]
    assert sum(row[1] for row in output["rows"]) == 40  # every customer of the demo shop
    assert [a["error"] for a in output["attempts"]] == [None]
    first, second = script.calls  # write the SQL, then answer from its rows
    assert first["body"]["model"] == "stand-in-sql"
    assert "France" in second["body"]["messages"][-1]["content"]
    assert first["headers"]["authorization"] == "Bearer sk-test-key"
    prompt = first["body"]["messages"][0]["content"]
    assert "postgres" in prompt and "FOREIGN KEY (customer_id) REFERENCES customers(id)" in prompt
