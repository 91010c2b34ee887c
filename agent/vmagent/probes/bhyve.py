"""Pure pieces of the FreeBSD bhyve probes, usable (and tested) anywhere:
the kernel's buffers decoded by native/common/bhyve.c, and what vmagent
makes of them.  The syscalls that fetch the buffers are FreeBSD-only."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from vmagent.errors import ProbeError
from vmagent.probes._native import ffi, lib
from vmagent.probes.types import tap_guest_view

LAYOUT_14, LAYOUT_13 = lib.VMPROBE_VM_STATS_14, lib.VMPROBE_VM_STATS_13
KF_TYPE_VNODE = 1  # sys/sys/user.h
#: vmm stats vmagent reports, by description (never by index: indices
#: differ between hosts and releases; sys/amd64/vmm/vmm.c VMM_STAT*()).
RUNTIME = "vcpu total runtime"  # TSC ticks in the VMRUN loop
RESIDENT = "Resident memory"  # bytes, vCPU 0 only
WIRED = "Wired memory"
EXITS = {"total number of vm exits": "exits",
         "number of times hlt was intercepted": "halt_exits",
         "number of times in/out was intercepted": "io_exits",
         "vm exits due to nested page fault": "npt_exits",
         "number of vm exits handled in userspace": "userspace_exits"}


class DecodeError(ProbeError, ValueError):
    """A kernel buffer that is not what it should be."""


@dataclass(frozen=True)
class VmStats:
    cpuid: int
    index: int
    values: tuple[int, ...]
    time_us: int

    @property
    def last_chunk(self) -> bool:
        """Fewer than MAX_VM_STATS: no further VM_STATS call needed."""
        return len(self.values) < lib.VMPROBE_MAX_VM_STATS


def decode_vm_stats(data: bytes, layout: int) -> VmStats:
    out = ffi.new("struct vmprobe_vm_stats *")
    if lib.vmprobe_vm_stats_decode(layout, data, len(data), out) != 0:
        raise DecodeError(f"not a VM_STATS reply ({len(data)} bytes)")
    return VmStats(out.cpuid, out.index,
                   tuple(out.values[i] for i in range(out.num_entries)),
                   out.tv_sec * 1_000_000 + out.tv_usec)


def decode_stat_desc(data: bytes) -> tuple[int, str]:
    index, desc = ffi.new("int *"), ffi.new("char[]", 129)
    if lib.vmprobe_vm_stat_desc_decode(data, len(data), index, desc,
                                       129) != 0:
        raise DecodeError("not a VM_STAT_DESC reply")
    return index[0], ffi.string(desc).decode("utf-8", "replace")


def named_stats(descs: dict[int, str], values: tuple[int, ...],
                first_index: int = 0) -> dict[str, int]:
    """Values keyed by description; unknown indices are left out."""
    return {descs[first_index + i]: v for i, v in enumerate(values)
            if first_index + i in descs}


def vcpu_run_ns(named: dict[str, int], tsc_freq: int) -> int | None:
    """A vCPU's time in the VMRUN loop: TSC ticks / machdep.tsc_freq."""
    ticks = named.get(RUNTIME)
    if ticks is None or tsc_freq <= 0:
        return None
    return ticks * 1_000_000_000 // tsc_freq


def exit_counters(named: dict[str, int]) -> dict[str, int]:
    return {key: named[desc] for desc, key in EXITS.items() if desc in named}


def decode_if_data(data: bytes) -> dict[str, int]:
    """The host's counters of a tap/vmnet (struct if_data)."""
    d = ffi.new("struct vmprobe_if_data *")
    if lib.vmprobe_if_data_decode(data, len(data), d) != 0:
        raise DecodeError(f"not a struct if_data ({len(data)} bytes)")
    return {k: getattr(d, k) for k in ("ipackets", "ierrors", "opackets",
                                       "oerrors", "ibytes", "obytes",
                                       "iqdrops", "oqdrops")}


#: struct if_data's counters under a Linux tap's host-view names
IF_DATA_AS_HOST = {"rx_bytes": "ibytes", "rx_packets": "ipackets",
                   "rx_errors": "ierrors", "rx_dropped": "iqdrops",
                   "tx_bytes": "obytes", "tx_packets": "opackets",
                   "tx_errors": "oerrors", "tx_dropped": "oqdrops"}


def guest_view(name: str, host: dict[str, int]) -> dict[str, Any]:
    """A bhyve NIC record: what the guest sent is the tap's input (the
    one swap, ``types.tap_guest_view``)."""
    return {"name": name, **tap_guest_view(
        {k: host[v] for k, v in IF_DATA_AS_HOST.items()})}


@dataclass(frozen=True)
class OpenFile:
    fd: int
    type: int
    path: str


def iter_kinfo_files(data: bytes) -> Iterator[OpenFile]:
    """The records of a KERN_PROC_FILEDESC reply."""
    kf = ffi.new("struct vmprobe_kinfo_file *")
    buf = ffi.from_buffer("unsigned char[]", data)
    off = 0
    while True:
        n = lib.vmprobe_kinfo_file_next(buf + off, len(data) - off, kf)
        if n == 0:
            return
        if n < 0:
            raise DecodeError(f"malformed kinfo_file record at {off}")
        yield OpenFile(kf.fd, kf.type,
                       ffi.string(kf.path).decode("utf-8", "surrogateescape"))
        off += n


@dataclass(frozen=True)
class BhyveFiles:
    vm: str | None  # the name behind /dev/vmm/<name>
    nics: tuple[str, ...]  # tapN / vmnetN
    disks: tuple[str, ...]


