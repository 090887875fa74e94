"""Replicas as a user runs them: ``bentochain serve-split --replicas LLM=2`` in a subprocess.

One topology for the module. The strategy tests come first (other strategies than the default
through an extra Gateway pointed at the same replicas); the tests that drain, kill or roll
replicas come after, each starting once the supervisor has two LLM replicas serving again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml

from bentochain.config.loader import DEFAULT_PROFILE, PROJECT_ROOT
from bentochain.config.schema import env_key
from bentochain.serving.control import Command, send
from bentochain.serving.internal import HEADER, TOKEN_ENV
from bentochain.serving.topology import (
    CALLEES,
    caller_env,
    free_port,
    server_command,
    spawn,
    split_state_dir,
    stop_server,
    wait_ready,
)
from bentochain.serving.upstream.client import DRAINING_HEADER
from bentochain.serving.upstream.routing import VERSION_HEADER
from tests.support.serving import (
    Streamed,
    chat,
    ready,
    samples,
    stream_chat,
    until,
    upstream_counts,
)

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "bentochain.cli"]
BLOCKS = "BENTOCHAIN_LLM__KV_CACHE__BLOCKS"  # the long-stream budget of the tiny model


@dataclass
class Split:
    url: str
    port: int
    env: dict[str, str]
    profile: Path
    process: subprocess.Popen[bytes]
    log: Path

    def status(self) -> list[dict[str, Any]]:
        for message in send(self.env, self.port, Command(command="status")):
            if message["event"] == "status":
                return list(message["servers"])
        raise AssertionError("serve-split sent no status")

    def serving(self, service: str, version: str = "stable") -> list[dict[str, Any]]:
        return [
            s
            for s in self.status()
            if s["service"] == service and s["state"] == "serving" and s["version"] == version
        ]

    @property
    def internal(self) -> dict[str, str]:
        """What a direct call to a model service must carry (see serving/internal.py)."""
        return {HEADER: self.env[TOKEN_ENV]}

    def llm_replicas_ready(self) -> bool:
        servers = self.serving("LLM")
        return len(servers) == 2 and all(ready(s["url"]) for s in servers)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, *args, "--port", str(self.port)],
            env=self.env,
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=900,
        )


@pytest.fixture(scope="module")
def split(served_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Split]:
    root = tmp_path_factory.mktemp("replicas")
    profile = root / "profile.yaml"  # the canary test edits it, as a user would
    settings = yaml.safe_load(DEFAULT_PROFILE.read_text())
    settings["llm"]["model"] = served_env["BENTOCHAIN_LLM__MODEL"]  # in the file, not the env
    # Every replica allocates its whole KV budget at start, and the canary tests serve a model
    # with 72 times the tiny one's KV a token: the long-stream budget would be 9.7 GB each.
    settings["llm"]["kv_cache"]["blocks"] = 2048
    profile.write_text(yaml.safe_dump(settings))
    port = free_port()
    # The profile's grace is auto: each replica drains as long as its streams need at the rate
    # it measures (32 streams relayed through one gateway on a busy 2-core machine take tens
    # of seconds; a fixed grace would have to cover the 120,000-token limit, and the rollout
    # refuses one that does not).
    env = {
        **{k: v for k, v in served_env.items() if k not in ("BENTOCHAIN_LLM__MODEL", BLOCKS)},
        "BENTOCHAIN_CONFIG": str(profile),
    }
    log = root / "serve-split.log"
    process = spawn([*CLI, "serve-split", "--port", str(port), "--replicas", "LLM=2"], env, log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, time.monotonic() + 600, process)
        yield Split(url, port, env, profile, process, log)
    finally:
        stop_server(process, grace=600)
    assert process.returncode == 0, log.read_text()[-3000:]
    left = [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if "bentochain.serving.launch" in " ".join(p.info["cmdline"] or [])
        and f"split-{port}" in " ".join(p.info["cmdline"] or [])
    ]
    assert not left, f"serve-split left servers running: {left}"


@contextlib.contextmanager
def gateway_with(
    split: Split, log_dir: Path, llms: list[str] | None = None, **llm: str
) -> Iterator[str]:
    """An extra Gateway over the same servers (or the LLM replicas ``llms``), with ``llm`` as
    its LLM upstream settings."""
    env = caller_env(split.env, split_state_dir(split.env, split.port))
    env[env_key("LLM", "upstream", "file")] = ""
    replicas = [{"url": url} for url in llms or [s["url"] for s in split.serving("LLM")]]
    env[env_key("LLM", "upstream", "replicas")] = json.dumps(replicas)
    for key, value in llm.items():
        env[env_key("LLM", "upstream", key)] = value
    urls = {s["service"]: s["url"] for s in split.status() if s["version"] == "stable"}
    port = free_port()
    command = server_command("Gateway", "127.0.0.1", port, {n: urls[n] for n in CALLEES})
    process = spawn(command, env, log_dir / f"gateway-{port}.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, time.monotonic() + 300, process)
        yield url
    finally:
        stop_server(process)


def served_since(gateway: str, before: dict[str, float]) -> Counter[str]:
    """The LLM replicas that answered ``gateway``'s calls since ``before`` was read."""
    after = upstream_counts(gateway, "LLM")
    return Counter(
        {url: int(n - before.get(url, 0)) for url, n in after.items() if n > before.get(url, 0)}
    )


