"""The file operations the WAL uses, behind one seam so that tests can
inject EIO, ENOSPC and crashes at any of them."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from vmagent.fsutil import fsync_dir, write_atomically


class FileOps:
    """The real operating system."""

    def open_append(self, path: Path) -> int:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT
                       | os.O_CLOEXEC, 0o600)

    def open_rw(self, path: Path) -> int:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def pwrite(self, fd: int, data: bytes, offset: int) -> None:
        if os.pwrite(fd, data, offset) != len(data):
            raise OSError(errno.ENOSPC, "short write")

    def write_all(self, fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]

    def fdatasync(self, fd: int) -> None:
        os.fdatasync(fd)

    def ftruncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)

    def close(self, fd: int) -> None:
        os.close(fd)

    def read_file(self, path: Path) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def pread(self, path: Path, size: int, offset: int) -> bytes:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return os.pread(fd, size, offset)
        finally:
            os.close(fd)

    def truncate(self, path: Path, size: int) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.ftruncate(fd, size)
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def unlink(self, path: Path) -> None:
        os.unlink(path)

    def rename(self, src: Path, dst: Path) -> None:
        os.rename(src, dst)

    def fsync_dir(self, path: Path) -> None:
        fsync_dir(path)

    def write_atomically(self, path: Path, data: bytes) -> None:
        write_atomically(path, data, mode=0o600)
