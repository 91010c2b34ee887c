"""The write-ahead log: recovery at open, one durable frame per commit,
readers of durable frames, consumer acks and deletion below them.

Guarantees (docs/wal.md): a commit counts only after its fdatasync; seqs are
contiguous from 1 and never reused; every loss is a signed ``gap`` record;
while the cap or a full disk stops writes, the latest sample of each VM gen
is kept and written later as one ``coalesced`` record.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from vmagent import records as record_kinds
from vmagent.errors import VmagentError
from vmagent.keys import HostKey
from vmagent.log import get_logger
from vmagent.wal import format as fmt
from vmagent.wal.coalesce import Coalescer
from vmagent.wal.cursors import CursorError, Cursors
from vmagent.wal.fileops import FileOps
from vmagent.wal.highwater import HighWater, Mark, boot_digest, read_mark
from vmagent.wal.scan import Damage, Scan, iter_records, scan

Record = dict[str, Any]
SEGMENT_BYTES = 16 << 20
QUARANTINE_BYTES = 64 << 20  # copies of damaged bytes kept, at most
RESERVE_NAME = "reserve"  # freed at a stop on a full disk
RESERVE_BYTES = 1 << 20  # at most; a quarter segment on small WALs


class ReadError(VmagentError):
    """A consumer's read or ack that the WAL cannot answer as asked."""


class WalConflict(ReadError):
    """Not this WAL, or beyond its end (a collector's idea of the WAL is
    not this one): ``wal`` is the current id (hex)."""

    def __init__(self, message: str, wal: str) -> None:
        super().__init__(message)
        self.wal = wal


class NotKept(ReadError):
    """Seqs below what is kept: ``missing_from``-``missing_to``."""

    def __init__(self, missing_from: int, missing_to: int) -> None:
        super().__init__("those seqs are no longer kept")
        self.missing_from, self.missing_to = missing_from, missing_to


@dataclass
class _Segment:
    path: Path
    first_seq: int
    size: int


@dataclass(frozen=True)
class _Entry:
    """A durable, served frame: where to read it."""

    first_seq: int
    last_seq: int
    segment: Path
    offset: int
    size: int


