"""Closing an hour behind a real ``vmcollector run`` pulling a real
``vmagent run`` (fake procfs VMs) on SQLite: ``close`` and ``close
--verify`` on the command line, ``status --json`` periods, a correction
found by the running collector for evidence stored after the close, and
evidence bundles (of a real agent's VM too) verified offline.

The real agent's evidence is always in the current hour, so the closed
hour's evidence is a second host's (``hv0``): literal records in frames
signed like an agent signs them, stored before and after the close."""

from __future__ import annotations

import json
import sqlite3
import time

from integration.conftest import wait_until
from integration.test_collector import CollectorProcess
from unit.test_ledger_book import M, S, inventory, sample, start
from unit.test_ledger_close import HOUR, T0, hour_of_evidence
from unit.test_ledger_evidence import UUID, SignedEvidence
from vmagent.collector.store import PostgresStore, SqliteStore
from vmagent.keys import HostKey
from vmagent.ledger import close
from vmagent.ledger.periods import period_of

RANGE = ("-s", "2000-01-01T00:00:00Z", "-e", "2100-01-01T00:00:00Z")


def records(c: CollectorProcess) -> list[dict]:
    out = c.cli("usage", *RANGE, "--period", "hour", "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["records"]


def seed_hv0(c: CollectorProcess, t0: int) -> SignedEvidence:
    """hv0: a VM through the hour of ``t0``, listed 5 minutes after it; a
    closed port as its URL (it is never reached; its evidence is)."""
    ev = SignedEvidence(c.workdir, "hv0",
                        SqliteStore(c.state / "collector.db"),
                        url="http://127.0.0.1:9")
    ev.batch({"kind": "agent_start", "t": t0 - S}, start(t0),
             sample(t0 + 50 * M, cpu=50 * S))
    ev.batch(inventory(t0 + 65 * M, "g1"))
    return ev


def test_close_verify_correct_and_bundle_behind_real_processes(agent,
                                                               tmp_path):
    now = time.time_ns()
    hour = period_of(period_of(now, "hour").start_ns - 2 * 3600 * S, "hour")
    a = agent(interval=0.3, fake_vms=1)
    c = CollectorProcess(tmp_path / "collector",
                         [("hv1", a, a.public_key())], interval="1s",
                         extra='lease = "2s"\nauto_close = []\n')
    try:
        assert c.cli("migrate").returncode == 0
        hv0 = seed_hv0(c, hour.start_ns)
        c.start()
        wait_until(lambda: any(r["host"] == "hv1" for r in records(c)), 30)
        key = hour.key[:13]
        out = c.cli("close", key)
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith(f"closed {hour.key} (hour, UTC): ")
        out = c.cli("close", "--verify", key)
        assert out.returncode == 0 and "verified" in out.stdout, out.stderr
        again = c.cli("close", key)
        assert again.returncode == 0 and "was closed at" in again.stdout
        out = c.cli("status", "--json")
        periods = json.loads(out.stdout)["periods"]
        assert {"period": hour.key, "grain": "hour", "tz": "UTC",
                "state": "closed", "blocking": []} in periods
        finals = [r for r in records(c) if r["status"] == "final"]
        assert {r["host"] for r in finals} == {"hv0"}
        # late evidence: 30 s of CPU over 10:50-11:20, 10 s in the hour
        before = period_of(time.time_ns(), "hour").key
        hv0.batch(sample(hour.start_ns + 80 * M, cpu=80 * S))
        fixes = wait_until(lambda: [r for r in records(c)
                                    if r["status"] == "correction"
                                    and r["meter"] == "cpu_ns"], 30)
        assert sorted(int(r["quantity"]) for r in fixes) == [-50 * S,
                                                             60 * S]
        # in the open hour of the wall clock (two if an hour just began)
        assert {r["period"] for r in fixes} <= {
            before, period_of(time.time_ns(), "hour").key}
        assert [r for r in records(c) if r["status"] == "final"] == finals
        assert c.stop() == 0, c.log_text()[-2000:]
        a.stop()
        hv0.store.close()
        check_bundles(c, tmp_path, records(c))
        tamper_and_verify(c, key)
    finally:
        c.kill()


def check_bundles(c: CollectorProcess, tmp_path, rows: list[dict]) -> None:
    fake = next(r["vm"]["uuid"] for r in rows if r["host"] == "hv1")
    for vm in (UUID, fake):
        path = tmp_path / f"{vm}.tar.gz"
        out = c.cli("evidence", "--vm", vm, *RANGE, "-o", str(path),
                    "--period", "hour")
        assert out.returncode == 0, out.stderr
        out = c.cli("evidence", "--verify", str(path))
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("OK: ") and "recomputed and equal" \
            in out.stdout


def tamper_and_verify(c: CollectorProcess, key: str) -> None:
    db = sqlite3.connect(c.state / "collector.db")
    with db:
        db.execute("UPDATE ledger_final SET record = replace(record, "
                   "'\"quantity\":\"50000000000\"', '\"quantity\":\"1\"')")
    db.close()
    out = c.cli("close", "--verify", key)
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and "records_sha256 differs" \
        in out.stderr


def test_the_running_collector_closes_a_period_after_its_grace(agent,
                                                               tmp_path):
    previous = period_of(period_of(time.time_ns(), "hour").start_ns - 1,
                         "hour")
    a = agent(interval=0.3, fake_vms=1)
    c = CollectorProcess(tmp_path / "collector",
                         [("hv1", a, a.public_key())], interval="1s",
                         extra='lease = "2s"\nauto_close = ["hour"]\n'
                               'grace = "1s"\n')
    try:
        assert c.cli("migrate").returncode == 0
        seed_hv0(c, previous.start_ns).store.close()
        c.start()

        def state() -> str | None:
            out = c.cli("status", "--json")
            doc = json.loads(out.stdout) if out.stdout else {"periods": []}
            return next((p["state"] for p in doc["periods"]
                         if p["period"] == previous.key), None)
        assert wait_until(lambda: state() == "closed", 30)
        assert c.cli("close", "--verify",
                     previous.key[:13]).returncode == 0
        assert c.stop() == 0, c.log_text()[-2000:]
    finally:
        c.kill()


def test_close_verify_and_correct_on_postgresql(tmp_path, pg_url):
    ev = SignedEvidence(tmp_path, store=PostgresStore(pg_url))
    try:
        key = HostKey.generate()
        ev.store.put_instance_key("c1", key.public, key.key_id.hex())
        hour_of_evidence(ev)
        assert close.close(ev.store, HOUR, key, "c1", T0 + 70 * M)[0]
        assert close.verify(ev.store, HOUR)["records"] == 4
        ev.batch(sample(T0 + 80 * M, cpu=80 * S))
        assert close.sweep(ev.store, T0 + 90 * M) == 2
        fixes = [r for r in close.usage(ev.store, T0, T0 + 7200 * S, "hour")
                 if r["status"] == "correction"]
        assert sorted(int(r["quantity"]) for r in fixes) == [-50 * S,
                                                             60 * S]
    finally:
        ev.close()
