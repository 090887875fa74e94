"""Replay recorded requests on a candidate deployment and compare its answers with the
recorded ones.

Each recorded request that was answered 200 is sent again to the same endpoint of the
candidate (a stream as a plain request, a chain stream as an invoke: the answer is what is
compared, not how it travelled). The measures:

- **exact match**, over greedy requests (temperature 0, translations and chain runs, whose
  LLM runs at the profile's temperature, 0 by default): the very same text;
- **cosine similarity** of each answer with the recorded one, both embedded by the candidate's
  embedding model (vectors from ``/v1/embeddings`` are compared as they are);
- **SQL rows**: the SQL chain's result rows, equal or not;
- **source overlap**: the Jaccard overlap of the RAG chain's sources;
- **latency**: p50 and p99 of the candidate over those recorded, and the **error rate**.
"""

from __future__ import annotations

import asyncio
import base64
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from bentochain.config.schema import QualityGate
from bentochain.observability.records import RequestRecord

STREAMED_CHAIN = "/stream"
TEXT_ENDPOINTS = ("/v1/chat/completions", "/v1/completions")


@dataclass
class Replayed:
    """One recorded request and what the candidate answered to it."""

    record: RequestRecord
    status: int
    latency_s: float
    output: Any = None
    error: str | None = None
    cosine: float | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200


def replayable(record: RequestRecord) -> bool:
    body = record.input
    return record.status == 200 and isinstance(body, dict) and "too_large" not in body


def request_of(record: RequestRecord) -> tuple[str, dict[str, Any]]:
    """Where and what to send again: a stream as a plain request, vectors as floats."""
    path = record.endpoint
    body = dict(record.input)
    if path in TEXT_ENDPOINTS:
        body.pop("stream", None)
        body.pop("stream_options", None)
    elif path == "/v1/embeddings":
        body["encoding_format"] = "float"
    elif path.startswith("/chains/") and path.endswith(STREAMED_CHAIN):
        path = path.removesuffix(STREAMED_CHAIN) + "/invoke"
    return path, body


def output_of(path: str, answer: dict[str, Any]) -> Any:
    """The candidate's answer in the shape the records keep."""
    if path == "/v1/chat/completions":
        return {"texts": [c["message"]["content"] for c in answer["choices"]]}
    if path == "/v1/completions":
        return {"texts": [c["text"] for c in answer["choices"]]}
    if path == "/v1/embeddings":
        return {"embeddings": [d["embedding"] for d in answer["data"]]}
    if path == "/translate":
        return {"texts": answer["translations"]}
    if path.endswith("/batch"):
        return {"chains": answer["outputs"]}
    return {"chain": answer["output"]}


def greedy(record: RequestRecord) -> bool:
    if record.endpoint in TEXT_ENDPOINTS:
        return isinstance(record.input, dict) and record.input.get("temperature") == 0
    return record.endpoint == "/translate" or record.endpoint.startswith("/chains/")


def texts(output: Any) -> list[str]:
    """The answer's texts: generated texts, translations, or a chain's answers."""
    if not isinstance(output, dict):
        return []
    if "texts" in output:
        return [str(t) for t in output["texts"]]
    chains = output.get("chains") or ([output["chain"]] if "chain" in output else [])
    return [str(c.get("answer", "")) for c in chains if isinstance(c, dict)]


async def replay(
    records: Sequence[RequestRecord],
    target: str,
    *,
    concurrency: int = 1,
    request_timeout: float = 300,
) -> list[Replayed]:
    """Send every record's request to ``target``, at most ``concurrency`` at a time (one by
    default: a batch of one decodes as the recorded request did, when it ran alone)."""
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=target.rstrip("/"), timeout=request_timeout) as client:

        async def one(record: RequestRecord) -> Replayed:
            path, body = request_of(record)
            async with limit:
                started = time.monotonic()
                try:
                    response = await client.post(path, json=body)
                except httpx.HTTPError as exc:
                    elapsed = time.monotonic() - started
                    return Replayed(record, 0, elapsed, error=f"{type(exc).__name__}: {exc}")
                elapsed = time.monotonic() - started
            if response.status_code != 200:
                return Replayed(record, response.status_code, elapsed, error=response.text[:500])
            return Replayed(record, 200, elapsed, output_of(path, response.json()))

        replayed = list(await asyncio.gather(*(one(r) for r in records)))
        await _similarities(client, replayed)
    return replayed


