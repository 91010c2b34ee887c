"""The daemon on a full disk, with a real KVM guest: it keeps sampling,
says it is degraded, writes what it kept as soon as space returns, loses
nothing at a SIGTERM while full, and a restart does not start VMs twice.
And ``vmagent pull`` past seqs lost at the source."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

import fullfs
from integration.agent_process import AgentProcess
from integration.conftest import wait_until
from integration.guests import new_uuid
from vmagent.collector import ChainState, unexplained, verify_batch

# how long the disk stays full: 40 sweeps here; VMAGENT_FULL_DISK_S=180 for
# the minutes-long run docs/benchmarks.md reports
FULL_S = float(os.environ.get("VMAGENT_FULL_DISK_S", "8"))


@pytest.fixture
def tmpfs(tmp_path):
    with fullfs.small_tmpfs(tmp_path / "small", "3m") as mnt:
        yield mnt


def pull_all(a: AgentProcess) -> list[dict]:
    state = ChainState()
    out: list[dict] = []
    while True:
        batch = a.client().batch(state.last_seq, state.wal)
        got = list(verify_batch(batch, state, a.public_key()))
        if not got:
            break
        out += got
    assert unexplained(state) == []
    return out


def cpu_by_gen(records: list[dict]) -> dict[str, list[int]]:
    """Every reading of each gen's CPU total, in seq order, including the
    samples inside coalesced records."""
    out: dict[str, list[int]] = {}
    for r in records:
        samples = r.get("samples", []) if r["kind"] == "coalesced" else \
            [r] if r["kind"] == "sample" else []
        for s in samples:
            out.setdefault(s["vm"]["gen"], []).append(s["cpu"]["total_ns"])
    return out


def status(a: AgentProcess) -> tuple[int, dict]:
    r = a.cli("status", "-c", str(a.config), "--json")
    return r.returncode, json.loads(r.stdout)


@pytest.mark.realguest
def test_full_disk_while_a_vm_starts_then_sigterm_while_full(
        tmp_path, tmpfs, guests):
    a = AgentProcess(tmp_path / "agent", '[wal]\nsegment_bytes = "256KiB"\n'
                     'max_bytes = "64MiB"\n', interval=0.2,
                     state=tmpfs / "state")
    a.start()
    try:
        wait_until(lambda: status(a)[1]["sweeps"] > 3)
        fullfs.fill(tmpfs)
        guest = guests(name="fullvm", uuid=new_uuid())
        wait_until(lambda: status(a)[1]["vms"] == 1)
        time.sleep(FULL_S)
        code, doc = status(a)
        assert a.proc is not None and a.proc.poll() is None  # still running
        assert code == 1 and doc["health"]["state"] == "degraded"
        assert doc["wal"]["coalescing"] and doc["wal"]["coalesced_sweeps"] > 5
        assert "vms.json" in doc["state_files"]["pending"]
        (tmpfs / "filler").unlink()  # space returns
        wait_until(lambda: not status(a)[1]["wal"]["coalescing"])
        wait_until(lambda: not status(a)[1]["state_files"]["pending"])
        records = pull_all(a)
        [coalesced] = [r for r in records if r["kind"] == "coalesced"]
        # every sweep seen coalescing is in it (a count, not a rate: a
        # loaded host sweeps less often than every 0.2 s)
        assert coalesced["sweeps"] >= doc["wal"]["coalesced_sweeps"]
        [start] = [r for r in records if r["kind"] == "vm_start"]
        gen = start["vm"]["gen"]
        assert gen in {s["vm"]["gen"] for s in coalesced["samples"]}
        readings = cpu_by_gen(records)[gen]
        assert readings == sorted(readings)  # cumulative: nothing lost
        assert not list(tmpfs.glob("state/.*.tmp"))

        fullfs.fill(tmpfs)  # full again, then a SIGTERM
        stopped_at = status(a)[1]["wal"]["durable_seq"]
        time.sleep(2)
        assert a.stop(signal.SIGTERM) == 0
        (tmpfs / "filler").unlink()
        dump = a.cli("wal", "dump", str(a.state / "wal"), "--json").stdout
        after = [json.loads(line) for line in dump.splitlines()
                 if json.loads(line)["seq"] > stopped_at]
        kinds = [r["kind"] for r in after]
        assert "coalesced" in kinds and "agent_stop" in kinds
        assert a.cli("wal", "verify", str(a.state / "wal"), "--pubkey",
                     str(a.state / "host.pub")).returncode == 0

        a.start()  # the guest still runs: its vm_start is not written again
        wait_until(lambda: status(a)[1]["vms"] == 1)
        time.sleep(1)
        records = pull_all(a)
        assert [r["vm"]["gen"] for r in records
                if r["kind"] == "vm_start"] == [gen]
        assert guest.pid
    finally:
        a.kill()


def test_pull_reports_seqs_lost_in_the_first_frame_and_continues(tmp_path):
    a = AgentProcess(tmp_path / "agent", interval=0.2, fake_vms=1)
    a.start()
    try:
        wait_until(lambda: status(a)[1]["wal"]["durable_seq"] > 10)
        assert a.stop(signal.SIGTERM) == 0
        [seg] = sorted((a.state / "wal").glob("*.seg"))[:1]
        data = bytearray(seg.read_bytes())
        data[80 + 32 + 3] ^= 0x40  # inside the first frame's records
        seg.write_bytes(bytes(data))
        a.start()
        token = tmp_path / "token"
        token.write_text(a.token())
        r = a.cli("pull", a.url, "--consumer", "default", "--token-file",
                  str(token), "--pubkey", str(a.state / "host.pub"),
                  "--after", "0", "--json")
        assert r.returncode == 0, r.stderr
        assert "missing at the source" in r.stderr
        seqs = [json.loads(line)["seq"] for line in r.stdout.splitlines()]
        assert seqs and seqs[0] > 1
        gaps = [json.loads(line) for line in r.stdout.splitlines()
                if json.loads(line)["kind"] == "gap"]
        assert gaps[0]["from_seq"] == 1
    finally:
        a.kill()
