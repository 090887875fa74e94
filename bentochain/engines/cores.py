"""Share a machine's cores between the model processes on it instead of fighting over them.

torch runs a model's operators on an OpenMP team as wide as the machine, whose threads spin
between operators. A team that shares its cores with any other busy thread waits at every
operator for the member that thread keeps off its core: two SmolLM2 engines of two threads each
on 2 cores made 17 tokens/s each, against 190 for one alone and 106 each with one thread apiece
(docs/decisions.md). Kubernetes gives each pod cores of its own; one machine running several
model processes (replicas, the surge replica of a rollout, the composed Bento's encoders) has to
share them out itself.

Each model process keeps a ``CoreShare``; the processes on the same cores meet in a ledger
folder (per user and CPU set, in the temporary directory):

- a file per process says whether it works: ``<pid>.busy`` while it computes, ``<pid>.paused``
  (dated) once it has nothing to do; a paused process counts as busy for ``IDLE_SECONDS`` more,
  so a stream of requests with gaps does not make the others resize their teams every time;
- one lock file per core is a token: a process computes only while it holds tokens, and runs
  as many threads as it holds. It takes up to its fair share, ``cores // busy``, and gives back
  what is over it before each step, or all of them when it pauses. A process that holds none
  waits until one is free (a step of its neighbour's, at most ``TOKEN_WAIT_SECONDS``).

So one process alone keeps every core with a spinning team, and two busy ones never run
threads on the same core: the kernel frees a token the moment a process ends, however it ends.
``cores`` is what this process may use: its CPU affinity, capped by its cgroup's CPU quota.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec, TypeVar

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

IDLE_SECONDS = 2.0
"""How long a paused process still counts as busy."""
RECOUNT_SECONDS = 0.5
"""How often a working process recounts its neighbours when nothing in the folder changed."""
TOKEN_WAIT_SECONDS = 2.0
"""How long a process without a token waits for one before it computes anyway (the holder may be
stopped, e.g. by SIGSTOP: then it uses no core either)."""
TOKEN_POLL_SECONDS = 0.005


def _cgroup_quota(
    root: Path = Path("/sys/fs/cgroup"), own: Path = Path("/proc/self/cgroup")
) -> float | None:
    """The CPU quota of this process's cgroup in cores (v2 ``cpu.max``, v1 CFS), or None."""
    candidates: list[Path] = []
    with contextlib.suppress(OSError):
        for line in own.read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if controllers == "":  # cgroup v2
                candidates.append(root / path.lstrip("/") / "cpu.max")
            elif "cpu" in controllers.split(","):
                candidates.append(root / "cpu" / path.lstrip("/"))
    candidates += [root / "cpu.max", root / "cpu"]
    for candidate in candidates:
        with contextlib.suppress(OSError, ValueError):
            if candidate.name == "cpu.max":
                quota, period = candidate.read_text().split()[:2]
                if quota != "max":
                    return int(quota) / int(period)
            elif candidate.is_dir():
                quota_us = int((candidate / "cpu.cfs_quota_us").read_text())
                period_us = int((candidate / "cpu.cfs_period_us").read_text())
                if quota_us > 0:
                    return quota_us / period_us
    return None


def _affinity() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return set(range(os.cpu_count() or 1))


def available_cores(
    affinity: set[int] | None = None,
    quota: float | Callable[[], float | None] | None = _cgroup_quota,
) -> int:
    """The cores this process may use: its CPU affinity, capped by its cgroup's CPU quota
    (rounded down, at least one)."""
    cpus = len(affinity if affinity is not None else _affinity())
    limit = quota() if callable(quota) else quota
    if limit is not None:
        cpus = min(cpus, max(1, math.floor(limit)))
    return max(1, cpus)


def ledger_folder(affinity: set[int] | None = None) -> Path:
    """Where the model processes that share this process's cores meet: per user and CPU set."""
    cpus = sorted(affinity if affinity is not None else _affinity())
    key = (
        f"{cpus[0]}-{cpus[-1]}"
        if cpus == list(range(cpus[0], cpus[-1] + 1))
        else "_".join(map(str, cpus))
    )
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"bentochain-cores-{uid}" / f"cpus-{key}"


def _started(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, from ``/proc``), so that a file left
    by a process that died is not taken for a new process that got its pid; None when there is
    no such process. Where ``/proc`` is missing, only whether it exists."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return "0"
    return stat.rsplit(")", 1)[1].split()[19]  # the 22nd field; the name may hold spaces


def _set_torch_threads(count: int) -> None:
    import torch

    torch.set_num_threads(count)