async def _similarities(client: httpx.AsyncClient, replayed: list[Replayed]) -> None:
    """Each answered pair's cosine similarity: vectors as they are, texts embedded first."""
    pending: list[tuple[Replayed, list[str], list[str]]] = []
    for item in replayed:
        if not item.ok:
            continue
        if item.record.endpoint == "/v1/embeddings":
            before = item.record.output.get("embeddings", []) if item.record.output else []
            before = [vector_of(v) for v in before]
            after = item.output.get("embeddings", [])
            item.cosine = _mean([cosine(a, b) for a, b in zip(before, after, strict=False)])
            continue
        old, new = texts(item.record.output), texts(item.output)
        if old and len(old) == len(new):
            pending.append((item, old, new))
    if not pending:
        return
    models = (await client.get("/v1/models")).json()["data"]
    embedder = next((m["id"] for m in models if m.get("task") == "embedding"), None)
    if embedder is None:
        return
    for item, old, new in pending:
        inputs = [t or " " for t in old + new]  # the embedder refuses an empty string
        response = await client.post(
            "/v1/embeddings", json={"model": embedder, "input": inputs, "encoding_format": "float"}
        )
        if response.status_code != 200:
            continue
        vectors = [d["embedding"] for d in response.json()["data"]]
        half = len(old)
        item.cosine = _mean(
            [cosine(a, b) for a, b in zip(vectors[:half], vectors[half:], strict=True)]
        )


def vector_of(recorded: str | Sequence[float]) -> Sequence[float]:
    """A recorded embedding: base64 float32 (as records keep them), or floats (older records)."""
    if isinstance(recorded, str):
        floats: list[float] = np.frombuffer(base64.b64decode(recorded), dtype="<f4").tolist()
        return floats
    return recorded


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    norms = float(np.linalg.norm(x) * np.linalg.norm(y))
    return float(x @ y / norms) if norms else 0.0


def _mean(values: Iterable[float]) -> float | None:
    found = list(values)
    return sum(found) / len(found) if found else None


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else math.nan


@dataclass
class Measure:
    name: str
    value: float | None  # None: nothing to measure it on
    samples: int
    threshold: float
    higher_is_better: bool
    description: str

    @property
    def passed(self) -> bool | None:
        if self.value is None:
            return None
        if self.higher_is_better:
            return self.value >= self.threshold
        return self.value <= self.threshold


@dataclass
class Comparison:
    target: str
    requests: int
    measures: list[Measure] = field(default_factory=list)
    replayed: list[Replayed] = field(default_factory=list)

    @property
    def failed(self) -> list[Measure]:
        return [m for m in self.measures if m.passed is False]

    @property
    def passed(self) -> bool:
        return not self.failed


def compare(replayed: list[Replayed], target: str, gate: QualityGate) -> Comparison:
    """The measures of a replay, each judged by ``gate``."""
    answered = [r for r in replayed if r.ok]
    exact = [texts(r.output) == texts(r.record.output) for r in answered if greedy(r.record)]
    cosines = [r.cosine for r in answered if r.cosine is not None]
    sql = [
        _chain(r.output).get("rows") == _chain(r.record.output).get("rows")
        and _chain(r.output).get("columns") == _chain(r.record.output).get("columns")
        for r in answered
        if r.record.endpoint.startswith("/chains/sql/") and _chain(r.record.output)
    ]
    overlaps = [
        _jaccard(_sources(r.record.output), _sources(r.output))
        for r in answered
        if r.record.endpoint.startswith("/chains/rag/") and _chain(r.record.output)
    ]
    recorded = [r.record.latency_s for r in answered]
    candidate = [r.latency_s for r in answered]

    def ratio(q: float) -> float | None:
        if not answered:
            return None
        base = percentile(recorded, q)
        return percentile(candidate, q) / base if base > 0 else None

    errors = sum(not r.ok for r in replayed)
    measures = [
        Measure(
            "requests",
            float(len(replayed)),
            len(replayed),
            gate.min_requests,
            True,
            "recorded requests replayed",
        ),
        Measure(
            "error_rate",
            errors / len(replayed) if replayed else None,
            len(replayed),
            gate.max_error_rate,
            False,
            "share of answers other than 200",
        ),
        Measure(
            "exact_match",
            _mean(float(e) for e in exact),
            len(exact),
            gate.min_exact_match,
            True,
            "greedy requests answered with the very same text",
        ),
        Measure(
            "cosine",
            _mean(cosines),
            len(cosines),
            gate.min_cosine,
            True,
            "mean cosine similarity of the answers",
        ),
        Measure(
            "sql_rows_match",
            _mean(float(s) for s in sql),
            len(sql),
            gate.min_sql_rows_match,
            True,
            "SQL chain runs with the same result rows",
        ),
        Measure(
            "source_overlap",
            _mean(overlaps),
            len(overlaps),
            gate.min_source_overlap,
            True,
            "mean Jaccard overlap of the RAG chain's sources",
        ),
        Measure(
            "latency_p50_ratio",
            ratio(50),
            len(answered),
            gate.max_latency_p50_ratio,
            False,
            "candidate p50 latency / recorded p50",
        ),
        Measure(
            "latency_p99_ratio",
            ratio(99),
            len(answered),
            gate.max_latency_p99_ratio,
            False,
            "candidate p99 latency / recorded p99",
        ),
    ]
    return Comparison(target, len(replayed), measures, replayed)


def _chain(output: Any) -> dict[str, Any]:
    if isinstance(output, dict) and isinstance(output.get("chain"), dict):
        return output["chain"]  # type: ignore[no-any-return]
    return {}


def _sources(output: Any) -> set[str]:
    return {
        f"{s.get('source')}#{s.get('chunk')}"
        for s in _chain(output).get("sources", [])
        if isinstance(s, dict)
    }


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0
