"""The FreeBSD build of the native code needs nothing of Linux: built here
with the FreeBSD selection (common/ and freebsd/ sources), it compiles,
links and carries the decoders and the syscall layer's entry points but not
the Linux probes.  Off FreeBSD those entry points fail with ENOSYS, which
lets the Python side of the syscall layer (``NativeKernel``) run through
cffi here: every argument it passes must convert."""

from __future__ import annotations

import errno
import importlib.util
import os
import runpy
import sys
from pathlib import Path

import pytest

from vmagent.errors import ProbeUnsupported
from vmagent.probes._native import lib as linux_lib
from vmagent.probes.freebsd_kernel import NativeKernel, native_kernel

ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def freebsd_build(tmp_path_factory):
    build = runpy.run_path(str(ROOT / "native/build_ffi.py"))
    assert not any("native/linux" in s for s in build["_sources"]("freebsd"))
    builder = build["make_builder"]("freebsd", module="_vmprobe_freebsd",
                                    relative=False)
    so = builder.compile(tmpdir=str(tmp_path_factory.mktemp("freebsd")))
    spec = importlib.util.spec_from_file_location("_vmprobe_freebsd", so)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["_vmprobe_freebsd"] = mod
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        del sys.modules["_vmprobe_freebsd"]


def test_the_freebsd_selection_builds_without_linux_sources(freebsd_build):
    lib = freebsd_build.lib
    assert hasattr(lib, "vmprobe_acct_parse")
    assert hasattr(lib, "vmprobe_vm_stats_decode")
    assert hasattr(lib, "vmprobe_parse_u64")
    assert hasattr(lib, "vmprobe_fbsd_procs")  # the syscall layer
    assert not hasattr(lib, "vmprobe_vm_open")  # the Linux probes
    assert not hasattr(lib, "vmprobe_parse_stat")


def test_the_linux_build_has_no_freebsd_syscalls():
    assert hasattr(linux_lib, "vmprobe_vm_open")
    assert not hasattr(linux_lib, "vmprobe_fbsd_procs")
    with pytest.raises(ProbeUnsupported, match="built on FreeBSD"):
        native_kernel()


@pytest.fixture
def vmm_dir(tmp_path):
    """Stands in for /dev/vmm: one entry per VM name."""
    (tmp_path / "web01").write_bytes(b"")
    return str(tmp_path)


@pytest.fixture
def kernel(freebsd_build, vmm_dir):
    return NativeKernel(freebsd_build.ffi, freebsd_build.lib,
                        vmm_dir=vmm_dir)


@pytest.mark.parametrize("call", [
    lambda k: k.boot_time_us(), lambda k: k.bhyve_processes(),
    lambda k: k.process(1), lambda k: k.threads(1), lambda k: k.filedesc(1),
    lambda k: k.if_data("tap0")])
def test_native_kernel_calls_reach_the_syscall_layer(kernel, call):
    with pytest.raises(OSError) as err:
        call(kernel)
    assert err.value.errno == errno.ENOSYS


def test_native_kernel_vmm_calls_reach_the_syscall_layer(kernel):
    for call in (lambda: kernel.vm_stats("web01", 0, 0),
                 lambda: kernel.stat_desc("web01", 0)):
        with pytest.raises(OSError) as err:
            call()
        assert err.value.errno == errno.ENOSYS
    assert kernel.sysmem_bytes("web01") is None


def test_native_kernel_optional_facts_are_absent_not_errors(kernel,
                                                            tmp_path):
    assert kernel.tsc_freq() == 0
    assert kernel.racct(1) is None and kernel.racct(1) is None  # ENOSYS
    assert kernel.file_size("/dev/null") is None  # DIOCGMEDIASIZE: ENOSYS
    image = tmp_path / "disk.img"
    image.write_bytes(b"x" * 4096)
    assert kernel.file_size(str(image))[0] == 4096
    assert kernel.file_size(str(tmp_path / "missing")) is None


class Kernel13:
    """The FreeBSD selection's lib, but VM_STATS answers as a 13.x kernel:
    ENOTTY for the 14+ layout, a reply for the 13 one."""

    def __init__(self, ffi, lib):
        self.ffi, self.lib, self.layouts, self.fds = ffi, lib, [], []
        self.destroyed = False

    def __getattr__(self, name):
        return getattr(self.lib, name)

    def vmprobe_fbsd_vm_stats(self, fd, layout, cpu, index, buf, n):
        self.layouts.append(layout)
        self.fds.append(os.fstat(fd).st_ino)
        if self.destroyed:  # the descriptor of a VM that is gone
            self.destroyed = False
            self.ffi.errno = errno.ENXIO
            return -1
        if layout == self.lib.VMPROBE_VM_STATS_14:
            self.ffi.errno = errno.ENOTTY
            return -1
        buf[0:12] = bytes([cpu, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0])
        return 0


