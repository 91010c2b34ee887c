"""cffi builder (API mode) for vmagent's native probes: ``vmagent._vmprobe``.

cffi exec's this file rather than importing it, so it is self-contained: it
reads the version from the package's ``_version.py`` and the declarations for
cffi from the part of ``vmprobe.h`` between ``cdef-begin`` and ``cdef-end``,
less the other platform's section (``linux-begin``/``freebsd-begin``).
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


def _cdef(platform: str) -> str:
    with open(os.path.join(HERE, "vmprobe.h")) as f:
        header = f.read()
    start = header.index("cdef-begin")
    start = header.index("*/", start) + 2
    cdef = header[start : header.index("/* cdef-end")]
    for other in ("linux", "freebsd"):  # the other platform's syscalls
        if other != platform:
            end = f"/* {other}-end */"
            cdef = cdef[: cdef.index(f"/* {other}-begin")] + \
                cdef[cdef.index(end) + len(end) :]
    return cdef


def _platform_dir() -> str:
    if sys.platform.startswith("linux"):
        return "linux"
    if sys.platform.startswith("freebsd"):
        return "freebsd"
    raise RuntimeError(f"vmagent has no native probes for {sys.platform}")


def _sources(platform: str, relative: bool = True) -> list[str]:
    found = []
    for folder in ("common", platform):
        found += sorted(glob.glob(os.path.join(HERE, folder, "*.c")))
    # setuptools wants paths relative to the project root
    return [os.path.relpath(p, ROOT) for p in found] if relative else found


def make_builder(platform: str, module: str = "vmagent._vmprobe",
                 relative: bool = True) -> FFI:
    """The builder for one platform's native code ("linux", "freebsd");
    ``relative`` False for building outside setuptools (tests)."""
    builder = FFI()
    builder.cdef(_cdef(platform))
    builder.set_source(
        module,
        '#include "vmprobe.h"',
        sources=_sources(platform, relative),
        include_dirs=[HERE],
        define_macros=[("VMPROBE_VERSION", f'"{_version()}"')],
        extra_compile_args=["-std=gnu11", "-O2", "-Wall", "-Wextra"],
    )
    return builder


ffibuilder = make_builder(_platform_dir())

if __name__ == "__main__":  # outside setuptools (the Debian package)
    make_builder(_platform_dir(), relative=False).compile(
        tmpdir=os.path.join(ROOT, "build", "cffi"), verbose=True)
