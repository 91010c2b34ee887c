"""Hostile clients against a local agent, for tests and bench/api_hostile.py:
idle connections, slowloris connections (one byte a second) and malformed
requests, all from 127.0.0.1, for a bounded time.  Each kind reconnects
when the agent closes it, so the pressure holds for the whole run."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

HOST = "127.0.0.1"
SLOW_REQUEST = (b"GET /v1/batches?consumer=default HTTP/1.1\r\nHost: x\r\n"
                b"Authorization: Bearer " + b"x" * 40 + b"\r\n\r\n")
GARBAGE = [
    b"garbage\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",  # no Host
    b"GET /v1/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
    b"wrong-token-wrong-token\r\n\r\n",
    b"GET /v1/batches?consumer=default&after=%C2%B2 HTTP/1.1\r\nHost: x\r\n"
    b"\r\n",
    b"POST /v1/ack HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999"
    b"9999999\r\n\r\n",
    b"GET /v1/status HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20000 + b"\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(64)),
    b"GET /v1/status HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, x"
    b"\r\n\r\nzz\r\n",
]


@dataclass
class AttackStats:
    idle_opened: int = 0
    slow_opened: int = 0
    slow_cut: int = 0  # slowloris connections the agent closed
    garbage_replies: Counter[str] = field(default_factory=Counter)
    connect_errors: int = 0


class Attack:
    """``start()`` runs the attack in its own thread and event loop; it
    stops by itself after ``duration`` seconds (``join()`` waits)."""

    def __init__(self, port: int, idle: int = 300, slow: int = 200,
                 garbage: int = 2000, duration: float = 20.0) -> None:
        self.port, self.idle, self.slow = port, idle, slow
        self.garbage, self.duration = garbage, duration
        self.stats = AttackStats()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._end = 0.0

    def start(self) -> Attack:
        raise_fd_limit()
        self._end = time.monotonic() + self.duration
        self._thread.start()
        return self

    def join(self) -> AttackStats:
        self._thread.join(self.duration + 30)
        return self.stats

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        jobs = [self._idle_one() for _ in range(self.idle)]
        jobs += [self._slow_one() for _ in range(self.slow)]
        jobs.append(self._garbage_all())
        await asyncio.gather(*jobs)

    def _left(self) -> float:
        return self._end - time.monotonic()

    async def _connect(self) -> tuple[asyncio.StreamReader,
                                      asyncio.StreamWriter] | None:
        try:
            return await asyncio.wait_for(
                asyncio.open_connection(HOST, self.port), 5)
        except (OSError, asyncio.TimeoutError):
            self.stats.connect_errors += 1
            await asyncio.sleep(0.2)
            return None

    async def _idle_one(self) -> None:
        """Connect and send nothing; again when the agent closes it."""
        while self._left() > 0:
            conn = await self._connect()
            if conn is None:
                continue
            self.stats.idle_opened += 1
            reader, writer = conn
            with contextlib.suppress(OSError, asyncio.TimeoutError):
                await asyncio.wait_for(reader.read(), max(self._left(), 0))
            writer.close()

    async def _slow_one(self) -> None:
        """A request's headers, one byte a second; again when cut off."""
        while self._left() > 0:
            conn = await self._connect()
            if conn is None:
                continue
            self.stats.slow_opened += 1
            _, writer = conn
            try:
                for i in range(len(SLOW_REQUEST)):
                    if self._left() <= 0:
                        break
                    writer.write(SLOW_REQUEST[i:i + 1])
                    await writer.drain()
                    await asyncio.sleep(1.0)
                    if writer.is_closing():  # the agent closed it
                        raise ConnectionResetError
            except OSError:
                self.stats.slow_cut += 1
            writer.close()

    async def _garbage_all(self) -> None:
        pause = self.duration / max(self.garbage, 1)
        sent = []
        for i in range(self.garbage):
            if self._left() <= 0:
                break
            sent.append(asyncio.ensure_future(
                self._garbage_one(GARBAGE[i % len(GARBAGE)])))
            await asyncio.sleep(pause)
        await asyncio.gather(*sent)

    async def _garbage_one(self, data: bytes) -> None:
        conn = await self._connect()
        if conn is None:
            return
        reader, writer = conn
        status = "none"
        try:
            writer.write(data)
            await writer.drain()
            head = await asyncio.wait_for(reader.read(64), 10)
            status = head.split(b" ")[1].decode() if head.startswith(
                b"HTTP/1.1 ") else "none"
        except (OSError, asyncio.TimeoutError, IndexError):
            pass
        self.stats.garbage_replies[status] += 1
        writer.close()


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
