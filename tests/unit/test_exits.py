"""Exit watchers with real child processes: the Linux pidfd one as is, the
FreeBSD kqueue one over a stand-in for ``select``'s kqueue API that is
built on Linux's own exit notification (pidfds) and wait status."""

from __future__ import annotations

import errno
import os
import select
import signal
import threading

import pytest

from vmagent.exits import KqueueWatcher, PidfdWatcher, exit_fields
from vmagent.probes import bhyve

WAIT_S = 30  # a bound for a hung test, not a timing assertion


def spawn(script: str) -> int:
    return os.posix_spawnp("sh", ["sh", "-c", script], os.environ)


class Exits:
    """on_exit that records calls and lets the test wait for them."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int | None]] = []
        self.event = threading.Event()

    def __call__(self, pid: int, status: int | None) -> None:
        self.calls.append((pid, status))
        self.event.set()

    def wait(self) -> list[tuple[int, int | None]]:
        assert self.event.wait(WAIT_S)
        return self.calls


class LinuxKqueue:
    """``select.kqueue`` for EVFILT_READ and EVFILT_PROC/NOTE_EXIT, emulated
    with pidfds; ``data`` is the child's wait status, as on FreeBSD."""

    KQ_FILTER_READ, KQ_FILTER_PROC, KQ_EV_ADD = -1, -5, 1
    KQ_NOTE_EXIT = 0x80000000

    class kevent:  # noqa: N801 - select's name
        def __init__(self, ident, filter, flags=0, fflags=0, data=0):  # noqa: A002
            self.ident, self.filter, self.flags = ident, filter, flags
            self.fflags, self.data = fflags, data

    def __init__(self) -> None:
        self.reads: set[int] = set()
        self.procs: dict[int, int] = {}  # pidfd -> pid
        self._wake_r, self._wake_w = os.pipe()

    def kqueue(self) -> LinuxKqueue:
        return self

    def control(self, changes, max_events, timeout=None):  # noqa: ARG002
        for ch in changes or []:
            if ch.filter == self.KQ_FILTER_READ:
                self.reads.add(ch.ident)
                continue
            try:
                self.procs[os.pidfd_open(ch.ident)] = ch.ident
            except ProcessLookupError:
                raise OSError(errno.ESRCH, "No such process") from None
            os.write(self._wake_w, b"x")
        if not max_events:
            return []
        while True:
            poller = select.poll()
            for fd in [self._wake_r, *self.reads, *self.procs]:
                poller.register(fd, select.POLLIN)
            out = []
            for fd, _ in poller.poll():
                if fd == self._wake_r:
                    os.read(fd, 4096)
                elif fd in self.reads:
                    out.append(self.kevent(fd, self.KQ_FILTER_READ))
                else:
                    pid = self.procs.pop(fd)
                    os.close(fd)
                    _, status = os.waitpid(pid, 0)
                    out.append(self.kevent(pid, self.KQ_FILTER_PROC,
                                           fflags=self.KQ_NOTE_EXIT,
                                           data=status))
            if out:
                return out


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="needs pidfds")
def test_kqueue_watcher_reports_the_exit_status():
    exits = Exits()
    watcher = KqueueWatcher(exits, kq=LinuxKqueue())
    try:
        pid = spawn("sleep 60")  # until killed
        os.kill(pid, 0)
        watcher.watch(pid)
        os.kill(pid, signal.SIGKILL)
        [(got, status)] = exits.wait()
    finally:
        watcher.close()
    assert got == pid and exit_fields(status) == {"signal": signal.SIGKILL}


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="needs pidfds")
def test_kqueue_watcher_reports_a_code_and_an_already_gone_pid():
    exits = Exits()
    watcher = KqueueWatcher(exits, kq=LinuxKqueue())
    try:
        pid = spawn("sleep 1; exit 1")
        watcher.watch(pid)
        [(got, status)] = exits.wait()
        assert got == pid and exit_fields(status) == {"code": 1}
        assert bhyve.exit_reason(exit_fields(status)["code"]) == "poweroff"
        exits.event.clear()
        watcher.watch(pid)  # reaped by now: reported at once, no status
        assert exits.wait()[-1] == (pid, None)
    finally:
        watcher.close()


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="needs pidfds")
def test_pidfd_watcher_reports_an_exit_without_a_status():
    exits = Exits()
    watcher = PidfdWatcher(exits)
    try:
        pid = spawn("sleep 1")
        watcher.watch(pid)
        assert exits.wait() == [(pid, None)]
    finally:
        watcher.close()
        os.waitpid(pid, 0)


@pytest.mark.parametrize(("code", "reason"), [
    (0, "reboot"), (1, "poweroff"), (2, "halt"), (3, "triple_fault"),
    (4, "error"), (77, "unknown")])
def test_bhyve_exit_codes(code, reason):
    pid = spawn(f"exit {code}")
    _, status = os.waitpid(pid, 0)
    assert exit_fields(status) == {"code": code}
    assert bhyve.exit_reason(code) == reason


class RefusingKqueue(LinuxKqueue):
    def control(self, changes, max_events, timeout=None):
        if changes and changes[0].filter == self.KQ_FILTER_PROC:
            raise OSError(errno.EPERM, "Operation not permitted")
        return super().control(changes, max_events, timeout)


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="needs pidfds")
def test_a_process_that_cannot_be_watched_is_left_to_the_sweeps():
    exits = Exits()
    watcher = KqueueWatcher(exits, kq=RefusingKqueue())
    try:
        watcher.watch(os.getpid())  # no exception, no exit reported
    finally:
        watcher.close()
    assert exits.calls == []
