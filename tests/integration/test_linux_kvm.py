"""The Linux probes against real KVM guests, compared with the kernel's own
files read independently (docs/architecture.md, "Tests")."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from integration.conftest import HOST_ID, wait_for_vm
from integration.guests import (
    new_uuid,
    qcow2_image,
    raw_image,
    send_frames,
    tap_counters,
)
from vmagent.identity import derived_vm_uuid
from vmagent.probes import Prober

pytestmark = pytest.mark.realguest

TICK_NS = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
MIB = 1 << 20


def proc_stat(pid: int) -> list[str]:
    """proc(5) fields of /proc/<pid>/stat, 1-based (index 0 unused)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    head, rest = text.rsplit(")", 1)
    return ["", head.split(" (", 1)[0], "comm", *rest.split()]


def schedstat(pid: int, tid: int) -> tuple[int, int]:
    path = Path(f"/proc/{pid}/task/{tid}/schedstat")
    run, wait, _ = path.read_text().split()
    return int(run), int(wait)


def sample_of(prober, pid):
    sweep = prober.sample()
    assert not sweep.failed
    return next((s for vm, s in sweep.samples if vm.pid == pid), None)


@pytest.fixture
def two_guests(guests, taps, tmp_path):
    g1 = guests(name="alpha", uuid=new_uuid(), taps=taps(2),
                disks=[raw_image(tmp_path / "alpha.img", 64 * MIB)])
    g2 = guests(name="beta", uuid=new_uuid(),
                disks=[raw_image(tmp_path / "beta.img", 32 * MIB),
                       qcow2_image(tmp_path / "beta.qcow2", 3 << 30)])
    return g1, g2


def test_both_guests_found_with_name_uuid_vcpus_and_memory(prober, two_guests):
    for g in two_guests:
        vm = wait_for_vm(prober, g.pid)
        assert vm.ref.name == g.name
        assert vm.ref.uuid == g.uuid
        assert vm.ref.hypervisor == "kvm"
        assert vm.vcpus == 2
        assert vm.alloc_bytes == 64 * MIB
        assert [t.id for t in vm.vcpu_threads] == [0, 1]
        assert {t.id_source for t in vm.vcpu_threads} == {"thread-name"}


def test_counters_equal_procfs_read_independently(prober, two_guests):
    g1, _ = two_guests
    vm = wait_for_vm(prober, g1.pid)
    with g1.frozen():  # nothing moves while both read
        f = proc_stat(g1.pid)
        status = Path(f"/proc/{g1.pid}/status").read_text()
        io = dict(line.split(": ") for line in
                  Path(f"/proc/{g1.pid}/io").read_text().splitlines())
        runs = {t.id: schedstat(g1.pid, t.tid) for t in vm.vcpu_threads}
        kvm = {name: int(Path(path).read_text()) for name, path in
               vm.kvm_stats}
        s = sample_of(prober, g1.pid)
    cpu = s["cpu"]
    assert cpu["user_ns"] == int(f[14]) * TICK_NS
    assert cpu["system_ns"] == int(f[15]) * TICK_NS
    assert cpu["total_ns"] == (int(f[14]) + int(f[15])) * TICK_NS
    assert cpu["guest_ns"] == int(f[43]) * TICK_NS
    assert [v["id"] for v in cpu["vcpus"]] == [0, 1]
    for v in cpu["vcpus"]:
        assert (v["run_ns"], v["wait_ns"]) == runs[v["id"]]
    assert sum(v["run_ns"] for v in cpu["vcpus"]) > 0
    rss_kb = next(int(line.split()[1]) for line in status.splitlines()
                  if line.startswith("VmRSS:"))
    assert s["mem"]["rss_bytes"] == rss_kb * 1024
    assert s["mem"]["alloc_bytes"] == 64 * MIB
    assert s["mem"]["hugetlb_bytes"] == 0
    assert s["io"] == {"rd_bytes": int(io["read_bytes"]),
                       "wr_bytes": int(io["write_bytes"])}
    assert s.get("kvm", {}) == kvm
    if os.path.isdir("/sys/kernel/debug/kvm"):  # pages_* are readable here
        assert {"pages_4k", "pages_2m", "pages_1g"} <= set(kvm)


