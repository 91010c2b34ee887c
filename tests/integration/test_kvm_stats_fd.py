"""KVM counters from the binary stats fds a VMM keeps open (copied with
pidfd_getfd), and the debugfs fallback for QEMUs that keep none, on real
KVM VMs (docs/probes-linux.md, "KVM counters")."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from integration.conftest import wait_for_vm
from vmagent.probes import Prober
from vmagent.probes._native import lib

pytestmark = pytest.mark.realguest

OWNER = Path(__file__).with_name("kvm_owner.py")
KVM_GET_STATS_FD = 0xAECE


class Owner:
    """tests/integration/kvm_owner.py as a child: a KVM VM whose one vCPU
    exits to it once per entry, holding its stats fds open."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(  # noqa: S603 - our own helper
            [sys.executable, str(OWNER)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        assert line[:1] == ["ready"], f"kvm_owner.py said {line}"
        self.pid = self.proc.pid

    def run(self, n: int) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"run {n}\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "done"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)


@pytest.fixture
def owner() -> Iterator[Owner]:
    o = Owner()
    yield o
    o.stop()


def kvm_of(prober: Prober, pid: int) -> dict[str, int]:
    sweep = prober.sample()
    assert not sweep.failed
    [sample] = [s for vm, s in sweep.samples if vm.pid == pid]
    return sample.get("kvm", {})


def fd_of(pid: int, target: str) -> int:
    return next(int(fd) for fd in os.listdir(f"/proc/{pid}/fd")
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target)


def test_exit_counters_come_from_the_vmms_stats_fds_every_sweep(prober,
                                                               owner):
    owner.run(1)  # the vCPU thread is known once it has run
    vm = wait_for_vm(prober, owner.pid)
    assert len(vm.kvm_stats_fds) == 2  # the VM's and the one vCPU's
    before = kvm_of(prober, owner.pid)
    owner.run(25)
    after = kvm_of(prober, owner.pid)
    again = kvm_of(prober, owner.pid)  # every sweep, not only after open
    assert before["exits"] > 0
    # each entry ends in one exit to the owner: at least 25 more (an
    # interrupt on the host may add an exit of its own)
    assert after["exits"] - before["exits"] >= 25
    assert again["exits"] >= after["exits"]
    assert {"pages_4k", "pages_2m", "pages_1g"} <= set(again)
    for name in ("exits", "halt_exits", "insn_emulation", "pf_taken"):
        assert after[name] >= before[name]


def test_pages_from_the_vm_stats_fd_equal_debugfs(prober, owner):
    owner.run(3)
    vm = wait_for_vm(prober, owner.pid)
    debugfs = dict(vm.kvm_stats)
    if "pages_4k" not in debugfs:
        pytest.skip("needs debugfs kvm/ readable by root")
    from_fd = kvm_of(prober, owner.pid)  # the vCPU does not run meanwhile
    for name in ("pages_4k", "pages_2m", "pages_1g"):
        assert from_fd[name] == int(Path(debugfs[name]).read_text())


def test_the_agent_cannot_make_a_stats_fd_for_a_vm_it_does_not_own(owner):
    vm_fd = lib.vmprobe_pidfd_getfd(owner.pid, fd_of(owner.pid,
                                                     "anon_inode:kvm-vm"))
    assert vm_fd >= 0  # copying the fd works...
    try:
        with pytest.raises(OSError) as err:  # ...the ioctl on it does not
            fcntl.ioctl(vm_fd, KVM_GET_STATS_FD, 0)
        assert err.value.errno == 5  # EIO: kvm->mm != current->mm
    finally:
        os.close(vm_fd)


def test_qemu_without_stats_fds_gives_debugfs_pages_once_per_open(
        prober, guests):
    g = guests(name="nostatsfd", uuid=None, paused=True)
    vm = wait_for_vm(prober, g.pid)
    assert vm.kvm_stats_fds == ()  # this QEMU keeps none open
    debugfs = dict(vm.kvm_stats)
    if "pages_4k" not in debugfs:
        pytest.skip("needs debugfs kvm/ readable by root")
    with g.frozen():
        first = kvm_of(prober, g.pid)
        expected = {n: int(Path(p).read_text()) for n, p in vm.kvm_stats}
    assert first == expected
    assert kvm_of(prober, g.pid) == {}  # not again until the next rescan
    prober.rescan_s = 0
    prober.discover()
    assert kvm_of(prober, g.pid).keys() == expected.keys()
