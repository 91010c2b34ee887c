"""The HTTP/1.1 server under the pull API: asyncio for the sockets, h11 for
the protocol, our own deadlines for slow clients (docs/protocol.md,
"Server").

A connection costs a protocol object and a timer until a whole request's
headers are in; no task, no thread.  Connections without a complete request
live in a bounded pool (`guard.PendingPool`): when it is full, the oldest is
closed to make room, so a new connection is never refused and an
authenticated request never waits for a slot.
"""

from __future__ import annotations

import asyncio
import json
import resource
import socket
import ssl
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from vmagent.api.guard import FailureLimiter, PendingPool

if TYPE_CHECKING:
    from vmagent.api.connection import Connection

BACKLOG = 1024
MAX_HEADERS = 16 << 10  # request line and headers, bytes
MAX_BODY = 64 << 10
WRITE_TIMEOUT_S = 30.0  # a reply must be taken by the client within this
THROTTLE_DELAY_S = 1.0  # a held-back failure is answered this much later
STOPPING = "agent stopping"  # connections cut for this are not logged


@dataclass
class Request:
    """A request's head (and body, once read); ``consumer`` is set once
    its credentials are known to be valid."""

    method: str
    target: str
    headers: dict[str, str]
    client: str
    cert_cn: str | None = None
    body: bytes = b""
    consumer: str | None = None
    state: dict[str, Any] = field(default_factory=dict)  # for the app

    @property
    def authenticated(self) -> bool:
        return self.consumer is not None

    def line(self) -> str:
        return f"{self.method[:20]} {self.target.split('?')[0][:100]}"


@dataclass
class Reply:
    status: int
    ctype: str
    body: bytes
    delay_s: float = 0.0  # held back before it is sent (throttling)

    @classmethod
    def error(cls, status: int, message: str, **extra: Any) -> Reply:
        return cls(status, "application/json",
                   json.dumps({"error": message, **extra}).encode())


class App(Protocol):
    """What answers requests: ``admit`` sees the head before any body is
    read (routing, credentials, sizes) and returns an error reply or None;
    ``handle`` answers an admitted request with its body."""

    def admit(self, request: Request) -> Reply | None: ...

    async def handle(self, request: Request) -> Reply: ...


class HttpServer:
    """Listens on ``[api] listen`` and hands each connection to a
    `Connection`; runs entirely in the event loop's thread."""

    def __init__(self, app: App, log: Any, timeout_s: float,
                 tls: ssl.SSLContext | None) -> None:
        self.app, self.log, self.timeout_s, self.tls = app, log, timeout_s, tls
        self.pending: PendingPool[Connection] = PendingPool()
        self.failures = FailureLimiter()
        self.connections: set[Connection] = set()
        self._server: asyncio.AbstractServer | None = None

    async def start(self, sock: socket.socket) -> None:
        from vmagent.api.connection import Connection

        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: Connection(self), sock=sock, backlog=BACKLOG)

    def opened(self, conn: Connection) -> None:
        self.connections.add(conn)

    def closed(self, conn: Connection) -> None:
        self.connections.discard(conn)
        self.pending.discard(conn)

    def make_pending(self, conn: Connection) -> None:
        oldest = self.pending.add(conn)
        if oldest is not None:
            oldest.abort("evicted by a newer connection")

    def throttle(self, request: Request | None, reply: Reply,
                 client: str) -> Reply:
        """A failure without valid credentials draws on the client
        address's budget; past it, the answer is a late 429."""
        if request is not None and request.authenticated:
            return reply
        if self.failures.take(client):
            return reply
        late = Reply.error(429, "too many failed requests from this "
                           "address; slow down")
        late.delay_s = THROTTLE_DELAY_S
        return late

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.abort(STOPPING)


def parse_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def bind(listen: str) -> socket.socket:
    """The listening socket for ``host:port``; OSError (with the system's
    own ``strerror``) when it cannot be had."""
    host, port = parse_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def raise_fd_limit() -> None:
    """Open files up to the hard limit (best effort): idle clients cost a
    descriptor each, and should cost nothing more."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        pass
