"""Linux probes: VMs found in procfs, metered through the native extension.

Discovery examines only processes it has not seen before: a process holding
an ``anon_inode:kvm-vm`` fd is a KVM VM (QEMU, Firecracker, cloud-hypervisor),
a ``qemu-system-*`` process without one is software emulation.  Each VM's
files are then opened once in C and re-read with pread on every sweep (and
reopened only when a rescan finds the VM's signature moved); the
taps' counters come from one ``/proc/net/dev`` read per sweep for all VMs.
KVM counters come from the VMM's binary stats files where it keeps them
open (copied once, pread each sweep), else from debugfs once per open.
"""

from __future__ import annotations

import errno
import os
import re
import stat as stat_mod
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from vmagent.config import ProbesConfig
from vmagent.identity import derived_vm_uuid, read_boot_id
from vmagent.log import get_logger
from vmagent.probes import argv as argv_mod
from vmagent.probes import kvmstats, procfs
from vmagent.probes._native import ffi, lib
from vmagent.probes.base import ProberBase
from vmagent.probes.types import (
    DEFAULTS,
    VM,
    Disk,
    Nic,
    Sample,
    Sweep,
    VcpuThread,
    VMRef,
    config_of,
    tap_guest_view,
)

NS_PER_TICK = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
SECTOR = 512  # /sys/block/*/stat and size count 512-byte sectors always

#: debugfs kvm/<pid>-<fd>/ files reported under ``kvm`` when readable; the
#: per-vCPU ones are summed over the VM's vCPUs by the kernel
#: (torvalds/linux:virt/kvm/kvm_main.c, kvm_get_stat_per_vcpu).
KVM_STATS = (
    "exits", "halt_exits", "halt_wakeup", "io_exits", "mmio_exits",
    "irq_exits", "signal_exits", "insn_emulation", "pf_taken",
    "pages_4k", "pages_2m", "pages_1g",
)
#: A process younger than this is looked at again later, VM or not: between
#: fork and exec, or while QEMU opens its drives and taps, what /proc shows
#: is not yet the VM (seen here: a QEMU with its kvm-vm fd but no disk fd).
SETTLE_S = 2.0
#: A QEMU asking for KVM that has no kvm-vm fd yet is still starting.
STARTUP_GRACE_S = 5.0
#: A VM whose vCPU threads are not all there is looked at again meanwhile.
LAYOUT_GRACE_S = 60.0
#: The most pids a move of the last allocated pid may span for discovery to
#: test those pids one by one instead of listing /proc; fewer than the last
#: listing's processes too: a pid tested costs about what a process listed
#: does (1.3 us against 0.7-1.3, measured on 6.18: docs/benchmarks.md).
RANGE_BOUND = 1024
#: The inode of a procfs root (torvalds/linux:include/linux/proc_ns.h,
#: PROC_ROOT_INO): a fixture tree is never the kernel's.
PROC_ROOT_INO = 1

# where the items are in a flat reading (vmprobe_vm_read_flat)
_UTIME, _STIME = lib.VMPROBE_FLAT_UTIME, lib.VMPROBE_FLAT_STIME
_HAS_GUEST, _GUEST = (lib.VMPROBE_FLAT_HAS_GUEST_TIME,
                      lib.VMPROBE_FLAT_GUEST_TIME)
_STARTTIME, _RSS_PAGES = lib.VMPROBE_FLAT_STARTTIME, lib.VMPROBE_FLAT_RSS_PAGES
_HAS_VM_RSS, _VM_RSS_KB = (lib.VMPROBE_FLAT_HAS_VM_RSS,
                           lib.VMPROBE_FLAT_VM_RSS_KB)
_HAS_HUGETLB, _HUGETLB_KB = (lib.VMPROBE_FLAT_HAS_HUGETLB,
                             lib.VMPROBE_FLAT_HUGETLB_KB)
_HAS_STORAGE = lib.VMPROBE_FLAT_HAS_STORAGE
_READ_BYTES, _WRITE_BYTES = (lib.VMPROBE_FLAT_READ_BYTES,
                             lib.VMPROBE_FLAT_WRITE_BYTES)
_FIXED, _THREAD = lib.VMPROBE_FLAT_FIXED, lib.VMPROBE_FLAT_THREAD
_DISK, _U64 = lib.VMPROBE_FLAT_DISK, lib.VMPROBE_FLAT_U64

_VHOST_KTHREAD = re.compile(r"vhost-(\d+)")
_QCOW2_MAGIC = b"QFI\xfb"


