"""What the FreeBSD probes read from the kernel, as one interface
(``Kernel``): ``NativeKernel`` implements it with the syscall layer in
native/freebsd/, the tests with a fake."""

from __future__ import annotations

import errno
import mmap
import os
import stat
from dataclasses import dataclass
from typing import Any, Protocol

from vmagent.errors import ProbeUnsupported
from vmagent.probes import vm_managers


@dataclass(frozen=True)
class Proc:
    """What vmagent uses of a ``struct kinfo_proc``."""

    pid: int
    comm: str  # ki_comm ("bhyve")
    title: str  # kern.proc.args: "bhyve: <name>" (discovery only)
    uid: int  # ki_ruid
    start_us: int  # ki_start, Unix µs
    runtime_us: int  # ki_runtime
    utime_us: int  # ki_rusage.ru_utime
    stime_us: int  # ki_rusage.ru_stime
    inblock: int  # ki_rusage.ru_inblock (operations)
    oublock: int
    rss_bytes: int  # ki_rssize × page size
    zombie: bool = False  # exited, not yet reaped: its counters are final


@dataclass(frozen=True)
class Thread:
    tid: int
    name: str  # ki_tdname (+ ki_moretdname)
    runtime_us: int
    inblock: int = 0  # the thread's own ru_inblock / ru_oublock
    oublock: int = 0


class Kernel(Protocol):
    """The FreeBSD kernel interfaces the probes read: kinfo_proc (with
    threads), kern.proc.filedesc, the vmm ioctls on /dev/vmm/<name>, the
    taps' if_data, disk sizes and devstat, and the VM managers'
    configuration."""

    def boot_time_us(self) -> int: ...
    def tsc_freq(self) -> int: ...  # 0 where there is none
    def bhyve_processes(self) -> list[Proc]: ...
    def process(self, pid: int) -> Proc | None: ...
    def threads(self, pid: int) -> list[Thread]: ...
    def filedesc(self, pid: int) -> bytes: ...
    def vm_stats(self, vm: str, cpu: int,
                 index: int) -> tuple[int, bytes]: ...  # (layout, reply)
    def stat_desc(self, vm: str, index: int) -> bytes: ...
    def sysmem_bytes(self, vm: str) -> int | None: ...
    def if_data(self, ifname: str) -> bytes | None: ...
    def file_size(self, path: str) -> tuple[int, int | None] | None: ...
    def racct(self, pid: int) -> str | None: ...  # None: RACCT is off
    def devstat(self) -> tuple[int, bytes]: ...  # (page size, /dev/devstat)
    def geom_confxml(self) -> str: ...  # kern.geom.confxml
    def manager_uuid(self, name: str) -> str | None: ...
    def forget(self, vm: str) -> None: ...  # a VM is gone: drop its fd


#: The integer fields of struct vmprobe_fbsd_proc.
_PROC_INTS = ("pid", "tid", "uid", "zombie", "start_us", "runtime_us",
              "utime_us", "stime_us", "inblock", "oublock", "rss_pages")


