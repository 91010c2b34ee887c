"""Discovery on the real kernel without listing /proc: the pids allocated
since the last look are tested one by one, processes examined, threads
(a Python process's, a QEMU's vCPUs) never (docs/probes-linux.md,
discovery)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from integration.conftest import HOST_ID
from integration.guests import new_uuid
from vmagent.config import ProbesConfig
from vmagent.probes import Prober, linux

THREADS = 8
#: a process that starts THREADS threads once told to, and prints their ids
THREADER = f"""
import sys, threading
sys.stdin.readline()
stop = threading.Event()
threads = [threading.Thread(target=stop.wait) for _ in range({THREADS})]
for t in threads:
    t.start()
print(" ".join(str(t.native_id) for t in threads), flush=True)
sys.stdin.readline()
stop.set()
"""


@pytest.fixture
def watched(monkeypatch) -> Iterator[tuple[Prober, list[int]]]:
    """A prober (no rescan during the test) and the pids it examined."""
    examined: list[int] = []
    with Prober(HOST_ID, ProbesConfig(rescan_s=3600)) as p:
        real = p._examine

        def examine(pid: int):  # noqa: ANN202
            examined.append(pid)
            return real(pid)

        monkeypatch.setattr(p, "_examine", examine)
        yield p, examined


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts, killed and reaped after it."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for c in started:
        c.kill()
        c.wait(timeout=30)


def discover_for(p: Prober, seconds: float) -> list[int]:
    """Discover every 0.1 s for ``seconds``: the pids of the VMs found."""
    found: list[int] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found += [vm.pid for vm in p.discover()]
        time.sleep(0.1)
    return found


@pytest.mark.needsroot
def test_new_processes_are_examined_from_the_pid_range_without_a_listing(
        watched, children):
    p, examined = watched
    p.discover()
    assert (p.listings, p.range_scans) == (1, 0)  # the first look lists
    for _ in range(3):
        children.append(subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(120)"]))
    pids = {c.pid for c in children}
    # young processes are deferred (SETTLE_S), then looked at again
    deadline = time.monotonic() + 30
    while not pids <= set(examined) and time.monotonic() < deadline:
        p.discover()
        time.sleep(0.1)
    assert pids <= set(examined)
    assert p.listings == 1
    assert p.range_scans >= 1


@pytest.mark.needsroot
def test_threads_created_after_the_first_look_are_never_examined(
        watched, children):
    p, examined = watched
    threader = subprocess.Popen([sys.executable, "-c", THREADER],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    children.append(threader)
    assert threader.stdin is not None and threader.stdout is not None
    time.sleep(linux.SETTLE_S + 0.5)  # old enough to be examined at once
    p.discover()
    assert threader.pid in examined
    scans = p.range_scans
    threader.stdin.write(b"go\n")
    threader.stdin.flush()
    tids = [int(t) for t in threader.stdout.readline().split()]
    assert len(tids) == THREADS
    discover_for(p, 1.0)
    assert p.range_scans > scans  # the threads' pids were tested...
    assert p.listings == 1
    assert not set(tids) & set(examined)  # ...and none examined
    assert all(linux._thread_group_leader(t) is False for t in tids)
    assert examined.count(threader.pid) == 1


@pytest.mark.needsroot
def test_a_pid_coming_round_again_is_examined_only_for_a_new_process(
        watched, children):
    """After a wrap past pid_max a range holds pids examined before: the
    process seen then is not examined again, a new one is."""
    p, examined = watched
    sleep = [sys.executable, "-c", "import time; time.sleep(120)"]
    old = subprocess.Popen(sleep)
    children.append(old)
    time.sleep(linux.SETTLE_S + 0.5)
    p.discover()
    assert examined.count(old.pid) == 1
    new = subprocess.Popen(sleep)
    children.append(new)
    p._seen.add(new.pid)  # as if an exited process had had its pid
    p._listed_at = old.pid - 1  # the next range holds the old pid too
    deadline = time.monotonic() + 30
    while new.pid not in examined and time.monotonic() < deadline:
        p.discover()
        time.sleep(0.1)
    assert new.pid in examined
    assert examined.count(old.pid) == 1
    assert p.listings == 1 and p.range_scans >= 1


@pytest.mark.realguest
def test_a_vm_started_after_the_first_look_is_found_once_never_its_vcpus(
        watched, guests):
    p, examined = watched
    p.discover()
    g = guests(name="ranged", uuid=new_uuid(), vcpus=4)
    found: list[int] = []
    deadline = time.monotonic() + 30
    while g.pid not in found and time.monotonic() < deadline:
        found += [vm.pid for vm in p.discover()]
        time.sleep(0.05)
    found += discover_for(p, 2.0)
    assert found.count(g.pid) == 1
    vm = next(v for v in p.vms() if v.pid == g.pid)
    assert len(vm.vcpu_threads) == 4
    threads = {int(t) for t in os.listdir(f"/proc/{g.pid}/task")} - {g.pid}
    assert {t.tid for t in vm.vcpu_threads} <= threads
    assert not threads & set(examined)  # vCPUs, I/O threads: none examined
    assert p.listings == 1 and p.range_scans >= 1
