"""Real process accounting on Linux: a KVM guest run in a child pid
namespace with its own ``accton`` (accounting is per pid namespace, so the
host's is never touched), stopped, killed, and its record read back."""

from __future__ import annotations

import gzip
import math
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from integration.conftest import wait_until
from integration.guests import stop_process
from needs import require
from vmagent.acct.records import read_file

pytestmark = pytest.mark.realguest
TICK = os.sysconf("SC_CLK_TCK")


def host_pid_of(marker: str) -> int | None:
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                cmd = Path(f"/proc/{p}/cmdline").read_bytes()
                comm = Path(f"/proc/{p}/comm").read_text()
            except OSError:
                continue
            if marker.encode() in cmd and comm.startswith("qemu-system"):
                return int(p)
    return None


def cpu_ticks(pid: int) -> int:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(f[11]) + int(f[12])


def timeslices(pid: int) -> int:
    """How many times the threads of ``pid`` were put on a CPU (field 3
    of each /proc/<pid>/task/<tid>/schedstat)."""
    return sum(int(Path(f"/proc/{pid}/task/{t}/schedstat").read_text()
                   .split()[2]) for t in os.listdir(f"/proc/{pid}/task"))


def scheduler_hz() -> int:
    """The kernel's CONFIG_HZ from /proc/config.gz; 100 (the coarsest,
    so the widest tolerance) where the kernel does not say."""
    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            for line in f:
                if line.startswith("CONFIG_HZ="):
                    return int(line.split("=")[1])
    except OSError:
        pass
    return 100


def acct_tolerance(runtime_s: float, slices: int) -> float:
    """How far acct(5)'s CPU time may be from /proc's, in clock ticks.
    /proc/<pid>/stat scales the scheduler's exact runtime; with tick-based
    accounting acct sums the scheduler ticks that found a thread running,
    and each timeslice gets under one tick too many or too few, at random
    (variance at most 1/4 tick^2 each).  A loaded host means more, shorter
    slices: four standard deviations of that sum, plus a clock tick per
    second for the truncations."""
    sigma = 0.5 * math.sqrt(slices) * TICK / scheduler_hz()
    return max(1.0, runtime_s) + 4 * sigma


def test_a_killed_kvm_guest_is_accounted_by_the_kernel(tmp_path):
    require("accton")
    acct = tmp_path / "pacct"
    acct.touch()
    marker = f"acct-{uuid.uuid4().hex[:8]}"
    script = (f"accton {acct} >/dev/null && "
              f"qemu-system-x86_64 -accel kvm -m 64 -smp 1 -nodefaults "
              f"-nographic -serial none -monitor none "
              f"-name guest={marker},debug-threads=on & "
              f"echo $! > {tmp_path}/nspid; wait; accton off >/dev/null")
    ns = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc",
                           "sh", "-c", script])
    pid = None
    try:
        pid = wait_until(lambda: host_pid_of(marker))
        time.sleep(4)  # let it run
        stop_process(pid)  # its counters still from here: read, then kill
        last, slices = cpu_ticks(pid), timeslices(pid)
        os.kill(pid, signal.SIGKILL)
        ns.wait(timeout=60)
    finally:
        if ns.poll() is None:
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
            ns.kill()
            ns.wait()
    parsed = read_file(acct)
    assert parsed.format == "linux" and parsed.skipped == 0
    [rec] = [r for r in parsed.records if r.command.startswith("qemu-system")]
    assert rec.pid == int((tmp_path / "nspid").read_text())  # ns-local pid
    assert rec.exit == {"signal": 9}
    assert "AXSIG" in rec.flags
    runtime_s = rec.elapsed_us / 1e6
    total = (rec.cpu_user_us + rec.cpu_system_us) * TICK / 1_000_000
    assert abs(total - last) <= acct_tolerance(runtime_s, slices), \
        (total, last, slices)
    assert abs(rec.start_s + runtime_s - time.time()) < 60
