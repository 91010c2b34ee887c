"""The usage ledger behind a real ``vmcollector run`` pulling a real
``vmagent run`` (fake procfs VMs): usage records appear and grow as
batches are stored, and ``rebuild`` reproduces them from the frames; on
SQLite and, where PostgreSQL is installed, on PostgreSQL."""

from __future__ import annotations

import json

import pytest

from integration.conftest import wait_until
from integration.test_collector import CollectorProcess
from unit.test_ledger_book import GIB, Evidence, M, S, ns, sample, start
from vmagent.collector.store import PostgresStore
from vmagent.ledger import report

RANGE = ("-s", "2000-01-01T00:00:00Z", "-e", "2100-01-01T00:00:00Z")


def usage(c: CollectorProcess) -> list[dict]:
    out = c.cli("usage", *RANGE, "--period", "hour", "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["records"]


def running(records: list[dict]) -> int:
    return sum(int(r["quantity"]) for r in records
               if r["meter"] == "running_ns")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_usage_grows_with_each_batch_and_rebuild_reproduces_it(
        agent, tmp_path, backend, request):
    store = "sqlite"
    if backend == "postgresql":
        store = request.getfixturevalue("pg_url")
    a = agent(interval=0.2, fake_vms=2)
    c = CollectorProcess(tmp_path / "collector", [("hv1", a,
                                                   a.public_key())],
                         interval="1s", store=store)
    try:
        assert c.cli("migrate").returncode == 0
        c.start()
        first = wait_until(lambda: (r := usage(c)) and running(r) > 0 and r,
                           30)
        assert {r["vm"]["name"] for r in first} == {"fake0", "fake1"}
        wait_until(lambda: running(usage(c)) > running(first) + 10**9, 30)
        assert c.stop() == 0, c.log_text()[-2000:]
        a.stop()
        before = c.cli("usage", *RANGE, "--period", "hour", "--json").stdout
        out = c.cli("rebuild", *RANGE, "--reason", "integration test")
        assert out.returncode == 0, out.stderr
        assert "0 slice(s) in the range changed" in out.stdout
        after = c.cli("usage", *RANGE, "--period", "hour", "--json").stdout
        assert after == before  # the same ids and quantities, byte for byte
        history = json.loads(c.cli("history", "--json").stdout)["records"]
        assert len(history) == 2
        assert all(h["end"] is None for h in history)  # still running
    finally:
        c.kill()


def test_both_stores_give_byte_identical_usage_json(tmp_path, pg_url):
    t0 = ns("2026-11-30T10:07:00+00:00")
    texts = []
    for store in (None, PostgresStore(pg_url)):
        ev = Evidence(tmp_path, store=store)
        try:
            ev.batch({"kind": "agent_start", "t": t0 - S},
                     start(t0, vcpus=64, mem=1024 * GIB))
            for i in range(1, 40):  # byte-ns beyond 64 bits
                ev.batch(sample(t0 + i * 3 * M, cpu=i * 10**12, rx=i * 7,
                                rss=i << 30))
            texts.append(report.as_json(ev.usage("2026-11", "2026-12",
                                                 "hour")))
        finally:
            ev.close()
    assert texts[0] == texts[1]
    big = max(int(r["quantity"]) for r in
              json.loads(texts[0])["records"])
    assert big > 2**63  # exact past SQLite's integers