class NativeKernel:
    """``Kernel`` over the vmprobe_fbsd_* calls: one syscall per method,
    two where a size must be asked first."""

    def __init__(self, ffi: Any, lib: Any, root: str = "/",
                 vmm_dir: str = "/dev/vmm",
                 devstat_path: str = "/dev/devstat") -> None:
        self.ffi, self.lib, self.root, self.vmm_dir = ffi, lib, root, vmm_dir
        self.devstat_path = devstat_path
        self._vmm: dict[str, int] = {}  # VM name -> /dev/vmm/<name> fd
        self._layout = lib.VMPROBE_VM_STATS_14  # errata W3: 14+ first
        self._tsc: int | None = None
        self._racct = True  # until the kernel says RACCT is off
        self._page = os.sysconf("SC_PAGE_SIZE")

    def _check(self, rc: int, what: str) -> None:
        if rc != 0:
            code = self.ffi.errno
            raise OSError(code, f"{what}: {os.strerror(code)}")

    def _u64(self, fn: Any, what: str, ctype: str = "uint64_t *") -> int:
        out = self.ffi.new(ctype)
        self._check(fn(out), what)
        return int(out[0])

    def boot_time_us(self) -> int:
        return self._u64(self.lib.vmprobe_fbsd_boottime_us, "kern.boottime",
                         "int64_t *")

    def tsc_freq(self) -> int:
        if self._tsc is None:
            try:
                self._tsc = self._u64(self.lib.vmprobe_fbsd_tsc_freq,
                                      "machdep.tsc_freq")
            except OSError:
                self._tsc = 0  # not amd64: vCPU run time from threads only
        return self._tsc

    def _procs(self, pid: int, threads: bool, comm: bytes | None) -> list[Any]:
        n = 64
        while True:
            out = self.ffi.new("struct vmprobe_fbsd_proc[]", n)
            count = self.ffi.new("size_t *", n)
            rc = self.lib.vmprobe_fbsd_procs(pid, int(threads),
                                             comm or self.ffi.NULL, out, count)
            if rc == 0:  # copied out: the array is freed on return
                return [self._copy(out[i]) for i in range(count[0])]
            if self.ffi.errno != errno.ENOMEM or count[0] <= n:
                self._check(rc, f"kern.proc for pid {pid}")
            n = count[0] + 16  # it grew in between

    def _copy(self, p: Any) -> dict[str, Any]:
        out = {f: int(getattr(p, f)) for f in _PROC_INTS}
        for f in ("comm", "tdname"):
            out[f] = self.ffi.string(getattr(p, f)).decode("utf-8", "replace")
        return out

    def _proc(self, p: dict[str, Any], title: str = "") -> Proc:
        return Proc(pid=p["pid"], comm=p["comm"], title=title, uid=p["uid"],
                    start_us=p["start_us"], runtime_us=p["runtime_us"],
                    utime_us=p["utime_us"], stime_us=p["stime_us"],
                    inblock=p["inblock"], oublock=p["oublock"],
                    rss_bytes=p["rss_pages"] * self._page,
                    zombie=bool(p["zombie"]))

    def _proc_sysctl(self, what: int, pid: int) -> bytes:
        size = self.ffi.new("size_t *", 0)
        self._check(self.lib.vmprobe_fbsd_proc_sysctl(what, pid,
                                                      self.ffi.NULL, size),
                    f"kern.proc size for pid {pid}")
        size[0] += size[0] // 4 + 1024  # room for files opened meanwhile
        buf = self.ffi.new("unsigned char[]", size[0])
        self._check(self.lib.vmprobe_fbsd_proc_sysctl(what, pid, buf, size),
                    f"kern.proc for pid {pid}")
        return bytes(self.ffi.buffer(buf, size[0]))

    def _title(self, pid: int) -> str:
        try:
            raw = self._proc_sysctl(self.lib.VMPROBE_FBSD_ARGS, pid)
        except OSError:
            return ""  # gone, or not ours to read
        return raw.split(b"\0", 1)[0].decode("utf-8", "replace")

    def bhyve_processes(self) -> list[Proc]:
        return [self._proc(p, self._title(p["pid"]))
                for p in self._procs(-1, False, b"bhyve") if not p["zombie"]]

    def process(self, pid: int) -> Proc | None:
        try:
            [p] = self._procs(pid, False, None)
        except OSError as err:
            if err.errno == errno.ESRCH:
                return None
            raise
        return self._proc(p)

    def threads(self, pid: int) -> list[Thread]:
        try:
            found = self._procs(pid, True, None)
        except OSError as err:
            if err.errno == errno.ESRCH:
                return []
            raise
        return [Thread(t["tid"], t["tdname"], t["runtime_us"], t["inblock"],
                       t["oublock"]) for t in found]

    def filedesc(self, pid: int) -> bytes:
        return self._proc_sysctl(self.lib.VMPROBE_FBSD_FILEDESC, pid)

    def _vmm_fd(self, vm: str) -> int:
        if vm not in self._vmm:  # opened once and kept
            self._vmm[vm] = os.open(os.path.join(self.vmm_dir, vm),
                                    os.O_RDWR | os.O_CLOEXEC)
        return self._vmm[vm]

    def _vmm_call(self, vm: str, call: Any) -> int:
        """``call(fd)`` on /dev/vmm/<vm>; once more on a fresh descriptor
        when the VM was destroyed and made anew under the same name (the
        old descriptor then answers ENXIO)."""
        rc = int(call(self._vmm_fd(vm)))
        if rc != 0 and self.ffi.errno == errno.ENXIO:
            self.forget(vm)
            rc = int(call(self._vmm_fd(vm)))
        return rc

    def vm_stats(self, vm: str, cpu: int, index: int) -> tuple[int, bytes]:
        buf = self.ffi.new("unsigned char[]", 544)
        while True:
            rc = self._vmm_call(vm, lambda fd: self.lib.vmprobe_fbsd_vm_stats(
                fd, self._layout, cpu, index, buf, len(buf)))
            if rc == 0:
                return self._layout, bytes(buf)
            if self.ffi.errno == errno.ENOTTY and \
                    self._layout == self.lib.VMPROBE_VM_STATS_14:
                self._layout = self.lib.VMPROBE_VM_STATS_13  # a 13.x kernel
                continue
            self._check(rc, f"VM_STATS of {vm} vcpu {cpu}")

    def stat_desc(self, vm: str, index: int) -> bytes:
        buf = self.ffi.new("unsigned char[]", 132)
        self._check(self._vmm_call(vm, lambda fd: self.lib.
                                   vmprobe_fbsd_vm_stat_desc(fd, index, buf,
                                                             len(buf))),
                    f"VM_STAT_DESC {index} of {vm}")
        return bytes(buf)

    def sysmem_bytes(self, vm: str) -> int | None:
        try:
            return self._u64(lambda out: self._vmm_call(
                vm, lambda fd: self.lib.vmprobe_fbsd_vm_sysmem(fd, out)),
                f"VM_GET_MEMSEG of {vm}")
        except OSError:
            return None

    def if_data(self, ifname: str) -> bytes | None:
        buf = self.ffi.new("unsigned char[]", 152)
        rc = self.lib.vmprobe_fbsd_if_data(ifname.encode(), buf, len(buf))
        if rc != 0 and self.ffi.errno == errno.ENXIO:
            return None  # no such interface (any more)
        self._check(rc, f"if_data of {ifname}")
        return bytes(buf)

    def file_size(self, path: str) -> tuple[int, int | None] | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        if not stat.S_ISCHR(st.st_mode):
            return st.st_size, st.st_blocks * 512
        try:  # a zvol or another disk device: its media size
            return self._u64(lambda out: self.lib.vmprobe_fbsd_media_size(
                path.encode(), out), f"DIOCGMEDIASIZE of {path}"), None
        except OSError:
            return None

    def _sysctl_name(self, name: str) -> bytes:
        size = self.ffi.new("size_t *", 0)
        self._check(self.lib.vmprobe_fbsd_sysctl_name(name.encode(),
                                                      self.ffi.NULL, size),
                    f"{name} size")
        size[0] += size[0] // 4 + 4096  # devices added meanwhile
        buf = self.ffi.new("unsigned char[]", size[0])
        self._check(self.lib.vmprobe_fbsd_sysctl_name(name.encode(), buf,
                                                      size), name)
        return bytes(self.ffi.buffer(buf, size[0]))

    def racct(self, pid: int) -> str | None:
        if not self._racct:
            return None
        buf = self.ffi.new("char[]", 4096)
        if self.lib.vmprobe_fbsd_racct(pid, buf, len(buf)) == 0:
            return self.ffi.string(buf).decode("ascii", "replace")
        if self.ffi.errno == errno.ENOSYS:
            self._racct = False  # kern.racct.enable=0: not asked again
        return None  # also ESRCH (gone), EPERM (in a jail)

    def devstat(self) -> tuple[int, bytes]:
        """/dev/devstat's pages, as lib/libgeom's geom_stats_resync maps
        them: as many as DIOCGMEDIASIZE says, else one at a time until the
        kernel refuses the next."""
        page = mmap.PAGESIZE
        fd = os.open(self.devstat_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = self.file_size(self.devstat_path)
            pages = size[0] // page if size else 0
            if pages:
                return page, _map(fd, 0, pages * page)
            chunks: list[bytes] = []
            while True:
                try:
                    chunks.append(_map(fd, len(chunks) * page, page))
                except (OSError, ValueError):  # past the last page
                    return page, b"".join(chunks)
        finally:
            os.close(fd)

    def geom_confxml(self) -> str:
        raw = self._sysctl_name("kern.geom.confxml")
        return raw.split(b"\0", 1)[0].decode("utf-8", "replace")

    def manager_uuid(self, name: str) -> str | None:
        return vm_managers.manager_uuid(name, self.root)

    def forget(self, vm: str) -> None:
        fd = self._vmm.pop(vm, None)
        if fd is not None:
            os.close(fd)


def _map(fd: int, offset: int, length: int) -> bytes:
    with mmap.mmap(fd, length, mmap.MAP_SHARED, mmap.PROT_READ,
                   offset=offset) as m:
        return m[:]


def native_kernel() -> Kernel:
    """The running system's kernel; only FreeBSD has one for these probes."""
    from vmagent.probes._native import ffi, lib

    if not hasattr(lib, "vmprobe_fbsd_procs"):
        raise ProbeUnsupported(
            "the FreeBSD bhyve probes need vmagent built on FreeBSD "
            "(docs/freebsd.md)")
    return NativeKernel(ffi, lib)
