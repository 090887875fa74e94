"""How ``bentochain rollout`` and ``bentochain status`` talk to a running ``serve-split``.

A Unix socket in serve-split's state folder (``$BENTOML_HOME/bentochain/split-<port>/``,
readable by its user only), one JSON line per message: the client sends a command, the server
answers with ``progress`` lines and ends with ``done`` (``ok`` true or false). A socket rather
than a signal, because a rollout takes minutes and the one who asked wants to see it through
and learn whether it worked.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import socketserver
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, ValidationError

from bentochain.serving.topology import CALLEES, split_state_dir

if TYPE_CHECKING:
    from bentochain.serving.topology import SplitTopology

SOCKET_NAME = "control.sock"


class Command(BaseModel):
    model_config = ConfigDict(extra="forbid")

    command: str
    services: list[str] = []


class NotRunning(Exception):
    """No serve-split answers on that port."""


def socket_path(env: Mapping[str, str], port: int) -> Path:
    return split_state_dir(env, port) / SOCKET_NAME


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def _send(self, message: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):  # the client left; what it asked for goes on
            self.wfile.write((json.dumps(message) + "\n").encode())
            self.wfile.flush()

    def handle(self) -> None:
        topology = self.server.topology
        try:
            command = Command.model_validate_json(self.rfile.readline())
        except ValidationError as exc:
            self._send({"event": "done", "ok": False, "message": f"bad command: {exc}"})
            return
        if command.command == "status":
            self._send({"event": "status", "servers": topology.status()})
            self._send({"event": "done", "ok": True})
        elif command.command == "rollout":
            own_log = topology.report
            lock = threading.Lock()

            def progress(message: str) -> None:
                own_log(message)  # serve-split's own output tells the story too
                with lock:
                    self._send({"event": "progress", "message": message})

            ok = topology.rollout(command.services or list(CALLEES), progress)
            self._send({"event": "done", "ok": ok})
        else:
            self._send({"event": "done", "ok": False, "message": f"unknown {command.command!r}"})


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    topology: SplitTopology


class ControlServer:
    """The serve-split side: a thread serving the socket until ``close``."""

    def __init__(self, server: _Server, path: Path) -> None:
        self._server = server
        self.path = path
        self._thread = threading.Thread(target=server.serve_forever, name="control", daemon=True)
        self._thread.start()

    @classmethod
    def start(cls, topology: SplitTopology) -> ControlServer:
        path = topology.state_dir / SOCKET_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)  # left by a serve-split that was killed
        old_umask = os.umask(0o177)
        try:
            server = _Server(str(path), _Handler)
        finally:
            os.umask(old_umask)
        server.topology = topology
        return cls(server, path)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self.path.unlink(missing_ok=True)


def send(env: Mapping[str, str], port: int, command: Command) -> Iterator[dict[str, Any]]:
    """The client side: every message the server answers, until ``done``."""
    path = socket_path(env, port)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError):
        client.close()
        raise NotRunning(
            f"no `bentochain serve-split` runs on port {port} (nothing answers at {path})"
        ) from None
    with client, client.makefile("rwb") as stream:
        stream.write((command.model_dump_json() + "\n").encode())
        stream.flush()
        for line in stream:
            message: dict[str, Any] = json.loads(line)
            yield message
            if message.get("event") == "done":
                return
