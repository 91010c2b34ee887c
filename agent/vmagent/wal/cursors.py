"""Consumer cursors: the seq each consumer has acked, one file each.

A cursor file is JSON ``{"wal": HEX, "seq": N}`` written atomically (tmp,
fsync, rename, fsync dir).  A cursor that is unreadable, or names another WAL,
counts as 0: that can only cause re-delivery, never loss.
"""

from __future__ import annotations

import json
from pathlib import Path

from vmagent.errors import VmagentError
from vmagent.names import is_consumer_name
from vmagent.wal.fileops import FileOps


class CursorError(VmagentError):
    """An ack that cannot be taken (unknown consumer, seq out of range)."""


class Cursors:
    def __init__(self, directory: Path, wal_id: bytes, consumers: list[str],
                 ops: FileOps) -> None:
        for name in consumers:
            if not is_consumer_name(name):
                raise CursorError(f"invalid consumer name {name!r}")
        self.dir, self.wal_id, self.ops = directory, wal_id, ops
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.acked = {name: self._load(name) for name in consumers}

    def update(self, consumers: list[str]) -> None:
        """The set of consumers changed (tokens reloaded)."""
        for name in consumers:
            if not is_consumer_name(name):
                raise CursorError(f"invalid consumer name {name!r}")
        self.acked = {name: self.acked.get(name, self._load(name))
                      for name in consumers}

    def _load(self, name: str) -> int:
        try:
            doc = json.loads((self.dir / name).read_bytes())
            if doc["wal"] == self.wal_id.hex() and isinstance(doc["seq"], int):
                return max(0, doc["seq"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return 0

    def set(self, name: str, seq: int) -> None:
        """Persist ``name``'s ack durably; returns once it is on disk."""
        if name not in self.acked:
            raise CursorError(f"unknown consumer {name!r}")
        doc = {"wal": self.wal_id.hex(), "seq": seq}
        self.ops.write_atomically(self.dir / name, json.dumps(doc).encode())
        self.acked[name] = seq

    def minimum(self) -> int:
        """The seq every consumer has acked (0 with no consumers: keep all)."""
        return min(self.acked.values(), default=0)
