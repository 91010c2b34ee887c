"""The daemon with the FreeBSD Prober (over the fake kernel of
test_freebsd_prober): the records a bhyve host would write, down to the
signed WAL — vm_start, samples, and a vm_stop with the exit status a
kqueue NOTE_EXIT hands over and the final counters of the unreaped
process."""

from __future__ import annotations

import signal
import time
from dataclasses import replace

import pytest

from unit.test_freebsd_prober import BOOT, kernel, proc  # noqa: F401 - fixture
from vmagent import config, daemon, lifecycle
from vmagent.exits import NoWatcher
from vmagent.probes import freebsd
from vmagent.wal.verify import served_records


class KqueueEvents(NoWatcher):
    """The test hands over the kqueue events (pid 700 is the fake's)."""

    mechanism = "kqueue"


@pytest.fixture
def agent(tmp_path, monkeypatch, kernel):  # noqa: F811 - the fixture
    monkeypatch.setattr(daemon, "Prober", freebsd.Prober)
    monkeypatch.setattr(daemon, "exit_watcher", KqueueEvents)
    cfg = config.parse(f'[agent]\nstate_dir = "{tmp_path}"\n'
                       f'host_id = "bhyve-host"\n'
                       f'[probes]\nacct_file = "{tmp_path}/acct"\n')
    a = daemon.Agent(cfg)
    yield a
    a.exits.close()
    a.wal.close()


def records(agent, kind):
    return [r for r in served_records(agent.cfg.agent.state_dir / "wal")
            if r["kind"] == kind]


def test_a_bhyve_host_writes_start_samples_and_stop(agent, kernel):  # noqa: F811
    agent.sweep(first=True)
    [start] = records(agent, "agent_start")
    assert start["boot_id"] == str(BOOT)
    [vm_start] = records(agent, "vm_start")
    assert vm_start["vm"]["name"] == "web01"
    assert vm_start["vm"]["hypervisor"] == "bhyve"
    assert vm_start["vm"]["started_ns"] > 0  # ki_start (the fake kernel's)
    assert set(vm_start["config"]) == {"vcpus", "alloc_bytes", "nics",
                                       "disks"}

    # bhyve exits with 1 (the guest powered off): the kqueue event, then the
    # process as the kernel shows it until its parent reaps it
    kernel.procs[700] = replace(proc(runtime=9e6), zombie=True)
    before = time.time_ns()
    agent._on_exit(700, 1 << 8)
    agent.sweep()
    [stop] = records(agent, "vm_stop")
    at_ns = stop["exit"].pop("at_ns")
    assert before <= at_ns <= stop["t"]  # when the kqueue event came
    assert stop["exit"] == {"source": "kqueue", "code": 1,
                            "reason": "poweroff"}
    assert stop["cpu"]["total_ns"] == 9_000_000_000  # the final reading
    assert stop["vm"]["gen"] == vm_start["vm"]["gen"]
    samples = records(agent, "sample")
    assert [s["cpu"]["total_ns"] for s in samples] == [3 * 10**9, 9 * 10**9]


def test_a_killed_bhyve_has_its_signal_in_vm_stop(agent, kernel):  # noqa: F811
    agent.sweep(first=True)
    del kernel.procs[700]  # reaped before the sweep: last sample's counters
    agent._on_exit(700, signal.SIGKILL)
    agent.sweep()
    [stop] = records(agent, "vm_stop")
    assert stop["exit"]["signal"] == signal.SIGKILL
    assert "reason" not in stop["exit"]
    assert stop["cpu"]["total_ns"] == 3 * 10**9


def test_an_exit_posted_before_the_process_is_a_zombie_is_swept_again(
        agent, kernel):  # noqa: F811
    agent.sweep(first=True)
    agent._on_exit(700, 2 << 8)  # NOTE_EXIT; the process still runs
    agent.sweep()
    assert records(agent, "vm_stop") == []
    assert agent.vms.exit_pending()  # so the next sweep comes at once
    kernel.procs[700] = replace(proc(runtime=5e6), zombie=True)
    agent.sweep()
    [stop] = records(agent, "vm_stop")
    assert stop["exit"]["reason"] == "halt"
    assert stop["cpu"]["total_ns"] == 5 * 10**9
    assert not agent.vms.exit_pending()


def test_rechecks_of_a_reported_exit_are_bounded(agent, kernel):  # noqa: F811
    agent.sweep(first=True)
    agent._on_exit(700, 0)  # reported, yet the VM goes on running
    assert sum(agent.vms.exit_pending() for _ in range(100)) == \
        lifecycle.EXIT_RECHECKS
