"""The Linux Prober's rescan on fixture trees: a VM is looked at again
(layout re-read, files reopened) only when its signature moved."""

from __future__ import annotations

import os

import pytest

from unit.fake_procfs import FakeHost
from vmagent.config import ProbesConfig
from vmagent.probes.linux import Prober

QEMU = "/usr/bin/qemu-system-x86_64"
KVM_FDS = {3: "/dev/kvm", 4: "anon_inode:kvm-vm", 5: "anon_inode:kvm-vcpu:0"}
ARGV = ["qemu", "-name", "r", "-smp", "1"]


@pytest.fixture
def host(tmp_path):
    return FakeHost(tmp_path)


@pytest.fixture
def prober(host):
    p = Prober("h1", ProbesConfig(procfs=str(host.proc), sysfs=str(host.sys),
                                  debugfs=str(host.debug), rescan_s=3600))
    yield p
    p.close()


def rescan(p: Prober) -> None:
    p.rescan_s = 0
    p.discover()
    p.rescan_s = 3600


def handle_of(p: Prober, pid: int):
    return p._metered[pid].handle


def qemu_with_disk(host: FakeHost, tmp_path, size: int = 4096):
    disk = tmp_path / "a.raw"
    disk.write_bytes(b"\0" * size)
    host.process(500, "qemu", ARGV, exe=QEMU, fds={**KVM_FDS, 10: str(disk)},
                 threads={500: "qemu", 501: "CPU 0/KVM"})
    return disk


def test_unchanged_vm_keeps_its_open_files_across_a_rescan(host, prober,
                                                           tmp_path):
    qemu_with_disk(host, tmp_path)
    prober.discover()
    before = handle_of(prober, 500)
    rescan(prober)
    assert handle_of(prober, 500) == before
    assert prober.changes() == []


def test_disk_replaced_at_the_same_path_is_reopened_by_the_rescan(
        host, prober, tmp_path):
    disk = qemu_with_disk(host, tmp_path)
    prober.discover()
    before = handle_of(prober, 500)
    os.unlink(disk)  # the same link text, another (dev, ino)
    disk.write_bytes(b"\0" * 8192)
    rescan(prober)
    assert handle_of(prober, 500) != before
    [(_, sample)] = prober.sample().samples
    assert sample["disks"][0]["capacity_bytes"] == 8192


def test_new_vcpu_thread_is_found_by_the_rescan(host, prober, tmp_path):
    qemu_with_disk(host, tmp_path)
    prober.discover()
    t = host.proc / "500/task/502"
    t.mkdir()
    (t / "comm").write_text("CPU 1/KVM\n")
    (t / "schedstat").write_text("1 1 1\n")
    rescan(prober)
    [vm] = prober.vms()
    assert [v.id for v in vm.vcpu_threads] == [0, 1]


def test_thread_named_after_a_rescan_is_found_by_the_next_one(
        host, prober, tmp_path):
    qemu_with_disk(host, tmp_path)
    prober.discover()
    t = host.proc / "500/task/502"
    t.mkdir()
    (t / "comm").write_text("qemu\n")  # created, not yet named
    (t / "schedstat").write_text("1 1 1\n")
    rescan(prober)
    assert [v.id for v in prober.vms()[0].vcpu_threads] == [0]
    (t / "comm").write_text("CPU 1/KVM\n")
    rescan(prober)
    assert [v.id for v in prober.vms()[0].vcpu_threads] == [0, 1]
    before = handle_of(prober, 500)
    rescan(prober)  # settled: no reopen any more
    assert handle_of(prober, 500) == before


def test_unchanged_vm_reads_its_debugfs_counters_again_at_the_rescan(
        host, prober, tmp_path):
    qemu_with_disk(host, tmp_path)
    kdir = host.debug / "kvm/500-4"
    kdir.mkdir(parents=True)
    (kdir / "pages_4k").write_text("512\n")
    prober.discover()
    assert prober.sample().samples[0][1]["kvm"] == {"pages_4k": 512}
    (kdir / "pages_4k").write_text("1024\n")
    assert "kvm" not in prober.sample().samples[0][1]
    before = handle_of(prober, 500)
    rescan(prober)
    assert prober.sample().samples[0][1]["kvm"] == {"pages_4k": 1024}
    assert handle_of(prober, 500) == before
