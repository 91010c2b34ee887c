"""Noticing a VM process's exit at once (Linux: pidfd, readable when the
process exits), so its ``vm_stop`` does not wait for the next sweep."""

from __future__ import annotations

import contextlib
import os
import select
import threading
from collections.abc import Callable


class ExitWatcher:
    """Calls ``on_exit(pid)`` from its own thread when a watched pid exits."""

    def __init__(self, on_exit: Callable[[int], None]) -> None:
        self.on_exit = on_exit
        self.available = hasattr(os, "pidfd_open")
        self._lock = threading.Lock()
        self._fds: dict[int, int] = {}  # pidfd -> pid
        self._wake_r, self._wake_w = os.pipe()
        self._stop = False
        if self.available:
            threading.Thread(target=self._run, name="exits",
                             daemon=True).start()

    def watch(self, pid: int) -> None:
        if not self.available:
            return
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            self.on_exit(pid)  # already gone
            return
        with self._lock:
            self._fds[fd] = pid
        os.write(self._wake_w, b"x")

    def _run(self) -> None:
        while not self._stop:
            poller = select.poll()
            poller.register(self._wake_r, select.POLLIN)
            with self._lock:
                for fd in self._fds:
                    poller.register(fd, select.POLLIN)
            for fd, _ in poller.poll():
                if fd == self._wake_r:
                    os.read(self._wake_r, 4096)
                    continue
                with self._lock:
                    pid = self._fds.pop(fd, None)
                os.close(fd)
                if pid is not None:
                    self.on_exit(pid)

    def close(self) -> None:
        self._stop = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
