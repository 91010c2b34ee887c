"""The local control socket (``<state_dir>/control.sock``, mode 0600): one
command line (``status`` or ``drop NAME``), one JSON line back.  Served on
the API's event loop; ``vmagent status`` and ``vmagent consumer drop`` use
`query_status` and `ask`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from pathlib import Path
from typing import Any

from vmagent.api.source import EvidenceSource
from vmagent.errors import VmagentError

SOCKET_NAME = "control.sock"
MAX_LINE = 256
TIMEOUT_S = 10.0


def bind(state_dir: Path) -> socket.socket:
    """The listening socket, replacing a stale one; OSError if the state
    directory cannot have it."""
    path = state_dir / SOCKET_NAME
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a stale socket from a previous run
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
        os.chmod(path, 0o600)
        sock.listen(16)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    finally:
        os.umask(old)
    return sock


class ControlServer:
    def __init__(self, agent: EvidenceSource) -> None:
        self.agent = agent
        self.path = agent.cfg.agent.state_dir / SOCKET_NAME
        self._server: asyncio.AbstractServer | None = None

    async def start(self, sock: socket.socket) -> None:
        self._server = await asyncio.start_unix_server(
            self._serve, sock=sock, limit=MAX_LINE)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        try:
            try:
                line = await asyncio.wait_for(reader.readline(), TIMEOUT_S)
            except ValueError:  # no newline within MAX_LINE bytes
                reply: dict[str, Any] = {"error": "command line too long"}
            else:
                reply = await self._answer(line)
            writer.write(json.dumps(reply, default=repr).encode() + b"\n")
            await asyncio.wait_for(writer.drain(), TIMEOUT_S)
        except (OSError, asyncio.TimeoutError):
            pass  # the client is gone or stalled: nothing more to do
        finally:
            writer.close()

    async def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            return await asyncio.to_thread(self._command, line)
        except Exception as err:  # noqa: BLE001 - a bug: one line each side
            self.agent.log.error("control_command_failed",
                                 error=f"{type(err).__name__}: {err}"[:300])
            return {"error": f"internal error: {err}"[:300]}

    def _command(self, line: bytes) -> dict[str, Any]:
        """In a worker thread (both commands take the WAL lock)."""
        words = line.decode("utf-8", "replace").split()
        if words == ["status"]:
            return self.agent.status()
        if len(words) == 2 and words[0] == "drop":
            try:
                self.agent.drop_consumer(words[1])
            except VmagentError as err:
                return {"error": str(err)}
            return {"dropped": words[1]}
        return {"error": f"unknown command {' '.join(words)[:40]!r}"}


def query_status(state_dir: Path, timeout: float = 10.0) -> dict[str, Any]:
    """The running agent's status document; OSError if none answers."""
    return ask(state_dir, "status", timeout)


def ask(state_dir: Path, command: str,
        timeout: float = 10.0) -> dict[str, Any]:
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
