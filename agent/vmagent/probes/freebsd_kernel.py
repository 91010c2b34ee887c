"""What the FreeBSD probes read from the kernel, as one interface: the
syscall layer implements it on FreeBSD, a fake does in the tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from vmagent.errors import ProbeUnsupported


@dataclass(frozen=True)
class Proc:
    """What vmagent uses of a ``struct kinfo_proc``."""

    pid: int
    comm: str  # ki_comm ("bhyve")
    title: str  # kern.proc.args: "bhyve: <name>"
    uid: int  # ki_ruid
    start_us: int  # ki_start, Unix µs
    runtime_us: int  # ki_runtime
    utime_us: int  # ki_rusage.ru_utime
    stime_us: int  # ki_rusage.ru_stime
    inblock: int  # ki_rusage.ru_inblock (operations)
    oublock: int
    rss_bytes: int  # ki_rssize × page size


@dataclass(frozen=True)
class Thread:
    tid: int
    name: str  # ki_tdname (+ ki_moretdname)
    runtime_us: int


class Kernel(Protocol):
    """The FreeBSD kernel interfaces the probes read: kinfo_proc (with
    threads), kern.proc.filedesc, the vmm ioctls on /dev/vmm/<name>, the
    taps' if_data, stat(2), and vm-bhyve's configuration."""

    def boot_time_us(self) -> int: ...
    def tsc_freq(self) -> int: ...
    def bhyve_processes(self) -> list[Proc]: ...
    def process(self, pid: int) -> Proc | None: ...
    def threads(self, pid: int) -> list[Thread]: ...
    def filedesc(self, pid: int) -> bytes: ...
    def vm_stats(self, vm: str, cpu: int, index: int) -> bytes: ...
    def stat_desc(self, vm: str, index: int) -> bytes: ...
    def if_data(self, ifname: str) -> bytes | None: ...
    def file_size(self, path: str) -> tuple[int, int] | None: ...
    def vm_bhyve_conf(self, name: str) -> str | None: ...


def native_kernel() -> Kernel:
    raise ProbeUnsupported(
        "the FreeBSD bhyve probes' syscall layer is not built in this "
        "version (docs/freebsd.md)")


