"""Accounting records of Linux (``acct_v3``) and FreeBSD (``acctv3``,
``acctv2``), parsed by the native code (native/common/acct.c)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmagent.errors import VmagentError
from vmagent.exits import exit_fields
from vmagent.probes._native import ffi, lib

#: Command names (as truncated to 15 characters) of hypervisor processes.
HYPERVISORS = re.compile(r"qemu-system-.*|qemu-kvm|bhyve|firecracker|"
                         r"cloud-hyperviso.*")
FORMATS = {"linux": lib.VMPROBE_ACCT_LINUX_V3,
           "freebsd-v3": lib.VMPROBE_ACCT_FREEBSD_V3,
           "freebsd-v2": lib.VMPROBE_ACCT_FREEBSD_V2}
FORMAT_NAMES = {v: k for k, v in FORMATS.items()}
# include/uapi/linux/acct.h; sys/sys/acct.h
LINUX_FLAGS = {0x01: "AFORK", 0x02: "ASU", 0x04: "ACOMPAT", 0x08: "ACORE",
               0x10: "AXSIG", 0x20: "AGROUP"}
FREEBSD_FLAGS = {0x01: "AFORK", 0x02: "ASU", 0x04: "ACOMPAT", 0x08: "ACORE",
                 0x10: "AXSIG", 0x20: "ANVER"}
BATCH = 4096


class AcctError(VmagentError):
    """A file that is no accounting file vmagent knows."""


@dataclass(frozen=True)
class AcctRecord:
    """One process's record, in the units of the record schema."""

    format: str
    command: str
    pid: int | None  # FreeBSD records have no pid
    ppid: int | None
    uid: int
    gid: int
    start_s: int  # Unix seconds
    elapsed_us: int
    cpu_user_us: int
    cpu_system_us: int
    mem_kb: int
    io_blocks: int | None  # Linux leaves it 0, so it is not reported
    flags: tuple[str, ...]
    exit: dict[str, int] | None  # {"code": n} or {"signal": n}

    @property
    def end_s(self) -> float:
        return self.start_s + self.elapsed_us / 1e6


@dataclass
class Parsed:
    format: str
    records: list[AcctRecord]
    consumed: int  # bytes in whole records
    skipped: int  # records that failed validation


def detect(data: bytes) -> str:
    """The format of an accounting file from its first record."""
    fmt = lib.vmprobe_acct_detect(data, len(data))
    if fmt < 0:
        raise AcctError("not a Linux acct_v3 or FreeBSD acctv2/acctv3 file "
                        "(the first record matches neither)")
    return FORMAT_NAMES[fmt]


def parse(data: bytes, format: str) -> Parsed:
    """Every whole record of ``data``; a partial last one is left over."""
    code = FORMATS[format]
    size = lib.vmprobe_acct_record_size(code)
    out = ffi.new("struct vmprobe_acct[]", BATCH)
    consumed, skipped = ffi.new("size_t *"), ffi.new("size_t *")
    records: list[AcctRecord] = []
    total_skipped = offset = 0
    view = ffi.from_buffer("unsigned char[]", data)
    while len(data) - offset >= size:
        n = lib.vmprobe_acct_parse(code, view + offset, len(data) - offset,
                                   out, BATCH, consumed, skipped)
        records += [_record(out[i], format) for i in range(n)]
        total_skipped += skipped[0]
        offset += consumed[0]
    return Parsed(format, records, offset, total_skipped)


def _record(a: Any, format: str) -> AcctRecord:
    names = LINUX_FLAGS if format == "linux" else FREEBSD_FLAGS
    return AcctRecord(
        format=format,
        command=ffi.string(a.comm).decode("utf-8", "backslashreplace"),
        pid=a.pid if a.has_pid else None,
        ppid=a.ppid if a.has_pid else None,
        uid=a.uid, gid=a.gid, start_s=a.btime, elapsed_us=a.etime_us,
        cpu_user_us=a.utime_us, cpu_system_us=a.stime_us, mem_kb=a.mem_kb,
        io_blocks=a.io_blocks if a.has_io else None,
        flags=tuple(name for bit, name in names.items() if a.flags & bit),
        exit=exit_fields(a.exitcode) if a.has_exit else None)


def read_file(path: Path, format: str | None = None) -> Parsed:
    """Parse an accounting file; ``format`` None means detect it."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise AcctError(f"cannot read {path}: {err.strerror}") from err
    if not data:
        return Parsed(format or "linux", [], 0, 0)
    if format is None:
        try:
            format = detect(data)
        except AcctError as err:
            raise AcctError(f"{path}: {err}") from None
    elif format == "freebsd":
        format = "freebsd-v2" if data[1:2] == b"\x02" else "freebsd-v3"
    return parse(data, format)
