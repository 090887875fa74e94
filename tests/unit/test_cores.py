"""Model processes on the same cores share them: each computes only on core tokens it holds,
up to its fair share of cores // busy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bentochain.engines import cores
from bentochain.engines.cores import CoreShare, _cgroup_quota, available_cores

# Live processes: the ledger forgets the files of dead ones.
ME, PARENT, INIT = os.getpid(), os.getppid(), 1


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def share(
    folder: Path, pid: int, clock: Clock, threads: list[int] | None = None, fixed: int | None = None
) -> CoreShare:
    return CoreShare(
        fixed,
        folder=folder,
        cores=4,
        pid=pid,
        clock=clock,
        sleep=clock.sleep,
        set_threads=(threads if threads is not None else []).append,
    )


def held(folder: Path) -> int:
    return sum(1 for p in folder.iterdir() if p.name.endswith(".lock"))


def test_alone_a_process_takes_every_core(tmp_path: Path) -> None:
    threads: list[int] = []
    assert share(tmp_path, ME, Clock(), threads).working() == 4
    assert threads == [4]


def test_busy_neighbours_split_the_cores(tmp_path: Path) -> None:
    clock = Clock()
    mine: list[int] = []
    first = share(tmp_path, ME, clock, mine)
    assert first.working() == 4
    second = share(tmp_path, PARENT, clock)  # busy from its start (it loads its model)
    assert first.working() == 2  # the folder changed: it counts again at its next step
    assert second.working() == 2
    third = share(tmp_path, INIT, clock)
    assert first.working() == 1  # 4 cores, 3 busy
    assert second.working() == 1
    assert third.working() == 1
    assert mine == [4, 2, 1]


def test_a_paused_neighbour_gives_its_cores_back_after_a_while(tmp_path: Path) -> None:
    clock = Clock()
    first = share(tmp_path, ME, clock)
    second = share(tmp_path, PARENT, clock)
    assert (first.working(), second.working()) == (2, 2)
    second.paused()
    clock.now += 1
    assert first.working() == 2  # paused 1 s ago: it may be back any moment
    clock.now += cores.IDLE_SECONDS
    assert first.working() == 4

    def first_steps(seconds: float) -> None:  # first ends a step while second waits
        first.working()

    second._sleep = first_steps
    assert second.working() == 1  # back: it waits for the first to give back its share
    assert first.threads == 2
    assert second.working() == 2


def test_a_process_without_a_token_waits_for_one(tmp_path: Path) -> None:
    """Two wake at once and the first sees the second paused long ago: it takes every token.
    The second computes nothing until the first gives its share back."""
    clock = Clock()
    first = share(tmp_path, ME, clock)
    second = share(tmp_path, PARENT, clock)
    second.paused()
    clock.now += 10
    assert first.working() == 4
    waits: list[float] = []

    def first_steps(seconds: float) -> None:  # the first ends its step while the second waits
        waits.append(seconds)
        first.working()

    second._sleep = first_steps
    assert second.working() == 1
    assert waits  # it waited: it never ran beside a team on all four cores
    assert first.threads == 2
    assert second.working() == 2
    assert held(tmp_path) == 4


def test_a_token_held_by_a_process_that_does_not_run_is_waited_for_a_bounded_time(
    tmp_path: Path,
) -> None:
    clock = Clock()
    frozen = share(tmp_path, ME, clock)
    frozen.working()  # holds every token, and then never steps again
    other = share(tmp_path, PARENT, clock)
    assert other.working() == 1
    assert clock.now >= 100.0 + cores.TOKEN_WAIT_SECONDS


def test_a_load_does_not_wait_for_a_token(tmp_path: Path) -> None:
    """Loading a model is one long call: holding tokens through it would stall the others'
    steps, so it runs one thread beside them instead of waiting."""
    clock = Clock()
    share(tmp_path, ME, clock).working()  # holds every token
    loading = share(tmp_path, PARENT, clock)
    assert loading.working(wait=False) == 1
    assert clock.now == 100.0  # no wait


def test_pausing_gives_the_tokens_back_at_once(tmp_path: Path) -> None:
    clock = Clock()
    first = share(tmp_path, ME, clock)
    second = share(tmp_path, PARENT, clock)
    first.working()
    second.working()
    first.paused()
    assert second.working() == 2  # still counts first as busy: it takes only its share
    clock.now += cores.IDLE_SECONDS + 1
    assert second.working() == 4


def test_a_fixed_count_is_kept_and_shares_nothing(tmp_path: Path) -> None:
    clock = Clock()
    fixed: list[int] = []
    pinned = share(tmp_path, ME, clock, fixed, fixed=3)
    assert pinned.working() == 3
    assert share(tmp_path, PARENT, clock).working() == 4
    assert fixed == [3]
    assert not pinned.sharing


def test_the_file_of_a_dead_process_is_removed_even_when_its_pid_is_reused(tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    left = tmp_path / f"{int(dead.stdout)}-1.busy"
    reused = tmp_path / f"{PARENT}-1.busy"  # a live pid, but another start: reused
    left.touch()
    reused.touch()
    assert share(tmp_path, ME, Clock()).working() == 4
    assert not left.exists() and not reused.exists()


def test_close_leaves_the_ledger_and_frees_the_tokens(tmp_path: Path) -> None:
    clock = Clock()
    first = share(tmp_path, ME, clock)
    second = share(tmp_path, PARENT, clock)
    first.working()
    second.working()
    second.close()
    assert first.working() == 4
    (left,) = [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")]
    assert left == f"{first.identity}.busy" and left.startswith(f"{ME}-")


def test_cores_are_the_affinity_capped_by_the_quota() -> None:
    assert available_cores({0, 1, 2, 3}, None) == 4
    assert available_cores({0, 1, 2, 3}, 1.5) == 1
    assert available_cores({0, 1}, 8.0) == 2
    assert available_cores({0}, 0.2) == 1


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.0),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ],
)
def test_cgroup_quota(tmp_path: Path, files: dict[str, str], expected: float | None) -> None:
    own = tmp_path / "self-cgroup"
    own.write_text("0::/\n" if "cpu.max" in files else "4:cpu,cpuacct:/\n")
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert _cgroup_quota(tmp_path, own) == expected
