"""Owners wired into the stored ledger over literal evidence: an owner
change inside a 15-minute slice cuts it, records carry the account and
project, ``--account`` and ``--group-by account``, re-imports re-attribute
(a targeted re-derivation of the VM's hosts), and the CLI's ``owners
import`` and ``export`` commands."""

from __future__ import annotations

import csv
import io
import json

import pytest

from unit.test_ledger_book import (
    GIB,
    UUID,
    Evidence,
    M,
    S,
    ns,
    sample,
    start,
    vm,
)
from vmagent.collector.cli import main
from vmagent.ledger import book, exact, records, report
from vmagent.ledger.owners import parse_owners

H1 = 60 * M
OTHER = "0b9d7c1e-1111-4222-8333-944455556666"
T0 = ns("2026-11-30T10:00:00+00:00")
OWNERS = (f"vm_uuid,account,project,from\n"
          f"{UUID},acme,shop,2026-11-01T00:00:00Z\n"
          f"{UUID},globex,,2026-11-30T10:05:00Z\n")


def evidence(ev: Evidence) -> Evidence:
    """``web`` (2 vCPUs, 1 GiB) runs 10:00-10:20 with CPU 3 s at 10:10
    and 4 s at its stop; ``OTHER`` (unowned) runs 10:00-10:10."""
    stop = {"kind": "vm_stop", "t": T0 + 20 * M, "vm": vm(),
            "exit": {"source": "pidfd", "at_ns": T0 + 20 * M},
            "cpu": {"total_ns": 4 * S}}
    return ev.batch({"kind": "agent_start", "t": T0 - S}, start(T0),
                    start(T0, uuid=OTHER, vcpus=1),
                    sample(T0 + 10 * M, cpu=3 * S),
                    sample(T0 + 10 * M, uuid=OTHER, cpu=S)).batch(stop)


def hour(ev: Evidence, account: str | None = None) -> list[dict]:
    return report.usage(ev.store, T0, T0 + H1, "hour", "UTC",
                        account=account)


def by_owner(recs: list[dict], meter: str) -> dict:
    out: dict = {}
    for r in recs:
        if r["meter"] == meter:
            key = (r["account"], r["project"], r["start"], r["end"])
            out[key] = out.get(key, 0) + int(r["quantity"])
    return out


@pytest.fixture
def ev(tmp_path):
    e = Evidence(tmp_path)
    yield e
    e.close()