def test_cpu_counters_never_go_backwards_within_a_gen(prober, two_guests):
    g1, _ = two_guests
    wait_for_vm(prober, g1.pid)
    prev = sample_of(prober, g1.pid)
    for _ in range(20):
        cur = sample_of(prober, g1.pid)
        assert cur["vm"]["gen"] == prev["vm"]["gen"]
        assert cur["cpu"]["total_ns"] >= prev["cpu"]["total_ns"]
        for a, b in zip(prev["cpu"]["vcpus"], cur["cpu"]["vcpus"]):
            assert b["run_ns"] >= a["run_ns"]
        prev = cur


def test_nics_are_the_taps_in_the_guests_view(prober, two_guests):
    g1, g2 = two_guests
    wait_for_vm(prober, g1.pid)
    send_frames(g1.taps[1], 7, 100)  # host -> guest: the tap transmits
    s = sample_of(prober, g1.pid)
    assert [n["name"] for n in s["nics"]] == g1.taps
    assert [n["mac"] for n in s["nics"]] == [g1.mac(0), g1.mac(1)]
    for nic in s["nics"]:
        tap = tap_counters(nic["name"])  # nothing else moves (IPv6 off)
        assert nic["rx_bytes"] == tap["tx_bytes"]
        assert nic["rx_packets"] == tap["tx_packets"]
        assert nic["rx_errors"] == tap["tx_errors"]
        assert nic["rx_drops"] == tap["tx_dropped"]
        assert nic["tx_bytes"] == tap["rx_bytes"]
        assert nic["tx_packets"] == tap["rx_packets"]
        assert nic["tx_errors"] == tap["rx_errors"]
        assert nic["tx_drops"] == tap["rx_dropped"]
    # tun counts a frame as transmitted when QEMU reads it; SeaBIOS has no
    # receive queue, so QEMU reads at most one and waits (exact counts: the
    # Linux test guest); the mapping above is what this test checks
    assert s["nics"][1]["rx_packets"] <= 7
    assert s["nics"][1]["rx_bytes"] == 100 * s["nics"][1]["rx_packets"]
    assert s["nics"][0]["rx_packets"] == 0
    wait_for_vm(prober, g2.pid)
    assert sample_of(prober, g2.pid)["nics"] == []


def test_disks_listed_with_capacity_and_allocation(prober, two_guests,
                                                   tmp_path):
    g1, g2 = two_guests
    for g in two_guests:
        wait_for_vm(prober, g.pid)
    d1 = sample_of(prober, g1.pid)["disks"]
    assert d1 == [{"path": str(tmp_path / "alpha.img"),
                   "capacity_bytes": 64 * MIB,
                   "allocated_bytes": os.stat(g1.disks[0]).st_blocks * 512}]
    d2 = {d["path"]: d for d in sample_of(prober, g2.pid)["disks"]}
    assert sorted(d2) == sorted(str(p) for p in g2.disks)
    assert d2[str(tmp_path / "beta.img")]["capacity_bytes"] == 32 * MIB
    qcow2 = d2[str(tmp_path / "beta.qcow2")]
    assert qcow2["capacity_bytes"] == 3 << 30  # the virtual size
    for path in g2.disks:
        assert d2[str(path)]["allocated_bytes"] == \
            os.stat(path).st_blocks * 512


def test_killed_vm_is_gone_and_the_other_still_sampled(prober, two_guests):
    _, g2 = two_guests
    for g in two_guests:
        wait_for_vm(prober, g.pid)
    g2.kill(reap=False)  # a zombie until reaped: already gone for billing
    sweep = prober.sample()
    assert [vm.ref.name for vm in sweep.gone] == ["beta"]
    assert [vm.ref.name for vm, _ in sweep.samples] == ["alpha"]
    assert not sweep.failed
    g2.kill()  # reap
    prober.discover()
    sweep = prober.sample()
    assert [vm.ref.name for vm, _ in sweep.samples] == ["alpha"]
    assert sweep.gone == []
    assert [vm.ref.name for vm in prober.vms()] == ["alpha"]


