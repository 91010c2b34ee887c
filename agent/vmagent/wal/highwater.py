"""How far the WAL has gone, kept outside the segments: the high-water mark.

Recovery reads seqs off the segments; if durable frames were cut away or
damaged at the end, the segments alone would make their seqs look unused.
This file says otherwise.  It holds, for one WAL id:

- ``seq``: the highest seq ever handed to a write (updated after every
  commit, written but not synced: the page cache keeps it across a crash of
  the process, and no frame is served before it is updated);
- ``reserved``: a bound above every seq handed out, made durable (fdatasync)
  only when a commit goes past it -- once per ``RESERVE`` seqs -- so that even
  after a power loss no served seq lies above it;
- the boot id it was written under, and whether the agent stopped cleanly
  (then ``seq`` is durable and exact, whatever boot reads it).

Two 68-byte slots, each in its own 512-byte sector, are written in turn
with a counter and a CRC: a torn write spoils one slot, never both.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

from vmagent.wal.fileops import FileOps

FILE_NAME = "high_water"
RESERVE = 4096  # seqs handed out per durable reservation
_MAGIC = b"VMHW"
_SLOT = struct.Struct(">4sQ16sQQ16sI")  # magic, counter, wal, seq, reserved,
# boot, flags; then the crc32 of those 64 bytes
_SLOT_SIZE = _SLOT.size + 4  # 68
_SECTOR = 512
_CLEAN = 1


@dataclass(frozen=True)
class Mark:
    wal_id: bytes
    seq: int
    reserved: int
    boot: bytes  # 16 bytes of SHA-256 of the boot id
    clean: bool = False
    counter: int = 0


def boot_digest(boot_id: str) -> bytes:
    return hashlib.sha256(boot_id.encode()).digest()[:16]


def _pack(m: Mark) -> bytes:
    body = _SLOT.pack(_MAGIC, m.counter, m.wal_id, m.seq, m.reserved, m.boot,
                      _CLEAN if m.clean else 0)
    return body + struct.pack(">I", zlib.crc32(body))


def _unpack(data: bytes) -> Mark | None:
    if len(data) < _SLOT_SIZE:
        return None
    body = data[:_SLOT.size]
    (crc,) = struct.unpack_from(">I", data, _SLOT.size)
    if crc != zlib.crc32(body):
        return None
    magic, counter, wal, seq, reserved, boot, flags = _SLOT.unpack(body)
    if magic != _MAGIC or seq > reserved:
        return None
    return Mark(wal, seq, reserved, boot, bool(flags & _CLEAN), counter)


def read_mark(directory: Path, ops: FileOps) -> Mark | None:
    """The newest intact slot, or None (no file, or both slots damaged)."""
    try:
        data = ops.read_file(directory / FILE_NAME)
    except FileNotFoundError:
        return None
    slots = [_unpack(data[i:i + _SLOT_SIZE]) for i in (0, _SECTOR)]
    found = [m for m in slots if m is not None]
    return max(found, key=lambda m: m.counter) if found else None


class HighWater:
    """The writer: ``advance`` after every commit attempt, ``close`` at a
    clean stop.  Its own write failures are counted, never raised: the
    segments still hold the truth in every case but data lost at the end."""

    def __init__(self, directory: Path, ops: FileOps, wal_id: bytes,
                 seq: int, boot: bytes, previous: Mark | None) -> None:
        self.path = directory / FILE_NAME
        self.ops = ops
        counter = previous.counter if previous else 0
        self.mark = Mark(wal_id, seq, seq + RESERVE, boot, False, counter)
        self.failures = 0
        self._fd: int | None = None
        self._write(sync=True)  # the WAL id and a reservation, durably

    def advance(self, seq: int) -> None:
        """Seqs up to ``seq`` were handed to a write (it may have failed)."""
        if seq <= self.mark.seq and not self.mark.clean:
            return
        sync = seq > self.mark.reserved
        reserved = seq + RESERVE if sync else self.mark.reserved
        m = self.mark  # not dataclasses.replace: this runs every commit
        self.mark = Mark(m.wal_id, seq, reserved, m.boot, False, m.counter)
        self._write(sync)

    def close(self) -> None:
        """A clean stop: ``seq`` made durable and marked exact."""
        self.mark = replace(self.mark, clean=True)
        self._write(sync=True)
        if self._fd is not None:
            self.ops.close(self._fd)
            self._fd = None

    def _write(self, sync: bool) -> None:
        m = self.mark
        self.mark = Mark(m.wal_id, m.seq, m.reserved, m.boot, m.clean,
                         m.counter + 1)
        slot = (self.mark.counter % 2) * _SECTOR
        try:
            if self._fd is None:
                self._fd = self.ops.open_rw(self.path)
                self.ops.pwrite(self._fd, _pack(replace(
                    self.mark, counter=self.mark.counter - 1)),
                    _SECTOR - slot)  # both slots this WAL's from the start
            self.ops.pwrite(self._fd, _pack(self.mark), slot)
            if sync:
                self.ops.fdatasync(self._fd)
        except OSError:
            self.failures += 1
            if self._fd is not None:
                self.ops.close(self._fd)
                self._fd = None
