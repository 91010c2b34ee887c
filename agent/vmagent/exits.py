"""Noticing a VM process's exit at once, so its ``vm_stop`` does not wait for
the next sweep: Linux pidfds (readable when the process exits), FreeBSD
kqueue ``EVFILT_PROC``/``NOTE_EXIT`` (which also carries the exit status,
for any process, not only children)."""

from __future__ import annotations

import contextlib
import errno
import os
import select
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any

#: on_exit(pid, wait status or None where the mechanism does not tell it)
OnExit = Callable[[int, "int | None"], None]


class _Watcher:
    """The thread and the wake-up pipe both mechanisms share."""

    mechanism: str | None = None

    def __init__(self, on_exit: OnExit) -> None:
        self.on_exit = on_exit
        self._wake_r, self._wake_w = os.pipe()
        self._stop = False

    def _start(self) -> None:
        threading.Thread(target=self._run, name="exits", daemon=True).start()

    def _run(self) -> None:
        raise NotImplementedError

    def watch(self, pid: int) -> None:
        """Report ``pid``'s exit (at once if it is already gone)."""

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def close(self) -> None:
        self._stop = True
        self._wake()


class PidfdWatcher(_Watcher):
    mechanism = "pidfd"

    def __init__(self, on_exit: OnExit) -> None:
        super().__init__(on_exit)
        self._lock = threading.Lock()
        self._fds: dict[int, int] = {}  # pidfd -> pid
        self._start()

    def watch(self, pid: int) -> None:
        try:
            fd = os.pidfd_open(pid)
        except OSError as err:
            if err.errno == errno.ESRCH:
                self.on_exit(pid, None)  # already gone
            return  # else (EMFILE...) the sweeps notice its exit
        with self._lock:
            self._fds[fd] = pid
        self._wake()

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
                    self.on_exit(pid, None)  # not our child: no status


class KqueueWatcher(_Watcher):
    """``kq`` is the ``select`` module (tests hand over a stand-in)."""

    mechanism = "kqueue"

    def __init__(self, on_exit: OnExit, kq: ModuleType | Any = select) -> None:
        super().__init__(on_exit)
        self._kq_mod = kq
        self._kq = kq.kqueue()
        self._kq.control([kq.kevent(self._wake_r, kq.KQ_FILTER_READ,
                                    kq.KQ_EV_ADD)], 0)
        self._start()

    def watch(self, pid: int) -> None:
        k = self._kq_mod
        try:  # one-shot by nature: the process exits once
            self._kq.control([k.kevent(pid, k.KQ_FILTER_PROC, k.KQ_EV_ADD,
                                       k.KQ_NOTE_EXIT)], 0)
        except OSError as err:
            if err.errno == errno.ESRCH:
                self.on_exit(pid, None)  # already gone
            # else (EPERM, ENOMEM): the sweeps notice its exit

    def _run(self) -> None:
        k = self._kq_mod
        while not self._stop:
            for ev in self._kq.control(None, 16):
                if ev.filter == k.KQ_FILTER_READ:
                    os.read(self._wake_r, 4096)
                elif ev.fflags & k.KQ_NOTE_EXIT:
                    self.on_exit(ev.ident, ev.data)  # data: wait(2) status


class NoWatcher(_Watcher):
    """Exits are noticed by the sweeps alone."""


def exit_watcher(on_exit: OnExit) -> _Watcher:
    if hasattr(os, "pidfd_open"):
        return PidfdWatcher(on_exit)
    if hasattr(select, "kqueue"):
        return KqueueWatcher(on_exit)
    return NoWatcher(on_exit)


def exit_fields(status: int) -> dict[str, int]:
    """A wait(2) status -- also Linux acct's ac_exitcode, do_exit()'s code
    (kernel/exit.c) -- as ``{"code": n}`` or ``{"signal": n}``: a signal
    number in the low 7 bits, else the exit status in bits 8-15, on Linux
    and FreeBSD alike (so it decodes another host's records too)."""
    if status & 0x7F:
        return {"signal": status & 0x7F}
    return {"code": (status >> 8) & 0xFF}