def chats(url: str, count: int, label: str) -> None:
    for i in range(count):
        response = chat(url, f"{label} {i}")
        assert response.status_code == 200, response.text


def test_requests_spread_over_both_replicas(split: Split) -> None:
    replicas = {s["url"] for s in split.serving("LLM")}
    before = upstream_counts(split.url, "LLM")
    chats(split.url, 60, "spread")
    spread = served_since(split.url, before)
    assert set(spread) == replicas
    # least_load over idle replicas: about even (a load report can be a moment old)
    assert all(n >= 20 for n in spread.values()), spread


def test_round_robin_alternates(split: Split, tmp_path: Path) -> None:
    with gateway_with(split, tmp_path, strategy="round_robin") as gateway:
        chats(gateway, 60, "round robin")
        spread = served_since(gateway, {})
    assert sorted(spread.values()) == [30, 30], spread


def test_weighted_round_robin_follows_the_weights(split: Split, tmp_path: Path) -> None:
    first, second = (s["url"] for s in split.serving("LLM"))
    weights = json.dumps([{"url": first, "weight": 3}, {"url": second, "weight": 1}])
    with gateway_with(split, tmp_path, strategy="weighted_round_robin", replicas=weights) as gw:
        chats(gw, 60, "weighted")
        spread = served_since(gw, {})
    assert abs(spread[first] - 45) <= 0.15 * 45, spread
    assert abs(spread[second] - 15) <= 0.15 * 15, spread


def in_flight(gateway: str) -> dict[str, float]:
    return {
        labels["replica"]: value
        for labels, value in samples(gateway, "bentochain_upstream_in_flight_requests")
        if labels["service"] == "LLM"
    }


def test_least_connections_sends_to_the_idle_replica(split: Split, tmp_path: Path) -> None:
    with gateway_with(split, tmp_path, strategy="least_connections") as gateway:

        async def scenario() -> tuple[Counter[str], dict[str, float]]:
            async with httpx.AsyncClient(timeout=300, headers=split.internal) as http:
                long = Streamed()
                task = asyncio.create_task(stream_chat(http, gateway, "long", 30_000, long))
                await long.first.wait()
                holding = in_flight(gateway)
                before = upstream_counts(gateway, "LLM")
                await asyncio.to_thread(chats, gateway, 30, "least connections")
                spread = served_since(gateway, before)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                return spread, holding

        spread, holding = asyncio.run(scenario())
    busy = [url for url, n in holding.items() if n == 1]
    assert len(busy) == 1, holding
    (idle,) = {s["url"] for s in split.serving("LLM")} - set(busy)
    assert spread == Counter({idle: 30})


