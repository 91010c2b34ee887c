"""The Linux Prober on fixture trees: the edge cases a real guest on this
host cannot show.  Real guests are in tests/integration."""

from __future__ import annotations

import os
import time

import pytest

from unit.fake_procfs import BOOT_ID, FakeHost
from vmagent.config import ProbesConfig
from vmagent.identity import derived_vm_uuid
from vmagent.probes.linux import NS_PER_TICK, Prober

QEMU = "/usr/bin/qemu-system-x86_64"
KVM_FDS = {3: "/dev/kvm", 4: "anon_inode:kvm-vm", 5: "anon_inode:kvm-vcpu:0"}


@pytest.fixture
def host(tmp_path):
    return FakeHost(tmp_path)


def prober_for(host: FakeHost) -> Prober:
    return Prober("h1", options_for(host))


def options_for(host: FakeHost, **kw) -> ProbesConfig:
    return ProbesConfig(procfs=str(host.proc), sysfs=str(host.sys),
                        debugfs=str(host.debug), **kw)


def only_sample(prober):
    sweep = prober.sample()
    assert not sweep.failed and not sweep.gone
    [(vm, sample)] = sweep.samples
    return vm, sample


def test_plain_processes_and_kernel_threads_are_not_vms(host):
    host.process(10, "bash", ["bash"], exe="/bin/bash",
                 fds={0: "/dev/pts/0"})
    host.kthread(11, "kworker/0:1", 5)
    with prober_for(host) as p:
        assert p.discover() == []
        assert p.sample().samples == []


def test_vhost_kernel_threads_outside_the_process_are_vhost_ns(host):
    host.process(200, "qemu-system-x86", ["qemu", "-name", "v", "-smp", "1"],
                 exe=QEMU, fds=KVM_FDS,
                 threads={200: "qemu", 201: "CPU 0/KVM"})
    host.kthread(300, "vhost-200", 111_000)
    host.kthread(301, "vhost-200", 222_000)
    host.kthread(302, "vhost-999", 1)  # another process's worker
    with prober_for(host) as p:
        p.discover()
        assert [vm.vhost_pids for vm in p.vms()] == [(300, 301)]
        _, s = only_sample(p)
    assert s["cpu"]["vhost_ns"] == 333_000
    assert s["cpu"]["vcpus"] == [{"id": 0, "run_ns": 201_000, "wait_ns": 201}]


def test_without_vhost_kernel_threads_vhost_ns_is_absent(host):
    host.process(200, "qemu-system-x86", ["qemu", "-name", "v"], exe=QEMU,
                 fds=KVM_FDS)
    with prober_for(host) as p:
        p.discover()
        _, s = only_sample(p)
    assert "vhost_ns" not in s["cpu"]


def test_hugetlb_backed_memory_is_reported_beside_rss(host):
    host.process(200, "qemu", ["qemu", "-m", "2G"], exe=QEMU, fds=KVM_FDS,
                 status="VmRSS:\t 30000 kB\nHugetlbPages:\t 2097152 kB\n")
    with prober_for(host) as p:
        p.discover()
        _, s = only_sample(p)
    assert s["mem"] == {"rss_bytes": 30000 * 1024, "alloc_bytes": 2 << 30,
                        "hugetlb_bytes": 2 << 30}


def test_kernel_without_io_accounting_gives_no_io_keys(host):
    host.process(200, "qemu", ["qemu"], exe=QEMU, fds=KVM_FDS,
                 io="rchar: 1\nwchar: 2\nsyscr: 3\nsyscw: 4\n")
    with prober_for(host) as p:
        p.discover()
        _, s = only_sample(p)
    assert s["io"] == {}


def test_firecracker_is_metered_at_process_level(host):
    host.process(400, "firecracker", ["firecracker", "--api-sock", "/s",
                                      "--id", "fc1"],
                 exe="/usr/bin/firecracker", fds=KVM_FDS, utime=30, stime=12,
                 threads={400: "firecracker", 401: "fc_vcpu 0",
                          402: "fc_vcpu 1"})
    with prober_for(host) as p:
        [vm] = p.discover()
        _, s = only_sample(p)
    assert vm.ref.name == "fc1"
    assert vm.ref.uuid == derived_vm_uuid("h1", "fc1")
    assert vm.ref.hypervisor == "kvm"
    assert vm.ref.gen == f"{BOOT_ID}-400-100"
    assert s["cpu"]["total_ns"] == 42 * NS_PER_TICK
    assert [v["id"] for v in s["cpu"]["vcpus"]] == [0, 1]
    assert "alloc_bytes" not in s["mem"]


