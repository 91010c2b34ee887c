"""FreeBSD bhyve probes: the names of ``probes/linux.py``.

VMs are ``bhyve`` processes; each one's open files (``kern.proc.filedesc``)
name its ``/dev/vmm/<name>``, taps and disks.  Counters come from the
process (``kinfo_proc``), its ``vcpu N`` threads, ``VM_STATS`` (by
description) and the taps' ``if_data``.  Everything the kernel hands over
goes through a ``Kernel`` (below): the syscall layer on FreeBSD, a fake in
the tests.  docs/freebsd.md says what has not run on a real host yet.
"""

from __future__ import annotations

import errno
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from vmagent.config import ProbesConfig
from vmagent.identity import derived_vm_uuid
from vmagent.probes import bhyve
from vmagent.probes.base import ProberBase
from vmagent.probes.freebsd_kernel import Kernel, Proc, Thread, native_kernel
from vmagent.probes.types import (
    DEFAULTS,
    VM,
    Disk,
    Nic,
    Sweep,
    VcpuThread,
    VMRef,
    config_of,
)

#: FreeBSD 15 freezes a vCPU for every VM_STATS call (kernel_counters
#: errata W1): read them at most this often, and keep the last values.
VM_STATS_EVERY_S = 10.0
_VCPU = re.compile(r"vcpu (\d+)")
_ACTIVITY = {"readbps": "rd_bytes_1s", "writebps": "wr_bytes_1s",
             "readiops": "rd_ops_1s", "writeiops": "wr_ops_1s"}


@dataclass
class _Metered:
    vm: VM
    descs: dict[int, str] = field(default_factory=dict)
    stats: dict[int, dict[str, int]] = field(default_factory=dict)  # vcpu
    stats_at: float = 0.0


