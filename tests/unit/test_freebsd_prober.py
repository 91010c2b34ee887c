"""The FreeBSD Prober's logic on a fake kernel that hands over byte-exact
buffers (the encoders of test_bhyve_decoders); the syscall layer itself has
never run here (docs/freebsd.md)."""

from __future__ import annotations

import errno
import struct
from dataclasses import replace

import pytest

from unit.test_bhyve_decoders import (
    CONFXML,
    devstat,
    devstat_pages,
    if_data,
    kinfo_file,
    stats13,
    stats14,
)
from vmagent.config import ProbesConfig
from vmagent.identity import derived_vm_uuid
from vmagent.probes import bhyve, freebsd
from vmagent.probes.freebsd_kernel import Proc, Thread

BOOT = 1_790_000_000_000_000
DESCS = ["vcpu total runtime", "total number of vm exits",
         "number of times hlt was intercepted", "Resident memory"]


class FakeKernel:
    def __init__(self) -> None:
        self.procs: dict[int, Proc] = {}
        self.thread_map: dict[int, list[Thread]] = {}
        self.files: dict[int, bytes] = {}
        self.stats: dict[tuple[str, int], list[int]] = {}
        self.taps: dict[str, bytes] = {}
        self.sizes: dict[str, tuple[int, int]] = {}
        self.uuids: dict[str, str] = {}
        self.sysmem: dict[str, int] = {}
        self.stat_calls: list[tuple[str, int]] = []
        self.stats_error: int | None = None
        self.layout = bhyve.LAYOUT_14
        self.forgotten: list[str] = []
        self.devstats = devstat_pages()
        self.racct_text: str | None = None

    def boot_time_us(self): return BOOT
    def tsc_freq(self): return 2_000_000_000
    def bhyve_processes(self): return list(self.procs.values())
    def process(self, pid): return self.procs.get(pid)
    def threads(self, pid): return self.thread_map.get(pid, [])
    def filedesc(self, pid): return self.files[pid]
    def if_data(self, ifname): return self.taps.get(ifname)
    def file_size(self, path): return self.sizes.get(path)
    def manager_uuid(self, name): return self.uuids.get(name)
    def geom_confxml(self): return CONFXML
    def racct(self, pid): return self.racct_text
    def devstat(self): return 4096, self.devstats
    def sysmem_bytes(self, vm): return self.sysmem.get(vm)
    def forget(self, vm): self.forgotten.append(vm)

    def vm_stats(self, vm, cpu, index):
        self.stat_calls.append((vm, cpu))
        if self.stats_error:
            raise OSError(self.stats_error, "injected")
        values = self.stats[(vm, cpu)]
        if self.layout == bhyve.LAYOUT_13:
            return self.layout, stats13(cpu=cpu, values=values)
        return self.layout, stats14(cpu=cpu, index=index, values=values)

    def stat_desc(self, vm, index):
        return struct.pack("<i128s", index, DESCS[index].encode())


def proc(pid=700, start=BOOT + 5_000_000, title="bhyve: web01", runtime=3e6):
    return Proc(pid=pid, comm="bhyve", title=title, uid=0, start_us=start,
                runtime_us=int(runtime), utime_us=2_000_000,
                stime_us=1_000_000, inblock=11, oublock=22,
                rss_bytes=50 << 20)


@pytest.fixture
def kernel(monkeypatch):
    k = FakeKernel()
    k.procs[700] = proc()
    k.thread_map[700] = [Thread(701, "mevent", 10), Thread(702, "vcpu 0",
                                                           1_500_000),
                         Thread(703, "vcpu 1", 900_000),
                         Thread(704, "blk-4:0-0", 5, 7, 9),
                         Thread(705, "blk-4:0-1", 5, 1, 2)]
    k.files[700] = b"".join([kinfo_file(3, "/dev/vmm/web01"),
                             kinfo_file(4, "/dev/tap3"),
                             kinfo_file(5, "/vm/web01/disk0.img")])
    k.stats[("web01", 0)] = [2_000_000_000, 100, 40, 1 << 30]
    k.stats[("web01", 1)] = [1_000_000_000, 50, 20, 0]
    k.taps["tap3"] = if_data(ipk=10, ibytes=1000, opk=20, obytes=3000)
    k.sizes["/vm/web01/disk0.img"] = (20 << 30, 3 << 30)
    k.uuids["web01"] = "8e0b6b1c-3a5d-4f7e-9c2b-1d2e3f4a5b6c"
    k.sysmem["web01"] = 2 << 30
    monkeypatch.setattr(freebsd.Prober, "_kernel_factory",
                        staticmethod(lambda: k))
    return k


