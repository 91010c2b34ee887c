"""The crash-safe, signed write-ahead log (docs/wal.md)."""

from vmagent.wal.cursors import CursorError
from vmagent.wal.fileops import FileOps
from vmagent.wal.format import Frame
from vmagent.wal.wal import Wal

__all__ = ["CursorError", "FileOps", "Frame", "Wal"]