def test_vm_without_any_name_is_named_after_command_and_pid(host):
    host.process(500, "cloud-hypervisor", ["cloud-hypervisor"],
                 exe="/usr/bin/cloud-hypervisor", fds=KVM_FDS)
    with prober_for(host) as p:
        [vm] = p.discover()
    assert vm.ref.name == "cloud-hypervisor-500"


def test_single_threaded_tcg_has_no_per_vcpu_entries(host):
    host.process(600, "qemu-system-x86", ["qemu", "-smp", "4", "-name", "t"],
                 exe=QEMU, fds={3: "/dev/null"},
                 threads={600: "qemu", 601: "ALL CPUs/TCG"})
    with prober_for(host) as p:
        [vm] = p.discover()
        _, s = only_sample(p)
    assert vm.complete
    assert vm.ref.hypervisor == "qemu"
    assert "vcpus" not in s["cpu"]


def test_tap_counters_swapped_and_fd_mac_from_libvirt_json(host):
    argv = ["qemu", "-netdev", '{"type":"tap","fd":"7","id":"hostnet0"}',
            "-device", '{"driver":"virtio-net-pci","netdev":"hostnet0",'
                       '"mac":"52:54:00:aa:bb:cc"}']
    host.process(700, "qemu", argv, exe=QEMU,
                 fds={**KVM_FDS, 7: "/dev/net/tun", 8: "/dev/net/tun"})
    counters = {"rx_bytes": 1, "rx_packets": 2, "rx_errors": 3,
                "rx_dropped": 4, "tx_bytes": 5, "tx_packets": 6,
                "tx_errors": 7, "tx_dropped": 8}
    host.tap(700, 7, "vnet0", counters)
    host.tap(700, 8, "vnet0", counters)  # a second queue of the same tap
    with prober_for(host) as p:
        p.discover()
        _, s = only_sample(p)
    assert s["nics"] == [{
        "name": "vnet0", "mac": "52:54:00:aa:bb:cc",
        "rx_bytes": 5, "rx_packets": 6, "rx_errors": 7, "rx_drops": 8,
        "tx_bytes": 1, "tx_packets": 2, "tx_errors": 3, "tx_drops": 4}]


def test_tap_counters_from_one_net_dev_read_per_sweep(host):
    host.process(700, "qemu", ["qemu"], exe=QEMU,
                 fds={**KVM_FDS, 7: "/dev/net/tun"})
    host.tap(700, 7, "vnet0", {"rx_bytes": 1, "tx_bytes": 2})
    with prober_for(host) as p:
        p.discover()
        _, s = only_sample(p)
        assert (s["nics"][0]["rx_bytes"], s["nics"][0]["tx_bytes"]) == (2, 1)
        # sysfs statistics/ is no longer read: only net/dev counts
        (host.sys / "class/net/vnet0/statistics/tx_bytes").write_text("99\n")
        host.net_devs["vnet0"] = {"rx_bytes": 10, "tx_bytes": 20}
        host.write_net_dev()
        _, s = only_sample(p)
        assert (s["nics"][0]["rx_bytes"], s["nics"][0]["tx_bytes"]) == \
            (20, 10)


def test_tap_gone_from_net_dev_is_left_out_and_looked_at_again(host):
    host.process(700, "qemu", ["qemu"], exe=QEMU,
                 fds={**KVM_FDS, 7: "/dev/net/tun"})
    host.tap(700, 7, "vnet0", {"rx_bytes": 1})
    with prober_for(host) as p:
        [vm] = p.discover()
        assert [n.name for n in vm.nics] == ["vnet0"]
        del host.net_devs["vnet0"]
        host.write_net_dev()
        _, s = only_sample(p)
        assert s["nics"] == []
        # the layout is looked at again: the tap is still in sysfs here
        p.discover()
        assert [n.name for n in p.vms()[0].nics] == ["vnet0"]


def test_disk_is_the_file_opened_at_discovery_until_the_rescan(host,
                                                               tmp_path):
    first, second = tmp_path / "a.raw", tmp_path / "b.raw"
    first.write_bytes(b"\0" * 4096)
    second.write_bytes(b"\0" * 8192)
    host.process(800, "qemu", ["qemu"], exe=QEMU,
                 fds={**KVM_FDS, 10: str(first)})
    with Prober("h1", options_for(host, rescan_s=3600)) as p:
        p.discover()
        # the fd number now names another file: fstat of the O_PATH fd
        # still sees the first one, a stat() by path would not
        os.unlink(host.proc / "800/fd/10")
        os.symlink(second, host.proc / "800/fd/10")
        _, s = only_sample(p)
        assert s["disks"][0]["path"] == str(first)
        assert s["disks"][0]["capacity_bytes"] == 4096
        p.rescan_s = 0  # the rescan looks at the fds again
        p.discover()
        _, s = only_sample(p)
        assert [d["path"] for d in s["disks"]] == [str(second)]
        assert s["disks"][0]["capacity_bytes"] == 8192
        assert [(old.disks[0].path, new.disks[0].path)
                for old, new in p.changes()] == [(str(first), str(second))]


