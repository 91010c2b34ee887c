"""Durable file updates: what survives a crash is the old or the new file."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def fsync_dir(path: Path | str) -> None:
    """Make a directory's entries (creates, renames, unlinks) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    """tmp, fsync, rename, fsync dir: after a crash the file is old or new."""
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                 mode)
    try:
        try:
            view = memoryview(raw)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):  # no empty .tmp left behind
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def remove_stale_tmp(directory: Path) -> list[str]:
    """Unlink the ``.NAME.tmp`` files an interrupted write_atomically left;
    returns their names."""
    removed: list[str] = []
    try:
        names = [p for p in directory.iterdir()
                 if p.name.startswith(".") and p.name.endswith(".tmp")]
    except OSError:
        return removed
    for p in names:
        with contextlib.suppress(OSError):
            p.unlink()
            removed.append(p.name)
    return removed
