"""Following the accounting file: whole records since a persisted offset,
across rotation (a new inode: the rest of the old file is read first, also
when it was rotated to ``<file>.0`` while the agent was down) and
truncation (start again at 0); a partial last record waits for the rest."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from vmagent.acct.records import AcctError, AcctRecord, detect, parse
from vmagent.fsutil import write_atomically
from vmagent.log import get_logger

READ_MAX = 8 << 20


@dataclass
class Position:
    dev: int = 0
    ino: int = 0
    offset: int = 0


class AcctFollower:
    def __init__(self, path: Path, state_file: Path,
                 format: str | None = None) -> None:
        self.path, self.state_file, self.format = path, state_file, format
        self.log = get_logger(acct_file=str(path))
        self.pos = self._load()
        self._saved = Position(**self.pos.__dict__)
        self.skipped = 0  # records that failed validation
        self.warned = False

    def _load(self) -> Position:
        try:
            doc = json.loads(self.state_file.read_text())
            return Position(int(doc["dev"]), int(doc["ino"]),
                            int(doc["offset"]))
        except (OSError, ValueError, KeyError, TypeError):
            return Position()

    def save(self) -> None:
        """Persist the position once what was read is durable elsewhere
        (only when it moved: most sweeps read nothing)."""
        if self.pos == self._saved:
            return
        write_atomically(self.state_file, json.dumps(self.pos.__dict__),
                         mode=0o600)
        self._saved = Position(**self.pos.__dict__)

    def poll(self) -> list[AcctRecord]:
        """The whole records appended since the last poll."""
        try:
            st = os.stat(self.path)
        except OSError:
            return []  # accounting off, or the file between rotations
        out: list[AcctRecord] = []
        if (st.st_dev, st.st_ino) != (self.pos.dev, self.pos.ino):
            if self.pos.ino:
                out += self._rest_of_rotated()
            self.pos = Position(st.st_dev, st.st_ino, 0)
        elif st.st_size < self.pos.offset:
            self.log.warning("acct_file_truncated", offset=self.pos.offset)
            self.pos.offset = 0
        out += self._read(self.path, st.st_size)
        return out

    def _rest_of_rotated(self) -> list[AcctRecord]:
        """The old file, renamed by log rotation (Debian's savelog makes it
        ``pacct.0``), may hold records written after our last read."""
        old = self.path.with_name(self.path.name + ".0")
        try:
            st = os.stat(old)
        except OSError:
            return []
        if (st.st_dev, st.st_ino) != (self.pos.dev, self.pos.ino):
            return []
        return self._read(old, st.st_size)

    def _read(self, path: Path, size: int) -> list[AcctRecord]:
        if size <= self.pos.offset:
            return []
        try:
            with open(path, "rb") as f:
                f.seek(self.pos.offset)
                data = f.read(min(size - self.pos.offset, READ_MAX))
        except OSError as err:
            self.log.error("acct_read_failed", error=err.strerror)
            return []
        try:
            fmt = self.format or detect(data if self.pos.offset == 0
                                        else self._head(path))
        except AcctError as err:
            if not self.warned:
                self.log.error("acct_file_unknown", error=str(err))
                self.warned = True
            return []
        self.format = fmt
        parsed = parse(data, fmt)
        if parsed.skipped:
            self.skipped += parsed.skipped
            self.log.warning("acct_records_skipped", count=parsed.skipped)
        self.pos.offset += parsed.consumed
        return parsed.records

    @staticmethod
    def _head(path: Path) -> bytes:
        with open(path, "rb") as f:
            return f.read(160)
