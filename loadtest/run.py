"""Run the locust scenarios headless and keep locust's HTML and CSV reports.

    python -m loadtest.run --users 32 --duration 60s             # or: make loadtest
    python -m loadtest.run --host http://127.0.0.1:3000           # against a running server

Without ``--host`` it prepares the models and serves the composed Bento on a free loopback port
for the run, then stops it. The exit code is locust's: non-zero when any request failed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from bentochain.config.loader import PROJECT_ROOT
from bentochain.serving.topology import composed_server

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
REPORTS = PROJECT_ROOT / "loadtest" / "reports"


@contextlib.contextmanager
def prepared_server(log: Path) -> Iterator[str]:
    """``bentochain prepare`` then ``bentochain serve`` on a free port; its URL."""
    subprocess.run([sys.executable, "-m", "bentochain.cli", "prepare"], check=True, timeout=900)
    with composed_server(log, timeout=600) as url:
        yield url


def run_locust(host: str, users: int, spawn_rate: float, duration: str, out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "--host", host, "--users", str(users), "--spawn-rate", str(spawn_rate),
        "--run-time", duration, "--stop-timeout", "30",
        "--csv", str(out / "locust"), "--html", str(out / "locust.html"),
        "--only-summary", "--exit-code-on-error", "1",
    ]  # fmt: skip
    return subprocess.run(command, cwd=PROJECT_ROOT, env=os.environ.copy(), check=False).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", help="a running gateway (default: serve one for the run)")
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--spawn-rate", type=float, default=8.0)
    parser.add_argument("--duration", default="60s", help="locust --run-time, e.g. 20s or 5m")
    parser.add_argument("--out", type=Path, help="report folder (default loadtest/reports/<time>)")
    args = parser.parse_args(argv)
    out = args.out or REPORTS / time.strftime("%Y%m%d-%H%M%S")
    if args.host:
        code = run_locust(args.host, args.users, args.spawn_rate, args.duration, out)
    else:
        out.mkdir(parents=True, exist_ok=True)
        with prepared_server(out / "server.log") as host:
            code = run_locust(host, args.users, args.spawn_rate, args.duration, out)
    print(f"reports: {out / 'locust.html'} and {out}/locust_*.csv")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
