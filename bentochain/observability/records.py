"""Quality records: each request as one JSON line, for comparing a version with a baseline.

A record holds what was asked and what was answered (the request body as the client sent it,
the answer's text, vectors or chain output), how it went (status, latency, time to first
token, token counts, finish reason) and where to look further (request id, trace id, model
and version). Feedback from users joins a record by its request id.

Writing never slows or fails a request: records go through a bounded queue to a thread that
appends them to size-rotated files. A full queue (a slow disk) or a failed write (a full or
read-only disk) drops the record and counts it, nothing else. ``bentoml.monitor`` was the
first choice and is not used: it writes on the request path (a logging handler), rotates by
day only, takes flat columns with a fixed schema, and drops nothing in a countable way.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field, TypeAdapter

logger = logging.getLogger(__name__)

SUFFIX = ".jsonl"


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class RequestRecord(BaseModel):
    """One request, as the gateway answered it."""

    kind: Literal["request"] = "request"
    request_id: str
    trace_id: str | None = None
    time: datetime = Field(description="when the request arrived (UTC)")
    endpoint: str = Field(description="the path, e.g. /v1/chat/completions")
    status: int
    model: str | None = Field(None, description="the served model id, or the chain's name")
    model_reference: str | None = Field(
        None, description="the model behind that id, e.g. demo:llama-tiny or hf:<id>@<revision>"
    )
    model_version: str | None = Field(
        None, description="the versions that served it (x-bentochain-version), e.g. LLM=canary"
    )
    input: Any = Field(None, description="the request body, as the client sent it")
    output: Any = Field(
        None,
        description=(
            "{texts}, {embeddings} (each base64 float32, OpenAI's base64 format) or {chain}: "
            "what the client was answered"
        ),
    )
    usage: Usage | None = None
    latency_s: float
    ttft_s: float | None = Field(None, description="time to the first generated token")
    finish_reason: str | None = None
    error: str | None = None
    steps: dict[str, Any] | None = Field(None, description="a chain's steps: SQL, rows, sources")


class FeedbackRecord(BaseModel):
    """A user's rating of an earlier answer, joined to its record by ``request_id``."""

    kind: Literal["feedback"] = "feedback"
    request_id: str
    time: datetime
    score: float
    comment: str | None = None


AnyRecord = RequestRecord | FeedbackRecord
_RECORD = TypeAdapter(AnyRecord)


class RecordMetrics(Protocol):
    def written(self) -> None: ...

    def dropped(self, reason: str) -> None: ...


class NullRecordMetrics:
    def written(self) -> None:
        pass

    def dropped(self, reason: str) -> None:
        pass


class Recorder(Protocol):
    def submit(self, record: AnyRecord) -> None:
        """Hand a record over; returns at once, whatever becomes of it."""
        ...


def redact(data: Any, paths: Sequence[str]) -> Any:
    """``data`` with each dotted path's value replaced by its size (lists are walked into):
    ``input.messages.content`` keeps who spoke and how much, not what was said."""
    for path in paths:
        data = _redact(data, path.split("."))
    return data


def _redact(node: Any, parts: list[str]) -> Any:
    if isinstance(node, list):
        return [_redact(item, parts) for item in node]
    if not parts:
        return _size(node)
    if isinstance(node, dict) and parts[0] in node:
        return {**node, parts[0]: _redact(node[parts[0]], parts[1:])}
    return node


def _size(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        return {"redacted": True, "chars": len(value)}
    if isinstance(value, list | dict):
        return {"redacted": True, "items": len(value)}
    return {"redacted": True}


class RecordWriter:
    """Appends records to ``directory/<name>.jsonl`` from a thread of its own, rotating the
    file past ``max_bytes`` (``<name>.jsonl.1`` is the newest old one; ``backups`` are kept).
    The thread starts with the first record.

    A record is turned into its line by the caller (the event loop, once the answer has gone
    out) and left in a queue; the thread wakes every ``flush_seconds`` and writes what has
    queued with one flush. Nothing wakes the thread per record: a thread woken for each request
    took the GIL from the event loop as the next request came in (a tenth of the gateway's busy
    time in a profile, most of what records added to its latency).
    """

    def __init__(
        self,
        directory: Path,
        name: str,
        *,
        max_bytes: int = 50 * 2**20,
        backups: int = 5,
        queue_size: int = 10_000,
        flush_seconds: float = 0.5,
        redact_paths: Sequence[str] = (),
        metrics: RecordMetrics | None = None,
    ) -> None:
        self.path = directory / f"{name}{SUFFIX}"
        self.max_bytes = max_bytes
        self.backups = backups
        self.queue_size = queue_size
        self.flush_seconds = flush_seconds
        self.redact_paths = tuple(redact_paths)
        self.metrics = metrics or NullRecordMetrics()
        self._queued: deque[bytes] = deque()  # appends and pops are atomic: no lock, no wake-up
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._file: Any = None
        self._warned = False

    def submit(self, record: AnyRecord) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="bentochain-records", daemon=True
                    )
                    self._thread.start()
        if len(self._queued) >= self.queue_size:
            self.metrics.dropped("queue_full")
            return
        data = redact(record.model_dump(mode="json", exclude_none=True), self.redact_paths)
        line = json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n"
        self._queued.append(line.encode())

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop the thread (waits up to ``timeout``)."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            stopping = self._stop.wait(self.flush_seconds)
            lines = [self._queued.popleft() for _ in range(len(self._queued))]
            if not lines:
                continue
            try:
                self._write(lines)
            except OSError as exc:
                self._failed(exc, len(lines))
            else:
                for _ in lines:
                    self.metrics.written()
        if self._file is not None:
            self._file.close()

    def _failed(self, exc: OSError, lost: int) -> None:
        """A failed write loses its whole batch: what was buffered before the error may not
        have reached the disk either."""
        for _ in range(lost):
            self.metrics.dropped("write_error")
        if self._file is not None:  # opened again on the next record: the disk may recover
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        if not self._warned:
            logger.warning("quality records are being dropped: %s (counted on /metrics)", exc)
            self._warned = True

    def _write(self, lines: list[bytes]) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("ab")
        size = self._file.tell()  # once a batch: each tell() is a system call
        for line in lines:
            if size and size + len(line) > self.max_bytes:
                self._rotate()
                size = 0
            self._file.write(line)
            size += len(line)
        self._file.flush()
        self._warned = False

    def _rotate(self) -> None:
        self._file.close()
        self._file = None
        for n in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{n + 1}"))
        if self.backups:
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink()
        self._file = self.path.open("ab")


def record_files(paths: Iterable[Path]) -> list[Path]:
    """Every record file under ``paths`` (files or folders), oldest rotation first."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            candidates = sorted(p for p in path.rglob(f"*{SUFFIX}*") if p.is_file())
        else:
            candidates = [path]
        found += sorted(candidates, key=_age, reverse=True)
    return found


def _age(path: Path) -> int:
    """0 for the live file, n for its n-th rotation: bigger is older."""
    suffix = path.name.rpartition(SUFFIX)[2].lstrip(".")
    return int(suffix) if suffix.isdigit() else 0


def read_records(paths: Iterable[Path]) -> Iterator[AnyRecord]:
    """The records in ``paths``; a line that is not a record (a torn last line) is skipped."""
    for path in record_files(paths):
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                if not line.strip():
                    continue
                try:
                    yield _RECORD.validate_json(line)
                except ValueError:
                    logger.warning("%s: skipped a line that is not a record", path)
