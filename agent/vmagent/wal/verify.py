"""Offline checks of a WAL directory: ``vmagent wal verify`` and ``dump``.

verify = everything recovery checks (checksums, seqs, chain) plus what only
the public key can: each frame's hash over its records, its Ed25519
signature, and that its records hold exactly its seqs.  Damage that a signed
gap record already explains is reported but passes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmagent.frames import VerifyError, check_frame
from vmagent.wal import format as fmt
from vmagent.wal.fileops import FileOps
from vmagent.wal.scan import FrameRef, Problem, iter_records, scan


@dataclass
class Report:
    problems: list[Problem] = field(default_factory=list)
    frames: int = 0
    records: int = 0

    @property
    def ok(self) -> bool:
        return not any(not p.explained for p in self.problems)


def verify(directory: Path, public_key: bytes) -> Report:
    """Check every frame of the WAL in ``directory`` against the key."""
    ops = FileOps()
    found = scan(directory, ops)
    report = Report(problems=list(found.problems))
    for ref in found.served:
        frame = fmt.decode_frame(ops.pread(ref.segment, ref.size, ref.offset))
        report.frames += 1
        problem = _check_frame(frame, found.wal_id or b"", public_key)
        if problem:
            report.problems.append(Problem(ref.segment.name, ref.offset,
                                           ref.first_seq, problem, False))
        report.records += frame.last_seq - frame.first_seq + 1
    report.problems.sort(key=lambda p: (p.segment, p.offset))
    return report


def _check_frame(frame: fmt.Frame, wal_id: bytes, public: bytes) -> str:
    """What is wrong with the frame (``vmagent.frames``' rule), or ""."""
    first = next(iter_records(frame.records), None)
    host = first.get("host") if isinstance(first, dict) else None
    if not isinstance(host, str):
        return "first record has no host"
    try:
        check_frame(frame, host, wal_id, public)
    except VerifyError as err:
        return str(err)
    return ""


def served_records(directory: Path) -> Iterator[dict[str, Any]]:
    """Every record a reader would be served, in seq order (for dump)."""
    ops = FileOps()
    found = scan(directory, ops)
    for ref in found.served:
        yield from _frame_records(ops, ref)


def _frame_records(ops: FileOps, ref: FrameRef) -> Iterator[dict[str, Any]]:
    frame = fmt.decode_frame(ops.pread(ref.segment, ref.size, ref.offset))
    for rec in iter_records(frame.records):
        if isinstance(rec, dict):
            yield rec