def test_a_bhyve_vm_is_found_with_name_uuid_gen_and_devices(kernel):
    with freebsd.Prober("h1") as p:
        [vm] = p.discover()
    assert vm.ref.name == "web01" and vm.ref.hypervisor == "bhyve"
    assert vm.ref.uuid == "8e0b6b1c-3a5d-4f7e-9c2b-1d2e3f4a5b6c"
    assert vm.ref.gen == f"{BOOT}-700-{BOOT + 5_000_000}"
    assert p.boot_id == str(BOOT)  # the daemon's agent_start boot_id
    assert [t.id for t in vm.vcpu_threads] == [0, 1]
    assert [n.name for n in vm.nics] == ["tap3"]
    assert [d.path for d in vm.disks] == ["/vm/web01/disk0.img"]


def test_without_a_vm_manager_config_the_uuid_is_derived(kernel):
    kernel.uuids.clear()
    with freebsd.Prober("h1") as p:
        [vm] = p.discover()
    assert vm.ref.uuid == derived_vm_uuid("h1", "web01")


def test_a_sample_in_the_record_shapes(kernel):
    with freebsd.Prober("h1") as p:
        p.discover()
        [(_, s)] = p.sample().samples
    assert s["cpu"]["total_ns"] == 3_000_000_000
    assert (s["cpu"]["user_ns"], s["cpu"]["system_ns"]) == (2 * 10**9, 10**9)
    # guest_ns: VM_STATS "vcpu total runtime" / tsc_freq (2 GHz)
    assert s["cpu"]["vcpus"] == [
        {"id": 0, "run_ns": 1_500_000_000, "guest_ns": 1_000_000_000},
        {"id": 1, "run_ns": 900_000_000, "guest_ns": 500_000_000}]
    assert s["cpu"]["guest_ns"] == 1_500_000_000
    assert s["mem"] == {"rss_bytes": 1 << 30}  # vmm "Resident memory"
    [nic] = s["nics"]
    assert (nic["rx_packets"], nic["rx_bytes"]) == (20, 3000)  # tap out
    assert (nic["tx_packets"], nic["tx_bytes"]) == (10, 1000)  # tap in
    assert s["io"] == {"rd_ops": 11, "wr_ops": 22}
    assert s["disks"] == [{"path": "/vm/web01/disk0.img",
                           "capacity_bytes": 20 << 30,
                           "allocated_bytes": 3 << 30,
                           "rd_ops": 8, "wr_ops": 11}]  # its blk threads
    assert s["kvm"] == {"exits": 150, "halt_exits": 60}


def test_vm_stats_only_for_real_vcpus_and_at_most_every_10s(kernel):
    with freebsd.Prober("h1") as p:
        p.discover()
        p.sample()
        p.sample()
    assert kernel.stat_calls == [("web01", 0), ("web01", 1)]


@pytest.mark.parametrize("code", [errno.ENOTTY, errno.EPERM, errno.ENXIO])
def test_vm_stats_refused_still_samples_the_rest(kernel, code):
    kernel.stats_error = code
    with freebsd.Prober("h1") as p:
        p.discover()
        [(_, s)] = p.sample().samples
    assert s["mem"] == {"rss_bytes": 50 << 20}  # the process's own RSS
    assert "kvm" not in s


def test_exit_and_pid_reuse_are_gone(kernel):
    with freebsd.Prober("h1") as p:
        [vm] = p.discover()
        kernel.procs[700] = proc(start=BOOT + 9_000_000)  # pid reused
        assert [v.ref for v in p.sample().gone] == [vm.ref]
        [again] = p.discover()
        assert again.ref.gen != vm.ref.gen
        del kernel.procs[700]
        assert [v.ref for v in p.sample().gone] == [again.ref]


def test_a_bhyve_process_without_a_vmm_device_is_no_vm(kernel):
    kernel.files[700] = kinfo_file(0, "/dev/null")
    with freebsd.Prober("h1") as p:
        assert p.discover() == []


def test_a_hotplugged_tap_is_a_change(kernel):
    with freebsd.Prober("h1", ProbesConfig(rescan_s=0)) as p:
        p.discover()
        kernel.files[700] += kinfo_file(6, "/dev/tap9")
        p.discover()
        [(before, after)] = p.changes()
    assert [n.name for n in before.nics] == ["tap3"]
    assert [n.name for n in after.nics] == ["tap3", "tap9"]
    assert after.ref == before.ref


