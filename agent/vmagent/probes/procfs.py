"""Pure parsers for Linux procfs text, tested with literal strings.

The hot-path parsers (stat, status, io, schedstat) are C (native/linux/
procfs.c) and are wrapped here so that discovery and tests use the very same
code as the sampler.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

from vmagent.probes._native import ffi, lib

PF_KTHREAD = 0x00200000  # torvalds/linux:include/linux/sched.h
O_ACCMODE, O_WRONLY = 0o3, 0o1  # octal, as fdinfo prints flags


@dataclass(frozen=True)
class Stat:
    comm: str
    state: str
    flags: int
    utime: int
    stime: int
    num_threads: int
    starttime: int
    rss_pages: int
    guest_time: int | None


def _parse(fn: Any, text: bytes | str, ctype: str) -> Any:
    data = text.encode() if isinstance(text, str) else text
    out = ffi.new(ctype)
    if fn(data, len(data), out) != 0:
        raise ValueError(f"not a valid {ctype[7:-2]} file: {data[:80]!r}")
    return out


def parse_stat(text: bytes | str) -> Stat:
    """``/proc/<pid>/stat``; the command name may hold spaces and ``)``."""
    s = _parse(lib.vmprobe_parse_stat, text, "struct vmprobe_stat *")
    return Stat(
        comm=ffi.string(s.comm).decode("utf-8", "backslashreplace"),
        state=s.state.decode(),
        flags=s.flags,
        utime=s.utime,
        stime=s.stime,
        num_threads=s.num_threads,
        starttime=s.starttime,
        rss_pages=s.rss_pages,
        guest_time=s.guest_time if s.has_guest_time else None,
    )


def parse_status(text: bytes | str) -> dict[str, int]:
    """``VmRSS`` and ``HugetlbPages`` of ``/proc/<pid>/status``, in kB."""
    s = _parse(lib.vmprobe_parse_status, text, "struct vmprobe_status *")
    out = {}
    if s.has_vm_rss:
        out["VmRSS"] = s.vm_rss_kb
    if s.has_hugetlb:
        out["HugetlbPages"] = s.hugetlb_kb
    return out


def parse_io(text: bytes | str) -> dict[str, int]:
    """``/proc/<pid>/io``; storage keys only where the kernel counts them."""
    s = _parse(lib.vmprobe_parse_io, text, "struct vmprobe_io *")
    out = {"rchar": s.rchar, "wchar": s.wchar,
           "syscr": s.syscr, "syscw": s.syscw}
    if s.has_storage:
        out.update(read_bytes=s.read_bytes, write_bytes=s.write_bytes,
                   cancelled_write_bytes=s.cancelled_write_bytes)
    return out


def parse_schedstat(text: bytes | str) -> tuple[int, int, int]:
    """(run_ns, wait_ns, timeslices) of a ``schedstat`` file."""
    s = _parse(lib.vmprobe_parse_schedstat, text,
               "struct vmprobe_schedstat *")
    return s.run_ns, s.wait_ns, s.timeslices


#: ``/proc/net/dev``'s counters under their sysfs ``statistics/`` names, and
#: the field each is (of sixteen: eight received, eight sent).
NET_DEV_KEYS = ("rx_bytes", "rx_packets", "rx_errors", "rx_dropped",
                "tx_bytes", "tx_packets", "tx_errors", "tx_dropped")
_NET_DEV_FIELDS = operator.itemgetter(0, 1, 2, 3, 8, 9, 10, 11)
_NET_DEV_ROOM = 256  # interfaces room is made for at first


def parse_net_dev(text: bytes,
                  names: frozenset[str] | set[str] | None = None,
                  ) -> dict[str, dict[str, int]]:
    """``/proc/net/dev``: the host-view counters of each interface (of
    ``names`` only when given), keyed by name, each under its sysfs
    ``statistics/`` name (``NET_DEV_KEYS``).

    Two header lines, then one line an interface (torvalds/linux:net/core/
    net-procfs.c, dev_seq_printf_stats): ``name:`` and sixteen numbers, eight
    received (bytes packets errs drop fifo frame compressed multicast) and
    eight sent (bytes packets errs drop fifo colls carrier compressed).  They
    come from ``dev_get_stats()``, like sysfs ``statistics/``; the received
    ``drop`` is ``rx_dropped + rx_missed_errors`` (tun/tap never counts the
    latter).  A name never holds ``:`` or spaces (``dev_valid_name``), and a
    long one leaves no space before its colon.  ``ValueError`` on anything
    else.  Parsed in C (native/linux/procfs.c): it runs every sweep.
    """
    room = _NET_DEV_ROOM
    while True:
        buf = ffi.new("char[]", room * lib.VMPROBE_IFNAMSIZ)
        values = ffi.new("uint64_t[]", room * lib.VMPROBE_NET_DEV_FIELDS)
        n = lib.vmprobe_parse_net_dev(text, len(text), buf, values, room)
        if n < 0:
            raise ValueError(f"not /proc/net/dev: {text[:80]!r}")
        if n <= room:
            break
        room = n
    if n == 0:
        return {}
    width = lib.VMPROBE_NET_DEV_FIELDS
    numbers = ffi.unpack(values, n * width)
    out = {}
    for i, name in enumerate(ffi.string(buf).decode(
            "utf-8", "surrogateescape").split("\n")):
        if names is None or name in names:
            out[name] = dict(zip(NET_DEV_KEYS, _NET_DEV_FIELDS(
                numbers[i * width:(i + 1) * width])))
    return out


def parse_loadavg_last_pid(text: bytes) -> int:
    """The last pid allocated in the reader's pid namespace: the fifth
    field of ``/proc/loadavg`` (fs/proc/loadavg.c); ValueError otherwise."""
    fields = text.split()
    if len(fields) != 5 or not fields[4].isdigit():
        raise ValueError(f"not a /proc/loadavg line: {text[:80]!r}")
    return int(fields[4])


def parse_pid_max(text: bytes) -> int:
    """``/proc/sys/kernel/pid_max``: pids are below it; ValueError
    otherwise."""
    word = text.strip()
    if not word.isdigit() or int(word) < 2:
        raise ValueError(f"not a pid_max: {text[:40]!r}")
    return int(word)


def pids_allocated(before: int, now: int, pid_max: int,
                   bound: int) -> list[int] | None:
    """The pids the kernel may have handed out while its last allocated
    pid moved from ``before`` to ``now``: those after ``before`` up to
    ``now``, cyclic below ``pid_max`` (torvalds/linux:kernel/pid.c,
    alloc_pid: idr_alloc_cyclic, restarting above RESERVED_PIDS after a
    wrap; the low pids are included anyway).  None when that cannot be
    told: a value outside [0, pid_max) or a move of more than ``bound``
    pids (a step backwards looks like a jump of almost ``pid_max``)."""
    if not (0 <= before < pid_max and 0 <= now < pid_max):
        return None
    if (now - before) % pid_max > bound:
        return None
    if now >= before:
        return list(range(before + 1, now + 1))
    return [*range(before + 1, pid_max), *range(1, now + 1)]


def parse_fdinfo(text: str) -> dict[str, str]:
    """``/proc/<pid>/fdinfo/<fd>`` as a dict (first value of each key).

    A tun/tap fd has ``iff:`` naming its interface (torvalds/linux:drivers/
    net/tun.c, tun_chr_show_fdinfo), empty when its queue is detached.
    """
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key not in out:
            out[key] = value.strip()
    return out


def fdinfo_iff(text: str) -> str | None:
    """The tap name of a ``/dev/net/tun`` fd, None if none is attached."""
    return parse_fdinfo(text).get("iff") or None


def fdinfo_write_only(text: str) -> bool:
    """Whether the fd was opened O_WRONLY (logs and pid files, not disks)."""
    flags = parse_fdinfo(text).get("flags")
    return flags is not None and int(flags, 8) & O_ACCMODE == O_WRONLY


def split_cmdline(raw: bytes) -> list[str]:
    """``/proc/<pid>/cmdline`` (NUL-separated) as strings, bad bytes kept."""
    if raw.endswith(b"\0"):
        raw = raw[:-1]
    if not raw:
        return []
    return [a.decode("utf-8", "surrogateescape") for a in raw.split(b"\0")]


def display_text(s: str) -> str:
    """Text for records: invalid bytes written as ``\\xNN``
    (docs/architecture.md, "Records")."""
    return s.encode("utf-8", "surrogateescape").decode(
        "utf-8", "backslashreplace")
