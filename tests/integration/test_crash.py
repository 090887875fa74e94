"""Crash recovery, in both topologies: the LLM killed with SIGKILL under load. The streams on
it end with their error event and the plain requests with a 503, nothing else fails, and chat
answers again without a person: the composed Bento's arbiter starts a new worker, serve-split
starts a new server (as Kubernetes restarts a pod). The time to recover is printed. An LLM
server that runs but stops answering is found by serve-split's liveness probe, killed and
replaced, as the kubelet does."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
import pytest

from bentochain.serving.topology import SplitTopology, composed_process, free_port
from tests.support.serving import Streamed, chat, samples, stream_chat, until, worker

pytestmark = pytest.mark.integration

STREAMS = 8


def in_engine(metrics_url: str) -> float:
    """Requests the LLM engine holds, running or waiting."""
    return sum(
        value
        for name in ("bentochain_llm_running_requests", "bentochain_llm_waiting_requests")
        for _, value in samples(metrics_url, name)
    )


def kill_under_load(
    url: str, metrics_url: str, kill: Callable[[], None]
) -> tuple[list[Streamed], list[int], float]:
    """``STREAMS`` long streams and two plain requests in the LLM engine, then ``kill``; the
    streams, the plain requests' statuses, and the seconds until a chat answered 200 again."""

    def back_after(killed_at: float) -> float:
        until(lambda: chat(url, "are you back?").status_code == 200, "chat answers again")
        return time.monotonic() - killed_at

    async def scenario() -> tuple[list[Streamed], list[int], float]:
        async with httpx.AsyncClient(timeout=600) as http:
            records = [Streamed() for _ in range(STREAMS)]
            streams = [
                asyncio.create_task(stream_chat(http, url, f"crash {i}", 50_000, r))
                for i, r in enumerate(records)
            ]
            await asyncio.gather(*(r.first.wait() for r in records))
            plain_body = {
                "model": "llama-tiny",
                "messages": [{"role": "user", "content": "plain"}],
                "max_tokens": 50_000,
                "ignore_eos": True,
            }
            plain = [
                asyncio.create_task(http.post(f"{url}/v1/chat/completions", json=plain_body))
                for _ in range(2)
            ]
            await asyncio.to_thread(
                until,
                lambda: in_engine(metrics_url) >= STREAMS + 2,
                "the plain requests reach the engine",
            )
            killed_at = time.monotonic()
            kill()
            recovery = asyncio.create_task(asyncio.to_thread(back_after, killed_at))
            await asyncio.gather(*streams)
            statuses = [(await p).status_code for p in plain]
            return records, statuses, await recovery

    return asyncio.run(scenario())


def check(records: list[Streamed], statuses: list[int], seconds: float, where: str) -> None:
    print(f"\n{where}: chat answered again {seconds:.1f} s after the SIGKILL")
    for record in records:
        assert record.status == 200 and not record.whole, record  # started, then cut
        assert record.error and "retry" in record.error.lower(), record.error
    assert statuses == [503, 503]


def test_the_composed_bento_recovers_from_a_killed_llm_worker(
    served_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**served_env, "BENTOCHAIN_OBSERVABILITY__RECORDS__DIR": str(tmp_path / "records")}
    with composed_process(tmp_path / "serve.log", env=env) as (url, process):
        victim = worker(process.pid, "LLM")
        records, statuses, seconds = kill_under_load(url, url, lambda: victim.send_signal(9))
        assert worker(process.pid, "LLM").pid != victim.pid  # a new worker, started by the arbiter
        assert httpx.get(f"{url}/readyz", timeout=30).status_code == 200
    check(records, statuses, seconds, "composed")


def test_serve_split_restarts_a_killed_llm_server(
    served_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**served_env, "BENTOCHAIN_OBSERVABILITY__RECORDS__DIR": str(tmp_path / "records")}
    topology = SplitTopology(port=free_port(), env=env, log_dir=tmp_path)
    topology.start(timeout=600)
    try:
        (victim,) = [s for s in topology.status() if s["service"] == "LLM"]

        def kill() -> None:  # the whole server, as a pod dies
            tree = psutil.Process(int(str(victim["pid"]))).children(recursive=True)
            for process in [*tree, psutil.Process(int(str(victim["pid"])))]:
                os.kill(process.pid, signal.SIGKILL)

        urls = topology.urls
        records, statuses, seconds = kill_under_load(urls["Gateway"], urls["LLM"], kill)
        (replacement,) = [s for s in topology.status() if s["service"] == "LLM"]
        assert replacement["pid"] != victim["pid"] and replacement["state"] == "serving"
    finally:
        topology.stop()
    check(records, statuses, seconds, "split")


def test_serve_split_replaces_an_llm_server_that_stopped_answering(
    served_env: dict[str, str], tmp_path: Path
) -> None:
    env = {
        **served_env,
        "BENTOCHAIN_OBSERVABILITY__RECORDS__DIR": str(tmp_path / "records"),
        "BENTOCHAIN_LLM__LIVENESS__PERIOD_SECONDS": "1",
        "BENTOCHAIN_LLM__LIVENESS__TIMEOUT_SECONDS": "1",
        "BENTOCHAIN_LLM__LIVENESS__FAILURE_THRESHOLD": "3",
    }
    reports: list[str] = []
    topology = SplitTopology(port=free_port(), env=env, log_dir=tmp_path, report=reports.append)
    topology.start(timeout=600)
    try:
        before = {s["service"]: s["pid"] for s in topology.status()}
        root = psutil.Process(int(str(before["LLM"])))
        stuck = [root, *root.children(recursive=True)]
        for process in stuck:  # alive, listening, answering nothing: a wedged server
            process.suspend()
        stopped_at = time.monotonic()

        def replaced() -> bool:
            return any(
                s["service"] == "LLM" and s["pid"] != before["LLM"] and s["state"] == "serving"
                for s in topology.status()
            )

        until(replaced, "a new LLM server serves")
        until(lambda: chat(topology.urls["Gateway"], "back?").status_code == 200, "chat answers")
        seconds = time.monotonic() - stopped_at
        assert not any(p.is_running() and p.status() != "zombie" for p in stuck)
        after = {s["service"]: s["pid"] for s in topology.status()}
        assert {k: v for k, v in after.items() if k != "LLM"} == {
            k: v for k, v in before.items() if k != "LLM"
        }  # the live ones were left alone
        (killed,) = [r for r in reports if "liveness" in r]
        assert killed.startswith("LLM: ") and killed.endswith(
            "failed 3 liveness probes in a row (no answer (timed out)); killing it"
        )
    finally:
        topology.stop()
    print(f"\nsplit: a stopped LLM server was replaced; chat answered {seconds:.1f} s later")