class Wal:
    """One WAL directory, opened (and recovered) by the constructor."""

    def __init__(self, directory: Path, *, host: str, key: HostKey,
                 consumers: Sequence[str] = (), max_bytes: int = 1 << 30,
                 segment_bytes: int = SEGMENT_BYTES,
                 ops: FileOps | None = None,
                 clock: Callable[[], int] = time.time_ns,
                 boot_id: str = "") -> None:
        self.dir = Path(directory)
        self.host, self.key = host, key
        self.max_bytes, self.segment_bytes = max_bytes, segment_bytes
        self.ops = ops or FileOps()
        self.clock = clock
        self.log = get_logger(wal=str(self.dir), host=host)
        self.coalescer = Coalescer()
        self._packer = msgpack.Packer(autoreset=False)
        self.pending_gaps: list[Record] = []
        self.quarantined = 0
        self.abandoned = 0  # WAL ids given up at recovery (see _abandon)
        self.boot = boot_digest(boot_id)
        self._segments: list[_Segment] = []
        self._index: list[_Entry] = []
        self._firsts: list[int] = []
        self._fd: int | None = None  # the active (last) segment, for append
        self._fresh_segment = False  # a damaged tail could not be truncated
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._recover(list(consumers))

    # --- recovery ---------------------------------------------------------

    def _recover(self, consumers: list[str]) -> None:
        for stale in self.dir.glob(".*.tmp"):  # a segment never renamed in
            with contextlib.suppress(OSError):
                self.ops.unlink(stale)
        found = scan(self.dir, self.ops)
        sizes = self._repair(found)
        self.wal_id = found.wal_id or os.urandom(16)
        self.next_seq = found.next_seq if found.wal_id else 1
        self.last_hash = found.last_hash if found.wal_id else fmt.ZERO_HASH
        self._segments = [_Segment(s.path, s.header.first_seq, sizes[s.path])
                          for s in found.segments if s.header is not None]
        for ref in found.served:
            self._add_entry(_Entry(ref.first_seq, ref.last_seq, ref.segment,
                                   ref.offset, ref.size))
        for hole in found.holes:
            if not hole.covered:
                self._gap(hole.from_seq, hole.to_seq, hole.reason)
        self.cursors = Cursors(self.dir / "cursors", self.wal_id, consumers,
                               self.ops)
        mark = read_mark(self.dir, self.ops)
        if found.wal_id is not None:
            self._check_high_water(mark, _damaged_tail(found), consumers)
        self.high_water = HighWater(self.dir, self.ops, self.wal_id,
                                    self.next_seq - 1, self.boot, mark)
        try:
            if self._segments and not self._fresh_segment:
                self._fd = self.ops.open_append(self._segments[-1].path)
            else:
                self._new_segment()  # the WAL id is on disk from the start
        except OSError as err:
            self.log.error("wal_segment_unavailable", error=err.strerror)
        self.log.info("wal_opened", wal_id=self.wal_id.hex(),
                      segments=len(self._segments), next_seq=self.next_seq,
                      served_frames=len(self._index),
                      gaps_to_write=len(self.pending_gaps))
        if self.pending_gaps:
            self.commit([])  # make the losses durable and explicit now
        self._delete_acked()
        self._make_reserve()

    def _check_high_water(self, mark: Mark | None, damaged_tail: bool,
                          consumers: list[str]) -> None:
        """Seqs that were handed out (the high-water mark) or acked, but
        that the segments no longer hold, are never given out again: a gap
        covers them up to the highest seq that may have been served, or --
        where no mark says how high that is -- the WAL starts anew."""
        end = self.next_seq - 1
        known = mark if mark is not None and mark.wal_id == self.wal_id \
            else None
        acked = max(self.cursors.acked.values(), default=0)
        floor = max(known.seq if known else 0, acked)
        exact = known is not None and (known.clean or known.boot == self.boot)
        if end >= floor and (exact or not damaged_tail):
            return  # what is missing at the end was never served
        if known is None:
            self._abandon(f"seqs up to {floor} were acked but the segments "
                          f"end at {end}, and no high-water mark says how far "
                          "the WAL went", consumers)
            return
        upper = known.seq if exact else known.reserved
        if upper > end:
            self._gap(end + 1, upper, "durable frames missing at the end "
                      "(truncated or damaged)" + ("" if exact else
                                                  ", up to the reservation"))
            self.next_seq = upper + 1

    def _abandon(self, why: str, consumers: list[str]) -> None:
        """Start a new WAL id: the old segments move to quarantine, and
        collectors see a new WAL, an explicit discontinuity."""
        old = self.wal_id.hex()
        qdir = self.dir / "quarantine" / f"wal-{old}"
        qdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for seg in self._segments:
            self.ops.rename(seg.path, qdir / seg.path.name)
        self.ops.fsync_dir(self.dir)
        self.log.error("wal_abandoned", old_wal_id=old, reason=why,
                       moved_to=str(qdir))
        self.wal_id, self.next_seq = os.urandom(16), 1
        self.last_hash = fmt.ZERO_HASH
        self._segments, self._index, self._firsts = [], [], []
        self.pending_gaps.clear()
        self._fresh_segment = True
        self.abandoned += 1
        self.cursors = Cursors(self.dir / "cursors", self.wal_id, consumers,
                               self.ops)

    def _repair(self, found: Scan) -> dict[Path, int]:
        """Quarantine damaged bytes and truncate damaged tails; returns the
        size of every segment left."""
        sizes = {s.path: s.size for s in found.segments}
        last = found.segments[-1] if found.segments else None
        for d in found.damages:
            seg = next(s for s in found.segments if s.path == d.segment)
            at_tail = d.offset >= seg.valid_end
            if not (d.torn and seg is last and at_tail):
                self._quarantine(d)
            if seg.header is None:  # copied: out of the way of the scan
                with contextlib.suppress(OSError):
                    self.ops.unlink(seg.path)
                    self.ops.fsync_dir(self.dir)
                sizes.pop(seg.path, None)
            elif at_tail:
                try:
                    self.ops.truncate(seg.path, seg.valid_end)
                except OSError as err:  # never a crash loop: write elsewhere
                    self.log.error("wal_truncate_failed",
                                   segment=seg.path.name, error=err.strerror)
                    self._fresh_segment = True
                    continue
                sizes[seg.path] = seg.valid_end
                self.log.warning("wal_tail_truncated", segment=seg.path.name,
                                 offset=seg.valid_end, reason=d.reason)
        return sizes

    def _quarantine(self, d: Damage) -> None:
        """Copy the damaged bytes aside for a post-mortem: once (a restart
        finds the copy by segment and offset) and within QUARANTINE_BYTES.
        A copy that cannot be made is logged; recovery goes on."""
        qdir = self.dir / "quarantine"
        dst = qdir / f"{d.segment.name}.{d.offset}-{d.end}"
        self.quarantined += 1
        self.log.error("wal_damage_found", segment=d.segment.name,
                       offset=d.offset, end=d.end, reason=d.reason,
                       copy=str(dst))
        try:
            qdir.mkdir(exist_ok=True, mode=0o700)
            if dst.exists():
                return
            kept = sum(p.stat().st_size for p in qdir.iterdir()
                       if p.is_file())
            if kept + d.end - d.offset > QUARANTINE_BYTES:
                self.log.error("wal_quarantine_full", kept=kept,
                               limit=QUARANTINE_BYTES, not_copied=str(dst))
                return
            self.ops.write_atomically(dst, self.ops.pread(
                d.segment, d.end - d.offset, d.offset))
        except OSError as err:
            self.log.error("wal_quarantine_failed", copy=str(dst),
                           error=err.strerror)

    def _gap(self, first: int, last: int, reason: str) -> None:
        self.pending_gaps.append(record_kinds.gap(self.clock(), self.host,
                                                  first, last, reason))
        self.log.error("wal_gap", from_seq=first, to_seq=last, reason=reason)

    # --- writing ----------------------------------------------------------

    def commit(self, records: list[Record], *,
               over_cap: bool = False) -> tuple[int, int] | None:
        """Write one sweep's records as one frame and fdatasync it; the WAL
        sets each record's ``seq`` and ``host``.

        Returns the (first, last) seq once durable, or None when the records
        were kept in memory instead (cap, full disk or I/O error).
        ``over_cap``: write even past ``max_bytes`` (the last frame at a
        stop, which holds what was kept in memory)."""
        todo = self._carried() + records
        if not todo:
            return None
        first, last = self.next_seq, self.next_seq + len(todo) - 1
        frame = self._frame(first, last, self._pack(todo, first),
                            bool(self.pending_gaps))
        data = fmt.encode_frame(frame)
        if not self._room_for(len(data), records, over_cap):
            return None
        assert self._fd is not None
        seg = self._segments[-1]
        try:
            self.ops.write_all(self._fd, data)
            self.ops.fdatasync(self._fd)
        except OSError as err:
            self._write_failed(first, last, err, records)
            return None
        finally:  # before anything is served: these seqs are taken
            self.high_water.advance(last)
        self._written(seg, _Entry(first, last, seg.path, seg.size,
                                  len(data)), frame.hash)
        return first, last

    def _carried(self) -> list[Record]:
        """What earlier commits could not write: gap records, and the
        sweeps kept while coalescing."""
        out = list(self.pending_gaps)
        if self.coalescer:
            out += self.coalescer.records(self.host, self.clock())
        return out

    def _pack(self, todo: list[Record], first: int) -> bytes:
        # every record names the signing host: verifiers take it from there
        pack = self._packer.pack  # autoreset off: one buffer, no joins
        for i, r in enumerate(todo):
            pack({**r, "seq": first + i, "host": self.host})
        body = self._packer.bytes()
        self._packer.reset()
        return body

    def _room_for(self, size: int, records: list[Record],
                  over_cap: bool) -> bool:
        """Whether a frame of ``size`` bytes can be written now (within
        the cap, in a segment that exists); if not, ``records`` are kept."""
        self._delete_acked()
        if not over_cap and self._bytes() + size + \
                fmt.SEGMENT_HEADER_SIZE > self.max_bytes:
            self._keep(records, "the WAL is at max_bytes")
            return False
        try:
            self._ensure_segment(size)
        except OSError as err:  # nothing written: the seqs stay unused
            self._keep(records, f"cannot start a segment: {err.strerror}")
            return False
        return True

    def _written(self, seg: _Segment, entry: _Entry,
                 frame_hash: bytes) -> None:
        """A frame is durable: serve it, and forget what it carried."""
        self._add_entry(entry)
        seg.size += entry.size
        self.next_seq, self.last_hash = entry.last_seq + 1, frame_hash
        self.pending_gaps.clear()
        if self.coalescer:
            self.log.warning("wal_coalesced_written",
                             sweeps=self.coalescer.sweeps,
                             samples=len(self.coalescer.samples))
            self.coalescer = Coalescer()

    def _frame(self, first: int, last: int, body: bytes,
               has_gap: bool) -> fmt.Frame:
        h = fmt.chain_hash(self.last_hash, body)
        sig = self.key.sign(fmt.signed_bytes(self.host, self.wal_id, first,
                                             last, h))
        return fmt.Frame(first, last, body, self.last_hash, h,
                         self.key.key_id, sig,
                         fmt.FLAG_GAP if has_gap else 0)

    def _keep(self, records: list[Record], why: str) -> None:
        if not self.coalescer:
            self.log.error("wal_coalescing", reason=why)
        self.coalescer.add(records)

    def _write_failed(self, first: int, last: int, err: OSError,
                      records: list[Record]) -> None:
        """Never trust what the page cache holds after an error: drop the
        segment, never reuse the seqs, say so in a gap record."""
        self.log.error("wal_write_failed", first_seq=first, last_seq=last,
                       error=err.strerror)
        if self._fd is not None:
            with contextlib.suppress(OSError):  # take the partial frame out
                self.ops.ftruncate(self._fd, self._segments[-1].size)
                self.ops.fdatasync(self._fd)
            self.ops.close(self._fd)
            self._fd = None
        self.next_seq = last + 1
        self._gap(first, last, f"write failed: {err.strerror}")
        with contextlib.suppress(OSError):  # else tried again next commit
            self._new_segment()  # its header fixes next_seq on disk
        self._keep(records, f"write failed: {err.strerror}")

    def _ensure_segment(self, frame_size: int) -> None:
        active = self._segments[-1] if self._segments else None
        if active is None or self._fd is None or (
                active.size + frame_size > self.segment_bytes
                and active.size > fmt.SEGMENT_HEADER_SIZE):
            self._new_segment()

    def _new_segment(self) -> None:
        """Start the next segment: its header is written to a temporary
        file, synced and renamed into place, so a crash leaves either no
        segment or a whole header (which fixes ``next_seq`` on disk)."""
        if self._fd is not None:
            self.ops.close(self._fd)
            self._fd = None
        path = self.dir / fmt.segment_name(self.next_seq)
        header = fmt.pack_segment_header(fmt.SegmentHeader(
            self.wal_id, self.next_seq, self.clock(), self.last_hash))
        self.ops.write_atomically(path, header)
        if self._segments and self._segments[-1].path == path:
            self._segments.pop()  # an empty segment started again
        self._segments.append(_Segment(path, self.next_seq, len(header)))
        self._fd = self.ops.open_append(path)

    # --- reading ----------------------------------------------------------

    def _add_entry(self, entry: _Entry) -> None:
        self._index.append(entry)
        self._firsts.append(entry.first_seq)

    @property
    def first_seq(self) -> int:
        """The lowest seq still kept (``next_seq`` when nothing is)."""
        return self._index[0].first_seq if self._index else self.next_seq

    @property
    def durable_seq(self) -> int:
        """The last seq that is durable (0 when none is)."""
        return self._index[-1].last_seq if self._index else 0

    def frames(self, after: int, max_records: int = 1000,
               max_bytes: int = 4 << 20) -> list[fmt.Frame]:
        """Durable frames holding seqs after ``after``, whole, starting with
        the one that holds ``after + 1``; at least one if there is any."""
        i = max(bisect.bisect_right(self._firsts, after + 1) - 1, 0)
        while i < len(self._index) and self._index[i].last_seq <= after:
            i += 1
        out: list[fmt.Frame] = []
        n_records = n_bytes = 0
        for entry in self._index[i:]:
            if out and (n_records >= max_records or n_bytes >= max_bytes):
                break
            out.append(fmt.decode_frame(self.ops.pread(
                entry.segment, entry.size, entry.offset)))
            n_records += entry.last_seq - entry.first_seq + 1
            n_bytes += entry.size
        return out

    # --- acks and deletion ------------------------------------------------

    def read(self, consumer: str, after: int | None, wal_hex: str | None,
             max_records: int, max_bytes: int) -> tuple[int, list[fmt.Frame]]:
        """A consumer's read (docs/protocol.md): from ``after`` (default:
        its ack), of this WAL (``wal_hex``, if given); WalConflict when
        ``wal_hex`` is another WAL or ``after`` is beyond the last seq,
        NotKept when ``after`` is below what is kept."""
        current = self.wal_id.hex()
        if wal_hex is not None and wal_hex.lower() != current:
            raise WalConflict("not the current WAL", current)
        if after is None:
            after = self.cursors.acked.get(consumer, 0)
        if after > self.next_seq - 1:
            raise WalConflict(f"after {after} is beyond the last seq "
                           f"{self.next_seq - 1}", current)
        if after + 1 < self.first_seq:
            raise NotKept(after + 1, self.first_seq - 1)
        return after, self.frames(after, max_records, max_bytes)

    def ack(self, consumer: str, seq: int,
            wal_id: bytes | None = None) -> int:
        """Record that ``consumer`` holds everything up to ``seq`` durably;
        returns its cursor (an older ack leaves it where it is).  With
        ``wal_id``: WalConflict unless it is this WAL's."""
        if wal_id is not None and wal_id != self.wal_id:
            raise WalConflict("not the current WAL", self.wal_id.hex())
        if seq > self.durable_seq:
            raise CursorError(f"seq {seq} is beyond the last durable seq "
                              f"{self.durable_seq}")
        if consumer not in self.cursors.acked:
            raise CursorError(f"unknown consumer {consumer!r}")
        if seq > self.cursors.acked[consumer]:
            self.cursors.set(consumer, seq)
            self._delete_acked()
        return self.cursors.acked[consumer]

    def set_consumers(self, names: Sequence[str]) -> None:
        """Consumers added start at 0 (they hold everything still kept);
        consumers removed stop holding data."""
        self.cursors.update(list(names))
        self._delete_acked()

    def lag(self, consumer: str) -> dict[str, Any]:
        """How far ``consumer`` is behind: seqs and the age of the oldest
        record it has not acked."""
        acked = self.cursors.acked[consumer]
        out: dict[str, Any] = {"acked_seq": acked,
                               "lag_records": max(0, self.durable_seq - acked),
                               "lag_s": 0.0}
        frames = self.frames(acked, max_records=1)
        if frames:
            first = next(iter_records(frames[0].records), None)
            t = first.get("t") if isinstance(first, dict) else None
            if isinstance(t, int):
                out["lag_s"] = max(0.0, (self.clock() - t) / 1e9)
        return out

    def _delete_acked(self) -> None:
        """Unlink segments whose every seq all consumers have acked (never
        the active one).  The cursors are durable first, so a crash between
        here and there only leaves a segment that the next call deletes."""
        if not self.cursors.acked:
            return
        floor = self.cursors.minimum()
        while len(self._segments) > 1 and \
                self._segments[1].first_seq - 1 <= floor:
            seg = self._segments[0]
            try:
                self.ops.unlink(seg.path)
                self.ops.fsync_dir(self.dir)
            except FileNotFoundError:
                pass
            except OSError as err:  # tried again at the next commit
                self.log.error("wal_delete_failed", segment=seg.path.name,
                               error=err.strerror)
                return
            self._segments.pop(0)
            while self._index and self._index[0].segment == seg.path:
                self._index.pop(0)
                self._firsts.pop(0)
            self.log.info("wal_segment_deleted", segment=seg.path.name)

    def _bytes(self) -> int:
        return sum(s.size for s in self._segments)

    def status(self) -> dict[str, Any]:
        return {
            "wal_id": self.wal_id.hex(), "segments": len(self._segments),
            "bytes": self._bytes(), "first_seq": self.first_seq,
            "durable_seq": self.durable_seq, "next_seq": self.next_seq,
            "coalescing": bool(self.coalescer),
            "coalesced_sweeps": self.coalescer.sweeps,
            "pending_gaps": len(self.pending_gaps),
            "quarantined": self.quarantined,
            "abandoned": self.abandoned,
            "high_water_failures": self.high_water.failures,
            "acked": dict(self.cursors.acked),
        }

    def _make_reserve(self) -> None:
        """Space set aside for the last frame at a stop on a full disk."""
        path = self.dir / RESERVE_NAME
        size = min(RESERVE_BYTES, max(self.segment_bytes // 4, 4096))
        try:
            if not path.exists() or path.stat().st_size < size:
                self.ops.write_atomically(path, bytes(size))
        except OSError as err:
            self.log.warning("wal_reserve_unavailable", error=err.strerror)

    def close(self) -> None:
        """A clean stop: what is still kept in memory (coalesced sweeps, gap
        records) is written, into the reserved space if the disk is full
        and past the cap if need be; the high-water mark is made exact."""
        if self.coalescer or self.pending_gaps:
            with contextlib.suppress(OSError):
                self.ops.unlink(self.dir / RESERVE_NAME)
            if self.commit([], over_cap=True) is None:
                self.log.error("wal_stop_lost_kept_records",
                               sweeps=self.coalescer.sweeps,
                               gaps=len(self.pending_gaps))
        if self._fd is not None:
            self.ops.close(self._fd)
            self._fd = None
        self.high_water.close()


def _damaged_tail(found: Scan) -> bool:
    """Damage after the last intact frame that is not the shape of an
    interrupted write: durable data may have been there."""
    if not found.segments:
        return False
    last = found.segments[-1]
    return any(d.segment == last.path and d.offset >= last.valid_end
               and not d.torn for d in found.damages)
