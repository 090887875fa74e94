"""What serve-split asks a replica before draining it: how long its drain will take (an auto
grace grows with the work it holds), and whether a fixed grace is too short for the longest
generation it allows, which makes a rollout refuse to start."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from bentochain.serving.internal import HEADER
from bentochain.serving.topology import ServerProcess, SplitTopology

TOKEN = "t"


class LoadReport:
    """A loopback ``/load`` answering ``report``, to callers with the internal token only."""

    def __init__(self) -> None:
        self.report: dict[str, Any] = {}
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/load" or self.headers.get(HEADER) != TOKEN:
                    self.send_response(401)
                    self.end_headers()
                    return
                body = json.dumps(owner.report).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def replica(tmp_path: Path) -> Iterator[tuple[SplitTopology, ServerProcess, LoadReport]]:
    load = LoadReport()
    topology = SplitTopology(
        env={"BENTOCHAIN_INTERNAL_TOKEN": TOKEN, "BENTOML_HOME": str(tmp_path)}
    )
    process = subprocess.Popen(["sleep", "300"])
    server = ServerProcess("LLM", "stable", 0, process, load.url, listed=True)
    topology.servers["LLM"] = [server]
    yield topology, server, load
    process.kill()
    process.wait()
    load.server.shutdown()
    load.server.server_close()


def test_a_fixed_grace_shorter_than_the_longest_generation_stops_a_rollout(
    replica: tuple[SplitTopology, ServerProcess, LoadReport],
) -> None:
    topology, _, load = replica
    load.report = {"grace_seconds": 60, "grace_fixed": True, "longest_generation_seconds": 340.2}
    problem = topology._grace_too_short("LLM")
    assert problem is not None
    assert "llm.shutdown.grace_seconds to 341" in problem
    assert "llm.generation.max_tokens_limit" in problem


@pytest.mark.parametrize(
    "report",
    [
        {"grace_seconds": 600, "grace_fixed": True, "longest_generation_seconds": 340},
        {"grace_seconds": 12, "grace_fixed": False, "longest_generation_seconds": 340},  # auto
        {
            "grace_seconds": 60,
            "grace_fixed": True,
            "longest_generation_seconds": None,
        },  # unmeasured
    ],
)
def test_a_rollout_goes_on_when_the_grace_fits_or_cannot_be_judged(
    replica: tuple[SplitTopology, ServerProcess, LoadReport], report: dict[str, Any]
) -> None:
    topology, _, load = replica
    load.report = report
    assert topology._grace_too_short("LLM") is None


def test_serve_split_waits_as_long_as_the_replica_says_it_drains(
    replica: tuple[SplitTopology, ServerProcess, LoadReport],
) -> None:
    topology, server, load = replica
    load.report = {"grace_seconds": 137.5, "grace_fixed": False}
    assert topology._grace(server) == 137.5
    load.server.shutdown()  # no answer: the profile's (auto: 60 s)
    load.server.server_close()
    assert topology._grace(server) == 60
