"""Helpers for tests against served replicas: Prometheus samples, streamed chats, conditions.

Every wait here is on a condition (a metric, a readiness probe, a process), polled at a short
interval and bounded by a count of polls.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

POLL = 0.2


def until(condition: Callable[[], bool], what: str, polls: int = 1500) -> None:
    """Poll ``condition`` every ``POLL`` seconds, at most ``polls`` times (5 minutes)."""
    for _ in range(polls):
        if condition():
            return
        time.sleep(POLL)
    raise AssertionError(f"{what}: not within {polls} polls")


def worker(root: int, service: str) -> psutil.Process:
    """The process that serves ``service`` under the server process ``root`` (BentoML's
    worker: in the composed Bento each service has its own, in the split topology the one)."""
    for child in psutil.Process(root).children(recursive=True):
        command = child.cmdline()
        if "_bentoml_impl.worker.service" in command and service in command:
            return child
    raise AssertionError(f"no {service} worker under process {root}")


def samples(url: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of metric ``name`` on ``url``/metrics, with its labels."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    found = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found.append((dict(sample.labels), float(sample.value)))
    return found


def upstream_counts(url: str, service: str, outcome: str = "ok") -> dict[str, float]:
    """Attempts per replica URL that a caller made to ``service`` with ``outcome``."""
    counts: dict[str, float] = {}
    for labels, value in samples(url, "bentochain_upstream_requests_total"):
        if labels["service"] == service and labels["outcome"] == outcome:
            counts[labels["replica"]] = counts.get(labels["replica"], 0.0) + value
    return counts


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def chat(url: str, text: str, max_tokens: int = 4) -> httpx.Response:
    body = {
        "model": "llama-tiny",
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens,
    }
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)


@dataclass
class Streamed:
    """One streamed chat as its client saw it."""

    status: int = 0
    chunks: int = 0
    first: asyncio.Event = field(default_factory=asyncio.Event)
    finish_reason: str | None = None
    completion_tokens: int | None = None
    done: bool = False
    error: str | None = None

    @property
    def whole(self) -> bool:
        """Ended with ``[DONE]`` after its finish reason and usage, with no error event."""
        return self.done and self.error is None and self.finish_reason is not None


async def stream_chat(
    http: httpx.AsyncClient, url: str, text: str, max_tokens: int, record: Streamed
) -> Streamed:
    body = {
        "model": "llama-tiny",
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    try:
        async with http.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
            record.status = response.status_code
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                record.first.set()
                data = line.removeprefix("data: ")
                if data == "[DONE]":
                    record.done = True
                    continue
                event: dict[str, Any] = json.loads(data)
                if "error" in event:
                    record.error = event["error"]["message"]
                    continue
                record.chunks += 1
                for choice in event.get("choices", []):
                    record.finish_reason = choice.get("finish_reason") or record.finish_reason
                if event.get("usage"):
                    record.completion_tokens = event["usage"]["completion_tokens"]
    except httpx.HTTPError as exc:
        record.error = repr(exc)
    finally:
        record.first.set()
    return record
