"""How a replay is judged: each measure from crafted answers, and what each request becomes
when it is sent again. Served end to end: tests/integration/test_replay.py."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from bentochain.config.schema import QualityGate
from bentochain.observability.records import RequestRecord
from bentochain.quality.replay import Replayed, compare, request_of, vector_of


def record(endpoint: str, input: Any, output: Any, latency: float = 1.0) -> RequestRecord:
    return RequestRecord(
        request_id=f"r-{endpoint}",
        time=datetime(2026, 1, 1, tzinfo=UTC),
        endpoint=endpoint,
        status=200,
        input=input,
        output=output,
        latency_s=latency,
    )


def sql(rows: list[list[Any]]) -> dict[str, Any]:
    return {"chain": {"answer": "n", "columns": ["n"], "rows": rows, "attempts": []}}


def rag(*sources: str) -> dict[str, Any]:
    found = [{"source": s, "chunk": 0, "score": 0.5} for s in sources]
    return {"chain": {"answer": "a", "sources": found}}


def measures(replayed: list[Replayed], gate: QualityGate | None = None) -> dict[str, Any]:
    found = compare(replayed, "http://candidate", gate or QualityGate())
    return {m.name: (m.value, m.samples, m.passed) for m in found.measures}


def test_each_measure_from_its_own_kind_of_request() -> None:
    greedy = {"messages": [], "temperature": 0}
    replayed = [
        Replayed(
            record("/v1/chat/completions", greedy, {"texts": ["same"]}),
            200,
            1.0,
            {"texts": ["same"]},
            cosine=1.0,
        ),
        Replayed(
            record("/v1/chat/completions", greedy, {"texts": ["a"]}),
            200,
            1.0,
            {"texts": ["b"]},
            cosine=0.5,
        ),
        # Sampled (temperature 1): not an exact-match case, still a similarity one.
        Replayed(
            record("/v1/chat/completions", {"temperature": 1}, {"texts": ["x"]}),
            200,
            3.0,
            {"texts": ["y"]},
            cosine=0.9,
        ),
        Replayed(record("/chains/sql/invoke", {}, sql([[1]])), 200, 1.0, sql([[1]])),
        Replayed(record("/chains/sql/stream", {}, sql([[1]])), 200, 1.0, sql([[2]])),
        Replayed(
            record("/chains/rag/invoke", {}, rag("a.md", "b.md")), 200, 1.0, rag("b.md", "c.md")
        ),
        Replayed(record("/v1/embeddings", {}, {"embeddings": [[1.0]]}), 503, 0.1, error="down"),
    ]
    found = measures(replayed)
    assert found["requests"] == (7.0, 7, True)
    assert found["error_rate"] == (pytest.approx(1 / 7), 7, False)
    # Greedy: the two chats, the two SQL runs and the RAG run (their chain answers are texts).
    assert found["exact_match"][:2] == (pytest.approx(4 / 5), 5)
    assert found["cosine"] == (pytest.approx(2.4 / 3), 3, False)
    assert found["sql_rows_match"] == (0.5, 2, False)
    assert found["source_overlap"] == (pytest.approx(1 / 3), 1, False)
    # Latency of what was answered: candidate p50 1.0 over recorded p50 1.0.
    assert found["latency_p50_ratio"][0] == pytest.approx(1.0)


def test_a_measure_with_nothing_to_judge_is_reported_not_failed() -> None:
    replayed = [Replayed(record("/translate", {}, {"texts": ["t"]}), 200, 2.0, {"texts": ["t"]})]
    found = measures(replayed)
    assert found["sql_rows_match"] == (None, 0, None)
    assert found["source_overlap"] == (None, 0, None)
    assert found["exact_match"] == (1.0, 1, True)
    assert found["latency_p50_ratio"] == (2.0, 1, False)  # 2 s against 1 s recorded
    loose = QualityGate(max_latency_p50_ratio=3, max_latency_p99_ratio=3)
    assert compare(replayed, "http://candidate", loose).passed


def test_requests_are_sent_again_as_plain_requests_for_the_same_answer() -> None:
    streamed = record(
        "/v1/chat/completions",
        {"model": "m", "stream": True, "stream_options": {"include_usage": True}},
        None,
    )
    assert request_of(streamed) == ("/v1/chat/completions", {"model": "m"})
    vectors = record("/v1/embeddings", {"input": "x", "encoding_format": "base64"}, None)
    assert request_of(vectors) == ("/v1/embeddings", {"input": "x", "encoding_format": "float"})
    chain = record("/chains/sql/stream", {"input": {"question": "q"}}, None)
    assert request_of(chain) == ("/chains/sql/invoke", {"input": {"question": "q"}})


def test_recorded_embeddings_are_read_in_both_formats() -> None:
    """Records keep vectors as base64 float32; records written before that kept floats."""
    floats = [0.5, -1.25, 3.0]
    packed = base64.b64encode(np.asarray(floats, dtype="<f4").tobytes()).decode("ascii")
    assert vector_of(packed) == floats
    assert vector_of(floats) == floats