def test_tap_missing_from_this_sysfs_is_left_out(host):
    host.process(700, "qemu", ["qemu"], exe=QEMU,
                 fds={**KVM_FDS, 7: "/dev/net/tun"})
    (host.proc / "700/fdinfo/7").write_text("flags:\t02\niff:\tnetns0\n")
    with prober_for(host) as p:
        [vm] = p.discover()
    assert vm.nics == ()


def test_files_that_are_not_disks_are_left_out(host, tmp_path):
    image = tmp_path / "disk.raw"
    image.write_bytes(b"\0" * 4096)
    log = tmp_path / "qemu.log"
    log.write_text("")
    fds = {**KVM_FDS, 10: str(image), 11: str(log),
           12: "/dev/hugepages/qemu_back_mem.pc.ram.abc (deleted)",
           13: "/memfd:pc.ram (deleted)", 14: "pipe:[123]", 15: "/dev/null"}
    host.process(800, "qemu", ["qemu"], exe=QEMU, fds=fds)
    (host.proc / "800/fdinfo/11").write_text("pos:\t0\nflags:\t0102001\n")
    with prober_for(host) as p:
        [vm] = p.discover()
        _, s = only_sample(p)
    assert [d.path for d in vm.disks] == [str(image)]
    assert s["disks"] == [{"path": str(image), "capacity_bytes": 4096,
                           "allocated_bytes": os.stat(image).st_blocks * 512}]


def test_exited_vm_is_gone_and_others_still_sampled(host):
    host.process(900, "qemu", ["qemu", "-name", "a"], exe=QEMU, fds=KVM_FDS)
    host.process(901, "qemu", ["qemu", "-name", "b"], exe=QEMU, fds=KVM_FDS)
    with prober_for(host) as p:
        assert len(p.discover()) == 2
        (host.proc / "901/stat").write_text(
            (host.proc / "901/stat").read_text().replace(") S ", ") Z "))
        sweep = p.sample()
        assert [vm.ref.name for vm in sweep.gone] == ["b"]
        assert [vm.ref.name for vm, _ in sweep.samples] == ["a"]


def test_pid_reused_by_another_process_is_a_new_gen(host):
    host.process(900, "qemu", ["qemu", "-name", "a"], exe=QEMU, fds=KVM_FDS)
    with prober_for(host) as p:
        [first] = p.discover()
        stat = host.proc / "900/stat"
        stat.write_text(stat.read_text().replace(" 100 ", " 555 ", 1))
        assert [vm.ref for vm in p.sample().gone] == [first.ref]
        [second] = p.discover()
    assert second.ref.gen == f"{BOOT_ID}-900-555"
    assert second.ref.uuid == first.ref.uuid


def test_new_vcpu_thread_is_picked_up_while_layout_incomplete(host):
    just_started = int((time.clock_gettime(time.CLOCK_BOOTTIME) - 3)
                       * os.sysconf("SC_CLK_TCK"))  # settled, still young
    d = host.process(200, "qemu", ["qemu", "-smp", "2", "-name", "v"],
                     exe=QEMU, fds=KVM_FDS, starttime=just_started,
                     threads={200: "qemu", 201: "CPU 0/KVM"})
    with prober_for(host) as p:
        [vm] = p.discover()
        assert not vm.complete
        t = d / "task/202"
        t.mkdir()
        (t / "comm").write_text("CPU 1/KVM\n")
        (t / "schedstat").write_text("9 8 7\n")
        assert p.discover() == []  # not new: the same gen, refreshed
        [vm2] = p.vms()
        _, s = only_sample(p)
    assert vm2.complete and vm2.ref == vm.ref
    assert [v["id"] for v in s["cpu"]["vcpus"]] == [0, 1]


def test_incomplete_layout_of_an_old_process_is_accepted(host):
    host.process(200, "qemu", ["qemu", "-smp", "2", "-name", "v"], exe=QEMU,
                 fds=KVM_FDS, threads={200: "qemu", 201: "CPU 0/KVM"})
    with prober_for(host) as p:
        [vm] = p.discover()  # started long ago: it will not grow threads
    assert vm.complete
    assert [t.id for t in vm.vcpu_threads] == [0]


