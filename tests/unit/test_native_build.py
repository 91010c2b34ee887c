"""The FreeBSD build of the native code needs nothing of Linux: built here
with the FreeBSD selection (the common, portable sources only), it compiles,
links and carries the decoders but not the Linux probes."""

from __future__ import annotations

import importlib.util
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_the_freebsd_selection_builds_without_linux_sources(tmp_path,
                                                            monkeypatch):
    monkeypatch.chdir(ROOT)
    build = runpy.run_path(str(ROOT / "native/build_ffi.py"))
    builder = build["make_builder"]("freebsd", module="_vmprobe_freebsd",
                                    relative=False)
    assert not any("native/linux" in s for s in build["_sources"]("freebsd"))
    so = builder.compile(tmpdir=str(tmp_path))
    spec = importlib.util.spec_from_file_location("_vmprobe_freebsd", so)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["_vmprobe_freebsd"] = mod
    try:
        spec.loader.exec_module(mod)
        lib = mod.lib
        assert hasattr(lib, "vmprobe_acct_parse")
        assert hasattr(lib, "vmprobe_vm_stats_decode")
        assert hasattr(lib, "vmprobe_parse_u64")
        assert not hasattr(lib, "vmprobe_vm_open")  # the Linux probes
        assert not hasattr(lib, "vmprobe_parse_stat")
    finally:
        del sys.modules["_vmprobe_freebsd"]
