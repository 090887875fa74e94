"""The quality-record writer: lines on disk, rotation, redaction, and a disk that is full or
slow costing records (counted), never a request."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bentochain.observability.records import (
    FeedbackRecord,
    RecordWriter,
    RequestRecord,
    Usage,
    read_records,
    redact,
)


class Counts:
    def __init__(self) -> None:
        self.written = 0
        self.lost: dict[str, int] = {}
        self.changed = threading.Condition()

    def written_(self) -> None:
        with self.changed:
            self.written += 1
            self.changed.notify_all()

    def dropped(self, reason: str) -> None:
        with self.changed:
            self.lost[reason] = self.lost.get(reason, 0) + 1
            self.changed.notify_all()


class Metrics:
    def __init__(self, counts: Counts) -> None:
        self.counts = counts

    def written(self) -> None:
        self.counts.written_()

    def dropped(self, reason: str) -> None:
        self.counts.dropped(reason)


def request(n: int, text: str = "an answer") -> RequestRecord:
    return RequestRecord(
        request_id=f"req-{n}",
        time=datetime(2026, 1, 1, tzinfo=UTC),
        endpoint="/v1/chat/completions",
        status=200,
        model="llama-tiny",
        input={"messages": [{"role": "user", "content": f"question {n}"}]},
        output={"texts": [text]},
        usage=Usage(prompt_tokens=3, completion_tokens=2),
        latency_s=0.5,
    )


def test_records_are_json_lines_read_back_in_order_across_rotations(tmp_path: Path) -> None:
    counts = Counts()
    writer = RecordWriter(tmp_path, "records.1", max_bytes=1000, backups=3, metrics=Metrics(counts))
    for n in range(12):
        writer.submit(request(n))
    writer.submit(
        FeedbackRecord(request_id="req-3", time=datetime.now(UTC), score=0.0, comment="wrong")
    )
    writer.close()
    assert counts.written == 13 and counts.lost == {}
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["records.1.jsonl", *(f"records.1.jsonl.{n}" for n in (1, 2, 3))]
    assert all(p.stat().st_size <= 1000 for p in tmp_path.iterdir())
    first_line = json.loads((tmp_path / "records.1.jsonl.3").read_text().splitlines()[0])
    assert first_line["kind"] == "request" and "trace_id" not in first_line  # None: left out
    records = list(read_records([tmp_path]))
    ids = [r.request_id for r in records]
    assert ids == [*sorted(ids[:-1], key=lambda i: int(i[4:])), "req-3"]  # oldest first
    assert ids[0] != "req-0"  # the oldest rotations are gone: 3 backups kept
    assert isinstance(records[-1], FeedbackRecord) and records[-1].comment == "wrong"


def test_a_full_disk_loses_records_counted_and_never_raises(tmp_path: Path) -> None:
    full = Path("/dev/full")  # every write: ENOSPC, as on a full disk
    if not full.exists():
        pytest.skip("this system has no /dev/full")
    (tmp_path / "records.1.jsonl").symlink_to(full)
    counts = Counts()
    writer = RecordWriter(tmp_path, "records.1", metrics=Metrics(counts))
    for n in range(5):
        writer.submit(request(n))  # returns at once: the request goes on
    writer.close()
    assert counts.lost == {"write_error": 5} and counts.written == 0


def test_a_slow_disk_fills_the_queue_and_the_rest_are_dropped_not_waited_for(
    tmp_path: Path,
) -> None:
    counts = Counts()
    writer = RecordWriter(
        tmp_path, "records.1", queue_size=4, flush_seconds=0.01, metrics=Metrics(counts)
    )
    stuck, release = threading.Event(), threading.Event()
    write = writer._write

    def slow(lines: list[bytes]) -> None:  # the disk takes as long as the test wants
        stuck.set()
        assert release.wait(60)
        write(lines)

    writer._write = slow  # type: ignore[method-assign]
    writer.submit(request(0))
    assert stuck.wait(60)  # the writer holds record 0; 4 more fit in the queue
    for n in range(1, 11):
        writer.submit(request(n))
    assert counts.lost == {"queue_full": 6}
    release.set()
    writer.close()
    assert counts.written == 5
    assert [r.request_id for r in read_records([tmp_path])] == [f"req-{n}" for n in range(5)]


def test_records_reach_the_disk_while_the_writer_runs(tmp_path: Path) -> None:
    counts = Counts()
    writer = RecordWriter(tmp_path, "records.1", flush_seconds=0.01, metrics=Metrics(counts))
    for n in range(3):
        writer.submit(request(n))
    with counts.changed:  # no close: the periodic flush writes them
        assert counts.changed.wait_for(lambda: counts.written == 3, timeout=60)
    assert [r.request_id for r in read_records([tmp_path])] == ["req-0", "req-1", "req-2"]
    writer.submit(request(3))
    with counts.changed:
        assert counts.changed.wait_for(lambda: counts.written == 4, timeout=60)
    assert len(list(read_records([tmp_path]))) == 4
    writer.close()
    assert counts.lost == {}


def test_redaction_keeps_sizes_not_contents(tmp_path: Path) -> None:
    record = request(1, text="a secret answer").model_dump(mode="json")
    hidden = redact(record, ["input.messages.content", "output.texts", "missing.path"])
    assert hidden["input"]["messages"] == [
        {"role": "user", "content": {"redacted": True, "chars": len("question 1")}}
    ]
    assert hidden["output"]["texts"] == [{"redacted": True, "chars": len("a secret answer")}]
    assert hidden["usage"] == record["usage"]
    writer = RecordWriter(tmp_path, "records.1", redact_paths=["output.texts"])
    writer.submit(request(2, text="another secret"))
    writer.close()
    text = (tmp_path / "records.1.jsonl").read_text()
    assert "another secret" not in text and '"redacted":true' in text