@dataclass
class _Metered:
    """A VM with its native handle, the reading struct it fills, the flat
    copy of it (``flat``, as numbers in ``values``) and its ``_Plan``."""

    vm: VM
    handle: Any
    reading: Any
    flat: Any
    plan: _Plan
    arrays: list[Any] = field(default_factory=list)  # keep cdata alive
    values: list[int] = field(default_factory=list)  # the last reading
    stale: bool = False  # an item failed: look at the layout again
    kvm_names: tuple[str, ...] = ()  # the reading's u64 items
    stats_files: list[kvmstats.StatsFile] = field(default_factory=list)
    debugfs_due: bool = True  # read debugfs in the next sample only
    # what the layout was read from (_signature); None: look again at
    # the next rescan whatever it shows
    signature: _Signature | None = None

    def close(self) -> None:
        if self.handle is not None:
            lib.vmprobe_vm_close(self.handle)
            self.handle = None
        for f in self.stats_files:
            f.close()
        self.stats_files = []


class _NetDevFile:
    """``/proc/net/dev``, read once per sweep for the taps of every VM
    (instead of eight sysfs files per tap).  The fd is opened once; a
    seq_file gives at most a page per read, so it is read to the end."""

    CHUNK = 65536

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    def read(self, names: set[str] | None = None,
             ) -> dict[str, dict[str, int]]:
        """The counters of ``names`` (all when None); empty when the file
        cannot be read or parsed (each tap then counts as unanswered)."""
        try:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            os.lseek(self._fd, 0, os.SEEK_SET)
            chunks = []
            while chunk := os.read(self._fd, self.CHUNK):
                chunks.append(chunk)
            return procfs.parse_net_dev(b"".join(chunks), names)
        except (OSError, ValueError):
            self.close()
            return {}

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class _LastPid:
    """The last pid allocated (``/proc/loadavg``, one pread): while it does
    not move no process was created, so ``/proc`` need not be listed.  Only
    trusted when ``procfs`` shows this process's pid namespace (the field
    is the reader's namespace's, whatever procfs is read): there ``self``
    is our own pid.  ``pid_max`` is known (read once) only where ``procfs``
    is the kernel's own, whose pids ``_thread_group_leader`` can test."""

    def __init__(self, procfs_root: str) -> None:
        self._fd: int | None = None
        self.pid_max: int | None = None
        self.read_ns = 0  # CLOCK_BOOTTIME just before the last read
        try:
            if os.readlink(f"{procfs_root}/self") == str(os.getpid()):
                self._fd = os.open(f"{procfs_root}/loadavg",
                                   os.O_RDONLY | os.O_CLOEXEC)
                if os.stat(procfs_root).st_ino == PROC_ROOT_INO:
                    self.pid_max = procfs.parse_pid_max(
                        _read(f"{procfs_root}/sys/kernel/pid_max") or b"")
        except (OSError, ValueError):
            pass  # e.g. a fixture tree: list /proc every time

    def read(self) -> int | None:
        """The last pid, or None when unknown (then list every time)."""
        if self._fd is None:
            return None
        self.read_ns = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        try:
            return procfs.parse_loadavg_last_pid(os.pread(self._fd, 128, 0))
        except (OSError, ValueError):
            return None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


#: A VM's fds (number, target, and (dev, ino) where it may be a disk), its
#: thread ids and its command line: what its layout is read from.
_Signature = tuple[tuple[tuple[int, str, tuple[int, int] | None], ...],
                   tuple[int, ...], bytes]


@dataclass
class _Layout:
    """A VM as found, with the signature its layout was read from."""

    vm: VM
    signature: _Signature


class _Defer(Exception):
    """The process is not ready to be examined; look again next time."""


