"""serve-split's liveness probe: a replica whose ``/livez`` fails the profile's threshold in a
row is killed (and then replaced by the supervisor); one that answers, starts or retires is left
alone, as the kubelet does with a pod's livenessProbe."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bentochain.serving.topology import ServerProcess, SplitTopology, liveness_failure


class Livez:
    """A loopback /livez that answers ``status``, or never while ``hang`` is set."""

    def __init__(self) -> None:
        self.status = 200
        self.hang = threading.Event()
        self.release = threading.Event()
        livez = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if livez.hang.is_set():
                    livez.release.wait(30)
                    return
                self.send_response(livez.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def livez() -> Iterator[Livez]:
    server = Livez()
    yield server
    server.close()


@pytest.fixture
def reports() -> list[str]:
    return []


@pytest.fixture
def topology(tmp_path: Path, reports: list[str]) -> SplitTopology:
    env = {
        "BENTOCHAIN_INTERNAL_TOKEN": "t",
        "BENTOML_HOME": str(tmp_path),
        "BENTOCHAIN_LLM__LIVENESS__FAILURE_THRESHOLD": "2",
        "BENTOCHAIN_LLM__LIVENESS__TIMEOUT_SECONDS": "1",
        "BENTOCHAIN_LLM__LIVENESS__PERIOD_SECONDS": "7",
    }
    return SplitTopology(env=env, report=reports.append)


@pytest.fixture
def replica(topology: SplitTopology, livez: Livez) -> Iterator[ServerProcess]:
    process = subprocess.Popen(["sleep", "300"])
    server = ServerProcess("LLM", "stable", 0, process, livez.url, listed=True)
    topology.servers["LLM"] = [server]
    yield server
    process.kill()
    process.wait()


def test_the_probe_reads_a_status_or_its_absence(livez: Livez) -> None:
    assert liveness_failure(livez.url, 1) is None
    livez.status = 503
    assert liveness_failure(livez.url, 1) == "status 503"
    livez.hang.set()
    assert (liveness_failure(livez.url, 1) or "").startswith("no answer")
    assert (liveness_failure("http://127.0.0.1:9", 1) or "").startswith("no answer")


def test_a_replica_that_fails_in_a_row_is_killed_and_one_that_recovers_is_not(
    topology: SplitTopology, replica: ServerProcess, livez: Livez, reports: list[str]
) -> None:
    livez.status = 503
    topology.check_liveness(replica)
    livez.status = 200  # answered in between: the count starts again
    topology.check_liveness(replica)
    livez.status = 503
    topology.check_liveness(replica)
    assert replica.process.poll() is None and replica.failures == 1
    livez.hang.set()  # no answer counts as a failure too
    topology.check_liveness(replica)
    assert replica.process.poll() is not None  # killed
    assert not replica.retiring  # dead, not retiring: the supervisor replaces it
    assert reports == [
        "LLM: " + livez.url + " failed 2 liveness probes in a row (no answer (timed out)); "
        "killing it"
    ]


def test_only_serving_replicas_other_than_the_gateway_are_probed_on_their_period(
    topology: SplitTopology, replica: ServerProcess, livez: Livez
) -> None:
    def other(service: str, **state: bool) -> ServerProcess:
        server = ServerProcess(service, "stable", 0, replica.process, livez.url, **state)
        topology.servers.setdefault(service, []).append(server)
        return server

    other("Gateway", listed=True)
    other("Embedder", listed=False)  # starting
    other("Embedder", listed=True, retiring=True)
    embedder = other("Embedder", listed=True)
    assert topology._due_probes(100.0) == [replica, embedder]
    assert topology._due_probes(106.0) == []  # LLM's period is 7 s here, the Embedder's 10 s
    assert topology._due_probes(107.0) == [replica]
    assert topology._due_probes(110.0) == [embedder]
