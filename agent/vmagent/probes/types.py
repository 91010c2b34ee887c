"""The probes' public types, the same on every platform."""

from __future__ import annotations

import operator
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from vmagent.config import ProbesConfig
from vmagent.errors import ProbeError
from vmagent.log import get_logger

#: A record-shaped dict (docs/records.md): ``vm``, ``cpu``, ``mem``,
#: ``nics``, ``io``, ``disks`` and, where readable, ``kvm``.  Quantities are
#: ints.
Sample = dict[str, Any]

#: A Linux tap's counters in the guest's view (``nics`` of a sample) from
#: its host-view counters (sysfs ``statistics/`` names): what the guest
#: received is what the tap transmitted.  The one place the swap is written:
#: the prober's samples and a tap's final counters (links.py) both use it.
TAP_GUEST_VIEW = {"rx_bytes": "tx_bytes", "rx_packets": "tx_packets",
                  "rx_errors": "tx_errors", "rx_drops": "tx_dropped",
                  "tx_bytes": "rx_bytes", "tx_packets": "rx_packets",
                  "tx_errors": "rx_errors", "tx_drops": "rx_dropped"}


_GUEST_KEYS = tuple(TAP_GUEST_VIEW)
_HOST_VALUES = operator.itemgetter(*TAP_GUEST_VIEW.values())


def tap_guest_view(host: Mapping[str, int]) -> dict[str, int]:
    """The guest-view counters of a tap from its host-view ones."""
    return dict(zip(_GUEST_KEYS, _HOST_VALUES(host)))


#: The probes' options, ``[probes]`` of the config: filesystem roots (Linux)
#: and how often every VM is looked at again.  One object for both probers.
DEFAULTS = ProbesConfig()

@dataclass(frozen=True)
class VMRef:
    """Who a VM is: the ``vm`` map of every VM record."""

    uuid: str
    name: str
    gen: str
    hypervisor: str  # "kvm", "qemu" (software emulation) or "bhyve"

    def as_record(self) -> dict[str, str]:
        return {
            "uuid": self.uuid,
            "name": self.name,
            "gen": self.gen,
            "hypervisor": self.hypervisor,
        }


@dataclass(frozen=True)
class Nic:
    """A host interface carrying one of the VM's NICs."""

    name: str  # the host tap
    mac: str | None  # the guest's MAC where the command line names it


@dataclass(frozen=True)
class Disk:
    """A backing file or block device the VM's process holds open."""

    path: str
    fd: int | None  # Linux: its fd number in the process; FreeBSD: None
    dev: int  # st_dev and st_ino, to notice a reused fd number
    ino: int
    capacity_bytes: int | None  # None: the file's size is the capacity
    block_device: str | None  # "MAJ:MIN" when the backing is a block device


@dataclass(frozen=True)
class VcpuThread:
    """A thread that runs one vCPU."""

    id: int  # QEMU's CPU index (``CPU n/KVM``), or KVM's vcpu index
    tid: int
    id_source: str  # "thread-name" or "debugfs"


@dataclass(frozen=True)
class VM:
    """One run (gen) of a VM process and how to meter it."""

    ref: VMRef
    pid: int
    # the process's start as its kernel stamps it, to tell a reused pid:
    # Linux clock ticks since boot (/proc/<pid>/stat field 22), FreeBSD
    # ki_start in microseconds; compared only with the same kernel's stamp
    start_mark: int
    start_ns: int  # the same as Unix ns (for matching accounting records)
    comm: str  # the process's command name (as accounting records it)
    uid: int | None  # the real uid (FreeBSD accounting matches on it)
    vcpus: int | None  # configured vCPU count
    alloc_bytes: int | None  # configured guest memory
    nics: tuple[Nic, ...] = ()
    disks: tuple[Disk, ...] = ()
    vcpu_threads: tuple[VcpuThread, ...] = ()
    # vhost kernel threads outside the process
    vhost_pids: tuple[int, ...] = ()
    kvm_stats: tuple[tuple[str, str], ...] = ()  # (name, debugfs path)
    # Linux: the VM process's own KVM binary stats fds (probes/kvmstats.py)
    kvm_stats_fds: tuple[int, ...] = ()
    vmm: str | None = None  # FreeBSD: the VM's /dev/vmm name
    complete: bool = True  # False: vCPU threads still missing, look again

    def record(self) -> dict[str, Any]:
        """The ``vm`` map of every VM record: who it is, and when its
        process started (Unix ns, to a tick): where billed time begins."""
        return {**self.ref.as_record(), "started_ns": self.start_ns}


@dataclass
class Sweep:
    """What one ``sample()`` call read."""

    samples: list[tuple[VM, Sample]] = field(default_factory=list)
    gone: list[VM] = field(default_factory=list)
    failed: list[tuple[VM, str]] = field(default_factory=list)
    bugs: int = 0  # failures that were no documented probe error

    def fail(self, vm: VM, err: Exception) -> None:
        """One VM's sample failed; the sweep goes on.  A documented probe
        error (OSError, ProbeError) is a reason; anything else is a bug:
        logged with its traceback and counted."""
        reason = f"{type(err).__name__}: {err}"
        if not isinstance(err, (OSError, ProbeError)):
            self.bugs += 1
            reason = "unexpected " + reason
            get_logger(vm=vm.ref.name).error("probe_bug", error=reason,
                                             exc_info=err)
        self.failed.append((vm, reason))


def config_of(vm: VM) -> dict[str, Any]:
    """What ``vm_config`` compares: vCPUs (running vCPU threads where there
    are any, else the configured count), memory, NICs and disks."""
    return {"vcpus": len(vm.vcpu_threads) or vm.vcpus,
            "alloc_bytes": vm.alloc_bytes,
            "nics": [n.name for n in vm.nics],
            "disks": [d.path for d in vm.disks]}