class Prober(ProberBase["_Metered"]):
    """Finds and meters the VMs of one Linux host.

    Every filesystem root is a parameter so tests can point them elsewhere.
    """

    def __init__(self, host_id: str,
                 options: ProbesConfig = DEFAULTS) -> None:
        super().__init__(host_id, options)
        self.procfs = procfs_root = options.procfs
        self.sysfs = options.sysfs
        self.debugfs = options.debugfs
        self.boot_id = read_boot_id(procfs_root)
        # wall-clock time of boot: starttime ticks count from here
        self._boot_ns = time.time_ns() - time.clock_gettime_ns(
            time.CLOCK_BOOTTIME)
        self._net_dev = _NetDevFile(f"{procfs_root}/net/dev")
        self._last_pid = _LastPid(procfs_root)
        self._listed_at: int | None = None  # last pid at the last look
        self._deferred: set[int] = set()  # pids to look at again
        self._watched: set[int] = set()  # pids metered at the last look
        self._listed = 0  # processes in the last listing
        self.listings = 0  # discoveries that listed /proc
        self.range_scans = 0  # ... that tested the pids allocated since

    # --- public API (the same names on every platform) -------------------

    def discover(self) -> list[VM]:
        """Examine processes not seen before; returns the VMs found new."""
        rescan = self._rescan_due()
        new: list[VM] = []
        vhosts: list[tuple[int, int]] = []
        candidates, self._deferred = self._candidates(rescan), set()
        for pid in candidates:
            try:
                found = self._examine(pid)
            except _Defer:
                self._deferred.add(pid)
                continue
            self._seen.add(pid)
            if isinstance(found, _Layout):
                self._start_metering(found.vm, found.signature)
                new.append(found.vm)
            elif isinstance(found, tuple):
                vhosts.append(found)
        self._attach_vhosts(vhosts)
        if rescan:
            self._compare_signatures()  # hotplug leaves no error
        self._refresh_stale()
        return new

    def sample(self) -> Sweep:
        """Read every known VM once; VMs that exited are in ``gone``."""
        sweep = Sweep()
        names = {n.name for m in self._metered.values() for n in m.vm.nics}
        taps = self._net_dev.read(names) if names else {}
        for pid, m in list(self._metered.items()):
            try:
                m.reading.read_debugfs, m.debugfs_due = m.debugfs_due, False
                if lib.vmprobe_vm_read_flat(m.handle, m.reading,
                                            m.flat) != 0:
                    self._forget(pid)
                    sweep.gone.append(m.vm)
                    continue
                m.values = ffi.unpack(m.flat, len(m.flat))
                if m.values[_STARTTIME] != m.vm.start_mark:
                    self._forget(pid)  # the pid names another process now
                    sweep.gone.append(m.vm)
                    continue
                sweep.samples.append((m.vm, self._record(m, taps)))
            except Exception as err:  # noqa: BLE001 - one VM never stops a sweep
                sweep.fail(m.vm, err)
        return sweep

    def close(self) -> None:
        """Close every cached fd."""
        for m in self._metered.values():
            m.close()
        super().close()
        self._net_dev.close()
        self._last_pid.close()

    # --- discovery --------------------------------------------------------

    def _candidates(self, rescan: bool) -> list[int]:
        """The pids to examine (docs/probes-linux.md, discovery): the
        processes not seen yet among the pids allocated since the last
        look (a range scan), or in a listing of /proc when those cannot be
        told or a rescan is due; nothing new while the last pid did not
        move.  Plus the pids deferred last time and those of VMs forgotten
        since (their pid may name a process created since)."""
        found = self._without_listing(rescan)
        if found is None:
            return self._listing()
        return sorted(found - self._seen)

    def _without_listing(self, rescan: bool) -> set[int] | None:
        """The candidates when /proc need not be listed, else None."""
        before, before_ns = self._listed_at, self._last_pid.read_ns
        last = self._last_pid.read()
        self._listed_at = last
        again = self._deferred | self._unmetered()
        if rescan or last is None or before is None:
            return None
        if self._last_pid.pid_max is None:  # pids cannot be tested here
            return set(self._deferred) if last == before else None
        new: set[int] | None = set()
        if last != before:
            new = self._range_scan(before, last, before_ns // NS_PER_TICK)
        if new is None:
            return None
        for pid in again:  # may have been reused since, for a thread even
            leader = _thread_group_leader(pid)
            if leader is None:
                return None
            if leader:
                new.add(pid)
        self.range_scans += last != before
        return new

    def _listing(self) -> list[int]:
        """The pids /proc lists and no look has examined yet."""
        self.listings += 1
        pids = {int(n) for n in os.listdir(self.procfs) if n.isdigit()}
        self._listed = len(pids)
        self._seen &= pids
        for pid in list(self._metered):
            if pid not in pids:
                self._metered[pid].stale = True  # sample() reports it gone
        return sorted(pids - self._seen)

    def _unmetered(self) -> set[int]:
        """Pids metered at the last look and not now (sample() found the
        VM gone): a process created since may have the pid, allocated
        while it was still taken for the VM's, so outside later ranges."""
        gone = self._watched - self._metered.keys()
        if gone or len(self._watched) != len(self._metered):
            self._watched = set(self._metered)
        return gone

    def _range_scan(self, before: int, last: int,
                    since_tick: int) -> set[int] | None:
        """The processes to examine among the pids allocated after
        ``before`` up to ``last``, or None when a listing must tell."""
        pid_max = self._last_pid.pid_max
        span = None if pid_max is None else procfs.pids_allocated(
            before, last, pid_max, min(RANGE_BOUND, self._listed))
        if span is None:
            return None
        new = set()
        for pid in span:
            leader = _thread_group_leader(pid)
            if leader is None:
                return None
            if leader and self._not_seen(pid, since_tick):
                new.add(pid)
        return new

    def _not_seen(self, pid: int, since_tick: int) -> bool:
        """Whether the process with a pid allocated since the last look is
        one to examine: yes unless that pid was examined before (it came
        round again after pid_max) and names the same process, told by
        its start: a VM being metered is left to sample(), which finds it
        gone if the pid was reused (``_unmetered`` then)."""
        if pid not in self._seen:
            return True
        if pid in self._metered:
            return False
        stat = _read_stat(f"{self.procfs}/{pid}")
        if stat is None or stat.starttime < since_tick:
            return False  # skipped by the allocator: the process seen
        self._seen.discard(pid)
        return True

    def _examine(self, pid: int) -> _Layout | tuple[int, int] | None:
        """A VM, a (vhost kthread, owner) pair, or None for anything else."""
        pdir = f"{self.procfs}/{pid}"
        stat = _read_stat(pdir)
        if stat is None:
            return None
        if stat.flags & procfs.PF_KTHREAD:
            m = _VHOST_KTHREAD.fullmatch(stat.comm)
            return (pid, int(m.group(1))) if m else None
        if self._age_s(stat.starttime) < SETTLE_S:
            raise _Defer
        links = _fd_links(pdir)
        vm_fd = next((fd for fd, link in links.items()
                      if link == "anon_inode:kvm-vm"), None)
        cmdline = _read(f"{pdir}/cmdline") or b""
        argv = procfs.split_cmdline(cmdline)
        exe = os.path.basename(_readlink(f"{pdir}/exe") or "")
        if vm_fd is None and not exe.startswith("qemu-system-"):
            return None
        qemu = argv_mod.parse_qemu_argv(argv)
        if vm_fd is None and qemu.wants_kvm and \
                self._age_s(stat.starttime) < STARTUP_GRACE_S:
            raise _Defer
        return self._layout(pid, stat, links, vm_fd, cmdline, qemu)

    def _layout(self, pid: int, stat: procfs.Stat, links: dict[int, str],
                vm_fd: int | None, cmdline: bytes,
                qemu: argv_mod.QemuArgs) -> _Layout:
        pdir = f"{self.procfs}/{pid}"
        tids = _listdir_ints(f"{pdir}/task")
        signature = _signature(pdir, links, cmdline, tids)
        argv = procfs.split_cmdline(cmdline)
        name = qemu.name or argv_mod.firecracker_id(argv) or \
            f"{stat.comm}-{pid}"
        name = procfs.display_text(name)
        ref = VMRef(
            uuid=qemu.uuid or derived_vm_uuid(self.host_id, name),
            name=name,
            gen=f"{self.boot_id}-{pid}-{stat.starttime}",
            hypervisor="kvm" if vm_fd is not None else "qemu",
        )
        threads, complete = self._vcpu_threads(pdir, tids, pid, vm_fd,
                                               qemu.vcpus)
        if not complete and self._age_s(stat.starttime) > LAYOUT_GRACE_S:
            complete = True  # accept what there is rather than look forever
        return _Layout(VM(
            ref=ref, pid=pid, start_mark=stat.starttime,
            start_ns=self._boot_ns + stat.starttime * NS_PER_TICK,
            comm=stat.comm, uid=_real_uid(pdir),
            vcpus=qemu.vcpus, alloc_bytes=qemu.mem_bytes,
            nics=self._nics(pdir, links, qemu),
            disks=self._disks(pdir, links),
            vcpu_threads=threads,
            kvm_stats=self._kvm_stats(pid, vm_fd),
            kvm_stats_fds=kvmstats.fds_to_copy(links),
            complete=complete,
        ), signature)

    def _vcpu_threads(self, pdir: str, tids: list[int], pid: int,
                      vm_fd: int | None, configured: int | None,
                      ) -> tuple[tuple[VcpuThread, ...], bool]:
        found: list[VcpuThread] = []
        single_tcg = False
        for tid in tids:
            comm = (_read(f"{pdir}/task/{tid}/comm") or b"").decode(
                "utf-8", "replace").strip()
            single_tcg |= comm == "ALL CPUs/TCG"  # one thread for all vCPUs
            idx = argv_mod.vcpu_index(comm)
            if idx is not None:
                found.append(VcpuThread(idx, tid, "thread-name"))
        if not found and vm_fd is not None:
            found = self._debugfs_vcpus(pid, vm_fd)
        found.sort(key=lambda t: t.id)
        complete = single_tcg or configured is None or len(found) >= configured
        return tuple(found), complete

    def _debugfs_vcpus(self, pid: int, vm_fd: int) -> list[VcpuThread]:
        """Unnamed threads: KVM's vcpuN/pid (0 until the vCPU first runs)."""
        kdir = f"{self.debugfs}/kvm/{pid}-{vm_fd}"
        found = []
        for entry in _listdir(kdir):
            m = re.fullmatch(r"vcpu(\d+)", entry)
            tid = _read_int(f"{kdir}/{entry}/pid") if m else None
            if m and tid:
                found.append(VcpuThread(int(m.group(1)), tid, "debugfs"))
        return found

    def _nics(self, pdir: str, links: dict[int, str],
              qemu: argv_mod.QemuArgs) -> tuple[Nic, ...]:
        nics: dict[str, Nic] = {}
        for fd, link in sorted(links.items()):
            if link != "/dev/net/tun":
                continue
            text = (_read(f"{pdir}/fdinfo/{fd}") or b"").decode()
            iff = procfs.fdinfo_iff(text)
            # multiqueue: one fd per queue; a tap in another network
            # namespace has no counters in this sysfs (docs/records.md)
            if iff and iff not in nics and \
                    os.path.isdir(f"{self.sysfs}/class/net/{iff}/statistics"):
                mac = qemu.tap_macs.get(iff) or qemu.fd_macs.get(fd)
                nics[iff] = Nic(name=iff, mac=mac)
        return tuple(nics.values())

    def _disks(self, pdir: str, links: dict[int, str]) -> tuple[Disk, ...]:
        disks = []
        for fd, link in sorted(links.items()):
            if not link.startswith("/") or _never_a_disk(link):
                continue
            try:
                st = os.stat(f"{pdir}/fd/{fd}")
            except OSError:
                continue
            fdinfo = (_read(f"{pdir}/fdinfo/{fd}") or b"").decode()
            if stat_mod.S_ISBLK(st.st_mode):
                blk = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
                sectors = _read_int(f"{self.sysfs}/dev/block/{blk}/size")
                capacity = sectors * SECTOR if sectors is not None else None
            elif stat_mod.S_ISREG(st.st_mode) and \
                    not procfs.fdinfo_write_only(fdinfo):
                blk, capacity = None, _qcow2_size(f"{pdir}/fd/{fd}")
            else:
                continue
            disks.append(Disk(procfs.display_text(link), fd, st.st_dev,
                              st.st_ino, capacity, blk))
        return tuple(disks)

    def _kvm_stats(self, pid: int,
                   vm_fd: int | None) -> tuple[tuple[str, str], ...]:
        """The debugfs counters this agent may read (most answer EPERM
        under kernel lockdown or on some hosts: those are left out)."""
        if vm_fd is None:
            return ()
        kdir = f"{self.debugfs}/kvm/{pid}-{vm_fd}"
        return tuple((n, f"{kdir}/{n}") for n in KVM_STATS
                     if _read_int(f"{kdir}/{n}") is not None)

    def _age_s(self, start_mark: int) -> float:
        return time.clock_gettime(time.CLOCK_BOOTTIME) - \
            start_mark * NS_PER_TICK / 1e9

    def _attach_vhosts(self, vhosts: list[tuple[int, int]]) -> None:
        for kpid, owner in vhosts:
            m = self._metered.get(owner)
            if m is not None:
                m.vm = replace(m.vm, vhost_pids=(*m.vm.vhost_pids, kpid))
                m.stale = True

    def _compare_signatures(self) -> None:
        """The rescan: a VM whose signature moved is looked at again (its
        layout re-read, its files reopened); the others only read their
        debugfs counters once more."""
        for pid, m in self._metered.items():
            if m.stale:
                continue
            pdir = f"{self.procfs}/{pid}"
            now = _signature(pdir, _fd_links(pdir),
                             _read(f"{pdir}/cmdline") or b"",
                             _listdir_ints(f"{pdir}/task"))
            if now != m.signature:
                m.stale = True
            else:
                m.debugfs_due = True

    def _refresh_stale(self) -> None:
        """Re-read the layout (threads, taps, disks) of VMs that changed."""
        for pid, m in list(self._metered.items()):
            if not (m.stale or not m.vm.complete):
                continue
            pdir = f"{self.procfs}/{pid}"
            stat = _read_stat(pdir)
            if stat is None or stat.starttime != m.vm.start_mark:
                continue  # sample() will report it gone
            links = _fd_links(pdir)
            vm_fd = next((fd for fd, link in links.items()
                          if link == "anon_inode:kvm-vm"), None)
            cmdline = _read(f"{pdir}/cmdline") or b""
            found = self._layout(
                pid, stat, links, vm_fd, cmdline,
                argv_mod.parse_qemu_argv(procfs.split_cmdline(cmdline)))
            vhost = tuple(k for k in m.vm.vhost_pids
                          if _read_stat(f"{self.procfs}/{k}") is not None)
            m.close()
            fresh = replace(found.vm, ref=m.vm.ref, vhost_pids=vhost)
            if config_of(fresh) != config_of(m.vm):
                self._changes.append((m.vm, fresh))
            # new threads may not have their names yet: look once more
            again = m.signature is not None and \
                m.signature[1] != found.signature[1]
            self._start_metering(fresh, None if again else found.signature)

    # --- sampling ---------------------------------------------------------

    def _start_metering(self, vm: VM, signature: _Signature | None) -> None:
        """Open the VM's files in C and allocate its reading struct."""
        keep: list[Any] = []

        def owned(ctype: str, init: Any) -> Any:
            # a struct field only points: the owner must outlive the open
            keep.append(ffi.new(ctype, init))
            return keep[-1]

        def strings(items: Sequence[str | None]) -> Any:
            return owned("char *[]", [
                owned("char[]", s.encode("utf-8", "surrogateescape"))
                if s is not None else ffi.NULL for s in items] or [ffi.NULL])

        pdir = f"{self.procfs}/{vm.pid}"
        sched = [f"{pdir}/task/{t.tid}/schedstat" for t in vm.vcpu_threads]
        sched += [f"{self.procfs}/{k}/schedstat" for k in vm.vhost_pids]
        spec = ffi.new("struct vmprobe_vm_spec *")
        spec.proc_dir = owned("char[]", pdir.encode())
        spec.sched_paths, spec.n_sched = strings(sched), len(sched)
        spec.disk_links = strings([f"{pdir}/fd/{d.fd}" for d in vm.disks])
        spec.disk_dev = owned("uint64_t[]", [d.dev for d in vm.disks] or 1)
        spec.disk_ino = owned("uint64_t[]", [d.ino for d in vm.disks] or 1)
        spec.disk_blk_stats = strings(
            [f"{self.sysfs}/dev/block/{d.block_device}/stat"
             if d.block_device else None for d in vm.disks])
        spec.n_disks = len(vm.disks)
        files = self._copy_stats_files(vm)
        kvm_names = _kvm_spec(spec, vm, files, owned, strings)
        handle = lib.vmprobe_vm_open(spec)
        if handle == ffi.NULL:
            for f in files:
                f.close()
            return  # exited already: nothing to meter
        reading = ffi.new("struct vmprobe_reading *")
        arrays = [
            ffi.new("struct vmprobe_thread[]", max(len(sched), 1)),
            ffi.new("struct vmprobe_disk[]", max(len(vm.disks), 1)),
            ffi.new("struct vmprobe_u64[]", max(len(kvm_names), 1)),
        ]
        reading.threads, reading.disks, reading.u64s = arrays
        flat = ffi.new("uint64_t[]", lib.vmprobe_vm_flat_len(handle))
        self._metered[vm.pid] = _Metered(vm, handle, reading, flat,
                                         _Plan.of(vm, kvm_names), arrays,
                                         kvm_names=kvm_names,
                                         stats_files=files,
                                         signature=signature)

    def _copy_stats_files(self, vm: VM) -> list[kvmstats.StatsFile]:
        """The VMM's KVM stats files, copied (all or none: a vCPU's file
        missing would make a partial sum)."""
        files: list[kvmstats.StatsFile] = []
        try:
            for fd in vm.kvm_stats_fds:
                files.append(kvmstats.open_copy(vm.pid, fd))
        except (OSError, ValueError) as err:
            get_logger(vm=vm.ref.name).info(
                "kvm_stats_fd_unusable", error=f"{type(err).__name__}: {err}")
            for f in files:
                f.close()
            return []
        return files

    def _forget(self, pid: int) -> None:
        m = self._metered.pop(pid)
        m.close()
        self._seen.discard(pid)  # a new process with this pid gets examined

    @staticmethod
    def _record(m: _Metered, taps: dict[str, dict[str, int]]) -> Sample:
        """The reading as a ``sample`` record body (docs/records.md), from
        the flat reading ``m.values`` and the VM's ``_Plan``."""
        v, plan = m.values, m.plan
        utime, stime = v[_UTIME] * NS_PER_TICK, v[_STIME] * NS_PER_TICK
        cpu: dict[str, Any] = {"total_ns": utime + stime,
                               "user_ns": utime, "system_ns": stime}
        if v[_HAS_GUEST]:
            cpu["guest_ns"] = v[_GUEST] * NS_PER_TICK
        if plan.vhosts:
            cpu["vhost_ns"] = sum(v[i + 1] for i in plan.vhosts if not v[i])
            m.stale |= any(v[i] for i in plan.vhosts)
        if plan.vcpus:
            cpu["vcpus"] = vcpus = []
            for i, vcpu_id in plan.vcpus:
                if v[i]:
                    m.stale = True
                    continue
                vcpus.append({"id": vcpu_id, "run_ns": v[i + 1],
                              "wait_ns": v[i + 2]})
        # VmRSS, not stat's rss field: task_mem() sums the per-CPU mm
        # counters exactly, stat reads them approximately (seen here: a few
        # pages apart for a stopped process on 6.18).
        mem = {"rss_bytes": v[_VM_RSS_KB] * 1024 if v[_HAS_VM_RSS]
               else v[_RSS_PAGES] * PAGE_SIZE}
        if plan.alloc_bytes is not None:
            mem["alloc_bytes"] = plan.alloc_bytes
        if v[_HAS_HUGETLB]:
            mem["hugetlb_bytes"] = v[_HUGETLB_KB] * 1024
        io = {"rd_bytes": v[_READ_BYTES], "wr_bytes": v[_WRITE_BYTES]} \
            if v[_HAS_STORAGE] else {}
        out: Sample = {"vm": plan.vm, "cpu": cpu, "mem": mem,
                       "nics": _nic_records(m, taps), "io": io,
                       "disks": _disk_records(m)}
        # debugfs items read at (re)open only (err EAGAIN otherwise): a value
        # in a record is always one read at its t (docs/records.md)
        kvm = {name: v[i + 1] for i, name in plan.kvm if not v[i]}
        if kvm:
            out["kvm"] = kvm
        return out


@dataclass(frozen=True)
class _Plan:
    """What a VM's sample records take from its layout, worked out once
    per open of its files: the ``vm`` map (the same object in every record;
    records are never changed once built) and where each item's values are
    in the flat reading (``vmprobe_vm_read_flat``)."""

    vm: dict[str, Any]
    vcpus: tuple[tuple[int, int], ...]  # (offset, vCPU id)
    vhosts: tuple[int, ...]  # offsets
    alloc_bytes: int | None
    nics: tuple[tuple[str, dict[str, str]], ...]  # (tap, name and mac)
    disks: tuple[tuple[int, Disk], ...]  # (offset, disk)
    kvm: tuple[tuple[int, str], ...]  # (offset, name)

    @classmethod
    def of(cls, vm: VM, kvm_names: Sequence[str]) -> _Plan:
        at = _FIXED
        vcpus = []
        for t in vm.vcpu_threads:
            vcpus.append((at, t.id))
            at += _THREAD
        vhosts = tuple(at + _THREAD * i for i in range(len(vm.vhost_pids)))
        at += _THREAD * len(vm.vhost_pids)
        disks = tuple((at + _DISK * i, d) for i, d in enumerate(vm.disks))
        at += _DISK * len(vm.disks)
        kvm = tuple((at + _U64 * i, n) for i, n in enumerate(kvm_names))
        nics = tuple((n.name, {"name": n.name, "mac": n.mac} if n.mac
                      else {"name": n.name}) for n in vm.nics)
        return cls(vm.record(), tuple(vcpus), vhosts, vm.alloc_bytes,
                   nics, disks, kvm)


def _nic_records(m: _Metered, taps: dict[str, dict[str, int]],
                 ) -> list[dict[str, Any]]:
    """Tap counters in the guest's view (``tap_guest_view``)."""
    out = []
    for tap, head in m.plan.nics:
        c = taps.get(tap)
        if c is None:  # gone or renamed: look at the layout again
            m.stale = True
            continue
        out.append({**head, **tap_guest_view(c)})
    return out


def _disk_records(m: _Metered) -> list[dict[str, Any]]:
    out = []
    v = m.values
    for i, disk in m.plan.disks:
        if v[i]:  # err
            m.stale = True
            continue
        rec: dict[str, Any] = {"path": disk.path}
        if disk.block_device is None:
            rec["capacity_bytes"] = disk.capacity_bytes \
                if disk.capacity_bytes is not None else v[i + 1]
            rec["allocated_bytes"] = v[i + 2]
        elif disk.capacity_bytes is not None:
            rec["capacity_bytes"] = disk.capacity_bytes
        if v[i + 3]:  # has_blk
            rec.update(rd_bytes=v[i + 5] * SECTOR, wr_bytes=v[i + 7] * SECTOR,
                       rd_ops=v[i + 4], wr_ops=v[i + 6])
        out.append(rec)
    return out


def _kvm_spec(spec: Any, vm: VM, files: list[kvmstats.StatsFile],
              owned: Any, strings: Any) -> tuple[str, ...]:
    """Fill the KVM counter items of ``spec`` (vmprobe_vm_spec): from the
    copied stats ``files`` where they have the counter, else from debugfs.
    Returns the items' names in the order of the reading's ``u64s``."""
    from_fds = kvmstats.sources(files, KVM_STATS)
    debugfs = [(n, p) for n, p in vm.kvm_stats if n not in from_fds]
    spec.u64_paths = strings([p for _, p in debugfs] + [None] * len(from_fds))
    spec.n_u64 = len(debugfs) + len(from_fds)
    items: dict[str, list[int]] = {n: [] for n, _ in debugfs}
    plan = kvmstats.plan(files, items | from_fds)
    spec.kstat_fds = owned("int[]", [f.fd for f in files] or 1)
    spec.kstat_off = owned("uint32_t[]", [o for o, _ in plan.ranges] or 1)
    spec.kstat_len = owned("uint32_t[]", [n for _, n in plan.ranges] or 1)
    spec.n_kstat = len(files)
    spec.src_file, spec.src_off, spec.src_item = (
        owned(t, [s[i] for s in plan.sources] or 1)
        for i, t in enumerate(("int[]", "uint32_t[]", "int[]")))
    spec.n_src = len(plan.sources)
    return (*(n for n, _ in debugfs), *from_fds)


# --- small readers: None when the file is gone or unreadable --------------

def _read(path: str) -> bytes | None:
    # os.read, not open(): a file object costs more than the read itself
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def _thread_group_leader(pid: int) -> bool | None:
    """Whether ``pid`` is a process /proc lists (a thread-group leader;
    /proc/<tid> of a thread is readable but its exe, cmdline and fds are
    its process's), False for a thread or no such pid, None when it
    cannot be told.  pidfd_open without PIDFD_THREAD refuses a pid without
    a thread-group task (torvalds/linux:kernel/fork.c, pidfd_prepare:
    pid_has_task(pid, PIDTYPE_TGID)): ESRCH for no pid, ENOENT for a
    thread (EINVAL before 6.15).  Measured on 6.18: 1 us for a thread,
    5 us for a process, against 17 us for reading status's ``Tgid``."""
    try:
        os.close(os.pidfd_open(pid))
    except OSError as err:
        if err.errno in (errno.ESRCH, errno.ENOENT, errno.EINVAL):
            return False
        return None  # EMFILE, ENOSYS, EPERM (seccomp): list /proc
    return True


def _read_int(path: str) -> int | None:
    raw = _read(path)
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _listdir_ints(path: str) -> list[int]:
    return sorted(int(n) for n in _listdir(path) if n.isdigit())


def _read_stat(pdir: str) -> procfs.Stat | None:
    raw = _read(f"{pdir}/stat")
    if not raw:
        return None
    try:
        return procfs.parse_stat(raw)
    except ValueError:
        return None


def _real_uid(pdir: str) -> int | None:
    """The real uid: first field of ``Uid:`` in /proc/<pid>/status."""
    for line in (_read(f"{pdir}/status") or b"").splitlines():
        if line.startswith(b"Uid:"):
            fields = line.split()
            return int(fields[1]) if len(fields) > 1 and \
                fields[1].isdigit() else None
    return None


def _fd_links(pdir: str) -> dict[int, str]:
    links = {}
    for fd in _listdir_ints(f"{pdir}/fd"):
        link = _readlink(f"{pdir}/fd/{fd}")
        if link is not None:
            links[fd] = link
    return links


def _signature(pdir: str, links: dict[int, str], cmdline: bytes,
               tids: list[int]) -> _Signature:
    """What a VM's layout is read from, cheaply: one readlink per fd, a
    stat of each fd that may be a disk (a path reopened is another file),
    the thread ids and the command line."""
    fds = []
    for fd, link in sorted(links.items()):
        ident = None
        if link.startswith("/") and not _never_a_disk(link):
            try:
                st = os.stat(f"{pdir}/fd/{fd}")
                ident = (st.st_dev, st.st_ino)
            except OSError:
                pass
        fds.append((fd, link, ident))
    return tuple(fds), tuple(tids), cmdline


def _never_a_disk(link: str) -> bool:
    """Paths a VM holds that are not disks: guest RAM backing files (unlinked
    memfd or hugetlbfs files) and kernel pseudo-files."""
    return (link.endswith(" (deleted)") or link.startswith(
        ("/proc/", "/sys/", "/memfd:", "/dev/hugepages")))


def _qcow2_size(path: str) -> int | None:
    """The virtual size of a qcow2 image (big-endian u64 at offset 24 of the
    header, qemu/qemu:docs/interop/qcow2.txt), None for anything else."""
    head = _read_head(path, 32)
    if head is None or len(head) < 32 or head[:4] != _QCOW2_MAGIC:
        return None
    return int.from_bytes(head[24:32], "big")


def _read_head(path: str, n: int) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError:
        return None
