"""Locust scenarios for the gateway: a weighted mix of what OpenAI-style clients send.

    make loadtest                      # starts the Bento itself, writes HTML and CSV reports
    locust -f loadtest/locustfile.py --host http://127.0.0.1:3000

The chat and embedding models are the first ones the server lists at ``/v1/models`` (or
``LOADTEST_CHAT_MODEL`` / ``LOADTEST_EMBED_MODEL``). Streaming chat users also report time to
first token and tokens per second as locust entries of their own (type ``METRIC``; the
"response time" columns hold the value), so the HTML and CSV reports carry them beside the
request latencies.
"""

from __future__ import annotations

import json
import os
import random
import time
from typing import Any

import requests
from locust import HttpUser, between, events, task

MAX_TOKENS = int(os.environ.get("LOADTEST_MAX_TOKENS", "32"))
MODELS = {
    "chat": os.environ.get("LOADTEST_CHAT_MODEL", ""),
    "embedding": os.environ.get("LOADTEST_EMBED_MODEL", ""),
}


@events.test_start.add_listener
def _discover_models(environment: Any, **_: Any) -> None:
    """Take the served model ids from ``/v1/models`` unless the environment names them."""
    if all(MODELS.values()):
        return
    listed = requests.get(f"{environment.host}/v1/models", timeout=30).json()["data"]
    for task_name in MODELS:
        if not MODELS[task_name]:
            MODELS[task_name] = next(m["id"] for m in listed if m["task"] == task_name)


PROMPTS = [
    "Summarise the plot of a film about a robot who learns to paint.",
    "What are three good habits for writing maintainable code?",
    "Translate the idea of 'serving a model' for a ten-year-old.",
    "Write a haiku about autumn rain.",
    "Explain why batching requests makes a GPU more efficient.",
]
SENTENCES = [
    "The cat sleeps on the warm chair.",
    "Our model answers questions about the database.",
    "Batching requests makes the hardware work harder.",
    "Every service scales on its own.",
]


def _fire(user: HttpUser, name: str, value: float, length: int = 0) -> None:
    """Record a custom measurement as a locust request entry."""
    user.environment.events.request.fire(
        request_type="METRIC",
        name=name,
        response_time=value,
        response_length=length,
        exception=None,
        context={},
    )


class ChatUser(HttpUser):
    weight = 4
    wait_time = between(0.5, 2.0)

    def _body(self, stream: bool) -> dict[str, Any]:
        return {
            "model": MODELS["chat"],
            "messages": [{"role": "user", "content": random.choice(PROMPTS)}],
            "max_tokens": MAX_TOKENS,
            "stream": stream,
            "stream_options": {"include_usage": True} if stream else None,
        }

    @task(2)
    def chat(self) -> None:
        with self.client.post(
            "/v1/chat/completions", json=self._body(False), name="chat", catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"{response.status_code}: {response.text[:200]}")
            elif not response.json()["choices"]:
                response.failure("no choices")

    @task(3)
    def chat_stream(self) -> None:
        started = time.perf_counter()
        first, tokens = stream_chat(self, self._body(True))
        end = time.perf_counter()
        if first is not None:
            _fire(self, "TTFT (ms)", (first - started) * 1000)
            if tokens > 1 and end > first:
                _fire(self, "tokens/s per stream", tokens / (end - started), tokens)


def stream_chat(user: HttpUser, body: dict[str, Any]) -> tuple[float | None, int]:
    """Send a streamed chat and read it to ``[DONE]``, failing the request on a status but 200,
    an error event or a missing ``[DONE]``: when its first token came, and its tokens."""
    first: float | None = None
    tokens = 0
    with user.client.post(
        "/v1/chat/completions", json=body, name="chat (stream)", stream=True, catch_response=True
    ) as response:
        if response.status_code != 200:
            response.failure(f"{response.status_code}: {response.text[:200]}")
            return None, 0
        for line in response.iter_lines(decode_unicode=True):
            if not line or not line.startswith("data: "):
                continue
            data = line.removeprefix("data: ")
            if data == "[DONE]":
                return first, tokens
            event = json.loads(data)
            if "error" in event:
                response.failure(event["error"]["message"])
                return None, 0
            if first is None and any(c["delta"].get("content") for c in event["choices"]):
                first = time.perf_counter()
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
        response.failure("stream ended without [DONE]")
        return None, 0


class CompletionUser(HttpUser):
    weight = 1
    wait_time = between(0.5, 2.0)

    @task
    def completion(self) -> None:
        body = {"model": MODELS["chat"], "prompt": random.choice(PROMPTS), "max_tokens": MAX_TOKENS}
        self.client.post("/v1/completions", json=body, name="completion")


class EmbeddingUser(HttpUser):
    weight = 3
    wait_time = between(0.2, 1.0)

    @task
    def embed(self) -> None:
        texts = random.sample(SENTENCES, k=random.randint(1, len(SENTENCES)))
        self.client.post(
            "/v1/embeddings", json={"model": MODELS["embedding"], "input": texts}, name="embeddings"
        )


class TranslateUser(HttpUser):
    weight = 1
    wait_time = between(0.5, 2.0)

    @task
    def to_french(self) -> None:
        body = {"texts": random.sample(SENTENCES, k=2), "target_lang": "fr"}
        self.client.post("/translate", json=body, name="translate fr")

    @task
    def to_spanish(self) -> None:
        body = {"texts": random.sample(SENTENCES, k=2), "target_lang": "es"}
        self.client.post("/translate", json=body, name="translate es")