class CoreShare:
    """This process's share of its cores, for the one thread that runs its model.

    Call ``working()`` on the model thread before each step (an OpenMP team's width is a
    setting of the thread that runs it) and ``paused()`` when it has nothing left to do.
    ``fixed``: a thread count from the profile; such a process shares nothing.
    """

    def __init__(
        self,
        fixed: int | None = None,
        *,
        folder: Path | None = None,
        cores: int | None = None,
        pid: int | None = None,
        set_threads: Callable[[int], None] = _set_torch_threads,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.fixed = fixed
        self.cores = cores if cores is not None else available_cores()
        self.folder = folder if folder is not None else ledger_folder()
        self.pid = pid if pid is not None else os.getpid()
        self.identity = f"{self.pid}-{_started(self.pid) or 0}"
        self._set_threads = set_threads
        self._clock = clock
        self._sleep = sleep
        self.threads: int | None = None
        self.busy = 1
        self._state: str | None = None  # "busy" or "paused"; None: not in the ledger
        self._tokens: dict[int, int] = {}  # core index -> the locked file's descriptor
        self._seen: tuple[int, float] = (-1, float("-inf"))  # folder mtime, time of the count
        if fixed is None:
            try:
                self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
                self._mark("busy")
            except OSError as exc:  # no writable temporary folder: every core, shared with none
                logger.warning("cannot share cores through %s (%s)", self.folder, exc)
                self._state = None

    @property
    def sharing(self) -> bool:
        return self._state is not None

    def working(self, wait: bool = True) -> int:
        """Take this process's share of the cores before a step and size its team to it;
        without a token, wait for one (``wait``: a step), or run one thread anyway (a model's
        load: one long call that would hold the tokens it took for all of it). Returns the
        thread count it runs."""
        if not self.sharing:
            wanted = self.fixed or self.cores
        else:
            if self._state == "paused":
                with contextlib.suppress(OSError):
                    self._mark("busy")
            if self._changed():
                self.busy = 1 + self._busy_neighbours()
                self._claim(max(1, self.cores // self.busy))
            if not self._tokens and wait:
                self._wait_for_token()
            wanted = max(1, len(self._tokens))
        if wanted != self.threads:
            if self.threads is not None:
                logger.info(
                    "%d model process(es) busy on %d core(s): %d thread(s) -> %d",
                    self.busy,
                    self.cores,
                    self.threads,
                    wanted,
                )
            self._set_threads(wanted)
            self.threads = wanted
        return wanted

    def paused(self) -> None:
        """Nothing to compute now: give the tokens back. Still counted as busy by the others for
        ``IDLE_SECONDS``."""
        self._release()
        if self._state == "busy":
            with contextlib.suppress(OSError):
                self._mark("paused")
                now = self._clock()
                os.utime(self._path("paused"), (now, now))

    def close(self) -> None:
        """Leave the ledger (the process stops serving)."""
        self._release()
        if self._state is not None:
            with contextlib.suppress(OSError):
                self._path(self._state).unlink()
            self._state = None

    def around(self, fn: Callable[P, R], *, wait: bool = True) -> Callable[P, R]:
        """``fn`` between ``working(wait)`` and ``paused()`` (what runs on the model thread now
        and then: a batch, a load)."""

        def wrapped(*args: P.args, **kwargs: P.kwargs) -> R:
            self.working(wait)
            try:
                return fn(*args, **kwargs)
            finally:
                self.paused()

        return wrapped

    # -- the ledger ---------------------------------------------------------------------

    def _path(self, state: str) -> Path:
        return self.folder / f"{self.identity}.{state}"

    def _mark(self, state: str) -> None:
        if self._state is None:
            self._path(state).touch()
        elif self._state != state:
            os.replace(self._path(self._state), self._path(state))
        self._state = state

    def _changed(self) -> bool:
        """Whether to count again: a file came, went or changed state, or a while passed (a
        paused neighbour's time runs out with no change in the folder)."""
        try:
            mtime = os.stat(self.folder).st_mtime_ns
        except OSError:
            return False
        now = self._clock()
        seen, counted = self._seen
        if mtime == seen and now - counted < RECOUNT_SECONDS:
            return False
        self._seen = (mtime, now)
        return True

    def _busy_neighbours(self) -> int:
        busy = 0
        now = self._clock()
        try:
            entries = list(os.scandir(self.folder))
        except OSError:
            return 0
        for entry in entries:
            identity, _, state = entry.name.partition(".")
            pid, _, started = identity.partition("-")
            if not pid.isdigit() or identity == self.identity or state not in ("busy", "paused"):
                continue
            if _started(int(pid)) != started:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)  # a process that died without leaving
                continue
            if state == "busy":
                busy += 1
            else:
                with contextlib.suppress(OSError):
                    busy += now - entry.stat().st_mtime <= IDLE_SECONDS
        return busy

    # -- the tokens ---------------------------------------------------------------------

    def _claim(self, count: int) -> None:
        """Hold ``count`` core tokens if they are free: give back any over it, take what is
        free up to it."""
        count = min(count, self.cores)
        for core in sorted(self._tokens, reverse=True)[count:]:
            os.close(self._tokens.pop(core))  # closing the file gives up its lock
        for core in range(self.cores):
            if len(self._tokens) >= count:
                break
            if core not in self._tokens:
                fd = _try_lock(self.folder / f"core-{core}.lock")
                if fd is not None:
                    self._tokens[core] = fd

    def _wait_for_token(self) -> None:
        """Wait until a neighbour gives a token back at the end of its step."""
        deadline = self._clock() + TOKEN_WAIT_SECONDS
        while True:
            self._claim(1)
            if self._tokens:
                self._seen = (-1, float("-inf"))  # its fair share at the next step
                return
            if self._clock() >= deadline:
                logger.warning(
                    "no core token free for %.0fs (the process holding them does not run): "
                    "computing on one thread anyway",
                    TOKEN_WAIT_SECONDS,
                )
                return
            self._sleep(TOKEN_POLL_SECONDS)

    def _release(self) -> None:
        while self._tokens:
            os.close(self._tokens.popitem()[1])


def _try_lock(path: Path) -> int | None:
    """An open descriptor of ``path`` holding its exclusive lock, or None when another process
    holds it. The kernel drops the lock when the process ends, however it ends."""
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd
