"""The crash-safe, signed write-ahead log (docs/wal.md)."""

from vmagent.wal.cursors import CursorError
from vmagent.wal.fileops import FileOps
from vmagent.wal.format import Frame
from vmagent.wal.wal import NotKept, ReadError, Wal, WalConflict

__all__ = ["CursorError", "FileOps", "Frame", "NotKept", "ReadError",
           "Wal", "WalConflict"]
