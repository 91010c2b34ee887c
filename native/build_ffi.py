"""cffi builder (API mode) for vmagent's native probes: ``vmagent._vmprobe``.

cffi exec's this file rather than importing it, so it is self-contained: it
reads the version from the package's ``_version.py`` and the declarations for
cffi from the part of ``vmprobe.h`` between ``cdef-begin`` and ``cdef-end``.
"""

import glob
import os
import re
import sys

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _version() -> str:
    with open(os.path.join(ROOT, "agent", "vmagent", "_version.py")) as f:
        return re.search(r'__version__ = "([^"]+)"', f.read()).group(1)


def _cdef() -> str:
    with open(os.path.join(HERE, "vmprobe.h")) as f:
        header = f.read()
    start = header.index("cdef-begin")
    start = header.index("*/", start) + 2
    return header[start : header.index("/* cdef-end")]


def _platform_dir() -> str:
    if sys.platform.startswith("linux"):
        return "linux"
    if sys.platform.startswith("freebsd"):
        return "freebsd"
    raise RuntimeError(f"vmagent has no native probes for {sys.platform}")


def _sources() -> list[str]:
    found = []
    for folder in ("common", _platform_dir()):
        found += sorted(glob.glob(os.path.join(HERE, folder, "*.c")))
    # setuptools wants paths relative to the project root
    return [os.path.relpath(p, ROOT) for p in found]


ffibuilder = FFI()
ffibuilder.cdef(_cdef())
ffibuilder.set_source(
    "vmagent._vmprobe",
    '#include "vmprobe.h"',
    sources=_sources(),
    include_dirs=[os.path.relpath(HERE, ROOT)],
    define_macros=[("VMPROBE_VERSION", f'"{_version()}"')],
    extra_compile_args=["-std=gnu11", "-O2", "-Wall", "-Wextra"],
)

if __name__ == "__main__":
    os.chdir(ROOT)
    ffibuilder.compile(tmpdir=os.path.join(ROOT, "build", "cffi"), verbose=True)