def test_an_owner_change_inside_a_slice_cuts_it_and_splits_counters(ev):
    book.import_owners(ev.store, parse_owners(OWNERS))
    recs = [r for r in hour(evidence(ev)) if r["vm"]["uuid"] == UUID]
    # running: 5 min acme, 15 min globex; CPU 0->3 s over 10:00-10:10 is
    # 1.5 s each side of 10:05, and 3->4 s over 10:10-10:20 adds 1 s
    assert by_owner(recs, "running_ns") == {
        ("acme", "shop", "2026-11-30T10:00:00Z", "2026-11-30T10:05:00Z"):
            5 * M,
        ("globex", None, "2026-11-30T10:05:00Z", "2026-11-30T10:20:00Z"):
            15 * M}
    assert by_owner(recs, "cpu_ns") == {
        ("acme", "shop", "2026-11-30T10:00:00Z", "2026-11-30T10:05:00Z"):
            1500 * 10**6,
        ("globex", None, "2026-11-30T10:05:00Z", "2026-11-30T10:20:00Z"):
            2500 * 10**6}
    slices = book.slices(ev.store, T0, T0 + H1, vm=UUID)
    assert [(s.start_ns - T0) // M for s in slices] == [0, 5, 15]


def test_importing_after_the_evidence_rederives_the_same_records(
        tmp_path, ev):
    before = Evidence(tmp_path / "b")
    try:
        book.import_owners(before.store, parse_owners(OWNERS))
        expected = records.canonical(hour(evidence(before)))
    finally:
        before.close()
    evidence(ev)
    done = book.import_owners(ev.store, parse_owners(OWNERS))
    assert done == (2, 1, ["hv1"])
    assert records.canonical(hour(ev)) == expected
    _, changed = book.rebuild(ev.store, T0, T0 + H1, "audit")
    assert changed == 0  # a rebuild reproduces the owner cuts


def rich(ev: Evidence) -> Evidence:
    """Both VMs through coalesced samples, an agent outage, an inventory
    without ``web`` (lost) and ``web`` seen again, in three batches."""
    both = [sample(T0 + 4 * M, cpu=S, rx=100),
            sample(T0 + 4 * M, uuid=OTHER, cpu=2 * S)]
    return ev.batch({"kind": "agent_start", "t": T0 - S}, start(T0),
                    start(T0, uuid=OTHER, vcpus=1),
                    {"kind": "coalesced", "t": T0 + 5 * M, "sweeps": 2,
                     "samples": both}).batch(
        {"kind": "inventory", "t": T0 + 9 * M,
         "vms": [{"uuid": OTHER, "gen": "g1", "name": "web"}]},
        {"kind": "agent_start", "t": T0 + 20 * M},
        sample(T0 + 21 * M, uuid=OTHER, cpu=3 * S)).batch(
        sample(T0 + 22 * M, cpu=5 * S, rx=900),
        {"kind": "clock_step", "t": T0 + 23 * M, "step_ns": 7})


def test_rederiving_one_vm_equals_importing_before_its_evidence(tmp_path):
    owners = parse_owners(OWNERS.replace("10:05:00", "10:07:30"))
    texts = []
    for when in ("before", "after"):
        ev = Evidence(tmp_path / when)
        try:
            if when == "before":  # no evidence yet: nothing to re-derive
                assert book.import_owners(ev.store, owners).rederived == 0
            rich(ev)
            if when == "after":
                assert book.import_owners(ev.store, owners).rederived == 1
            texts.append(records.canonical(hour(ev)))
        finally:
            ev.close()
    assert texts[0] == texts[1]
    recs = json.loads(texts[1])["records"]
    assert {r["account"] for r in recs if r["vm"]["uuid"] == UUID} == \
        {"acme", "globex"}
    assert sum(int(r["quantity"]) for r in recs if r["meter"] == "cpu_ns"
               and r["vm"]["uuid"] == UUID) == 5 * S


def test_a_new_account_at_the_same_instant_needs_no_rederivation(ev):
    book.import_owners(ev.store, parse_owners(OWNERS))
    evidence(ev)
    renamed = OWNERS.replace("globex,,", "initech,lab,")
    done = book.import_owners(ev.store, parse_owners(renamed))
    assert (done.rederived, done.hosts) == (0, [])
    accounts = {r["account"] for r in hour(ev) if r["vm"]["uuid"] == UUID}
    assert accounts == {"acme", "initech"}


def test_a_new_owner_change_reattributes_the_open_slices(ev):
    book.import_owners(ev.store, parse_owners(OWNERS))
    evidence(ev)
    later = parse_owners(f"vm_uuid,account,project,from\n"
                         f"{UUID},initech,,2026-11-30T10:12:00Z\n")
    other = book.slices(ev.store, T0, T0 + H1, vm=OTHER)
    done = book.import_owners(ev.store, later)
    assert (done.rederived, done.hosts) == (1, ["hv1"])
    assert book.slices(ev.store, T0, T0 + H1, vm=OTHER) == other
    run = by_owner([r for r in hour(ev) if r["vm"]["uuid"] == UUID],
                   "running_ns")
    assert {k[0]: v for k, v in run.items()} == {
        "acme": 5 * M, "globex": 7 * M, "initech": 8 * M}
    starts = [(s.start_ns - T0) // M
              for s in book.slices(ev.store, T0, T0 + H1, vm=UUID)]
    assert starts == [0, 5, 12, 15]


def test_unowned_vms_group_and_filter_under_a_dash(ev):
    book.import_owners(ev.store, parse_owners(OWNERS))
    recs = hour(evidence(ev))
    grouped = {(r["account"], r["meter"]): r["quantity"]
               for r in report.group(recs, "account")}
    assert grouped[("-", "running_ns")] == str(10 * M)
    assert grouped[("acme", "running_ns")] == str(5 * M)
    assert grouped[("globex", "running_ns")] == str(15 * M)
    assert grouped[("globex", "vcpu_ns")] == str(2 * 15 * M)
    assert {r["vm"]["uuid"] for r in hour(ev, account="-")} == {OTHER}
    assert {r["account"] for r in hour(ev, account="acme")} == {"acme"}
    assert hour(ev, account="nobody") == []


def test_records_and_exports_share_one_rfc3339_formatter():
    assert records.rfc3339 is exact.format_rfc3339_ns
    assert records.rfc3339(T0 + 1) == "2026-11-30T10:00:00.000000001Z"


# --- the commands -----------------------------------------------------------

@pytest.fixture
def cfg(tmp_path):
    state = tmp_path / "s"
    state.mkdir()
    evidence(Evidence(state)).close()
    path = tmp_path / "c.toml"
    path.write_text(f'[collector]\nstate_dir = "{state}"\nlisten = ""\n')
    return str(path)


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_owners_import_then_usage_by_account(cfg, tmp_path, capsys):
    owners_csv = tmp_path / "owners.csv"
    owners_csv.write_text(OWNERS)
    code, out, _ = run(capsys, "owners", "import", str(owners_csv),
                       "-c", cfg)
    assert code == 0
    assert out == ("imported 2 owner row(s) for 1 VM(s); re-derived 1 "
                   "VM(s) on 1 host(s)\n")
    code, out, _ = run(capsys, "usage", "-s", "2026-11-30", "-e",
                       "2026-12-01", "--period", "day", "--group-by",
                       "account", "--json", "-c", cfg)
    rows = json.loads(out)["records"]
    assert {(r["account"], r["quantity"]) for r in rows
            if r["meter"] == "running_ns"} == {
        ("-", str(10 * M)), ("acme", str(5 * M)), ("globex", str(15 * M))}
    code, out, _ = run(capsys, "usage", "-s", "2026-11", "-e", "2026-12",
                       "--account", "globex", "--json", "-c", cfg)
    assert {r["account"] for r in json.loads(out)["records"]} == {"globex"}


def test_exports_are_byte_identical_and_carry_the_owner(cfg, tmp_path,
                                                        capsys):
    owners_csv = tmp_path / "owners.csv"
    owners_csv.write_text(OWNERS)
    run(capsys, "owners", "import", str(owners_csv), "-c", cfg)
    rng = ("-s", "2026-11", "-e", "2026-12", "-c", cfg)
    code, cs, _ = run(capsys, "export", "cloudstack", *rng)
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(cs)))
    running = {(r["account"], r["virtualmachineid"]): r["rawusage"]
               for r in rows if r["usagetype"] == "1"}
    assert running == {("acme", UUID): "0.083333333",  # 5 min
                       ("globex", UUID): "0.250000000",
                       ("", OTHER): "0.166666667"}
    out_file = tmp_path / "focus.csv"
    assert run(capsys, "export", "focus", *rng, "-o", str(out_file))[0] == 0
    focus = out_file.read_text()
    assert run(capsys, "export", "focus", *rng)[1] == focus
    assert run(capsys, "export", "cloudstack", *rng)[1] == cs
    cpu = {(r["SubAccountId"], r["ConsumedQuantity"])
           for r in csv.DictReader(io.StringIO(focus))
           if r["x_Meter"] == "cpu_ns" and r["ResourceId"] == UUID}
    assert cpu == {("acme", "1.500000000"), ("globex", "2.500000000")}
    body = json.loads(run(capsys, "export", "cloudstack", *rng,
                          "--json")[1])
    assert body["listusagerecordsresponse"]["count"] == len(rows)


