"""Run the Bento as Kubernetes runs it with one Deployment per service: one server per replica.

Each service gets its own ``start-http-server`` processes (``replicas`` of them, each on its own
port, plus its canary's when the profile has one). Callers find them in a replica file per
service, which this module rewrites as servers come and go: the local stand-in for a headless
Service's DNS name. A supervisor thread replaces a replica that dies (as a ReplicaSet would),
and kills one whose ``/livez`` fails the profile's ``liveness`` probe (as the kubelet would);
``rollout`` replaces replicas one at a time (start the new one, wait until it is ready, take
the old one out of the file, drain and stop it), re-reading the profile, which is what a
Kubernetes rolling update does. ``--depends Name=url`` still names one replica per dependency:
BentoML wants an address for each, and would otherwise build the dependency in-process.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bentochain.config.loader import PROJECT_ROOT, ProfileError, load_settings
from bentochain.config.schema import SERVICE_KEYS, ReplicaAddress, Settings, env_key
from bentochain.serving import probes
from bentochain.serving.internal import HEADER, internal_token
from bentochain.serving.launch import launch_command
from bentochain.serving.upstream.discovery import ReplicaFile, TrackFile
from bentochain.serving.upstream.replicas import CANARY, STABLE

logger = logging.getLogger(__name__)

ENTRY = "services.gateway:Gateway"
MODEL_SERVICES = ("LLM", "Embedder", "TranslatorFR", "TranslatorES")
CHAIN_SERVICES = {"SQLChain": ("LLM",), "RAGChain": ("LLM", "Embedder")}  # and their models
CALLEES = (*MODEL_SERVICES, *CHAIN_SERVICES)
SERVICES = ("Gateway", *CALLEES)


def callees_of(service: str) -> tuple[str, ...]:
    """The services ``service`` calls (what ``--depends`` names for it)."""
    return CALLEES if service == "Gateway" else CHAIN_SERVICES.get(service, ())


def callers_of(service: str) -> tuple[str, ...]:
    """The services that call ``service``: the only ones that need to reach it."""
    return tuple(s for s in SERVICES if service in callees_of(s))


CANARY_CAPABLE = ("LLM", "TranslatorFR", "TranslatorES")  # the embedder refuses a canary
READY_TIMEOUT = 300.0
STOP_MARGIN = 15.0  # beyond the drain's grace, for the process to exit

Report = Callable[[str], None]


LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def server_command(
    service: str,
    host: str,
    port: int,
    depends: Mapping[str, str],
    *,
    target: str = ENTRY,
    working_dir: Path | None = PROJECT_ROOT,
    python: str = sys.executable,
) -> list[str]:
    """The command that serves ``service`` alone: here from the project, in a Kubernetes
    Deployment from the Bento in the image (``target`` its path, ``python`` the image's)."""
    place = ["--working-dir", str(working_dir)] if working_dir is not None else []
    command = launch_command(
        f"{service}-{port}",
        "start-http-server",
        target,
        *place,
        "--service-name",
        service,
        "--host",
        host,
        "--port",
        str(port),
        python=python,
    )
    for name, url in depends.items():
        command += ["--depends", f"{name}={url}"]
    return command


def spawn(
    command: list[str], env: Mapping[str, str] | None, log: Path | None
) -> subprocess.Popen[bytes]:
    """Start a server in a session of its own (Ctrl+C reaches bentochain only, which stops each
    server in turn), its output to ``log`` or to ours."""
    environ = None if env is None else dict(env)
    if log is None:
        return subprocess.Popen(command, cwd=PROJECT_ROOT, env=environ, start_new_session=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        return subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            env=environ,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_server(process: subprocess.Popen[bytes], grace: float = 30.0) -> None:
    """SIGTERM a BentoML server and wait; after ``grace``, kill it and all its workers."""
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    wait_or_kill(process, grace)


def wait_or_kill(process: subprocess.Popen[bytes], grace: float) -> None:
    """Wait up to ``grace`` for a signalled server to exit, then kill it and its workers.

    Circus starts every worker in a session of its own, so a signal to the server's process group
    does not reach them: a killed arbiter would leave its workers running. They are found by
    parentage instead, before the arbiter dies.
    """
    try:
        process.wait(timeout=grace)
        return
    except subprocess.TimeoutExpired:
        pass
    kill_tree(process)


def kill_tree(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL a server and every process under it."""
    import psutil

    try:
        workers = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        workers = []
    for leftover in [*workers, psutil.Process(process.pid)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            leftover.kill()
    process.wait()


def wait_ready(
    url: str,
    deadline: float,
    process: subprocess.Popen[bytes] | None = None,
    *,
    every_dependency: bool = True,
) -> None:
    """Poll ``url``/readyz until the server serves in full: 200, and for a caller, every
    dependency serving (a gateway is ready as soon as one of its routes can serve, but a server
    that has just started is not started until all can, unless ``every_dependency`` is False).
    Fails early if ``process`` dies."""
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with code {process.returncode}")
        with (
            contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError),
            urllib.request.urlopen(f"{url}{probes.READYZ}", timeout=2) as response,
        ):
            if response.status == 200 and (
                not every_dependency or _every_dependency_serves(response.read())
            ):
                return
        time.sleep(0.5)
    raise TimeoutError(f"{url} was not ready in time")


def _every_dependency_serves(body: bytes) -> bool:
    try:
        report = json.loads(body)
    except ValueError:  # a service that calls nobody answers BentoML's plain text
        return True
    dependencies = report.get("dependencies", {}) if isinstance(report, dict) else {}
    return all(state.get("serving") for state in dependencies.values())


def load_report(url: str, token: str, timeout: float = 2.0) -> dict[str, Any] | None:
    """A server's ``/load`` answer (its load, state and drain grace), or None without one."""
    request = urllib.request.Request(f"{url}{probes.LOAD}", headers={HEADER: token})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            found = json.loads(response.read())
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def liveness_failure(url: str, timeout: float) -> str | None:
    """Why ``url``/livez failed as a liveness probe (an error status, or no answer within
    ``timeout``), or None when it answered 200."""
    try:
        with urllib.request.urlopen(f"{url}{probes.LIVEZ}", timeout=timeout) as response:
            return None if response.status == 200 else f"status {response.status}"
    except urllib.error.HTTPError as exc:
        return f"status {exc.code}"
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        return f"no answer ({getattr(exc, 'reason', exc)})"


def parse_replicas(text: str | None) -> dict[tuple[str, str], int]:
    """``LLM=2,Embedder=2,LLM.canary=1`` as {(service, track): count}."""
    counts: dict[tuple[str, str], int] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        name, sep, value = item.strip().partition("=")
        service, _, track = name.partition(".")
        track = track or STABLE
        if not sep or not value.strip().isdigit() or int(value) < 1:
            raise ValueError(f"--replicas {item!r}: write SERVICE=COUNT with COUNT >= 1")
        if service not in CALLEES:
            where = "the Gateway is the one entry point" if service == "Gateway" else "unknown"
            raise ValueError(
                f"--replicas {item!r}: {where}; services with replicas: {', '.join(CALLEES)}"
            )
        if track not in (STABLE, CANARY) or (track == CANARY and service not in CANARY_CAPABLE):
            raise ValueError(f"--replicas {item!r}: no such version of {service}")
        counts[(service, track)] = int(value)
    return counts


def state_home(env: Mapping[str, str]) -> Path:
    """Where serve-split keeps its replica files and control socket: per BentoML home."""
    home = env.get("BENTOML_HOME") or os.path.expanduser("~/bentoml")
    return Path(home) / "bentochain"


def split_state_dir(env: Mapping[str, str], port: int) -> Path:
    return state_home(env) / f"split-{port}"


def replica_file(state_dir: Path, service: str) -> Path:
    return state_dir / "replicas" / f"{service}.json"


def discovery_env(service: str, source: str, value: str) -> dict[str, str]:
    """Variables that make callers find ``service`` by ``source`` (file or dns) alone: the
    profile's other sources are cleared (an empty variable unsets a key)."""
    found = {env_key(service, "upstream", key): "" for key in ("replicas", "dns", "file")}
    found[env_key(service, "upstream", source)] = value
    return found


def caller_env(env: Mapping[str, str], state_dir: Path) -> dict[str, str]:
    """A server's environment: each callee's replicas come from its replica file."""
    found = dict(env)
    for service in CALLEES:
        found.update(discovery_env(service, "file", str(replica_file(state_dir, service))))
    return found


@dataclass(eq=False)
class ServerProcess:
    """One replica: a ``start-http-server`` of one service on one port."""

    service: str
    track: str
    port: int
    process: subprocess.Popen[bytes]
    url: str
    listed: bool = False  # in its replica file: callers can find it
    retiring: bool = False
    failures: int = 0  # liveness probes failed in a row
    next_probe: float = 0.0

    @property
    def state(self) -> str:
        if self.retiring:
            return "retiring"
        return "serving" if self.listed else "starting"

    def summary(self) -> dict[str, object]:
        return {
            "service": self.service,
            "version": self.track,
            "url": self.url,
            "pid": self.process.pid,
            "state": self.state,
        }


@dataclass
class SplitTopology:
    """Every service's servers, started, supervised, rolled and stopped together."""

    host: str = "127.0.0.1"
    port: int = 3000
    env: Mapping[str, str] | None = None
    log_dir: Path | None = None
    replicas: Mapping[tuple[str, str], int] = field(default_factory=dict)
    servers: dict[str, list[ServerProcess]] = field(default_factory=dict)
    report: Report = print

    def __post_init__(self) -> None:
        self._env = dict(os.environ if self.env is None else self.env)
        self.internal_token = internal_token(self._env)  # one for every server of this run
        self.state_dir = split_state_dir(self._env, self.port)
        self._lock = threading.RLock()
        self._rolling = threading.Lock()
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._prober: threading.Thread | None = None
        self._control: object | None = None
        self.exit_code: int | None = None
        self.settings = self._profile()

    # -- state ---------------------------------------------------------------------------

    @property
    def urls(self) -> dict[str, str]:
        """One serving replica's URL per service (the stable one first)."""
        with self._lock:
            found: dict[str, str] = {}
            for service, servers in self.servers.items():
                live = [s for s in servers if s.state == "serving"]
                live.sort(key=lambda s: s.track != STABLE)
                if live:
                    found[service] = live[0].url
            return found

    def status(self) -> list[dict[str, object]]:
        with self._lock:
            return [s.summary() for servers in self.servers.values() for s in servers]

    def bind_host(self, service: str) -> str:
        """Only the Gateway faces the network; the others take pickled bodies: loopback."""
        return self.host if service == "Gateway" else LOOPBACK

    def _profile(self) -> Settings:
        return load_settings(environ=self._env)

    def _canary_weight(self, service: str) -> float | None:
        canary = self.settings.canary(service)
        return None if canary is None else float(canary.weight)

    def _write_replica_file(self, service: str) -> None:
        """The service's serving replicas, per version, with the profile's canary share."""
        with self._lock:
            live = [s for s in self.servers.get(service, []) if s.state == "serving"]
            weight = self._canary_weight(service)
            canaries = tuple(ReplicaAddress(url=s.url) for s in live if s.track == CANARY)
            stables = tuple(ReplicaAddress(url=s.url) for s in live if s.track == STABLE)
            share = weight if weight is not None and canaries else 0.0
            tracks = {STABLE: TrackFile(weight=100.0 - share, replicas=stables)}
            if share:
                tracks[CANARY] = TrackFile(weight=share, replicas=canaries)
            ReplicaFile(service=service, tracks=tracks).write(replica_file(self.state_dir, service))

    # -- one replica ---------------------------------------------------------------------

    def _spawn(self, service: str, track: str) -> ServerProcess:
        if self._stopping.is_set():
            raise RuntimeError("the topology is stopping")
        env = caller_env(self._env, self.state_dir)
        if track == CANARY:
            canary = self.settings.canary(service)
            assert canary is not None, f"{service} has no canary in the profile"
            env[env_key(service, "model")] = str(canary.model)
        urls = self.urls
        depends = {name: urls[name] for name in callees_of(service)}
        host = self.bind_host(service)
        port = self.port if service == "Gateway" else free_port(host)
        log = None if self.log_dir is None else self.log_dir / f"{service}-{port}.log"
        process = spawn(server_command(service, host, port, depends), env, log)
        server = ServerProcess(service, track, port, process, f"http://{host}:{port}")
        with self._lock:
            self.servers.setdefault(service, []).append(server)
        return server

    def _start_replica(self, service: str, track: str, deadline: float) -> ServerProcess:
        """A new replica, ready, and in its service's replica file."""
        started = time.monotonic()
        server = self._spawn(service, track)
        try:
            wait_ready(server.url, deadline, server.process)
        except BaseException:
            self._forget(server)
            kill_tree(server.process)
            raise
        self._list(service, [server])
        self.report(f"{service}: {server.url} ({track}) ready in {time.monotonic() - started:.1f}s")
        return server

    def _list(self, service: str, ready: list[ServerProcess]) -> None:
        """Put ready replicas in their service's replica file; only then do they count as
        serving (a replica that answers /readyz but is not listed yet gets no traffic)."""
        with self._lock:
            for server in ready:
                server.listed = True
        if service != "Gateway":
            self._write_replica_file(service)

    def _retire(self, server: ServerProcess) -> None:
        """Out of the replica file first, so callers stop choosing it; then drain and stop."""
        started = time.monotonic()
        with self._lock:
            server.retiring = True
        if server.service != "Gateway":
            self._write_replica_file(server.service)
        stop_server(server.process, self._grace(server) + STOP_MARGIN)
        self._forget(server)
        self.report(
            f"{server.service}: {server.url} ({server.track}) drained and stopped in "
            f"{time.monotonic() - started:.1f}s"
        )

    def _grace(self, server: ServerProcess) -> float:
        """How long ``server`` will drain if stopped now, as it says (an ``auto`` grace grows
        with the work it holds), else the profile's."""
        report = load_report(server.url, self.internal_token)
        grace = None if report is None else report.get("grace_seconds")
        return (
            float(grace)
            if isinstance(grace, int | float)
            else self.settings.fixed_grace_seconds(server.service)
        )

    def _forget(self, server: ServerProcess) -> None:
        with self._lock:
            servers = self.servers.get(server.service, [])
            if server in servers:
                servers.remove(server)

    def _count(self, service: str, track: str) -> int:
        if track == CANARY and self._canary_weight(service) is None:
            return 0
        return self.replicas.get((service, track), 1)

    # -- the whole topology --------------------------------------------------------------

    def start(self, timeout: float = READY_TIMEOUT) -> None:
        from bentochain.serving.control import ControlServer

        deadline = time.monotonic() + timeout
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self._control = ControlServer.start(self)  # `bentochain status` works while starting
            for stage in (MODEL_SERVICES, tuple(CHAIN_SERVICES)):
                spawned = [
                    self._spawn(service, track)
                    for service in stage
                    for track in (STABLE, CANARY)
                    for _ in range(self._count(service, track))
                ]
                for server in spawned:
                    wait_ready(server.url, deadline, server.process)
                for service in stage:
                    self._list(service, [s for s in spawned if s.service == service])
            gateway = self._spawn("Gateway", STABLE)
            wait_ready(gateway.url, deadline, gateway.process)
            self._list("Gateway", [gateway])
        except BaseException:
            self.stop()
            raise
        self._supervisor = threading.Thread(target=self._supervise, name="supervisor", daemon=True)
        self._supervisor.start()
        self._prober = threading.Thread(target=self._watch_liveness, name="liveness", daemon=True)
        self._prober.start()

    def stop(self, grace: float | None = None) -> None:
        """Stop every server, callers first (each drains), then what they call."""
        self._stopping.set()
        control = self._control
        if control is not None:
            control.close()  # type: ignore[attr-defined]
            self._control = None
        for stage in (("Gateway",), tuple(CHAIN_SERVICES), MODEL_SERVICES):
            with self._lock:
                group = [s for service in stage for s in self.servers.get(service, [])]
            graces = [self._grace(server) for server in group] if grace is None else []
            for server in group:
                with contextlib.suppress(ProcessLookupError):
                    server.process.send_signal(signal.SIGTERM)
            longest = max(graces, default=0.0)
            deadline = time.monotonic() + (longest + STOP_MARGIN if grace is None else grace)
            for server in group:
                wait_or_kill(server.process, max(0.1, deadline - time.monotonic()))
                self._forget(server)

    def _supervise(self) -> None:
        """Replace a replica that exits on its own; note the Gateway's exit."""
        while not self._stopping.wait(0.5):
            with self._lock:
                dead = [
                    s
                    for servers in self.servers.values()
                    for s in servers
                    if not s.retiring and s.process.poll() is not None
                ]
            for server in dead:
                if self._stopping.is_set():  # stop() is ending them
                    return
                code = server.process.returncode
                self._forget(server)
                if server.service == "Gateway":
                    self.report(f"Gateway exited with code {code}")
                    self.exit_code = code or 1
                    return
                self.report(
                    f"{server.service}: {server.url} exited with code {code}; starting another"
                )
                self._write_replica_file(server.service)
                threading.Thread(
                    target=self._replace, args=(server,), name="replace", daemon=True
                ).start()

    def _watch_liveness(self) -> None:
        """Probe every serving replica's ``/livez`` on its service's period, in parallel."""
        with ThreadPoolExecutor(max_workers=8, thread_name_prefix="livez") as probes:
            while not self._stopping.wait(0.5):
                due = self._due_probes(time.monotonic())
                list(probes.map(self.check_liveness, due))

    def _due_probes(self, now: float) -> list[ServerProcess]:
        """Serving replicas whose next probe is due. Not the Gateway: it ends the run when it
        exits; nor one that starts or retires (its own deadline and drain govern it)."""
        with self._lock:
            due = [
                s
                for service, servers in self.servers.items()
                if service != "Gateway"
                for s in servers
                if s.state == "serving" and now >= s.next_probe
            ]
            for server in due:
                period = self.settings.entry(server.service).liveness.period_seconds
                server.next_probe = now + period
            return due

    def check_liveness(self, server: ServerProcess) -> None:
        """One liveness probe; past the failure threshold, the replica is killed at once (its
        engine or its loop is stuck: a drain would wait for requests that never end) and the
        supervisor starts another."""
        liveness = self.settings.entry(server.service).liveness
        failure = liveness_failure(server.url, liveness.timeout_seconds)
        with self._lock:
            server.failures = 0 if failure is None else server.failures + 1
            failed = server.failures
            if failed < liveness.failure_threshold or server.state != "serving":
                return
            server.retiring = True  # out of the replica file, and not probed again
        self.report(
            f"{server.service}: {server.url} failed {failed} liveness probes in a row "
            f"({failure}); killing it"
        )
        self._write_replica_file(server.service)
        kill_tree(server.process)
        with self._lock:
            server.retiring = False  # dead now: the supervisor replaces it

    def _replace(self, server: ServerProcess) -> None:
        if self._stopping.is_set():
            return
        try:
            self._start_replica(server.service, server.track, time.monotonic() + READY_TIMEOUT)
        except Exception as exc:
            if not self._stopping.is_set():
                self.report(f"{server.service}: the replacement did not start: {exc}")

    def wait(self, rollout_requested: threading.Event | None = None) -> int:
        """Block until the Gateway exits (or Ctrl+C); SIGHUP's event asks for a rollout."""
        try:
            while self.exit_code is None:
                if rollout_requested is not None and rollout_requested.wait(0.5):
                    rollout_requested.clear()
                    threading.Thread(
                        target=self.rollout, args=(list(CALLEES),), daemon=True
                    ).start()
                elif rollout_requested is None:
                    time.sleep(0.5)
            return self.exit_code
        except KeyboardInterrupt:
            return 0
        finally:
            self.stop()

    # -- rollout -------------------------------------------------------------------------

    def rollout(self, services: list[str], report: Report | None = None) -> bool:
        """Replace every replica of ``services``, one at a time, from the profile as it is now.

        Returns True when every old replica is gone; on a failure, what still runs keeps
        serving and the reason is reported.
        """
        say = report or self.report
        unknown = [s for s in services if s not in CALLEES]
        if unknown:
            say(
                f"cannot roll {', '.join(unknown)}: services with replicas are {', '.join(CALLEES)}"
            )
            return False
        if self._supervisor is None:
            say("the topology is still starting; roll out once it serves")
            return False
        if not self._rolling.acquire(blocking=False):
            say("a rollout is already running")
            return False
        started = time.monotonic()
        previous = self.report
        self.report = say
        try:
            try:
                self.settings = self._profile()
            except ProfileError as exc:
                say(f"the profile is invalid, nothing was changed:\n{exc}")
                return False
            prepared = subprocess.run(
                [sys.executable, "-m", "bentochain.cli", "prepare"],
                env=self._env,
                cwd=PROJECT_ROOT,
                capture_output=True,
                text=True,
            )
            if prepared.returncode != 0:
                say(f"`bentochain prepare` failed, nothing was changed:\n{prepared.stderr}")
                return False
            short = [problem for service in services if (problem := self._grace_too_short(service))]
            if short:
                say("\n".join(["nothing was changed:", *short]))
                return False
            for service in services:
                self._roll(service)
            say(f"rollout of {', '.join(services)} done in {time.monotonic() - started:.1f}s")
            return True
        except Exception as exc:
            say(f"rollout stopped: {exc}")
            return False
        finally:
            self.report = previous
            self._rolling.release()

    def _grace_too_short(self, service: str) -> str | None:
        """Why draining ``service``'s replicas could cut a stream they could have finished: a
        fixed grace shorter than its longest allowed generation takes at the rate a replica
        measures (a replica that has measured nothing yet says nothing)."""
        with self._lock:
            urls = [s.url for s in self.servers.get(service, []) if s.state == "serving"]
        for url in urls:
            report = load_report(url, self.internal_token) or {}
            longest = report.get("longest_generation_seconds")
            grace = report.get("grace_seconds")
            if (
                report.get("grace_fixed")
                and isinstance(longest, int | float)
                and isinstance(grace, int | float)
                and longest > grace
            ):
                key = SERVICE_KEYS[service]
                return (
                    f"{service}: its shutdown grace ({grace:g}s) is shorter than the longest "
                    f"generation it allows takes at the rate {url} measures ({longest:.0f}s): a "
                    f"drain could cut it. Set {key}.shutdown.grace_seconds to {math.ceil(longest)} "
                    f"or more (or to auto), or lower {key}.generation.max_tokens_limit"
                )
        return None

    def _roll(self, service: str) -> None:
        for track in (STABLE, CANARY):
            with self._lock:
                old = [
                    s for s in self.servers.get(service, []) if s.track == track and not s.retiring
                ]
            configured = self._count(service, track)
            if track == STABLE:
                wanted = max(len(old), 1)
            elif configured == 0:
                wanted = 0  # the profile has no canary (any more): its replicas go
            else:
                wanted = len(old) or configured  # a canary new to the profile starts
            for i in range(max(wanted, len(old))):
                if i < wanted:
                    self._start_replica(service, track, time.monotonic() + READY_TIMEOUT)
                if i < len(old):
                    self._retire(old[i])
        self._write_replica_file(service)


@contextlib.contextmanager
def split_topology(
    env: Mapping[str, str],
    log_dir: Path,
    *,
    replicas: Mapping[tuple[str, str], int] | None = None,
    timeout: float = READY_TIMEOUT,
) -> Iterator[SplitTopology]:
    """``bentochain serve-split`` in this process, on a free port, logging under ``log_dir``;
    stopped when the block ends."""
    topology = SplitTopology(port=free_port(), env=env, log_dir=log_dir, replicas=replicas or {})
    topology.start(timeout=timeout)
    try:
        yield topology
    finally:
        topology.stop()


@contextlib.contextmanager
def composed_server(
    log: Path,
    *,
    env: Mapping[str, str] | None = None,
    host: str = "127.0.0.1",
    timeout: float = 300.0,
    every_dependency: bool = True,
) -> Iterator[str]:
    """``bentochain serve`` (the whole Bento) on a free port, logging to ``log``: its URL.

    The server is stopped when the block ends; one that does not get ready within ``timeout``
    is stopped and reported with the end of its log.
    """
    with composed_process(
        log, env=env, host=host, timeout=timeout, every_dependency=every_dependency
    ) as (url, _):
        yield url


@contextlib.contextmanager
def composed_process(
    log: Path,
    *,
    env: Mapping[str, str] | None = None,
    host: str = "127.0.0.1",
    timeout: float = 300.0,
    every_dependency: bool = True,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``composed_server``, with its process (for tests that signal it)."""
    port = free_port(host)
    command = [sys.executable, "-m", "bentochain.cli", "serve", "--host", host, "--port", str(port)]
    process = spawn(command, env, log)
    url = f"http://{host}:{port}"
    try:
        try:
            wait_ready(url, time.monotonic() + timeout, process, every_dependency=every_dependency)
        except BaseException:
            raise RuntimeError(
                f"the composed server did not start:\n{log.read_text()[-4000:]}"
            ) from None
        yield url, process
    finally:
        if process.poll() is None:
            stop_server(process)
