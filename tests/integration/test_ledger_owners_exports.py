"""Owners and exports behind a real ``vmcollector run`` (SQLite) pulling a
real ``vmagent run`` (fake procfs VMs): an owners file imported while the
collector runs cuts one VM's records at its owner change, ``usage
--group-by account`` sums per account (the unowned VM under ``-``), and
both exports are byte-identical for the same evidence; and the same
owner cuts on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import json
import time

from integration.conftest import wait_until
from integration.test_collector import CollectorProcess
from unit.test_ledger_book import Evidence
from unit.test_ledger_owner_slices import OWNERS, evidence, hour
from vmagent.collector.store import PostgresStore
from vmagent.ledger import book, records
from vmagent.ledger.exact import format_rfc3339_ns
from vmagent.ledger.owners import parse_owners

RANGE = ("-s", "2000-01-01T00:00:00Z", "-e", "2100-01-01T00:00:00Z")


def usage(c: CollectorProcess, *extra: str) -> list[dict]:
    out = c.cli("usage", *RANGE, "--period", "hour", "--json", *extra)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["records"]


def running(records: list[dict]) -> int:
    return sum(int(r["quantity"]) for r in records
               if r["meter"] == "running_ns")


def test_owners_group_by_account_and_exports_over_a_real_agent(
        agent, tmp_path):
    a = agent(interval=0.2, fake_vms=2)
    c = CollectorProcess(tmp_path / "collector",
                         [("hv1", a, a.public_key())], interval="1s")
    try:
        assert c.cli("migrate").returncode == 0
        c.start()
        first = wait_until(lambda: (r := usage(c)) and running(r) > 0 and r,
                           30)
        uuids = {r["vm"]["name"]: r["vm"]["uuid"] for r in first}
        change_ns = time.time_ns()  # inside fake0's run, not on a boundary
        owners = tmp_path / "owners.csv"
        owners.write_text(
            "vm_uuid,account,project,from\n"
            f"{uuids['fake0']},acme,shop,2000-01-01T00:00:00Z\n"
            f"{uuids['fake0']},globex,,{format_rfc3339_ns(change_ns)}\n")
        out = c.cli("owners", "import", str(owners))
        assert out.returncode == 0, out.stderr
        assert "imported 2 owner row(s) for 1 VM(s)" in out.stdout
        wait_until(lambda: running(usage(c, "--account", "globex"))
                   > 10**9, 30)  # a second of fake0 folded under globex
        assert c.stop() == 0, c.log_text()[-2000:]
        a.stop()
        check_owner_cut(c, uuids, format_rfc3339_ns(change_ns))
        check_group_by_account(c)
        check_exports(c, tmp_path)
        out = c.cli("rebuild", *RANGE, "--reason", "owners test")
        assert "0 slice(s) in the range changed" in out.stdout, out.stderr
    finally:
        c.kill()


def check_owner_cut(c: CollectorProcess, uuids: dict[str, str],
                    change: str) -> None:
    fake0 = [r for r in usage(c) if r["vm"]["uuid"] == uuids["fake0"]
             and r["meter"] == "running_ns"]
    assert {r["account"] for r in fake0} == {"acme", "globex"}
    assert any(r["account"] == "acme" and r["end"] == change for r in fake0)
    assert any(r["account"] == "globex" and r["start"] == change
               for r in fake0)
    assert all(r["account"] is None for r in usage(c)
               if r["vm"]["uuid"] == uuids["fake1"])


def check_group_by_account(c: CollectorProcess) -> None:
    records = usage(c)
    grouped = usage(c, "--group-by", "account")
    got = {r["account"] for r in grouped}
    assert got == {"-", "acme", "globex"}
    assert sum(int(r["quantity"]) for r in grouped
               if r["meter"] == "running_ns") == running(records)


def check_exports(c: CollectorProcess, tmp_path) -> None:  # noqa: ANN001
    for kind in ("cloudstack", "focus"):
        target = tmp_path / f"{kind}.csv"
        out = c.cli("export", kind, *RANGE, "--period", "hour", "-o",
                    str(target))
        assert out.returncode == 0, out.stderr
        again = c.cli("export", kind, *RANGE, "--period", "hour")
        assert again.stdout == target.read_text()  # byte-identical
    cs = list(csv.DictReader(io.StringIO(
        (tmp_path / "cloudstack.csv").read_text())))
    assert {r["account"] for r in cs if r["usagetype"] == "1"} == \
        {"", "acme", "globex"}
    focus = list(csv.DictReader(io.StringIO(
        (tmp_path / "focus.csv").read_text())))
    records = usage(c)
    assert len(focus) == len(records)
    assert {r["x_RecordId"] for r in focus} == {r["id"] for r in records}


def test_both_stores_rederive_identical_owner_cuts(tmp_path, pg_url):
    texts = []
    for store in (None, PostgresStore(pg_url)):
        ev = evidence(Evidence(tmp_path, store=store))
        try:  # imported after the evidence: a re-derivation on each store
            done = book.import_owners(ev.store, parse_owners(OWNERS))
            assert done.hosts == ["hv1"]
            texts.append(records.canonical(hour(ev)))
        finally:
            ev.close()
    assert texts[0] == texts[1]
    assert {r["account"] for r in json.loads(texts[0])["records"]} == \
        {None, "acme", "globex"}