def test_restarted_vm_keeps_uuid_and_gets_a_new_gen(prober, guests, tmp_path):
    uuid = new_uuid()
    first = guests(name="gamma", uuid=uuid)
    vm1 = wait_for_vm(prober, first.pid)
    first.kill()
    assert [vm.ref for vm in prober.sample().gone] == [vm1.ref]
    second = guests(name="gamma", uuid=uuid)
    vm2 = wait_for_vm(prober, second.pid)
    assert vm2.ref.uuid == vm1.ref.uuid == uuid
    assert vm2.ref.gen != vm1.ref.gen
    assert vm2.ref.gen.endswith(f"-{second.pid}-{vm2.start_mark}")


def test_vm_without_uuid_gets_the_same_derived_uuid_after_restart(
        prober, guests):
    first = guests(name="delta", uuid=None)
    vm1 = wait_for_vm(prober, first.pid)
    first.kill()
    prober.sample()
    second = guests(name="delta", uuid=None)
    vm2 = wait_for_vm(prober, second.pid)
    assert vm1.ref.uuid == vm2.ref.uuid == derived_vm_uuid(HOST_ID, "delta")
    assert vm1.ref.gen != vm2.ref.gen


def test_software_emulated_qemu_is_a_vm_of_hypervisor_qemu(prober, guests):
    g = guests(name="tcg", uuid=new_uuid(), accel="tcg", vcpus=1)
    vm = wait_for_vm(prober, g.pid)
    assert vm.ref.hypervisor == "qemu"
    assert vm.vcpus == 1
    s = sample_of(prober, g.pid)
    assert s["vm"]["hypervisor"] == "qemu"
    assert "kvm" not in s


def test_unnamed_vcpu_threads_fall_back_to_debugfs(prober, guests):
    if not os.path.isdir("/sys/kernel/debug/kvm"):
        pytest.skip("debugfs is not mounted at /sys/kernel/debug")
    g = guests(name="plain", uuid=new_uuid(), named_threads=False)
    vm = wait_for_vm(prober, g.pid)
    assert [t.id for t in vm.vcpu_threads] == [0, 1]
    assert {t.id_source for t in vm.vcpu_threads} == {"debugfs"}
    for t in vm.vcpu_threads:
        kvm_dirs = [d for d in os.listdir("/sys/kernel/debug/kvm")
                    if d.startswith(f"{g.pid}-")]
        pid_file = f"/sys/kernel/debug/kvm/{kvm_dirs[0]}/vcpu{t.id}/pid"
        assert int(Path(pid_file).read_text()) == t.tid
    s = sample_of(prober, g.pid)
    assert [v["id"] for v in s["cpu"]["vcpus"]] == [0, 1]


def test_vms_command_shows_the_real_guest(guests, taps, tmp_path):
    import json
    import subprocess
    import sys

    g = guests(name="cli-guest", uuid=new_uuid(), taps=taps(1))
    cfg = tmp_path / "vmagent.toml"
    cfg.write_text(f'[agent]\nstate_dir = "{tmp_path / "state"}"\n')
    with Prober(HOST_ID) as p:
        wait_for_vm(p, g.pid)  # started and complete
    cmd = [sys.executable, "-m", "vmagent.cli", "vms", "-c", str(cfg)]
    out = subprocess.run([*cmd, "--json"], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    [mine] = [v for v in json.loads(out) if v["pid"] == g.pid]
    assert mine["vm"]["uuid"] == g.uuid
    assert [n["name"] for n in mine["nics"]] == g.taps
    assert len(mine["cpu"]["vcpus"]) == 2
    table = subprocess.run(cmd, capture_output=True, text=True, check=True,
                           timeout=60).stdout
    [line] = [ln for ln in table.splitlines() if g.uuid in ln]
    assert line.split()[:4] == ["cli-guest", g.uuid, str(g.pid), "2"]
