"""The sample records the prober builds from its flat reading are, to the
byte, what the field-by-field builder they replaced (issue 16) made of
the same reading: collectors and the ledger depend on their msgpack
bytes.  The reference below is that builder as it was."""

from __future__ import annotations

import os
from typing import Any

import msgpack
import pytest

from unit.fake_procfs import FakeHost, stat_line
from vmagent.config import ProbesConfig
from vmagent.probes.linux import NS_PER_TICK, PAGE_SIZE, SECTOR, Prober
from vmagent.probes.types import tap_guest_view

QEMU = "/usr/bin/qemu-system-x86_64"
KVM_FDS = {3: "/dev/kvm", 4: "anon_inode:kvm-vm"}
LOOP = "/dev/loop0"  # any block device: the fixture's sysfs describes it


def reference_record(m: Any, taps: dict[str, dict[str, int]]) -> dict:
    """The builder before issue 16, over the native reading struct."""
    vm, r = m.vm, m.reading
    st = r.stat
    cpu: dict[str, Any] = {
        "total_ns": (st.utime + st.stime) * NS_PER_TICK,
        "user_ns": st.utime * NS_PER_TICK,
        "system_ns": st.stime * NS_PER_TICK,
    }
    if st.has_guest_time:
        cpu["guest_ns"] = st.guest_time * NS_PER_TICK
    n_vcpu = len(vm.vcpu_threads)
    if vm.vhost_pids:
        vhost = [r.threads[n_vcpu + i] for i in range(len(vm.vhost_pids))]
        cpu["vhost_ns"] = sum(t.sched.run_ns for t in vhost if t.err == 0)
    if n_vcpu:
        cpu["vcpus"] = []
        for i, t in enumerate(vm.vcpu_threads):
            th = r.threads[i]
            if th.err:
                continue
            cpu["vcpus"].append({"id": t.id, "run_ns": th.sched.run_ns,
                                 "wait_ns": th.sched.wait_ns})
    status = r.status if r.status_err == 0 else None
    if status is not None and status.has_vm_rss:
        mem = {"rss_bytes": status.vm_rss_kb * 1024}
    else:
        mem = {"rss_bytes": st.rss_pages * PAGE_SIZE}
    if vm.alloc_bytes is not None:
        mem["alloc_bytes"] = vm.alloc_bytes
    if status is not None and status.has_hugetlb:
        mem["hugetlb_bytes"] = status.hugetlb_kb * 1024
    io = {}
    if r.io_err == 0 and (pio := r.io).has_storage:
        io = {"rd_bytes": pio.read_bytes, "wr_bytes": pio.write_bytes}
    nics = []
    for nic in vm.nics:
        c = taps.get(nic.name)
        if c is None:
            continue
        rec: dict[str, Any] = {"name": nic.name}
        if nic.mac:
            rec["mac"] = nic.mac
        rec.update(tap_guest_view(c))
        nics.append(rec)
    disks = []
    for i, disk in enumerate(vm.disks):
        d = r.disks[i]
        if d.err:
            continue
        rec = {"path": disk.path}
        if disk.block_device is None:
            rec["capacity_bytes"] = disk.capacity_bytes \
                if disk.capacity_bytes is not None else d.size_bytes
            rec["allocated_bytes"] = d.alloc_bytes
        elif disk.capacity_bytes is not None:
            rec["capacity_bytes"] = disk.capacity_bytes
        if d.has_blk:
            rec.update(rd_bytes=d.rd_sectors * SECTOR,
                       wr_bytes=d.wr_sectors * SECTOR,
                       rd_ops=d.rd_ios, wr_ops=d.wr_ios)
        disks.append(rec)
    out = {"vm": vm.record(), "cpu": cpu, "mem": mem, "nics": nics,
           "io": io, "disks": disks}
    kvm = {name: r.u64s[i].value for i, name in
           enumerate(m.kvm_names) if r.u64s[i].err == 0}
    if kvm:
        out["kvm"] = kvm
    return out


@pytest.fixture
def host(tmp_path):
    return FakeHost(tmp_path)


def prober_for(host: FakeHost) -> Prober:
    return Prober("h1", ProbesConfig(procfs=str(host.proc),
                                     sysfs=str(host.sys),
                                     debugfs=str(host.debug),
                                     rescan_s=3600))


def assert_same_bytes(p: Prober) -> list[dict]:
    """Every sample of one sweep against the reference; the samples."""
    sweep = p.sample()
    assert not sweep.failed
    names = {n.name for m in p._metered.values() for n in m.vm.nics}
    taps = p._net_dev.read(names)
    for vm, sample in sweep.samples:
        expected = reference_record(p._metered[vm.pid], taps)
        assert msgpack.packb(sample) == msgpack.packb(expected)
    return [sample for _, sample in sweep.samples]