@pytest.mark.parametrize(("argv", "message"), [
    (("owners", "import", "{tmp}/missing.csv"), "missing.csv: cannot read"),
    (("owners", "import", "{tmp}/bad.csv"), "bad.csv:2: vm_uuid: not a UUID"),
    (("export", "focus", "-s", "2026-11", "-e", "2026-12", "--json"),
     "--json is for the cloudstack export"),
    (("export", "focus", "-s", "2026-12", "-e", "2026-11"),
     "end must be after"),
])
def test_bad_owner_and_export_arguments_exit_2_with_one_line(
        cfg, tmp_path, capsys, argv, message):
    (tmp_path / "bad.csv").write_text("vm_uuid,account,project,from\n"
                                      "web-1,acme,,2026-11-01T00:00:00Z\n")
    argv = tuple(a.replace("{tmp}", str(tmp_path)) for a in argv)
    code, _, err = run(capsys, *argv, "-c", cfg)
    assert code == 2
    assert message in err and err.count("\n") == 1


def test_an_unwritable_export_file_fails_with_one_line(cfg, tmp_path,
                                                       capsys):
    target = tmp_path / "no" / "such" / "dir.csv"
    code, _, err = run(capsys, "export", "focus", "-s", "2026-11", "-e",
                       "2026-12", "-o", str(target), "-c", cfg)
    assert code == 1
    assert "cannot write" in err and err.count("\n") == 1


def test_usage_records_stay_exact_with_owners(ev):
    book.import_owners(ev.store, parse_owners(OWNERS))
    recs = hour(evidence(ev))
    mem = sum(int(r["quantity"]) for r in recs
              if r["meter"] == "mem_alloc_byte_ns"
              and r["vm"]["uuid"] == UUID)
    assert mem == GIB * 20 * M
