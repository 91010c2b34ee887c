"""Commands the tests need from Debian packages: a test whose command is
missing skips with a reason naming the package to install, never errors.

The packages and the commands they provide are listed once, in
packaging/debian-packages.txt (also read by ``make test`` and .ci/run).
"""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path

import pytest

LIST = Path(__file__).resolve().parent.parent / "packaging/debian-packages.txt"


@functools.cache
def packages() -> dict[str, str]:
    """Command (a name on PATH or an absolute path) -> its Debian package."""
    out: dict[str, str] = {}
    for line in LIST.read_text().splitlines():
        words = line.split()  # package, group, command or "-", purpose
        if len(words) >= 3 and not line.startswith("#") and words[2] != "-":
            out[words[2]] = words[0]
    return out


def found(command: str) -> bool:
    if command.startswith("/"):
        return os.access(command, os.X_OK)
    return shutil.which(command) is not None


def reason(command: str) -> str:
    """Why a test that needs ``command`` skips: what to install."""
    package = packages().get(command)
    return f"needs {command}" + (f" (apt-get install {package})"
                                 if package else "")


def missing(*commands: str) -> str | None:
    """The skip reason for the first of ``commands`` not found, or None."""
    for command in commands:
        if not found(command):
            return reason(command)
    return None


def require(*commands: str) -> None:
    """Skip the running test if one of ``commands`` is missing."""
    why = missing(*commands)
    if why:
        pytest.skip(why)
