"""The ledger worker of a real ``vmcollector run`` pulling real agents
(fake procfs VMs): a child process that folds what the ingest stores;
SIGKILLed, it is restarted while the collector keeps storing, and the
ledger ends exact (``rebuild`` changes nothing); SIGTERM stops it after
the ingest with nothing left to fold and no process left behind; a
SIGKILLed collector takes it along; in a fleet on PostgreSQL every
record is folded once.  The lag shows in the status and /metrics."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from pathlib import Path

import pytest

from integration.conftest import wait_until
from integration.test_collector import CollectorProcess
from integration.test_collector_fleet import owners
from integration.test_ledger_collector import RANGE
from vmagent.collector.store import PostgresStore

LEASE = 'lease = "2s"\n'  # lease rounds (and worker checks) every 0.4 s
# no period closing, whose catch-up folds in the collector's own process
ONLY_THE_WORKER = "auto_close = []\n"


def events(c: CollectorProcess, name: str) -> list[dict]:
    """The collector's (and its worker's) log events called ``name``."""
    out = []
    for line in c.log_text().splitlines():
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if isinstance(ev, dict) and ev.get("event") == name:
            out.append(ev)
    return out


def worker_pids(c: CollectorProcess) -> list[int]:
    return [ev["pid"] for ev in events(c, "ledger_worker_started")]


def alive(pid: int) -> bool:
    """A process that runs (not gone, not a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def lag(c: CollectorProcess) -> dict[str, int]:
    code, doc = c.status()
    return {h["name"]: h["ledger_lag_records"] for h in doc["hosts"]}


def assert_ledger_exact(c: CollectorProcess) -> None:
    """Nothing left to fold, and the ledger is what a fold of every
    stored frame from nothing gives."""
    assert set(lag(c).values()) == {0}, lag(c)
    out = c.cli("rebuild", *RANGE, "--reason", "integration test")
    assert out.returncode == 0, out.stderr
    assert "0 slice(s) in the range changed" in out.stdout, out.stdout


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_killed_worker_is_restarted_and_the_ledger_ends_exact(
        agent, tmp_path, backend, request):
    store = "sqlite" if backend == "sqlite" else \
        request.getfixturevalue("pg_url")
    a = agent(interval=0.2, fake_vms=50)
    c = CollectorProcess(tmp_path / "c", [("hv1", a, a.public_key())],
                         interval="1s", store=store, extra=LEASE)
    try:
        assert c.cli("migrate").returncode == 0
        c.start()
        first = wait_until(lambda: worker_pids(c), 30)[0]
        assert first != c.proc.pid and alive(first)
        wait_until(lambda: len(c.records("hv1")) > 200, 30)
        if backend == "postgresql":
            # stalled, the worker holds up no store (SQLite's one write
            # lock would): a backlog is stored; let go, the worker folds
            # it and is SIGKILLed in the middle of that
            os.kill(first, signal.SIGSTOP)
            held = len(c.records("hv1"))
            wait_until(lambda: len(c.records("hv1")) > held + 1000, 30)
            os.kill(first, signal.SIGCONT)
            time.sleep(0.05)
        os.kill(first, signal.SIGKILL)
        stored = len(c.records("hv1"))
        died = wait_until(lambda: events(c, "ledger_worker_died"), 30)[0]
        assert (died["pid"], died["signal"]) == (first, "SIGKILL")
        second = wait_until(lambda: (p := worker_pids(c))[1:] and p[1], 30)
        assert second != first and alive(second)
        # the collector kept storing, and the new worker catches up
        wait_until(lambda: len(c.records("hv1")) > stored + 200, 30)
        wait_until(lambda: lag(c)["hv1"] < 1000, 30)
        metrics = urllib.request.urlopen(
            f"http://127.0.0.1:{c.listen}/metrics", timeout=10).read()
        assert b"vmcollector_ledger_worker_restarts_total 1" in metrics
        assert b'vmcollector_ledger_lag_records{host="hv1"}' in metrics
        assert c.stop() == 0, c.log_text()[-2000:]
        assert not alive(second)
        a.stop()
        assert_ledger_exact(c)
    finally:
        c.kill()


def test_sigterm_stops_the_worker_after_the_ingest_leaving_nothing(
        agent, tmp_path):
    a = agent(interval=0.2, fake_vms=5)
    c = CollectorProcess(tmp_path / "c", [("hv1", a, a.public_key())],
                         interval="1s", extra=LEASE)
    try:
        c.start()
        pid = wait_until(lambda: worker_pids(c), 30)[0]
        wait_until(lambda: len(c.records("hv1")) > 50, 30)
        assert c.stop() == 0, c.log_text()[-2000:]
        assert not alive(pid)
        order = [json.loads(line)["event"] for line in
                 c.log_text().splitlines() if line.startswith("{")]
        assert order.index("collector_stopping") < \
            order.index("ledger_worker_stopped") < \
            order.index("collector_stopped")
        assert events(c, "ledger_worker_stopped")[-1]["reason"] == "stopped"
        assert events(c, "ledger_worker_died") == []
        a.stop()
        assert_ledger_exact(c)
    finally:
        c.kill()


def test_a_killed_collector_takes_its_worker_along(agent, tmp_path):
    a = agent(interval=0.2, fake_vms=2)
    c = CollectorProcess(tmp_path / "c", [("hv1", a, a.public_key())],
                         interval="1s", extra=LEASE)
    try:
        c.start()
        pid = wait_until(lambda: worker_pids(c), 30)[0]
        c.kill()  # SIGKILL: no stop message, no EOF handling needed
        wait_until(lambda: not alive(pid), 10)
    finally:
        c.kill()


def test_a_fleet_on_postgresql_folds_every_record_once(agent, tmp_path,
                                                        pg_url):
    agents = {f"hv{i}": agent(interval=0.2, fake_vms=2) for i in range(2)}
    fleet = [CollectorProcess(
        tmp_path / name, list((h, a, a.public_key())
                              for h, a in agents.items()),
        interval="1s", store=pg_url,
        extra=f'instance = "{name}"\n{LEASE}{ONLY_THE_WORKER}')
        for name in ("c0", "c1")]
    store = PostgresStore(pg_url)
    try:
        assert fleet[0].cli("migrate").returncode == 0
        for c in fleet:
            c.start()
        # one host each, and each folding what it stores
        wait_until(lambda: sorted(map(str, owners(store).values()))
                   == ["c0", "c1"], 30)
        wait_until(lambda: all(len(fleet[0].records(h)) > 100
                               for h in agents), 30)
        for c in fleet:
            assert c.stop() == 0, c.log_text()[-2000:]
        for a in agents.values():
            a.stop()
        folded: dict[str, int] = {}
        for c in fleet:
            for ev in events(c, "ledger_worker_stopped"):
                assert ev["reason"] == "stopped"
                for h, n in ev["folded"].items():
                    folded[h] = folded.get(h, 0) + n
        assert folded == {h: len(fleet[0].records(h)) for h in agents}
        assert_ledger_exact(fleet[0])
    finally:
        store.close()
        for c in fleet:
            c.kill()
