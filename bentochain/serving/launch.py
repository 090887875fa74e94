"""Run a BentoML server command with a Prometheus directory of its own.

``bentoml serve`` and ``start-http-server`` empty ``$BENTOML_HOME/prometheus_multiproc_dir``
when they start, and every worker writes its metric files there. Two servers that share a
``BENTOML_HOME`` (the split topology on one host, a second Bento beside the first) therefore
delete each other's files: the first server's ``/metrics`` then stops showing its own services.
Each server launched through here gets ``$BENTOML_HOME/bentochain_metrics/<label>`` instead,
still emptied at start, so a restart does not report a dead worker's counts.

Every server also keeps idle connections open longer than its callers do. Uvicorn closes a
keep-alive connection after 5 s of silence by default, and aiohttp (BentoML's dependency client)
reuses one for up to 15 s: a caller that picks a connection just as the server closes it gets
``ServerDisconnectedError`` for a request the server never read (seen: 5 of 384 concurrent
embeddings in the split topology). With the server waiting longer than any caller, only the
caller closes idle connections. The dependencies ``bentoml serve`` starts inside a composed Bento
do not get this option, so callers also stop reusing an idle connection after
``upstream.client.REUSE_SECONDS``, under uvicorn's 5 s.

Usage: ``python -m bentochain.serving.launch LABEL serve|start-http-server ARGS...``
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence

SERVER_COMMANDS = ("serve", "start-http-server")
KEEP_ALIVE_SECONDS = 75  # above aiohttp's 15 s idle reuse (and the 60 s of common proxies)


def launch_command(label: str, *args: str, python: str = sys.executable) -> list[str]:
    """The argv that runs ``bentoml <args>`` with the metrics directory named by ``label``
    (``python``: the interpreter, this one by default; a container's own on Kubernetes)."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", label):
        raise ValueError(f"metrics label {label!r}: use letters, digits, '.', '_' or '-'")
    if not args or args[0] not in SERVER_COMMANDS:
        raise ValueError(f"launch runs one of {SERVER_COMMANDS}, not {args[:1]}")
    return [python, "-m", "bentochain.serving.launch", label, *args]


def server_args(args: Sequence[str]) -> list[str]:
    """The server command's arguments, with the keep-alive timeout unless one is given."""
    if any(arg.startswith("--timeout-keep-alive") for arg in args):
        return list(args)
    return [*args, "--timeout-keep-alive", str(KEEP_ALIVE_SECONDS)]


def _option(args: Sequence[str], name: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
    return None


def serves_gateway(command: str, args: Sequence[str]) -> bool:
    """``serve`` runs the whole Bento; ``start-http-server`` the one ``--service-name``."""
    return command == "serve" or _option(args, "--service-name") == "Gateway"


def main(argv: Sequence[str] | None = None) -> None:
    label, command, *given = sys.argv[1:] if argv is None else argv
    from bentoml._internal.configuration.containers import BentoMLContainer

    rest = server_args(given)
    home = BentoMLContainer.bentoml_home.get()
    metrics_dir = os.path.join(home, "bentochain_metrics", label)
    BentoMLContainer.prometheus_multiproc_dir.set(metrics_dir)
    if serves_gateway(command, rest):
        from bentochain.config.loader import load_settings

        port = load_settings().gateway.metrics_port
        if port is not None:  # this process outlives its workers: it serves their files
            from pathlib import Path

            from bentochain.serving.metrics_port import serve_metrics

            serve_metrics(Path(metrics_dir), _option(rest, "--host") or "127.0.0.1", port)
    if command == "start-http-server":
        from bentoml_cli._internal.start import start_command

        start_command([command, *rest], prog_name="bentoml start")
    else:
        from bentoml_cli.cli import cli

        cli([command, *rest], prog_name="bentoml")


if __name__ == "__main__":
    main()
