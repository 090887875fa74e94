"""Locust users of the soak run (``loadtest.soak``): streamed chat, embeddings and both chains.

``loadtest.soak`` sets how many users of each class run (``SOAK_<CLASS>_USERS``) and how many
requests a second each may send (``SOAK_<CLASS>_RATE``, locust's ``constant_throughput``);
without a rate they send back to back (how the soak finds the saturation rate).
A request fails on any status but 200, on a stream's error event or missing ``[DONE]``, and on a
chain answer without its output.
"""

from __future__ import annotations

import os
import random
from typing import Any

from locust import HttpUser, constant, constant_throughput, task

from loadtest.locustfile import MAX_TOKENS, MODELS, PROMPTS, SENTENCES, stream_chat

SQL_QUESTIONS = [
    "How many customers are there?",
    "How many products are there?",
    "What is the average price of a product?",
    "How many orders are there?",
]
RAG_QUESTIONS = [
    "How long do I have to return an item?",
    "How much does shipping cost?",
    "What does the warranty cover?",
    "When is the shop open?",
]


def _users(name: str) -> int:
    return int(os.environ.get(f"SOAK_{name.upper()}_USERS", "1"))


def _pace(name: str) -> Any:
    rate = float(os.environ.get(f"SOAK_{name.upper()}_RATE", "0"))
    return constant_throughput(rate) if rate > 0 else constant(0)


class SoakChat(HttpUser):
    fixed_count = _users("SoakChat")
    wait_time = _pace("SoakChat")

    @task
    def chat_stream(self) -> None:
        body = {
            "model": MODELS["chat"],
            "messages": [{"role": "user", "content": random.choice(PROMPTS)}],
            "max_tokens": MAX_TOKENS,
            "stream": True,
        }
        stream_chat(self, body)


class SoakEmbeddings(HttpUser):
    fixed_count = _users("SoakEmbeddings")
    wait_time = _pace("SoakEmbeddings")

    @task
    def embed(self) -> None:
        texts = random.sample(SENTENCES, k=random.randint(1, len(SENTENCES)))
        body = {"model": MODELS["embedding"], "input": texts}
        self.client.post("/v1/embeddings", json=body, name="embeddings")


class SoakChains(HttpUser):
    fixed_count = _users("SoakChains")
    wait_time = _pace("SoakChains")

    def _invoke(self, chain: str, question: str) -> None:
        body = {"input": {"question": question}}
        with self.client.post(
            f"/chains/{chain}/invoke", json=body, name=f"chain {chain}", catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"{response.status_code}: {response.text[:200]}")
            elif not response.json().get("output", {}).get("answer"):
                response.failure(f"no answer: {response.text[:200]}")

    @task
    def sql(self) -> None:
        self._invoke("sql", random.choice(SQL_QUESTIONS))

    @task
    def rag(self) -> None:
        self._invoke("rag", random.choice(RAG_QUESTIONS))