def full_vm(host: FakeHost, tmp_path) -> None:
    """Two vCPUs, two vhost workers, hugepages, guest time, two taps (one
    with a MAC), a file and a block-device disk, KVM counters."""
    image = tmp_path / "disk.raw"
    image.write_bytes(b"\0" * 12288)
    argv = ["qemu", "-name", "full", "-smp", "2", "-m", "2G",
            "-netdev", '{"type":"tap","fd":"7","id":"hostnet0"}',
            "-device", '{"driver":"virtio-net-pci","netdev":"hostnet0",'
                       '"mac":"52:54:00:aa:bb:cc"}']
    d = host.process(
        200, "qemu-system-x86", argv, exe=QEMU,
        fds={**KVM_FDS, 7: "/dev/net/tun", 8: "/dev/net/tun",
             10: str(image), 11: LOOP},
        threads={200: "qemu", 201: "CPU 0/KVM", 202: "CPU 1/KVM"},
        utime=300, stime=120,
        status="VmRSS:\t 30000 kB\nHugetlbPages:\t 2097152 kB\n")
    (d / "stat").write_text(stat_line(200, "qemu-system-x86", utime=300,
                                      stime=120, guest=77))
    host.kthread(300, "vhost-200", 111_000)
    host.kthread(301, "vhost-200", 222_000)
    host.tap(200, 7, "vnet0", {"rx_bytes": 1, "rx_packets": 2,
                               "rx_errors": 3, "rx_dropped": 4,
                               "tx_bytes": 5, "tx_packets": 6,
                               "tx_errors": 7, "tx_dropped": 8})
    host.tap(200, 8, "vnet1", {"rx_bytes": 2 ** 60, "tx_bytes": 9})
    st = os.stat(LOOP)
    blk = host.sys / f"dev/block/{os.major(st.st_rdev)}:" \
        f"{os.minor(st.st_rdev)}"
    blk.mkdir(parents=True)
    (blk / "size").write_text("2048\n")
    (blk / "stat").write_text("11 0 22 0 33 0 44 0 0 0 0\n")
    kdir = host.debug / "kvm/200-4"
    kdir.mkdir(parents=True)
    (kdir / "pages_4k").write_text("512\n")
    (kdir / "exits").write_text("7\n")


def test_full_vm_samples_are_the_reference_bytes(host, tmp_path):
    if not os.path.exists(LOOP):
        pytest.skip(f"needs a block device at {LOOP}")
    full_vm(host, tmp_path)
    with prober_for(host) as p:
        p.discover()
        [vm] = p.vms()
        assert len(vm.disks) == 2 and len(vm.vhost_pids) == 2
        [first] = assert_same_bytes(p)
        [second] = assert_same_bytes(p)
    # every optional part was there to compare
    assert {"guest_ns", "vhost_ns", "vcpus"} <= set(first["cpu"])
    assert "hugetlb_bytes" in first["mem"] and first["io"]
    assert [len(n) for n in first["nics"]] == [10, 9]
    assert "rd_ops" in first["disks"][1]
    assert first["kvm"] == {"exits": 7, "pages_4k": 512}
    assert "kvm" not in second  # debugfs is read at the open only


def test_bare_vms_samples_are_the_reference_bytes(host):
    host.process(400, "firecracker", ["firecracker", "--id", "fc1"],
                 exe="/usr/bin/firecracker", fds=KVM_FDS, utime=3,
                 threads={400: "firecracker", 401: "fc_vcpu 0"},
                 status="Name:\tfirecracker\n",
                 io="rchar: 1\nwchar: 2\nsyscr: 3\nsyscw: 4\n")
    host.process(600, "qemu-system-x86", ["qemu", "-smp", "4"],
                 exe=QEMU, fds={3: "/dev/null"},
                 threads={600: "qemu", 601: "ALL CPUs/TCG"})
    with prober_for(host) as p:
        assert len(p.discover()) == 2
        assert len(assert_same_bytes(p)) == 2


def test_items_failing_after_the_open_are_left_out_alike(host, tmp_path):
    full_vm(host, tmp_path) if os.path.exists(LOOP) else host.process(
        200, "qemu", ["qemu", "-smp", "2"], exe=QEMU, fds=KVM_FDS,
        threads={200: "qemu", 201: "CPU 0/KVM", 202: "CPU 1/KVM"})
    with prober_for(host) as p:
        p.discover()
        # a vCPU's schedstat and a disk's stat turn unreadable, the status
        # file loses VmRSS, a tap leaves net/dev
        (host.proc / "200/task/202/schedstat").write_text("x\n")
        (host.proc / "200/status").write_text("Name:\tqemu\n")
        for blk in host.sys.glob("dev/block/*/stat"):
            blk.write_text("x\n")
        host.net_devs.pop("vnet1", None)
        host.write_net_dev()
        [sample] = assert_same_bytes(p)
        assert p._metered[200].stale
    assert [v["id"] for v in sample["cpu"]["vcpus"]] == [0]
