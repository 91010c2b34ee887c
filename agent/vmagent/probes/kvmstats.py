"""KVM binary stats files (``KVM_GET_STATS_FD``, Linux 5.14+): the layout
parsed once when a VM's files are opened, then only the data is re-read.

Format: torvalds/linux:Documentation/virt/kvm/api.rst §4.133 and
include/uapi/linux/kvm.h (``struct kvm_stats_header``, ``struct
kvm_stats_desc``); the kernel side is virt/kvm/binary_stats.c.  A file is a
header, an id string, one descriptor per stat (16 bytes then a name of
``name_size`` bytes), and a data block of u64s at ``data_offset``.

The agent cannot make these files for a VM it does not own (KVM refuses the
ioctl with EIO to any process but the VM's creator, kvm_main.c); it copies
the ones the VMM keeps open with ``pidfd_getfd`` (``copy_from``).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from vmagent.probes._native import lib, os_error

HEADER = struct.Struct("<6I")  # flags name_size num_desc id desc data offsets
DESC = struct.Struct("<IhHII")  # flags exponent size offset bucket_size
TYPE_MASK = 0xF  # KVM_STATS_TYPE_MASK
#: KVM_STATS_TYPE_CUMULATIVE and _INSTANT: one plain number (the peaks and
#: histograms are left out)
PLAIN_TYPES = (0, 1)
MAX_DESCRIPTORS = 4096  # x86 has ~70 vCPU stats; more means a bad header
MAX_NAME = 256
#: the files' names in /proc/<pid>/fd (kvm_vm_ioctl_get_stats_fd() and
#: kvm_vcpu_ioctl_get_stats_fd() in kvm_main.c)
VM_STATS = "anon_inode:kvm-vm-stats"
VCPU_STATS = "anon_inode:kvm-vcpu-stats:"
VCPU = "anon_inode:kvm-vcpu:"


@dataclass(frozen=True)
class Header:
    name_size: int
    num_desc: int
    desc_offset: int
    data_offset: int


def parse_header(buf: bytes) -> Header:
    """The header of a stats file; ValueError naming what is wrong."""
    if len(buf) < HEADER.size:
        raise ValueError(f"KVM stats header is {len(buf)} bytes, "
                         f"expected {HEADER.size}")
    _, name_size, num_desc, _, desc_off, data_off = HEADER.unpack_from(buf)
    if not 0 < name_size <= MAX_NAME:
        raise ValueError(f"KVM stats name_size {name_size} out of range")
    if num_desc > MAX_DESCRIPTORS:
        raise ValueError(f"KVM stats num_desc {num_desc} out of range")
    return Header(name_size, num_desc, desc_off, data_off)


def parse_descriptors(buf: bytes, header: Header) -> dict[str, int]:
    """Plain (single u64, cumulative or instant) stats by name: their byte
    offset within the data block.  ValueError when ``buf`` is short."""
    size = DESC.size + header.name_size
    if len(buf) < size * header.num_desc:
        raise ValueError(f"KVM stats descriptors are {len(buf)} bytes, "
                         f"expected {size * header.num_desc}")
    out = {}
    for i in range(header.num_desc):
        flags, _, count, offset, _ = DESC.unpack_from(buf, i * size)
        raw = buf[i * size + DESC.size:(i + 1) * size]
        name = raw.split(b"\0", 1)[0].decode("ascii", "replace")
        if count == 1 and flags & TYPE_MASK in PLAIN_TYPES and name:
            out[name] = offset
    return out


@dataclass
class StatsFile:
    """One open stats file: its fd (ours), where its data block starts, and
    its plain stats' offsets within that block."""

    fd: int
    data_offset: int
    offsets: Mapping[str, int]
    vcpu: bool  # one vCPU's file (else the VM's)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def open_copy(pid: int, fd: int) -> StatsFile:
    """Copy fd ``fd`` of process ``pid`` and read its layout; OSError when
    it cannot be copied, ValueError when it is no stats file."""
    ours = lib.vmprobe_pidfd_getfd(pid, fd)
    if ours < 0:
        raise os_error(f"fd {fd} of pid {pid}")
    try:
        link = os.readlink(f"/proc/self/fd/{ours}")
        if not link.startswith((VM_STATS, VCPU_STATS)):
            raise ValueError(f"fd {fd} of pid {pid} is {link}, no KVM stats")
        header = parse_header(os.pread(ours, HEADER.size, 0))
        size = (DESC.size + header.name_size) * header.num_desc
        offsets = parse_descriptors(
            os.pread(ours, size, header.desc_offset), header)
        return StatsFile(ours, header.data_offset, offsets,
                         link.startswith(VCPU_STATS))
    except BaseException:
        os.close(ours)
        raise


def fds_to_copy(links: Mapping[int, str]) -> tuple[int, ...]:
    """The stats fds worth copying among a VM process's fds: the VM's, and
    the vCPUs' when there is one for every vCPU (a partial sum would not
    mean what debugfs means); one fd per file name (dups are alike)."""
    by_name: dict[str, int] = {}
    for fd, link in sorted(links.items()):
        if link == VM_STATS or link.startswith(VCPU_STATS):
            by_name.setdefault(link, fd)
    vcpus = {link[len(VCPU):] for link in links.values()
             if link.startswith(VCPU)}
    per_vcpu = {link[len(VCPU_STATS):] for link in by_name
                if link.startswith(VCPU_STATS)}
    return tuple(fd for link, fd in by_name.items()
                 if link == VM_STATS or (per_vcpu == vcpus and vcpus))


@dataclass(frozen=True)
class ReadPlan:
    """What the native read does for the stats items (vmprobe_vm_spec):
    per file the byte range to pread; per source (file, offset in that
    range, item)."""

    ranges: list[tuple[int, int]]  # (file offset, length), one per file
    sources: list[tuple[int, int, int]]  # (file index, offset, item index)


def plan(files: Sequence[StatsFile],
         items: Mapping[str, Sequence[int]]) -> ReadPlan:
    """The read plan for ``items`` (name -> indices into ``files`` whose
    values are summed), in the order of ``items``: each file read once,
    from its first to its last wanted stat."""
    wanted: dict[int, list[tuple[int, int]]] = {}  # file -> (offset, item)
    for item, (name, sources) in enumerate(items.items()):
        for f in sources:
            wanted.setdefault(f, []).append((files[f].offsets[name], item))
    ranges, out = [], []
    for f in range(len(files)):
        offs = wanted.get(f, [])
        lo = min((o for o, _ in offs), default=0)
        hi = max((o + 8 for o, _ in offs), default=0)
        ranges.append((files[f].data_offset + lo, hi - lo))
        out += [(f, o - lo, item) for o, item in offs]
    return ReadPlan(ranges, out)


def sources(files: Sequence[StatsFile], names: Sequence[str],
            ) -> dict[str, list[int]]:
    """For each of ``names`` the indices of the files to sum: every vCPU's
    file when each has it (the VM-wide value is their sum, as debugfs gives
    it: kvm_get_stat_per_vcpu() in kvm_main.c), else the VM's file."""
    vcpus = [i for i, f in enumerate(files) if f.vcpu]
    vm = [i for i, f in enumerate(files) if not f.vcpu][:1]
    out: dict[str, list[int]] = {}
    for name in names:
        if vcpus and all(name in files[i].offsets for i in vcpus):
            out[name] = vcpus
        elif vm and name in files[vm[0]].offsets:
            out[name] = vm
    return out
