"""SIGTERM to the composed Bento, as a container's stop sends it: nothing in flight is lost.

The Gateway drains first (new requests get 503 ``draining``), and only once it is done do the
chains and then the models stop: a SQL chain run that is between two LLM calls when the signal
arrives still makes them. A fresh server, since this one is stopped for good.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from bentochain.serving.topology import composed_process
from tests.support.serving import Streamed, stream_chat

pytestmark = pytest.mark.integration


async def sql_stream(http: httpx.AsyncClient, url: str, attempted: asyncio.Event) -> list[Any]:
    """The SQL chain's events; ``attempted`` is set at its first attempt (one LLM call done)."""
    body = {"input": {"question": f"How many customers live in France? {uuid.uuid4().hex}"}}
    events: list[Any] = []
    async with http.stream("POST", f"{url}/chains/sql/stream", json=body) as response:
        assert response.status_code == 200
        kind = None
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((kind, json.loads(line.removeprefix("data: "))))
                if kind == "attempt":
                    attempted.set()
    attempted.set()
    return events


def stop_under_load(
    served_env: dict[str, str], log: Path, streams: int
) -> tuple[list[Streamed], list[Any], httpx.Response, int, list[int]]:
    """SIGTERM a fresh composed Bento while ``streams`` chats and a SQL chain run are in flight
    (the chain has made its first LLM call); what each client saw, and the exit."""
    env = {**served_env, "BENTOCHAIN_SHUTDOWN__GRACE_SECONDS": "300"}
    with composed_process(log, env=env) as (url, process):
        tree = [process.pid, *(p.pid for p in psutil.Process(process.pid).children(recursive=True))]

        async def scenario() -> tuple[list[Streamed], list[Any], httpx.Response]:
            async with httpx.AsyncClient(timeout=600) as http:
                records = [Streamed() for _ in range(streams)]
                chats = [
                    asyncio.create_task(stream_chat(http, url, f"stop {i}", 120, r))
                    for i, r in enumerate(records)
                ]
                attempted = asyncio.Event()
                chain = asyncio.create_task(sql_stream(http, url, attempted))
                await asyncio.gather(attempted.wait(), *(r.first.wait() for r in records))
                os.kill(process.pid, signal.SIGTERM)
                refused = await http.get(f"{url}/v1/models")
                for _ in range(200):  # until the gateway has seen the signal
                    if refused.status_code == 503:
                        break
                    await asyncio.sleep(0.05)
                    refused = await http.get(f"{url}/v1/models")
                await asyncio.gather(*chats)
                return records, await chain, refused

        records, events, refused = asyncio.run(scenario())
        code = process.wait(timeout=600)
    running = [p for p in tree if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    return records, events, refused, code, running


def assert_chain_finished(events: list[Any]) -> None:
    kinds = [kind for kind, _ in events]
    assert kinds[-2:] == ["output", "end"], events[-3:]  # no error event: the LLM was still there
    attempts = events[-2][1]["attempts"]
    assert len(attempts) == 3  # the demo LLM's SQL is refused: each repair is another LLM call
    assert all(a["sql"] for a in attempts)


def test_sigterm_lets_streams_and_a_chain_in_flight_finish_then_stops_everything(
    served_env: dict[str, str], tmp_path: Path
) -> None:
    records, events, refused, code, running = stop_under_load(served_env, tmp_path / "a.log", 16)
    broken = [r for r in records if not (r.status == 200 and r.whole)]
    assert not broken, broken[:3]
    assert {r.completion_tokens for r in records} == {120}
    assert_chain_finished(events)
    assert refused.status_code == 503  # new work was refused while the gateway drained
    assert refused.json()["error"]["code"] == "draining"
    assert refused.headers["retry-after"] == "1"
    assert code == 0
    assert not running  # every service's processes are gone


def test_a_chain_alone_in_flight_keeps_its_llm_until_it_is_done(
    served_env: dict[str, str], tmp_path: Path
) -> None:
    """Nothing else keeps the LLM busy: stopped with the others, it would be gone (idle between
    two calls of the run) before the chain's next call; callers are stopped first instead."""
    _, events, _, code, running = stop_under_load(served_env, tmp_path / "b.log", 0)
    assert_chain_finished(events)
    assert code == 0
    assert not running