def test_least_load_avoids_a_replica_busy_with_another_callers_work(split: Split) -> None:
    """The default strategy sees load this caller did not send (least_connections cannot)."""
    first, second = (s["url"] for s in split.serving("LLM"))

    def seen_busy() -> bool:  # with another caller's work, as least_load sees it
        loads = samples(split.url, "bentochain_upstream_replica_load")
        return any(labels["replica"] == first and v >= 1 for labels, v in loads)

    async def scenario() -> Counter[str]:
        body = {
            "request": {
                "messages": [{"role": "user", "content": "busy"}],
                "params": {"max_tokens": 30_000, "ignore_eos": True},
            }
        }
        async with (
            httpx.AsyncClient(timeout=300, headers=split.internal) as http,
            http.stream("POST", f"{first}/generate", json=body) as direct,
        ):
            assert direct.status_code == 200
            chunks = direct.aiter_bytes()  # held: a dropped iterator would close the stream
            await anext(chunks)  # generating on `first`, not through the gateway
            await asyncio.to_thread(chats, split.url, 1, "wake the probes")
            await asyncio.to_thread(until, seen_busy, "the gateway sees the busy replica")
            before = upstream_counts(split.url, "LLM")
            await asyncio.to_thread(chats, split.url, 20, "least load")
            return served_since(split.url, before)

    assert asyncio.run(scenario()) == Counter({second: 20})


def not_whole(records: list[Streamed], tokens: int) -> list[tuple[Any, ...]]:
    """The streams that did not end with all their tokens, ``[DONE]`` and no error event."""
    return [
        (r.status, r.done, r.error, r.finish_reason, r.completion_tokens)
        for r in records
        if not (r.status == 200 and r.whole and r.completion_tokens == tokens)
    ]


def gone(split: Split, url: str) -> bool:
    return all(s["url"] != url for s in split.status())


def test_sigterm_drains_a_replica_and_every_stream_ends_whole(split: Split) -> None:
    until(split.llm_replicas_ready, "two LLM replicas serving")
    replicas = split.serving("LLM")
    victim: dict[str, Any] = {}

    async def scenario() -> tuple[list[Streamed], list[int], tuple[int, str | None], int]:
        async with httpx.AsyncClient(timeout=600, headers=split.internal) as http:
            records = [Streamed() for _ in range(32)]
            tasks = [
                asyncio.create_task(stream_chat(http, split.url, f"drain {i}", 120, r))
                for i, r in enumerate(records)
            ]
            await asyncio.gather(*(r.first.wait() for r in records))
            holding = [(await http.get(f"{r['url']}/load")).json()["in_flight"] for r in replicas]
            held = max(holding)  # of 32 streams over two replicas, at least 16
            victim.update(replicas[holding.index(held)])
            os.kill(victim["pid"], signal.SIGTERM)

            async def draining() -> bool:
                return bool((await http.get(f"{victim['url']}/load")).json()["draining"])

            for _ in range(500):
                if await draining():
                    break
                await asyncio.sleep(0.1)
            direct = await http.post(
                f"{victim['url']}/generate", json={"request": {"prompt": "x", "params": {}}}
            )
            refused = (direct.status_code, direct.headers.get(DRAINING_HEADER))
            during = [(await asyncio.to_thread(chat, split.url, f"during {i}")).status_code
                      for i in range(10)]  # fmt: skip
            await asyncio.gather(*tasks)
            return records, during, refused, held

    records, during, refused, held = asyncio.run(scenario())
    assert held >= 16, held  # the victim held its share of the 32 streams
    broken = not_whole(records, 120)
    assert not broken, broken[:3]
    assert refused == (503, "1")  # it refused new work while it drained
    assert during == [200] * 10  # and new requests went to the other replica
    until(lambda: gone(split, victim["url"]), "the drained replica exits")
    until(split.llm_replicas_ready, "the supervisor replaces it")


