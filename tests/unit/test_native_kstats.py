"""The native read of KVM binary stats items (vmprobe_vm_read): one pread
of each file's range, each source added to its item; debugfs items only
when asked.  Regular files stand in for the stats fds (pread is pread)."""

from __future__ import annotations

import os
import struct

from unit.fake_procfs import FakeHost
from vmagent.probes._native import ffi, lib

EAGAIN, EINVAL, ENOENT = 11, 22, 2


def read_items(tmp_path, ranges, sources, paths, read_debugfs):
    """Open a fixture VM with the given kstat ranges/sources and u64 paths
    (None: a kstat item), read it once; [(err, value)] per item."""
    host = FakeHost(tmp_path)
    host.process(42, "qemu", ["qemu"])
    data = struct.pack("<6Q", 1, 2, 30, 40, 500, 600)
    (tmp_path / "stats").write_bytes(b"\xff" * 100 + data)
    fd = os.open(tmp_path / "stats", os.O_RDONLY)
    keep = []

    def new(ctype, init):
        keep.append(ffi.new(ctype, init))
        return keep[-1]

    spec = ffi.new("struct vmprobe_vm_spec *")
    spec.proc_dir = new("char[]", str(host.proc / "42").encode())
    spec.sched_paths = spec.disk_links = spec.disk_blk_stats = \
        new("char *[]", [ffi.NULL])
    spec.u64_paths = new("char *[]", [
        new("char[]", p.encode()) if p else ffi.NULL for p in paths])
    spec.n_u64 = len(paths)
    spec.kstat_fds = new("int[]", [fd] * len(ranges))
    spec.kstat_off = new("uint32_t[]", [o for o, _ in ranges])
    spec.kstat_len = new("uint32_t[]", [n for _, n in ranges])
    spec.n_kstat = len(ranges)
    spec.src_file = new("int[]", [s[0] for s in sources])
    spec.src_off = new("uint32_t[]", [s[1] for s in sources])
    spec.src_item = new("int[]", [s[2] for s in sources])
    spec.n_src = len(sources)
    vm = lib.vmprobe_vm_open(spec)
    assert vm != ffi.NULL
    reading = ffi.new("struct vmprobe_reading *")
    u64s = ffi.new("struct vmprobe_u64[]", len(paths))
    reading.u64s, reading.read_debugfs = u64s, read_debugfs
    try:
        assert lib.vmprobe_vm_read(vm, reading) == 0
        return [(u.err, u.value) for u in u64s]
    finally:
        lib.vmprobe_vm_close(vm)
        os.close(fd)


def test_sources_are_summed_into_their_items(tmp_path):
    # file 0 covers data[2..3], file 1 data[4..5] (the same fd twice)
    got = read_items(tmp_path, [(116, 16), (132, 16)],
                     [(0, 0, 0), (1, 0, 0), (0, 8, 1), (1, 8, 1)],
                     [None, None], read_debugfs=0)
    assert got == [(0, 30 + 500), (0, 40 + 600)]


def test_debugfs_items_are_read_only_when_asked(tmp_path):
    (tmp_path / "pages_4k").write_text("77\n")
    path = str(tmp_path / "pages_4k")
    [(err, _)] = read_items(tmp_path / "a", [], [], [path], read_debugfs=0)
    assert err == EAGAIN  # not read this time
    assert read_items(tmp_path / "b", [], [], [path], 1) == [(0, 77)]


def test_a_source_past_the_end_of_the_file_fails_its_item_alone(tmp_path):
    got = read_items(tmp_path, [(140, 64)], [(0, 0, 0), (0, 16, 1)],
                     [None, None, None], read_debugfs=0)
    assert got[0] == (0, 600)
    assert got[1][0] == EINVAL  # only 8 bytes were there to read
    assert got[2][0] == ENOENT  # an item without any source