def test_vm_stats_falls_back_to_the_13_layout_once(freebsd_build, vmm_dir):
    fake = Kernel13(freebsd_build.ffi, freebsd_build.lib)
    kernel = NativeKernel(freebsd_build.ffi, fake, vmm_dir=vmm_dir)
    first = kernel.vm_stats("web01", 1, 0)
    second = kernel.vm_stats("web01", 2, 0)
    lib = freebsd_build.lib
    assert first[0] == second[0] == lib.VMPROBE_VM_STATS_13
    assert fake.layouts == [lib.VMPROBE_VM_STATS_14, lib.VMPROBE_VM_STATS_13,
                            lib.VMPROBE_VM_STATS_13]
    assert first[1][0] == 1 and second[1][0] == 2


def test_a_vm_made_anew_under_its_name_is_opened_again(freebsd_build,
                                                      vmm_dir):
    fake = Kernel13(freebsd_build.ffi, freebsd_build.lib)
    kernel = NativeKernel(freebsd_build.ffi, fake, vmm_dir=vmm_dir)
    kernel.vm_stats("web01", 0, 0)
    entry = os.path.join(vmm_dir, "web01")
    os.unlink(entry)  # destroyed; a new VM of that name has a new node
    with open(entry, "wb"):
        pass
    fake.destroyed = True
    layout, raw = kernel.vm_stats("web01", 0, 0)
    assert raw[0] == 0 and fake.fds[-1] == os.stat(entry).st_ino
    assert fake.fds[-2] != fake.fds[-1]  # the ENXIO came on the old one
    kernel.forget("web01")
    assert kernel._vmm == {}


class ManyProcs:
    """The FreeBSD selection's lib, but kern.proc lists 100 bhyve
    processes (the last a zombie), answering ENOMEM while out is short."""

    def __init__(self, ffi, lib):
        self.ffi, self.lib, self.calls = ffi, lib, []

    def __getattr__(self, name):
        return getattr(self.lib, name)

    def vmprobe_fbsd_procs(self, pid, threads, comm, out, n):
        self.calls.append(n[0])
        if n[0] < 100:
            n[0] = 100
            self.ffi.errno = errno.ENOMEM
            return -1
        for i in range(100):
            out[i].pid, out[i].tid, out[i].rss_pages = 1000 + i, 5000 + i, i
            out[i].zombie = int(i == 99)
            out[i].comm = b"bhyve"
            out[i].tdname = b"vcpu %d" % i
        n[0] = 100
        return 0


def test_process_lists_grow_and_are_copied_out(freebsd_build):
    import gc

    fake = ManyProcs(freebsd_build.ffi, freebsd_build.lib)
    kernel = NativeKernel(freebsd_build.ffi, fake)
    procs = kernel.bhyve_processes()
    gc.collect()  # the cffi array is gone: the values must not be
    assert fake.calls == [64, 116]
    assert [p.pid for p in procs] == list(range(1000, 1099))  # no zombie
    assert procs[7].comm == "bhyve" and procs[7].title == ""  # ENOSYS
    assert procs[7].rss_bytes == 7 * os.sysconf("SC_PAGE_SIZE")
    threads = kernel.threads(1000)
    assert (threads[3].tid, threads[3].name) == (5003, "vcpu 3")


@pytest.mark.parametrize("sized", [True, False])
def test_devstat_pages_are_mapped_whole(freebsd_build, tmp_path, monkeypatch,
                                        sized):
    import mmap

    from unit.test_bhyve_decoders import devstat, devstat_pages
    from vmagent.probes import bhyve

    page = mmap.PAGESIZE
    records = [devstat(0x1000 + i, rd=(i, i)) for i in range(page // 288 + 3)]
    stand_in = tmp_path / "devstat"  # a file where FreeBSD has the device
    stand_in.write_bytes(devstat_pages(*records, page=page))
    kernel = NativeKernel(freebsd_build.ffi, freebsd_build.lib,
                          devstat_path=str(stand_in))
    if not sized:  # no DIOCGMEDIASIZE: page by page until refused
        monkeypatch.setattr(kernel, "file_size", lambda path: None)
    got_page, raw = kernel.devstat()
    assert (got_page, len(raw)) == (page, 2 * page)
    stats, torn = bhyve.decode_devstat(raw, got_page)
    assert torn == 0 and len(stats) == len(records)