def test_a_stream_cut_by_the_end_of_a_grace_says_so_and_is_counted(
    split: Split, tmp_path: Path
) -> None:
    """A replica with a one-second grace, SIGTERMed under a long stream: the stream ends with an
    SSE error event saying the server was replaced and to retry, not a dropped connection."""
    env = caller_env(split.env, split_state_dir(split.env, split.port))
    env[env_key("LLM", "shutdown", "grace_seconds")] = "1"
    port = free_port()
    log = tmp_path / "llm.log"
    process = spawn(server_command("LLM", "127.0.0.1", port, {}), env, log)
    llm = f"http://127.0.0.1:{port}"
    try:
        wait_ready(llm, time.monotonic() + 300, process)
        with gateway_with(split, tmp_path, llms=[llm]) as gateway:

            async def scenario() -> Streamed:
                async with httpx.AsyncClient(timeout=600) as http:
                    record = Streamed()
                    task = asyncio.create_task(stream_chat(http, gateway, "cut", 30_000, record))
                    await record.first.wait()
                    process.send_signal(signal.SIGTERM)
                    return await task

            record = asyncio.run(scenario())
    finally:
        stop_server(process)
    assert record.status == 200 and record.chunks > 0 and not record.done
    assert record.error is not None and "was replaced before it finished" in record.error
    assert "retry" in record.error
    assert "cutting 1 request(s), 1 of them streams" in log.read_text()


def test_a_killed_replica_costs_only_its_own_requests(split: Split) -> None:
    until(split.llm_replicas_ready, "two LLM replicas serving")
    victim, survivor = split.serving("LLM")
    before = upstream_counts(split.url, "LLM", "connect_error")

    async def scenario() -> tuple[list[Streamed], int, list[int]]:
        async with httpx.AsyncClient(timeout=600, headers=split.internal) as http:
            records = [Streamed() for _ in range(8)]
            tasks = [
                asyncio.create_task(stream_chat(http, split.url, f"kill {i}", 2000, r))
                for i, r in enumerate(records)
            ]
            await asyncio.gather(*(r.first.wait() for r in records))
            on_victim = (await http.get(f"{victim['url']}/load")).json()["in_flight"]
            process = psutil.Process(victim["pid"])
            for child in [*process.children(recursive=True), process]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
            after = [(await asyncio.to_thread(chat, split.url, f"after {i}")).status_code
                     for i in range(20)]  # fmt: skip
            await asyncio.gather(*tasks)
            return records, on_victim, after

    records, on_victim, after = asyncio.run(scenario())
    failed = [r for r in records if not r.whole]
    assert len(failed) <= on_victim, (len(failed), on_victim)
    assert all(r.error for r in failed)  # each got its error event, none was cut silently
    assert after == [200] * 20
    refused = upstream_counts(split.url, "LLM", "connect_error").get(victim["url"], 0)
    assert refused - before.get(victim["url"], 0) <= 2  # then skipped for its backoff
    assert survivor["url"] in upstream_counts(split.url, "LLM")
    until(split.llm_replicas_ready, "the supervisor replaces the killed replica")


def test_rollout_under_load_loses_nothing(split: Split) -> None:
    until(split.llm_replicas_ready, "two LLM replicas serving")
    old = {s["url"] for s in split.serving("LLM")}
    before = upstream_counts(split.url, "LLM")
    stop = asyncio.Event()

    async def client(http: httpx.AsyncClient, i: int, done: list[Streamed]) -> None:
        n = 0
        while not stop.is_set() and n < 200:
            done.append(await stream_chat(http, split.url, f"roll {i} {n}", 100, Streamed()))
            n += 1

    def new_replicas_served() -> bool:
        new = {s["url"] for s in split.serving("LLM")} - old
        return len(new) == 2 and new <= set(served_since(split.url, before))

    async def scenario() -> tuple[list[Streamed], subprocess.CompletedProcess[str], float]:
        done: list[Streamed] = []
        async with httpx.AsyncClient(timeout=600, headers=split.internal) as http:
            clients = [asyncio.create_task(client(http, i, done)) for i in range(32)]
            started = time.monotonic()
            rolled = await asyncio.to_thread(split.cli, "rollout", "LLM")
            took = time.monotonic() - started
            if rolled.returncode == 0:  # the load goes on until the new replicas have taken it
                await asyncio.to_thread(until, new_replicas_served, "the new replicas serve")
            stop.set()
            await asyncio.gather(*clients)
        return done, rolled, took

    done, rolled, took = asyncio.run(scenario())
    print(f"rollout of LLM under 32 streaming clients: {took:.1f}s, {len(done)} streams")
    assert rolled.returncode == 0, rolled.stdout + rolled.stderr
    assert "rollout of LLM done" in rolled.stdout
    broken = not_whole(done, 100)
    assert not broken, (len(broken), broken[:3])
    assert len(done) >= 64
    new = {s["url"] for s in split.serving("LLM")}
    assert len(new) == 2 and not new & old  # every old replica is gone
    assert old <= set(served_since(split.url, before))  # the old ones served until they left


