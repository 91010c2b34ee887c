"""Reading a WAL directory without changing it.

``scan()`` finds the intact frames, the damaged bytes, the seqs that are
missing and which of them a ``gap`` record already explains.  Recovery acts
on the result (truncate, quarantine, write gaps); ``vmagent wal verify``
reports it.  The rules, in seq order:

- a frame is served when its seqs follow on from the last one, its
  ``prev_hash`` is the last served frame's hash, and no gap record covers it;
- seqs that no intact frame holds form a *hole*; across a hole the chain may
  break (the frame before it is lost);
- a frame covered by a gap record is never served, even when intact (its
  write or fsync failed, so it may or may not be on disk);
- a frame that repeats earlier seqs or breaks the chain without a hole before
  it is refused (tampering, or a bug) and its seqs become a hole.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import msgpack

from vmagent.wal import format as fmt
from vmagent.wal.fileops import FileOps


@dataclass(frozen=True)
class FrameRef:
    """Where an intact frame lies, and what the chain needs of it."""

    segment: Path
    seg_index: int
    offset: int
    size: int
    first_seq: int
    last_seq: int
    prev_hash: bytes
    hash: bytes
    flags: int


@dataclass
class SegmentScan:
    path: Path
    header: fmt.SegmentHeader | None  # None: the segment is unusable
    size: int
    valid_end: int  # where its last intact frame ends


@dataclass
class Damage:
    """Bytes in a segment that are not intact frames."""

    segment: Path
    seg_index: int
    offset: int
    end: int
    reason: str
    seqs: tuple[int, int] | None  # from a frame header still readable there
    whole_frame: bool  # that header's frame is complete in length
    torn: bool = False  # shaped like an interrupted write (see _torn)
    explained: bool | None = None  # None until attributed to a hole

    @property
    def pos(self) -> tuple[int, int]:
        return self.seg_index, self.offset


@dataclass(frozen=True)
class Hole:
    """Seqs that no served frame holds."""

    from_seq: int
    to_seq: int
    reason: str
    covered: bool  # a gap record already says so


@dataclass(frozen=True)
class Problem:
    segment: str
    offset: int
    seq: int | None
    message: str
    explained: bool  # covered by a gap record, or a torn tail never served

    def __str__(self) -> str:
        seq = f" seq {self.seq}" if self.seq is not None else ""
        return f"{self.segment} offset {self.offset}{seq}: {self.message}"


@dataclass
class Scan:
    wal_id: bytes | None = None
    segments: list[SegmentScan] = field(default_factory=list)
    served: list[FrameRef] = field(default_factory=list)
    refused: list[FrameRef] = field(default_factory=list)  # intact, not served
    damages: list[Damage] = field(default_factory=list)
    holes: list[Hole] = field(default_factory=list)
    gaps: list[tuple[int, int]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    next_seq: int = 1
    last_hash: bytes = fmt.ZERO_HASH

    def covered(self, first: int, last: int) -> bool:
        return covered(self.gaps, first, last)


def covered(ranges: list[tuple[int, int]], first: int, last: int) -> bool:
    """Whether the inclusive ranges (adjacent ones joined) hold first-last."""
    need = first
    for a, b in sorted(ranges):
        if a > need:
            break
        need = max(need, b + 1)
        if need > last:
            return True
    return False


def list_segments(directory: Path) -> list[Path]:
    """Segment files in seq order (their names are fixed-width)."""
    names = [n for n in _listdir(directory)
             if fmt.parse_segment_name(n) is not None]
    return [directory / n for n in sorted(names)]


def _listdir(directory: Path) -> list[str]:
    try:
        return [p.name for p in directory.iterdir()]
    except FileNotFoundError:
        return []


def scan(directory: Path, ops: FileOps | None = None) -> Scan:
    """Everything recovery and verify need to know about ``directory``."""
    ops = ops or FileOps()
    result = Scan()
    usable: list[tuple[SegmentScan, list[FrameRef]]] = []
    for index, path in enumerate(list_segments(directory)):
        seg, refs = _scan_segment(index, path, ops.read_file(path), result)
        result.segments.append(seg)
        if seg.header is not None:
            usable.append((seg, refs))
    result.gaps = _gap_ranges(usable, ops)
    _Assessor(result).run(usable)
    return result


def _scan_segment(index: int, path: Path, data: bytes,
                  result: Scan) -> tuple[SegmentScan, list[FrameRef]]:
    seg = SegmentScan(path, None, len(data), 0)
    try:
        header = fmt.parse_segment_header(data)
        if fmt.parse_segment_name(path.name) != header.first_seq:
            raise fmt.FormatError("segment name does not match its header")
        if result.wal_id not in (None, header.wal_id):
            raise fmt.FormatError("segment belongs to another WAL")
    except fmt.FormatError as err:
        # its frames are not trusted, but their seqs must never be reused
        seqs = _seqs_inside(data)
        result.damages.append(Damage(
            path, index, 0, len(data), str(err), seqs, seqs is not None,
            seqs is None and not data[fmt.SEGMENT_HEADER_SIZE:].strip(b"\0")
            and len(data) <= fmt.SEGMENT_HEADER_SIZE))
        return seg, []
    result.wal_id = header.wal_id
    seg.header = header
    refs: list[FrameRef] = []
    off = seg.valid_end = fmt.SEGMENT_HEADER_SIZE
    while off < len(data):
        try:
            f = fmt.decode_frame(data, off)
        except fmt.FormatError as err:
            nxt = _next_frame(data, off + 1)
            seqs, whole = _readable_header(data, off)
            result.damages.append(Damage(
                path, index, off, nxt if nxt is not None else len(data),
                str(err), seqs, whole, _torn(data, off, seqs, whole)))
            if nxt is None:
                break
            off = nxt
            continue
        refs.append(FrameRef(path, index, off, f.size, f.first_seq,
                             f.last_seq, f.prev_hash, f.hash, f.flags))
        off += f.size
        seg.valid_end = off
    return seg, refs


def _seqs_inside(data: bytes) -> tuple[int, int] | None:
    """The seq range of the intact frames in bytes that are no segment."""
    seqs = []
    pos = _next_frame(data, 0)
    while pos is not None:
        f = fmt.decode_frame(data, pos)
        seqs += [f.first_seq, f.last_seq]
        pos = _next_frame(data, pos + f.size)
    return (min(seqs), max(seqs)) if seqs else None


def _next_frame(data: bytes, start: int) -> int | None:
    """The offset of the next intact frame at or after ``start``."""
    pos = data.find(fmt.FRAME_MAGIC, start)
    while pos != -1:
        try:
            fmt.decode_frame(data, pos)
            return pos
        except fmt.FormatError:
            pos = data.find(fmt.FRAME_MAGIC, pos + 1)
    return None


def _readable_header(data: bytes,
                     off: int) -> tuple[tuple[int, int] | None, bool]:
    """The seqs of a damaged frame whose header is still intact (or intact
    but for its magic), and whether its whole length is there."""
    head = data[off:off + fmt.FRAME_HEADER_SIZE]
    try:
        n, first, last, _ = fmt.parse_frame_header(head)
    except fmt.FormatError:
        try:
            n, first, last, _ = fmt.parse_frame_header(
                fmt.FRAME_MAGIC + head[4:])
        except fmt.FormatError:
            return None, False
    whole = off + fmt.FRAME_HEADER_SIZE + n + fmt.TRAILER_SIZE <= len(data)
    return (first, last), whole


def _torn(data: bytes, off: int, seqs: tuple[int, int] | None,
          whole: bool) -> bool:
    """Whether the bytes from ``off`` to the end look like a write that was
    interrupted (power loss): a prefix of a frame whose header is intact, a
    piece shorter than a header, or zeros (delayed allocation).  Anything
    else at the end is damage to data that may have been durable."""
    rest = data[off:]
    return (seqs is not None and not whole) or \
        len(rest) < fmt.FRAME_HEADER_SIZE or not rest.strip(b"\0")


def _gap_ranges(usable: list[tuple[SegmentScan, list[FrameRef]]],
                ops: FileOps) -> list[tuple[int, int]]:
    """The seq ranges the gap records in intact frames cover."""
    ranges = []
    for _, refs in usable:
        for ref in refs:
            if not ref.flags & fmt.FLAG_GAP:
                continue
            frame = fmt.decode_frame(ops.pread(ref.segment, ref.size,
                                               ref.offset))
            for rec in iter_records(frame.records):
                if isinstance(rec, dict) and rec.get("kind") == "gap":
                    a, b = rec.get("from_seq"), rec.get("to_seq")
                    if isinstance(a, int) and isinstance(b, int) and a <= b:
                        ranges.append((a, b))
    return ranges


def iter_records(records: bytes) -> Iterator[Any]:
    """The msgpack records of a frame, bounded so bad bytes cannot exhaust
    memory; stops quietly at the first undecodable byte."""
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=True,
                                max_buffer_size=max(len(records), 1))
    unpacker.feed(records)
    try:
        yield from unpacker
    except (ValueError, msgpack.UnpackException):
        return


class _Assessor:
    """Walks the intact frames in order and applies the module's rules."""

    def __init__(self, result: Scan) -> None:
        self.r = result
        self.expected: int | None = None
        self.last_hash = fmt.ZERO_HASH
        self.prev_pos = (-1, 0)  # where the last frame looked at ends

    def run(self, usable: list[tuple[SegmentScan, list[FrameRef]]]) -> None:
        for seg, refs in usable:
            self.segment_start(seg)
            for ref in refs:
                self.frame(ref)
        self.r.last_hash = self.last_hash
        self.r.next_seq = self.expected or 1
        self.trailing_holes(usable)
        self.tail()

    def trailing_holes(self, usable: list[tuple[SegmentScan,
                                                list[FrameRef]]]) -> None:
        """Seqs skipped after the last frame (a new segment started after a
        failed write) were never served: nothing to explain yet, though
        recovery still writes their gap record."""
        last = max((r.last_seq for _, refs in usable for r in refs),
                   default=0)
        self.r.problems = [
            replace(p, explained=True, message=p.message + " (after the last "
                    "frame: never served; recovery records the gap)")
            if not p.explained and p.seq is not None and p.seq > last
            and p.message.startswith("seqs ") else p
            for p in self.r.problems]

    def segment_start(self, seg: SegmentScan) -> None:
        h = seg.header
        assert h is not None
        pos = (self.r.segments.index(seg), 0)
        if self.expected is not None and h.first_seq > self.expected:
            self.hole(self.expected, h.first_seq - 1, seg.path, pos)
        if self.expected is None or h.first_seq > self.expected:
            self.expected, self.last_hash = h.first_seq, h.prev_hash

    def frame(self, ref: FrameRef) -> None:
        assert self.expected is not None
        pos = (ref.seg_index, ref.offset)
        if ref.first_seq < self.expected:
            self.r.refused.append(ref)
            self.problem(ref.segment, ref.offset, ref.first_seq,
                         f"seqs {ref.first_seq}-{ref.last_seq} repeat earlier "
                         "seqs (a replayed or reordered frame)", False)
            self.prev_pos = (ref.seg_index, ref.offset + ref.size)
            return
        hole_before = ref.first_seq > self.expected
        if hole_before:
            self.hole(self.expected, ref.first_seq - 1, ref.segment, pos)
        self.expected = ref.last_seq + 1
        self.prev_pos = (ref.seg_index, ref.offset + ref.size)
        if self.r.covered(ref.first_seq, ref.last_seq):
            self.r.refused.append(ref)  # its write failed: never served
        elif ref.prev_hash != self.last_hash and not hole_before:
            self.r.refused.append(ref)
            self.hole(ref.first_seq, ref.last_seq, ref.segment, pos,
                      "chain broken: prev_hash is not the hash of the frame "
                      "before")
        else:
            self.r.served.append(ref)
            self.last_hash = ref.hash

    def hole(self, first: int, last: int, segment: Path,
             pos: tuple[int, int], reason: str | None = None) -> None:
        covered = self.r.covered(first, last)
        damaged = [d for d in self.r.damages
                   if d.explained is None and self.prev_pos <= d.pos < pos]
        for d in damaged:
            d.explained = covered
        if damaged:  # name the damage, where it is
            segment, pos = damaged[0].segment, damaged[0].pos
        if reason is None:
            reason = (f"damaged bytes: {damaged[0].reason}" if damaged
                      else "seqs missing (segment or frames gone)")
        self.r.holes.append(Hole(first, last, reason, covered))
        self.problem(segment, pos[1], first, f"seqs {first}-{last} missing: "
                     + reason + (" (covered by a gap record)" if covered
                                 else ""), covered)

    def tail(self) -> None:
        """Damage after the last intact frame: a write that never completed
        (truncated by recovery, its seqs reusable since never served) --
        unless a complete frame with a readable header is there: durable
        data damaged, whose seqs become a hole and are never reused."""
        for d in self.r.damages:
            if d.explained is not None:
                continue
            if d.pos < self.prev_pos:
                d.explained = False
                self.problem(d.segment, d.offset, None, "damaged bytes "
                             f"between intact frames: {d.reason}", False)
            elif d.seqs and d.whole_frame and d.seqs[0] >= self.r.next_seq:
                self.hole(self.r.next_seq, d.seqs[1], d.segment, d.pos,
                          f"damaged frame at the end: {d.reason}")
                d.explained = self.r.covered(self.r.next_seq, d.seqs[1])
                self.r.next_seq = d.seqs[1] + 1
            elif d.torn:
                d.explained = True
                self.problem(d.segment, d.offset, None, "incomplete write at "
                             f"the end ({d.reason}): never served, recovery "
                             "truncates it", True)
            else:
                d.explained = False
                self.problem(d.segment, d.offset, None, "damaged bytes at the "
                             f"end ({d.reason}), not the shape of an "
                             "interrupted write", False)

    def problem(self, segment: Path, offset: int, seq: int | None,
                message: str, explained: bool) -> None:
        self.r.problems.append(Problem(segment.name, offset, seq, message,
                                       explained))
