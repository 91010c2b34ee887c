"""The WAL's on-disk format: segment headers and frames (docs/wal.md).

A segment is an 80-byte header (magic, WAL id, first seq, creation time, the
hash of the last frame before it, crc32) followed by frames.  A frame is one
commit:

    header  32 B  magic "VMWF", records length N (u32), first_seq, last_seq
                  (u64 each), flags (u32), crc32 of the 28 bytes before it
    records N B   msgpack records, concatenated
    trailer 140 B prev_hash (32), hash (32), key_id (8), sig (64), crc32 of
                  everything from the frame's first byte to the end of sig

All integers are big-endian.  The header CRC protects the length and seqs on
their own, so a damaged length is never trusted; the frame CRC protects the
rest.  ``hash = SHA-256(prev_hash || records)`` and ``sig`` are the pull
API's (docs/protocol.md, "Verifying a batch"), so frames are served
exactly as stored.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from dataclasses import dataclass

from vmagent.errors import VmagentError

SEGMENT_MAGIC = b"VMAGWAL\x01"
# magic, wal id, first seq, created ns, chain tip before it, crc, padding
SEGMENT_HEADER = struct.Struct(">8s16sQQ32sI4x")
SEGMENT_HEADER_SIZE = SEGMENT_HEADER.size  # 80
FRAME_MAGIC = b"VMWF"
FRAME_HEADER = struct.Struct(">4sIQQII")  # magic, n, first, last, flags, crc
FLAG_GAP = 1  # the frame holds a gap record (recovery reads only those)
FRAME_HEADER_SIZE = FRAME_HEADER.size  # 32
TRAILER_SIZE = 32 + 32 + 8 + 64 + 4
MAX_RECORDS_BYTES = 64 << 20  # a longer length is damage, not a frame
ZERO_HASH = bytes(32)
SIG_CONTEXT = b"vmagent-wal-v1\0"


class FormatError(VmagentError, ValueError):
    """Bytes that are not a valid segment header or frame."""


@dataclass(frozen=True)
class Frame:
    """One commit as stored: the unit that is signed, served and acked."""

    first_seq: int
    last_seq: int
    records: bytes
    prev_hash: bytes
    hash: bytes
    key_id: bytes
    sig: bytes
    flags: int = 0

    @property
    def size(self) -> int:
        return FRAME_HEADER_SIZE + len(self.records) + TRAILER_SIZE


def segment_name(first_seq: int) -> str:
    """Fixed-width, so that name order is seq order."""
    return f"{first_seq:020d}.seg"


def parse_segment_name(name: str) -> int | None:
    stem, dot, ext = name.partition(".")
    if ext != "seg" or not dot or len(stem) != 20 or not stem.isdigit():
        return None
    return int(stem)


@dataclass(frozen=True)
class SegmentHeader:
    wal_id: bytes
    first_seq: int
    created_ns: int
    prev_hash: bytes  # the chain tip when the segment was started


def pack_segment_header(h: SegmentHeader) -> bytes:
    head = SEGMENT_HEADER.pack(SEGMENT_MAGIC, h.wal_id, h.first_seq,
                               h.created_ns, h.prev_hash, 0)[:72]
    return head + struct.pack(">I", zlib.crc32(head)) + bytes(4)


def parse_segment_header(data: bytes) -> SegmentHeader:
    """The header at the start of a segment, or FormatError."""
    if len(data) < SEGMENT_HEADER_SIZE:
        raise FormatError("segment header truncated")
    magic, wal_id, first, created, prev, crc = SEGMENT_HEADER.unpack_from(data)
    if magic != SEGMENT_MAGIC:
        raise FormatError("not a vmagent WAL segment (bad magic)")
    if crc != zlib.crc32(data[:72]):
        raise FormatError("segment header checksum mismatch")
    return SegmentHeader(wal_id, first, created, prev)


def chain_hash(prev_hash: bytes, records: bytes) -> bytes:
    h = hashlib.sha256(prev_hash)
    h.update(records)
    return h.digest()


def signed_bytes(host: str, wal_id: bytes, first_seq: int, last_seq: int,
                 frame_hash: bytes) -> bytes:
    """The exact bytes the host key signs (docs/protocol.md, "Verifying a
    batch")."""
    return (SIG_CONTEXT + host.encode() + b"\0" + wal_id
            + struct.pack(">QQ", first_seq, last_seq) + frame_hash)


def encode_frame(frame: Frame) -> bytes:
    head = FRAME_HEADER.pack(FRAME_MAGIC, len(frame.records), frame.first_seq,
                             frame.last_seq, frame.flags, 0)[:28]
    head += struct.pack(">I", zlib.crc32(head))
    tail = frame.prev_hash + frame.hash + frame.key_id + frame.sig
    crc = zlib.crc32(tail, zlib.crc32(frame.records, zlib.crc32(head)))
    return b"".join((head, frame.records, tail, struct.pack(">I", crc)))


def parse_frame_header(data: bytes,
                       offset: int = 0) -> tuple[int, int, int, int]:
    """(records length, first seq, last seq, flags) of the frame header at
    ``offset``; FormatError if it is not one."""
    if len(data) - offset < FRAME_HEADER_SIZE:
        raise FormatError("frame header truncated")
    magic, n, first, last, flags, crc = FRAME_HEADER.unpack_from(data, offset)
    if magic != FRAME_MAGIC:
        raise FormatError("no frame magic")
    if crc != zlib.crc32(data[offset:offset + 28]):
        raise FormatError("frame header checksum mismatch")
    if n > MAX_RECORDS_BYTES or first < 1 or last < first:
        raise FormatError("frame header out of range")
    return n, first, last, flags


def decode_frame(data: bytes, offset: int = 0) -> Frame:
    """The frame at ``offset``; FormatError if it is incomplete or damaged."""
    n, first, last, flags = parse_frame_header(data, offset)
    end = offset + FRAME_HEADER_SIZE + n + TRAILER_SIZE
    if end > len(data):
        raise FormatError("frame truncated")
    (crc,) = struct.unpack_from(">I", data, end - 4)
    if crc != zlib.crc32(data[offset:end - 4]):
        raise FormatError("frame checksum mismatch")
    p = offset + FRAME_HEADER_SIZE
    records = bytes(data[p:p + n])
    p += n
    return Frame(first, last, records, bytes(data[p:p + 32]),
                 bytes(data[p + 32:p + 64]), bytes(data[p + 64:p + 72]),
                 bytes(data[p + 72:p + 136]), flags)