class Prober(ProberBase["_Metered"]):
    """Finds and meters the bhyve VMs of one FreeBSD host."""

    #: Where kernel data comes from; tests put a fake here.
    _kernel_factory: Callable[[], Kernel] = staticmethod(native_kernel)

    # the Linux Prober's signature (tests/unit/test_contracts.py); of the
    # options only ``rescan_s`` means something here (no filesystem roots)
    def __init__(self, host_id: str,
                 options: ProbesConfig = DEFAULTS) -> None:
        super().__init__(host_id, options)
        # through the class: a fake put there is a function, not a method
        self.kernel = type(self)._kernel_factory()  # noqa: SLF001
        self._boot = self.kernel.boot_time_us()
        self.boot_id = str(self._boot)  # kern.boottime: this boot, in µs
        self._geom: dict[str, int] = {}  # GEOM provider name -> devstat id
        self._geom_asked: set[str] = set()  # the names it was read for

    # --- public API (the same names as probes/linux.py) ------------------

    def discover(self) -> list[VM]:
        """Examine bhyve processes not seen before; the VMs found new."""
        procs = {p.pid: p for p in self.kernel.bhyve_processes()}
        self._seen &= set(procs)
        new = []
        for pid in sorted(set(procs) - self._seen):
            self._seen.add(pid)
            vm = self._layout(procs[pid])
            if vm is not None:
                self._metered[pid] = _Metered(vm)
                new.append(vm)
        if self._rescan_due():
            self._rescan(procs)
        devices = {d.block_device for m in self._metered.values()
                   for d in m.vm.disks if d.block_device}
        if devices - self._geom_asked:  # a disk device not looked up yet
            self._geom_asked = devices
            self._geom = self._geom_ids()
        return new

    def sample(self) -> Sweep:
        sweep = Sweep()
        devstat = self._devstat()
        for pid, m in list(self._metered.items()):
            try:
                proc = self.kernel.process(pid)
                if proc is not None and proc.start_us == m.vm.start_mark:
                    # a zombie's counters are its final ones: the last sample
                    sweep.samples.append((m.vm, self._record(m, proc,
                                                             devstat)))
                    if not proc.zombie:
                        continue
                self._gone(pid, m)
                sweep.gone.append(m.vm)
            except Exception as err:  # noqa: BLE001 - one VM never stops a sweep
                sweep.fail(m.vm, err)
        return sweep

    def _gone(self, pid: int, m: _Metered) -> None:
        del self._metered[pid]
        self._seen.discard(pid)
        self.kernel.forget(_vmm(m.vm))

    # --- discovery --------------------------------------------------------

    def _layout(self, proc: Proc) -> VM | None:
        files = bhyve.classify(list(bhyve.iter_kinfo_files(
            self.kernel.filedesc(proc.pid))))
        name = bhyve.title_name(proc.title) or files.vm
        if files.vm is None or name is None:
            return None  # a bhyve process without a VM (yet)
        uuid = self.kernel.manager_uuid(name) or \
            derived_vm_uuid(self.host_id, name)
        threads = sorted((VcpuThread(int(m.group(1)), t.tid, "thread-name")
                          for t in self.kernel.threads(proc.pid)
                          if (m := _VCPU.fullmatch(t.name))),
                         key=lambda t: t.id)
        disks = tuple(self._disk(path) for path in files.disks)
        return VM(
            ref=VMRef(uuid, name, f"{self.boot_id}-{proc.pid}-"
                      f"{proc.start_us}", "bhyve"),
            pid=proc.pid, start_mark=proc.start_us,
            start_ns=proc.start_us * 1000, comm=proc.comm, uid=proc.uid,
            vcpus=len(threads) or None,
            alloc_bytes=self.kernel.sysmem_bytes(files.vm),
            nics=tuple(Nic(n, None) for n in files.nics), disks=disks,
            vcpu_threads=tuple(threads),
            vmm=files.vm)

    def _disk(self, path: str) -> Disk:
        """A disk device's size is read once (as on Linux); an image file's
        size and allocation on every sample."""
        device = bhyve.geom_name(path)
        size = self.kernel.file_size(path) if device else None
        return Disk(path, None, 0, 0, size[0] if size else None, device)

    def _rescan(self, procs: dict[int, Proc]) -> None:
        for pid, m in self._metered.items():
            if pid not in procs:
                continue
            fresh = self._layout(procs[pid])
            if fresh is None:
                continue
            fresh = replace(fresh, ref=m.vm.ref)
            if config_of(fresh) != config_of(m.vm):
                self._changes.append((m.vm, fresh))
                m.vm = fresh

    # --- sampling ---------------------------------------------------------

    def _record(self, m: _Metered, proc: Proc,
                devstat: dict[int, bhyve.DevStat]) -> dict[str, Any]:
        vm = m.vm
        threads = self.kernel.threads(vm.pid)
        runtimes = {t.tid: t.runtime_us for t in threads}
        cpu: dict[str, Any] = {"total_ns": proc.runtime_us * 1000,
                               "user_ns": proc.utime_us * 1000,
                               "system_ns": proc.stime_us * 1000}
        stats = self._vm_stats(m)
        if vm.vcpu_threads:
            cpu["vcpus"] = [_vcpu(t.id, runtimes[t.tid], stats.get(t.id, {}))
                            for t in vm.vcpu_threads if t.tid in runtimes]
            guest = [v["guest_ns"] for v in cpu["vcpus"] if "guest_ns" in v]
            if guest and len(guest) == len(cpu["vcpus"]):
                cpu["guest_ns"] = sum(guest)
        resident = stats.get(0, {}).get(bhyve.RESIDENT)
        out: dict[str, Any] = {
            "vm": vm.record(), "cpu": cpu,
            "mem": {"rss_bytes": resident if resident is not None
                    else proc.rss_bytes},
            "nics": self._nics(vm),
            "io": {"rd_ops": proc.inblock, "wr_ops": proc.oublock},
            "disks": self._disks(vm, threads, devstat)}
        activity = self._activity(proc.pid)
        if activity:
            out["activity"] = activity
        exits = _sum(bhyve.exit_counters(s) for s in stats.values())
        if exits:
            out["kvm"] = exits
        return out

    def _activity(self, pid: int) -> dict[str, int]:
        """RACCT's I/O of the last second (kernel_counters errata W4: reset
        every second, so a gauge, never summed), where RACCT is on."""
        text = self.kernel.racct(pid)
        if not text:
            return {}
        try:
            racct = bhyve.parse_racct(text)
        except bhyve.DecodeError:
            return {}
        return {key: racct[name] for name, key in _ACTIVITY.items()
                if name in racct}

    def _vm_stats(self, m: _Metered) -> dict[int, dict[str, int]]:
        """Named VM_STATS per vCPU id, re-read at most every 10 s."""
        if time.monotonic() - m.stats_at < VM_STATS_EVERY_S and m.stats:
            return m.stats
        name = _vmm(m.vm)
        try:
            for t in m.vm.vcpu_threads:  # never ids beyond the real vCPUs
                m.stats[t.id] = self._one_vcpu(m, name, t.id)
        except OSError as err:
            if err.errno not in (errno.ENOENT, errno.ENXIO, errno.EPERM,
                                 errno.ENOTTY):
                raise
        m.stats_at = time.monotonic()
        return m.stats

    def _one_vcpu(self, m: _Metered, vm: str, cpu: int) -> dict[str, int]:
        values: list[int] = []
        while True:
            layout, raw = self.kernel.vm_stats(vm, cpu, len(values))
            chunk = bhyve.decode_vm_stats(raw, layout)
            values += chunk.values
            # the 13 layout has no index: one call returns all there are
            if chunk.last_chunk or layout == bhyve.LAYOUT_13:
                break
        for i in range(len(values)):
            if i not in m.descs:
                m.descs[i] = bhyve.decode_stat_desc(
                    self.kernel.stat_desc(vm, i))[1]
        named = bhyve.named_stats(m.descs, tuple(values))
        run_ns = bhyve.vcpu_run_ns(named, self.kernel.tsc_freq())
        if run_ns is not None:
            named["run_ns"] = run_ns
        return named

    def _nics(self, vm: VM) -> list[dict[str, Any]]:
        out = []
        for nic in vm.nics:
            raw = self.kernel.if_data(nic.name)
            if raw is not None:
                out.append(bhyve.guest_view(nic.name,
                                            bhyve.decode_if_data(raw)))
        return out

    def _geom_ids(self) -> dict[str, int]:
        try:
            return bhyve.geom_provider_ids(self.kernel.geom_confxml())
        except (OSError, bhyve.DecodeError):
            return {}  # no per-device counters, everything else still

    def _devstat(self) -> dict[int, bhyve.DevStat]:
        """One read of /dev/devstat per sweep, when a VM has a disk device
        GEOM knows."""
        if not any(d.block_device in self._geom for m in self._metered.values()
                   for d in m.vm.disks):
            return {}
        for _ in range(3):  # a record being updated: read again
            try:
                page, raw = self.kernel.devstat()
                stats, torn = bhyve.decode_devstat(raw, page)
            except (OSError, bhyve.DecodeError):
                return {}
            if not torn:
                break
        return stats

    def _disks(self, vm: VM, threads: list[Thread],
               devstat: dict[int, bhyve.DevStat]) -> list[dict[str, Any]]:
        ops = bhyve.block_ops_per_disk(threads, len(vm.disks))
        out = []
        for i, disk in enumerate(vm.disks):
            rec: dict[str, Any] = {"path": disk.path}
            size = (disk.capacity_bytes, None) if disk.block_device else \
                self.kernel.file_size(disk.path)
            if size is not None and size[0] is not None:
                rec["capacity_bytes"] = size[0]
                if size[1] is not None:
                    rec["allocated_bytes"] = size[1]
            device = devstat.get(self._geom.get(disk.block_device or "", 0))
            if device is not None:  # the device's own totals
                rec.update(rd_bytes=device.rd_bytes, wr_bytes=device.wr_bytes,
                           rd_ops=device.rd_ops, wr_ops=device.wr_ops)
            elif ops is not None:
                rec["rd_ops"], rec["wr_ops"] = ops[i]
            out.append(rec)
        return out


def _vcpu(vcpu_id: int, runtime_us: int,
          named: dict[str, int]) -> dict[str, int]:
    """A vCPU's thread run time, and its time in the VMRUN loop from
    VM_STATS (TSC ticks / machdep.tsc_freq; at most VM_STATS_EVERY_S old)."""
    out = {"id": vcpu_id, "run_ns": runtime_us * 1000}
    if "run_ns" in named:
        out["guest_ns"] = named["run_ns"]
    return out


def _sum(maps: Any) -> dict[str, int]:
    total: dict[str, int] = {}
    for m in maps:
        for k, v in m.items():
            total[k] = total.get(k, 0) + v
    return total


def _vmm(vm: VM) -> str:
    """The VM's /dev/vmm name (every bhyve VM is found by it)."""
    assert vm.vmm is not None
    return vm.vmm
