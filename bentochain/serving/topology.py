"""Run the Bento as Kubernetes runs it with one Deployment per service: one server each.

Each model service gets its own ``start-http-server`` process on its own port; the Gateway is
pointed at them by URL with ``--depends Name=url``, exactly as a Deployment's environment
(``BENTOML_SERVE_DEPENDS``) would point it at the other Deployments' Services.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bentochain.config.loader import PROJECT_ROOT
from bentochain.serving.launch import launch_command

ENTRY = "services.gateway:Gateway"
MODEL_SERVICES = ("LLM", "Embedder", "TranslatorFR", "TranslatorES")
CHAIN_SERVICES = {"SQLChain": ("LLM",), "RAGChain": ("LLM", "Embedder")}  # and their models


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def server_command(service: str, host: str, port: int, depends: Mapping[str, str]) -> list[str]:
    """The command one Deployment's container would run for ``service``."""
    command = launch_command(
        f"{service}-{port}",
        "start-http-server",
        ENTRY,
        "--working-dir",
        str(PROJECT_ROOT),
        "--service-name",
        service,
        "--host",
        host,
        "--port",
        str(port),
    )
    for name, url in depends.items():
        command += ["--depends", f"{name}={url}"]
    return command


def stop_server(process: subprocess.Popen[bytes], grace: float = 30.0) -> None:
    """SIGTERM a BentoML server and wait; after ``grace``, kill it and all its workers.

    Circus starts every worker in a session of its own, so a signal to the server's process group
    does not reach them: a killed arbiter would leave its workers running. They are found by
    parentage instead, before the arbiter dies.
    """
    import psutil

    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=grace)
        return
    except subprocess.TimeoutExpired:
        pass
    try:
        workers = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        workers = []
    for leftover in [*workers, psutil.Process(process.pid)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            leftover.kill()
    process.wait()


def wait_ready(url: str, deadline: float, process: subprocess.Popen[bytes] | None = None) -> None:
    """Poll ``url``/readyz until it answers 200; fail early if ``process`` dies."""
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with code {process.returncode}")
        with (
            contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError),
            urllib.request.urlopen(f"{url}/readyz", timeout=2) as response,
        ):
            if response.status == 200:
                return
        time.sleep(0.5)
    raise TimeoutError(f"{url} was not ready in time")


@dataclass
class SplitTopology:
    """The seven servers of the split topology, started and stopped together."""

    host: str = "127.0.0.1"
    port: int = 3000
    env: Mapping[str, str] | None = None
    log_dir: Path | None = None
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    urls: dict[str, str] = field(default_factory=dict)

    def _spawn(self, service: str, port: int, depends: Mapping[str, str]) -> None:
        env = dict(os.environ if self.env is None else self.env)
        command = server_command(service, self.host, port, depends)
        # A session of its own: Ctrl+C reaches bentochain only, which stops each server in turn.
        if self.log_dir is None:
            process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, start_new_session=True)
        else:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            with (self.log_dir / f"{service}.log").open("wb") as log:
                process = subprocess.Popen(
                    command,
                    cwd=PROJECT_ROOT,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        self.processes[service] = process
        self.urls[service] = f"http://{self.host}:{port}"

    def start(self, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        try:
            for service in MODEL_SERVICES:
                self._spawn(service, free_port(self.host), {})
            for service in MODEL_SERVICES:
                wait_ready(self.urls[service], deadline, self.processes[service])
            for service, needs in CHAIN_SERVICES.items():
                self._spawn(service, free_port(self.host), {n: self.urls[n] for n in needs})
            for service in CHAIN_SERVICES:
                wait_ready(self.urls[service], deadline, self.processes[service])
            depends = {name: self.urls[name] for name in (*MODEL_SERVICES, *CHAIN_SERVICES)}
            self._spawn("Gateway", self.port, depends)
            wait_ready(self.urls["Gateway"], deadline, self.processes["Gateway"])
        except BaseException:
            self.stop()
            raise

    def stop(self, grace: float = 20.0) -> None:
        """Stop every server: SIGTERM first, and whatever is left after ``grace`` is killed."""
        for process in self.processes.values():
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in self.processes.values():
            stop_server(process, max(0.1, deadline - time.monotonic()))
        self.processes.clear()

    def wait(self) -> int:
        """Block until one server exits (or Ctrl+C); then stop the others."""
        try:
            while True:
                for service, process in self.processes.items():
                    if process.poll() is not None:
                        print(f"bentochain: {service} exited with code {process.returncode}")
                        return process.returncode or 1
                time.sleep(1.0)
        except KeyboardInterrupt:
            return 0
        finally:
            self.stop()


@contextlib.contextmanager
def composed_server(
    log: Path,
    *,
    env: Mapping[str, str] | None = None,
    host: str = "127.0.0.1",
    timeout: float = 300.0,
) -> Iterator[str]:
    """``bentochain serve`` (the whole Bento) on a free port, logging to ``log``: its URL.

    The server is stopped when the block ends; one that does not get ready within ``timeout``
    is stopped and reported with the end of its log.
    """
    port = free_port(host)
    command = [sys.executable, "-m", "bentochain.cli", "serve", "--host", host, "--port", str(port)]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            env=None if env is None else dict(env),
            cwd=PROJECT_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://{host}:{port}"
    try:
        try:
            wait_ready(url, time.monotonic() + timeout, process)
        except BaseException:
            raise RuntimeError(
                f"the composed server did not start:\n{log.read_text()[-4000:]}"
            ) from None
        yield url
    finally:
        stop_server(process)
