"""Shared helpers for the WAL tests: a WAL in a temp dir, sabotage tools,
and a FileOps that fails on demand."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

from vmagent.keys import HostKey
from vmagent.wal import Wal
from vmagent.wal import format as fmt
from vmagent.wal.fileops import FileOps
from vmagent.wal.scan import list_segments
from vmagent.wal.verify import served_records, verify

HOST = "host-test"
KEY = HostKey.generate()


def sample(i: int, vm: str = "vm-a", gen: str = "g1") -> dict[str, Any]:
    """A sample record with cumulative counters that grow with ``i``."""
    return {"kind": "sample", "t": 1_000_000 + i, "host": HOST,
            "vm": {"uuid": vm, "name": vm, "gen": gen, "hypervisor": "kvm"},
            "cpu": {"total_ns": 1000 * i}, "nics": [{"rx_bytes": 10 * i}]}


def open_wal(d: Path, **kw: Any) -> Wal:
    kw.setdefault("consumers", ["c1"])
    return Wal(d, host=HOST, key=KEY, **kw)


def crash(w: Wal) -> None:
    """The process dies: no clean stop, what was in memory is gone (the
    page cache, and so the high-water mark's last write, stays)."""
    for fd in (w._fd, w.high_water._fd):  # noqa: SLF001
        if fd is not None:
            os.close(fd)


def records(d: Path) -> list[dict[str, Any]]:
    return list(served_records(d))


def seqs(d: Path) -> list[int]:
    return [r["seq"] for r in records(d)]


def verified(d: Path) -> bool:
    report = verify(d, KEY.public)
    return report.ok


def frame_offsets(seg: Path) -> list[int]:
    """Where each frame of a segment file starts."""
    data = seg.read_bytes()
    off, out = fmt.SEGMENT_HEADER_SIZE, []
    while off < len(data):
        out.append(off)
        off += fmt.decode_frame(data, off).size
    return out


def segment_files(d: Path) -> list[Path]:
    return list_segments(d)


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def truncate_to(path: Path, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)


class FailingOps(FileOps):
    """Raises OSError(code) from the named operation, ``times`` times
    (forever with None), after ``after`` successful calls of it."""

    def __init__(self) -> None:
        self.plan: dict[str, tuple[int, int, int | None]] = {}

    def fail(self, op: str, code: int = errno.EIO, after: int = 0,
             times: int | None = 1) -> None:
        self.plan[op] = (code, after, times)

    def _check(self, op: str) -> None:
        if op not in self.plan:
            return
        code, after, times = self.plan[op]
        if after > 0:
            self.plan[op] = (code, after - 1, times)
            return
        if times is not None:
            if times <= 0:
                return
            self.plan[op] = (code, 0, times - 1)
        raise OSError(code, os.strerror(code))

    def write_all(self, fd: int, data: bytes) -> None:
        self._check("write")
        super().write_all(fd, data)

    def fdatasync(self, fd: int) -> None:
        self._check("fdatasync")
        super().fdatasync(fd)

    def write_atomically(self, path: Path, data: bytes) -> None:
        self._check("write")
        super().write_atomically(path, data)

    def truncate(self, path: Path, size: int) -> None:
        self._check("truncate")
        super().truncate(path, size)

    def unlink(self, path: Path) -> None:
        self._check("unlink")
        super().unlink(path)
