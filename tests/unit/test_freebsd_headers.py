"""native/ compiled for FreeBSD against FreeBSD's own headers (the ones the
zig toolchain ships): the syscall layer builds, the ``_Static_assert``s
that tie the portable decoders' layouts (kinfo_file, if_data, VM_STATS,
VM_STAT_DESC) to those headers hold, and the cffi extension links with
every function its cdef declares.  Nothing here runs on FreeBSD."""

from __future__ import annotations

import os
import re
import runpy
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
NATIVE = ROOT / "native"
SOURCES = sorted((NATIVE / "common").glob("*.c")) + \
    sorted((NATIVE / "freebsd").glob("*.c"))
TARGETS = ["x86_64-freebsd", "aarch64-freebsd"]
pytestmark = pytest.mark.freebsdheaders


def zig_cc(target: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ziglang", "cc", "-target", target,
         "-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror",
         f"-I{NATIVE}", '-DVMPROBE_VERSION="test"', *args],
        capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("target", TARGETS)
def test_every_native_file_compiles_for_freebsd(tmp_path, target):
    for src in SOURCES:
        out = zig_cc(target, "-c", str(src), "-o", str(tmp_path / "x.o"))
        assert out.returncode == 0, f"{src.name}:\n{out.stderr}"


def test_a_wrong_layout_number_fails_the_freebsd_build(tmp_path):
    # the layout checks have teeth: one wrong offset stops the build
    net = (NATIVE / "freebsd" / "net.c").read_text()
    wrong = tmp_path / "net.c"
    wrong.write_text(net.replace("ifi_ibytes) == 64", "ifi_ibytes) == 72"))
    assert wrong.read_text() != net
    out = zig_cc("x86_64-freebsd", "-c", str(wrong), "-o",
                 str(tmp_path / "x.o"))
    assert out.returncode != 0 and "ibytes" in out.stderr


def defined_and_undefined(so: Path) -> tuple[set[str], set[str]]:
    out = subprocess.run(["nm", "-D", str(so)], capture_output=True,
                         text=True, check=True).stdout
    defined, undefined = set(), set()
    for line in out.splitlines():
        parts = line.split()
        name = parts[-1].split("@")[0]
        (undefined if parts[-2] in ("U", "w") else defined).add(name)
    return defined, undefined


def test_the_freebsd_extension_links_with_every_declared_function(tmp_path):
    build = runpy.run_path(str(NATIVE / "build_ffi.py"))
    builder = build["make_builder"]("freebsd", relative=False)
    module_c = tmp_path / "_vmprobe.c"
    builder.emit_c_code(str(module_c))
    so = tmp_path / "_vmprobe.so"
    out = zig_cc("x86_64-freebsd", "-shared", "-fPIC", "-Wno-unused",
                 "-Wno-unused-parameter", "-Wno-missing-field-initializers",
                 f"-I{sysconfig.get_paths()['include']}", str(module_c),
                 *map(str, SOURCES), "-o", str(so))
    assert out.returncode == 0, out.stderr
    defined, undefined = defined_and_undefined(so)
    functions = set(re.findall(r"\b(vmprobe_\w+)\s*\(",
                               build["_cdef"]("freebsd")))
    assert {"vmprobe_fbsd_procs", "vmprobe_fbsd_vm_stats",
            "vmprobe_fbsd_if_data", "vmprobe_kinfo_file_next"} <= functions
    assert functions <= defined
    assert not {s for s in undefined if s.startswith("vmprobe")}
    assert "PyInit__vmprobe" in defined and os.path.getsize(so) > 0
