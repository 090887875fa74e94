"""Real PostgreSQL and Redis servers for tests, on free loopback ports in temporary folders,
and Prometheus's binaries.

A server missing from the machine is installed with apt (Debian's packages are reachable here
and CI runs as root); where that cannot be done the test is skipped with the reason. Each server
is stopped when its block ends.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bentochain.serving.topology import free_port, stop_server

APT_TIMEOUT = 900


def _apt_install(package: str) -> None:
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(f"{package} is not installed and cannot be installed here (needs root + apt)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=True, timeout=APT_TIMEOUT)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package],
        env=env,
        check=True,
        timeout=APT_TIMEOUT,
    )


def _postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        _apt_install("postgresql")
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent


def _as_postgres(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run it as the ``postgres`` user the package made."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def _wait(check: list[str], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if subprocess.run(check, capture_output=True).returncode == 0:
            return
        time.sleep(0.3)
    raise RuntimeError(f"{what} did not start in {timeout:.0f}s")


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """A PostgreSQL cluster of its own; yields the URL of its ``shop`` database (user ``app``).

    Its folder is a new one under the system's temporary directory, not pytest's: the
    ``postgres`` user cannot enter root's private pytest folders.
    """
    bin_dir = _postgres_bin()
    root = Path(tempfile.mkdtemp(prefix="bentochain-pg-"))
    try:
        with _postgres_in(root, bin_dir) as url:
            yield url
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def _postgres_in(root: Path, bin_dir: Path) -> Iterator[str]:
    data, sockets = root / "data", root / "sockets"
    for folder in (data, sockets):
        folder.mkdir(parents=True)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        for folder in (data, sockets):
            shutil.chown(folder, "postgres")
    subprocess.run(
        _as_postgres([str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"]),
        check=True,
        capture_output=True,
        timeout=120,
    )
    port = free_port()
    server = subprocess.Popen(
        _as_postgres(
            [
                str(bin_dir / "postgres"),
                "-D",
                str(data),
                "-p",
                str(port),
                "-k",
                str(sockets),
                "-c",
                "listen_addresses=127.0.0.1",
            ]
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    psql = [str(bin_dir / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres"]
    try:
        _wait([*psql, "-c", "SELECT 1"], "PostgreSQL")
        for statement in (
            "CREATE ROLE app LOGIN",
            "CREATE DATABASE shop OWNER app",
        ):
            subprocess.run([*psql, "-c", statement], check=True, capture_output=True)
        yield f"postgresql://app@127.0.0.1:{port}/shop"
    finally:
        stop_server(server)


@contextlib.contextmanager
def redis_server(root: Path) -> Iterator[str]:
    """A Redis server with its files in ``root``; yields its URL."""
    if shutil.which("redis-server") is None:
        _apt_install("redis-server")
    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(root),
         "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait(["redis-cli", "-p", str(port), "ping"], "Redis")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop_server(server)


def prometheus_tool(name: str) -> str:
    """``prometheus`` or ``promtool`` (Debian's ``prometheus`` package), installed if missing."""
    if shutil.which(name) is None:
        _apt_install("prometheus")
    found = shutil.which(name)
    assert found, f"{name} is not on PATH after installing the prometheus package"
    return found