def sql_calls_per_version(sql_chain: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    for labels, value in samples(sql_chain, "bentochain_upstream_requests_total"):
        if labels["service"] == "LLM" and labels["outcome"] == "ok":
            counts[labels["version"]] += int(value)
    return counts


def models_served(url: str) -> set[str]:
    """The served model ids on an LLM replica's own /metrics (one per model it generated with)."""
    return {labels["model"] for labels, _ in samples(url, "bentochain_llm_generated_tokens_total")}


def edit_profile(split: Split, change: Any) -> None:
    profile = yaml.safe_load(split.profile.read_text())
    change(profile["llm"])
    split.profile.write_text(yaml.safe_dump(profile))


def test_a_canary_takes_its_share_and_a_chain_run_stays_on_one_version(split: Split) -> None:
    until(split.llm_replicas_ready, "two LLM replicas serving")
    edit_profile(split, lambda llm: llm.update(canary={"model": "demo:llama-36m", "weight": 30}))
    rolled = split.cli("rollout", "LLM")  # prepares the new model, then starts its replica
    assert rolled.returncode == 0, rolled.stdout + rolled.stderr
    (canary,) = split.serving("LLM", "canary")

    def canary_in_rotation() -> bool:  # the gateway re-reads the replica file every 5 s
        return chat(split.url, "canary?").headers[VERSION_HEADER] == "LLM=canary"

    until(canary_in_rotation, "the gateway sends to the canary")
    versions: Counter[str] = Counter()
    for i in range(100):
        response = chat(split.url, f"canary {i}")
        assert response.status_code == 200
        versions[response.headers[VERSION_HEADER]] += 1
    assert set(versions) == {"LLM=stable", "LLM=canary"}
    assert abs(versions["LLM=canary"] - 30) <= 10, versions
    assert models_served(canary["url"]) == {"llama-36m"}
    assert all(models_served(s["url"]) == {"llama-tiny"} for s in split.serving("LLM"))

    sql_chain = split.serving("SQLChain")[0]["url"]
    runs: list[tuple[str, Counter[str]]] = []
    for _ in range(10):
        before = sql_calls_per_version(sql_chain)
        question = f"How many orders are there? ({uuid.uuid4().hex})"  # never a cached answer
        response = httpx.post(
            f"{split.url}/chains/sql/invoke", json={"input": {"question": question}}, timeout=300
        )
        assert response.status_code == 200, response.text
        delta = sql_calls_per_version(sql_chain) - before
        runs.append((response.headers[VERSION_HEADER], delta))
    for header, delta in runs:
        assert len(delta) == 1, runs  # every LLM call of a run on one version
        (version,) = delta
        assert sum(delta.values()) == 3  # the demo LLM's SQL is refused: 1 try + 2 repairs
        assert f"LLM={version}" in header
    assert {version for _, delta in runs for version in delta} == {"stable", "canary"}


def test_promoting_the_canary_is_a_profile_change_and_a_rollout(split: Split) -> None:
    edit_profile(split, lambda llm: llm.update(model="demo:llama-36m", canary=None))
    rolled = split.cli("rollout", "LLM")
    assert rolled.returncode == 0, rolled.stdout + rolled.stderr
    assert split.serving("LLM", "canary") == []
    replicas = split.serving("LLM")
    assert len(replicas) == 2

    def both_served() -> bool:
        return chat(split.url, "promoted").status_code == 200 and all(
            models_served(r["url"]) for r in replicas
        )

    until(both_served, "both new replicas have served")
    assert all(models_served(r["url"]) == {"llama-36m"} for r in replicas)
    headers = {chat(split.url, f"after {i}").headers[VERSION_HEADER] for i in range(20)}
    assert headers == {"LLM=stable"}
