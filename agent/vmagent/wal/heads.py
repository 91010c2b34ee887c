"""Record heads: each record's seq, kind and ``t`` in a frame's msgpack
records bytes, and where it ends, without decoding the rest (the C scanner
in native/common/msgpack_heads.c).  What the collector's store and the
frame verifier need; the records themselves are decoded on demand.

Records the scanner does not vouch for (gap records, whose range is
needed; anything unusual) are decoded in full, and bytes that are not
whole msgpack objects are decoded as ``iter_records`` decodes them: the
heads are what decoding every record would give.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import msgpack

from vmagent.errors import NativeExtensionError
from vmagent.wal.scan import iter_records

try:
    from vmagent.probes._native import ffi, lib
except NativeExtensionError:  # pragma: no cover - depends on the install
    ffi = lib = None

WORDS, PLAIN, HAS_T = (lib.VMPROBE_HEAD_WORDS, lib.VMPROBE_HEAD_PLAIN,
                       lib.VMPROBE_HEAD_T) if lib is not None else (6, 1, 2)


def head_of(rec: Any) -> tuple[Any, str, int | None]:
    """(seq, kind, t) of a decoded record as the store keeps them: the
    kind as text, ``t`` only when it is an integer."""
    if not isinstance(rec, dict):
        return None, "None", None
    t = rec.get("t")
    return rec.get("seq"), str(rec.get("kind")), \
        t if isinstance(t, int) else None


@dataclass
class Heads:
    """The records in ``records[start:ends[-1]]``, one entry per record in
    each list; ``full[i]`` is the decoded record where it was decoded."""

    records: bytes
    ends: list[int]
    seqs: list[Any]
    kinds: list[str]
    ts: list[int | None]
    full: list[Any]
    start: int = 0
    _decoded: list[Any] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.ends)

    def bodies(self) -> list[bytes]:
        """Each record's bytes, as signed."""
        r = self.records
        return [r[a:b] for a, b in zip([self.start, *self.ends[:-1]],
                                       self.ends)]

    def after(self, seq: int) -> Heads:
        """The records after ``seq`` (the seqs run on by one: verified)."""
        if not self.ends or self.seqs[0] > seq:
            return self
        k = min(max(seq - self.seqs[0] + 1, 0), len(self.ends))
        start = self.ends[k - 1]
        decoded = self._decoded[k:] if self._decoded is not None else None
        return Heads(self.records, self.ends[k:], self.seqs[k:],
                     self.kinds[k:], self.ts[k:], self.full[k:], start,
                     decoded)

    def decoded(self) -> list[Any]:
        """Every record, decoded (once)."""
        if self._decoded is None:
            if all(r is not None for r in self.full):
                self._decoded = list(self.full)
            else:
                end = self.ends[-1] if self.ends else self.start
                self._decoded = list(iter_records(
                    self.records[self.start:end]))
        return self._decoded

    def gap_records(self) -> list[dict[str, Any]]:
        """The gap records among them (always decoded in full)."""
        return [r for r, k in zip(self.full, self.kinds)
                if k == "gap" and isinstance(r, dict)]


class Decoded(Sequence[Any]):
    """A frame's records, decoded on first use; their number without."""

    def __init__(self, heads: Heads) -> None:
        self.heads = heads

    def __len__(self) -> int:
        return len(self.heads)

    @overload
    def __getitem__(self, i: int) -> Any: ...

    @overload
    def __getitem__(self, i: slice) -> list[Any]: ...

    def __getitem__(self, i: int | slice) -> Any:
        return self.heads.decoded()[i]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.heads.decoded())


def record_heads(records: bytes, most: int) -> Heads:
    """The heads of ``records`` (at most ``most`` records are expected:
    more are decoded in full, which shows them)."""
    most = min(max(most, 0), len(records))  # a record is at least a byte
    if lib is not None and records:
        out = ffi.new("int64_t[]", WORDS * max(most, 1))
        n = lib.vmprobe_msgpack_heads(records, len(records), out, most)
        if n >= 0:
            return _scanned(records, ffi.unpack(out, WORDS * n))
    return of_decoded(records, list(iter_records(records)))


def of_decoded(records: bytes, decoded: Sequence[Any]) -> Heads:
    """Heads of records already decoded: ``records`` split into each one's
    bytes when they are exactly these records, else the records encoded
    again (frames built by hand)."""
    bodies = _split(records)
    if len(bodies) != len(decoded):
        bodies = [msgpack.packb(r, use_bin_type=True) for r in decoded]
    ends, at = [], 0
    for b in bodies:
        at += len(b)
        ends.append(at)
    heads = [head_of(r) for r in decoded]
    return Heads(b"".join(bodies), ends, [h[0] for h in heads],
                 [h[1] for h in heads], [h[2] for h in heads], list(decoded),
                 0, list(decoded))


def _scanned(records: bytes, v: list[int]) -> Heads:
    """Heads from the scanner's words; the records it did not vouch for
    decoded in full (up to the first that does not decode, as
    ``iter_records`` stops there)."""
    ends, seqs, flags = v[0::WORDS], v[1::WORDS], v[5::WORDS]
    ts: list[int | None] = list(v[2::WORDS])
    names: dict[bytes, str] = {}
    kinds = []
    for at, n in zip(v[3::WORDS], v[4::WORDS]):
        raw = records[at:at + n]
        kind = names.get(raw)
        if kind is None:
            kind = names[raw] = raw.decode()
        kinds.append(kind)
    heads = Heads(records, ends, seqs, kinds, ts, [None] * len(ends))
    if flags.count(PLAIN | HAS_T) != len(flags):
        _fix_up(heads, flags)
    return heads


def _fix_up(h: Heads, flags: list[int]) -> None:
    """Records without a usable head: decoded in full; ``t`` None where
    the scanner saw no integer one."""
    for i, fl in enumerate(flags):
        if fl & PLAIN:
            if not fl & HAS_T:
                h.ts[i] = None
            continue
        try:
            rec = msgpack.unpackb(h.records[h.ends[i - 1] if i else 0:
                                            h.ends[i]],
                                  raw=False, strict_map_key=True)
        except (ValueError, msgpack.UnpackException):
            for column in (h.ends, h.seqs, h.kinds, h.ts, h.full):
                del column[i:]
            return
        h.full[i] = rec
        h.seqs[i], h.kinds[i], h.ts[i] = head_of(rec)


def _split(records: bytes) -> list[bytes]:
    """Each record's bytes; [] if they are not whole msgpack objects."""
    unpacker = msgpack.Unpacker(max_buffer_size=max(len(records), 1))
    unpacker.feed(records)
    out, pos = [], 0
    try:
        while pos < len(records):
            unpacker.skip()
            end = unpacker.tell()
            out.append(records[pos:end])
            pos = end
    except (ValueError, msgpack.UnpackException):
        return []
    return out
