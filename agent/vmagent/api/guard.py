"""What keeps hostile or broken clients from hurting the agent: a cap on
connections, a deadline for every request's headers (so a client sending a
byte a second is cut off), and a request rate per client address."""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class ConnectionGuard:
    def __init__(self, max_connections: int = 64, header_timeout: float = 10.0,
                 rate: float = 50.0, burst: float = 100.0) -> None:
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.rate, self.burst = rate, burst
        self._lock = threading.Lock()
        self._active = 0
        self._deadlines: dict[socket.socket, float] = {}
        self._buckets: dict[str, tuple[float, float]] = {}  # tokens, stamp
        self._stop = threading.Event()
        threading.Thread(target=self._reap, name="api-guard",
                         daemon=True).start()

    def admit(self) -> bool:
        """Take a connection slot; False when all are taken."""
        with self._lock:
            if self._active >= self.max_connections:
                return False
            self._active += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._active -= 1

    @property
    def active(self) -> int:
        return self._active

    def watch(self, sock: socket.socket, timeout: float | None = None) -> None:
        """``sock`` must deliver what is read next before the deadline."""
        with self._lock:
            self._deadlines[sock] = time.monotonic() + (timeout or
                                                        self.header_timeout)

    def unwatch(self, sock: socket.socket) -> None:
        with self._lock:
            self._deadlines.pop(sock, None)

    def allow(self, client: str) -> bool:
        """One request from ``client`` under the rate limit (token bucket)."""
        now = time.monotonic()
        with self._lock:
            tokens, stamp = self._buckets.get(client, (self.burst, now))
            tokens = min(self.burst, tokens + (now - stamp) * self.rate)
            if len(self._buckets) > 10_000:  # forget idle clients
                self._buckets.clear()
            if tokens < 1:
                self._buckets[client] = (tokens, now)
                return False
            self._buckets[client] = (tokens - 1, now)
            return True

    def _reap(self) -> None:
        while not self._stop.wait(0.25):
            now = time.monotonic()
            with self._lock:
                late = [s for s, d in self._deadlines.items() if d < now]
                for s in late:
                    del self._deadlines[s]
            for s in late:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._stop.set()