#: Devices a bhyve process holds that are not disks (the console's nmdm,
#: PCI passthrough, the vmm device itself, ...).
_NOT_DISKS = ("/dev/vmm", "/dev/nmdm", "/dev/null", "/dev/zero",
              "/dev/random", "/dev/urandom", "/dev/pts/", "/dev/tty",
              "/dev/cua", "/dev/pci", "/dev/mem", "/dev/io", "/dev/netmap",
              "/dev/bpf")


def classify(files: list[OpenFile]) -> BhyveFiles:
    """The VM, NICs and disks among a bhyve process's open files."""
    vm, nics, disks = None, [], []
    for f in files:
        if f.fd < 0 or not f.path.startswith("/"):
            continue  # cwd, root, text vnode; sockets, pipes
        if f.path.startswith("/dev/vmm/"):
            vm = f.path[len("/dev/vmm/"):]
        elif m := re.fullmatch(r"/dev/((?:tap|vmnet)\d+)", f.path):
            nics.append(m.group(1))
        elif f.type == KF_TYPE_VNODE and not f.path.startswith(_NOT_DISKS):
            disks.append(f.path)
    return BhyveFiles(vm, tuple(dict.fromkeys(nics)),
                      tuple(dict.fromkeys(disks)))


def parse_racct(text: str) -> dict[str, int]:
    """rctl_get_racct(2)'s ``name=value,...`` (the resources vmagent uses).
    readbps & co. are one-second windows the kernel resets: gauges only."""
    r = ffi.new("struct vmprobe_racct *")
    raw = text.encode()
    if lib.vmprobe_racct_parse(raw, len(raw), r) != 0:
        raise DecodeError(f"not an rctl_get_racct string: {text[:60]!r}")
    keys = ("cputime", "memoryuse", "vmemoryuse", "readbps", "writebps",
            "readiops", "writeiops", "wallclock", "pcpu")
    return {k: getattr(r, k) for k in keys if getattr(r, f"has_{k}")}


def title_name(title: str) -> str | None:
    """The VM name of a bhyve process title (``bhyve: <name>``,
    usr.sbin/bhyve/bhyverun.c setproctitle)."""
    m = re.fullmatch(r"bhyve: (.+)", title.strip())
    return m.group(1) if m else None



#: bhyve's block_if worker threads: ``blk-<slot>:<func>[:<port>]-<n>``
#: (usr.sbin/bhyve/block_if.c, the ident from pci_virtio_block.c, pci_ahci.c,
#: pci_nvme.c).
_BLK_THREAD = re.compile(r"blk-(\d+(?::\d+)*)-\d+")


def block_ops_per_disk(threads: list[Any],
                       n_disks: int) -> list[tuple[int, int]] | None:
    """Block operations (ru_inblock, ru_oublock) of each disk, summed over
    its block_if threads.  bhyve sets its devices up, and opens their files,
    in slot order, and the disks are in the order of their descriptors, so
    the k-th slot is the k-th disk; None unless the counts agree."""
    per: dict[tuple[int, ...], list[int]] = {}
    for t in threads:
        m = _BLK_THREAD.fullmatch(t.name)
        if m:
            ops = per.setdefault(tuple(map(int, m.group(1).split(":"))),
                                 [0, 0])
            ops[0] += t.inblock
            ops[1] += t.oublock
    if not per or len(per) != n_disks:
        return None
    return [(per[k][0], per[k][1]) for k in sorted(per)]


#: bhyve's exit codes (bhyve(8), EXIT STATUS).
EXIT_REASONS = {0: "reboot", 1: "poweroff", 2: "halt", 3: "triple_fault",
                4: "error"}


def exit_reason(code: int) -> str:
    return EXIT_REASONS.get(code, "unknown")


@dataclass(frozen=True)
class DevStat:
    """A disk device's totals (struct devstat)."""

    rd_bytes: int
    wr_bytes: int
    rd_ops: int
    wr_ops: int


def decode_devstat(data: bytes, page_size: int) -> tuple[dict[int, DevStat],
                                                        int]:
    """/dev/devstat's pages by GEOM provider id, and how many records were
    torn (being updated while read)."""
    n = max(1, len(data) // lib.VMPROBE_DEVSTAT_SIZE)
    out = ffi.new("struct vmprobe_devstat[]", n)
    torn = ffi.new("size_t *")
    got = lib.vmprobe_devstat_decode(data, len(data), page_size, out, n, torn)
    if got < 0:
        raise DecodeError(f"not /dev/devstat pages of {page_size} bytes "
                          f"({len(data)} bytes)")
    return {out[i].id: DevStat(out[i].rd_bytes, out[i].wr_bytes,
                               out[i].rd_ops, out[i].wr_ops)
            for i in range(got)}, torn[0]


def geom_provider_ids(confxml: str) -> dict[str, int]:
    """GEOM provider name -> id from kern.geom.confxml; devstat records carry
    the same id (how gstat(8) names them, lib/libgeom)."""
    try:
        root = ET.fromstring(confxml)
    except ET.ParseError as err:
        raise DecodeError(f"kern.geom.confxml: {err}") from None
    out = {}
    for p in root.iter("provider"):
        name, pid = p.findtext("name"), p.get("id")
        if name and pid:
            try:
                out[name] = int(pid, 16)
            except ValueError:
                continue
    return out


def geom_name(path: str) -> str | None:
    """The GEOM provider behind a disk device path (/dev/zvol/tank/vm0 ->
    zvol/tank/vm0, /dev/ada1 -> ada1)."""
    return path[len("/dev/"):] if path.startswith("/dev/") else None