def test_a_process_younger_than_the_settle_time_is_looked_at_later(host):
    now = int(time.clock_gettime(time.CLOCK_BOOTTIME) * os.sysconf(
        "SC_CLK_TCK"))
    d = host.process(200, "python3", ["python3", "-c", "fork then exec"],
                     exe="/usr/bin/python3", fds={0: "/dev/null"},
                     starttime=now)
    with prober_for(host) as p:
        assert p.discover() == []  # between fork and exec: not yet judged
        (d / "exe").unlink()  # ...then it execs QEMU, with the same pid
        os.symlink(QEMU, d / "exe")
        os.symlink("anon_inode:kvm-vm", d / "fd/4")
        (d / "cmdline").write_bytes(b"qemu\0-name\0late\0")
        stat = d / "stat"
        stat.write_text(stat.read_text().replace(f" {now} ", " 100 ", 1))
        [vm] = p.discover()
    assert vm.ref.name == "late"


def test_a_bug_in_one_vms_sampling_is_counted_and_named_unexpected():
    from vmagent.probes.types import VM, Sweep, VMRef

    vm = VM(ref=VMRef("u", "n", "g", "kvm"), pid=1, start_mark=0,
            start_ns=0, comm="qemu", uid=0, vcpus=None, alloc_bytes=None)
    sweep = Sweep()
    sweep.fail(vm, OSError(5, "Input/output error"))
    sweep.fail(vm, KeyError("cpu"))
    assert sweep.bugs == 1
    assert [r for _, r in sweep.failed] == [
        "OSError: [Errno 5] Input/output error", "unexpected KeyError: 'cpu'"]


def test_debugfs_kvm_counters_are_read_in_the_first_sample_after_open(host):
    host.process(900, "qemu", ["qemu"], exe=QEMU, fds=KVM_FDS)
    kdir = host.debug / "kvm/900-4"
    kdir.mkdir(parents=True)
    (kdir / "pages_4k").write_text("512\n")
    (kdir / "exits").write_text("7\n")
    with Prober("h1", options_for(host, rescan_s=3600)) as p:
        p.discover()
        _, s = only_sample(p)
        assert s["kvm"] == {"exits": 7, "pages_4k": 512}
        (kdir / "pages_4k").write_text("1024\n")
        _, s = only_sample(p)
        assert "kvm" not in s  # debugfs is not opened every sweep
        p.rescan_s = 0  # the rescan reopens the VM's files
        p.discover()
        _, s = only_sample(p)
        assert s["kvm"] == {"exits": 7, "pages_4k": 1024}


def test_proc_is_listed_only_after_a_process_was_created(host):
    os.symlink(str(os.getpid()), host.proc / "self")  # our pid namespace
    (host.proc / "loadavg").write_text("0.00 0.00 0.00 1/100 5000\n")
    host.process(600, "qemu", ["qemu", "-name", "first"], exe=QEMU,
                 fds=KVM_FDS)
    with prober_for(host) as p:
        assert [vm.ref.name for vm in p.discover()] == ["first"]
        host.process(601, "qemu", ["qemu", "-name", "second"], exe=QEMU,
                     fds=KVM_FDS)
        assert p.discover() == []  # the last pid did not move: no listing
        (host.proc / "loadavg").write_text("0.00 0.00 0.00 1/100 5001\n")
        assert [vm.ref.name for vm in p.discover()] == ["second"]


def test_without_a_last_pid_proc_is_listed_every_time(host):
    host.process(600, "qemu", ["qemu", "-name", "first"], exe=QEMU,
                 fds=KVM_FDS)
    with prober_for(host) as p:
        p.discover()
        host.process(601, "qemu", ["qemu", "-name", "second"], exe=QEMU,
                     fds=KVM_FDS)
        assert [vm.ref.name for vm in p.discover()] == ["second"]


def test_a_deferred_process_is_looked_at_again_without_a_listing(host):
    os.symlink(str(os.getpid()), host.proc / "self")
    (host.proc / "loadavg").write_text("0.00 0.00 0.00 1/100 5000\n")
    now = int(time.clock_gettime(time.CLOCK_BOOTTIME) * os.sysconf(
        "SC_CLK_TCK"))
    d = host.process(300, "qemu", ["qemu", "-name", "young"], exe=QEMU,
                     fds=KVM_FDS, starttime=now)
    with prober_for(host) as p:
        assert p.discover() == []  # younger than the settle time
        stat = d / "stat"  # two seconds later...
        stat.write_text(stat.read_text().replace(f" {now} ", " 100 ", 1))
        host.process(301, "qemu", ["qemu", "-name", "unlisted"], exe=QEMU,
                     fds=KVM_FDS)  # ...with a last pid that did not move
        assert [vm.ref.name for vm in p.discover()] == ["young"]