def test_the_configured_memory_is_the_guests_system_memory(kernel):
    with freebsd.Prober("h1") as p:
        [vm] = p.discover()
    assert vm.alloc_bytes == 2 << 30


def test_a_13_kernel_reply_is_read_in_one_call_per_vcpu(kernel):
    kernel.layout = bhyve.LAYOUT_13
    with freebsd.Prober("h1") as p:
        p.discover()
        [(_, s)] = p.sample().samples
    assert kernel.stat_calls == [("web01", 0), ("web01", 1)]
    assert s["kvm"] == {"exits": 150, "halt_exits": 60}
    assert s["mem"] == {"rss_bytes": 1 << 30}


def test_an_exited_unreaped_vm_gives_its_final_counters_then_is_gone(kernel):
    with freebsd.Prober("h1") as p:
        [vm] = p.discover()
        p.sample()
        kernel.procs[700] = replace(proc(runtime=7e6), zombie=True)
        sweep = p.sample()
        assert [v.ref for v in sweep.gone] == [vm.ref]
        [(_, final)] = sweep.samples
        assert final["cpu"]["total_ns"] == 7_000_000_000
        assert kernel.forgotten == ["web01"]  # its /dev/vmm fd is closed
        assert p.sample().samples == [] and p.vms() == []


def test_a_reaped_vm_is_gone_without_a_sample(kernel):
    with freebsd.Prober("h1") as p:
        [vm] = p.discover()
        del kernel.procs[700]
        sweep = p.sample()
    assert sweep.samples == [] and [v.ref for v in sweep.gone] == [vm.ref]


def test_a_zvol_has_its_size_and_devstat_totals(kernel):
    kernel.files[700] += kinfo_file(6, "/dev/zvol/tank/web01-disk1")
    kernel.sizes["/dev/zvol/tank/web01-disk1"] = (50 << 30, None)
    kernel.thread_map[700].append(Thread(706, "blk-5:0-0", 1, 3, 4))
    kernel.devstats = devstat_pages(devstat(0xFFFFF80003A1B200,
                                            rd=(8192, 2), wr=(4096, 1)))
    with freebsd.Prober("h1") as p:
        p.discover()
        [(_, s)] = p.sample().samples
    assert s["disks"][0]["rd_ops"] == 8  # an image file: its blk threads
    assert s["disks"][1] == {"path": "/dev/zvol/tank/web01-disk1",
                             "capacity_bytes": 50 << 30,
                             "rd_bytes": 8192, "wr_bytes": 4096,
                             "rd_ops": 2, "wr_ops": 1}


def test_a_disk_device_unknown_to_geom_has_its_blk_thread_ops(kernel):
    kernel.files[700] += kinfo_file(6, "/dev/zvol/tank/devmode-vol")
    kernel.thread_map[700].append(Thread(706, "blk-5:0-0", 1, 3, 4))
    with freebsd.Prober("h1") as p:
        p.discover()
        [(_, s)] = p.sample().samples
    assert s["disks"][1] == {"path": "/dev/zvol/tank/devmode-vol",
                             "rd_ops": 3, "wr_ops": 4}


def test_block_ops_per_disk_only_when_slots_and_disks_agree(kernel):
    kernel.files[700] += kinfo_file(6, "/vm/web01/disk1.img")
    with freebsd.Prober("h1") as p:
        p.discover()
        [(_, s)] = p.sample().samples
    assert [set(d) for d in s["disks"]] == [{"path", "capacity_bytes",
                                             "allocated_bytes"}, {"path"}]
    assert s["io"] == {"rd_ops": 11, "wr_ops": 22}  # the process's, still


def test_racct_io_is_a_one_second_gauge_where_racct_is_on(kernel):
    with freebsd.Prober("h1") as p:
        p.discover()
        [(_, off)] = p.sample().samples
        kernel.racct_text = ("cputime=3,memoryuse=52428800,readbps=4096,"
                             "writebps=8192,readiops=1,writeiops=2,pcpu=0")
        [(_, on)] = p.sample().samples
    assert "activity" not in off
    assert on["activity"] == {"rd_bytes_1s": 4096, "wr_bytes_1s": 8192,
                              "rd_ops_1s": 1, "wr_ops_1s": 2}
    assert on["io"] == {"rd_ops": 11, "wr_ops": 22}  # totals stay rusage's
