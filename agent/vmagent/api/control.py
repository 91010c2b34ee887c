"""The local control socket (``<state_dir>/control.sock``, mode 0600):
``vmagent status`` asks it for the status document."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import socketserver
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vmagent.errors import VmagentError

if TYPE_CHECKING:
    from vmagent.daemon import Agent

SOCKET_NAME = "control.sock"


class ControlServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.path = agent.cfg.agent.state_dir / SOCKET_NAME
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a stale socket from a previous run
        old = os.umask(0o177)
        try:
            super().__init__(str(self.path), _Handler)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="control",
                                  daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class _Handler(socketserver.StreamRequestHandler):
    timeout = 10.0
    server: ControlServer

    def handle(self) -> None:
        words = self.rfile.readline(256).decode("utf-8", "replace").split()
        agent = self.server.agent
        reply: dict[str, Any]
        if words == ["status"]:
            reply = agent.status()
        elif len(words) == 2 and words[0] == "drop":
            try:
                agent.drop_consumer(words[1])
                reply = {"dropped": words[1]}
            except VmagentError as err:
                reply = {"error": str(err)}
        else:
            reply = {"error": f"unknown command {' '.join(words)[:40]!r}"}
        self.wfile.write(json.dumps(reply, default=repr).encode() + b"\n")


def query_status(state_dir: Path, timeout: float = 10.0) -> dict[str, Any]:
    """The running agent's status document; OSError if none answers."""
    return ask(state_dir, "status", timeout)


def ask(state_dir: Path, command: str, timeout: float = 10.0) -> dict[str, Any]:
    """Send one command line to the running agent; OSError if none answers."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(state_dir / SOCKET_NAME))
        s.sendall(command.encode() + b"\n")
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
    return json.loads(b"".join(chunks))
