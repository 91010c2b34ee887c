"""Closing periods over literal evidence in a SQLite store: a golden close
and its certificate, what blocks a close (a host behind, a failed
reconciliation), tampered certificates, and corrections for late
evidence (COLLECTOR.md section 5)."""

from __future__ import annotations

import json

import pytest

from unit.test_ledger_book import (
    GIB,
    Evidence,
    H,
    M,
    S,
    inventory,
    ns,
    sample,
    start,
)
from vmagent.collector import config
from vmagent.collector.cli import main
from vmagent.collector.store import HostRow
from vmagent.errors import ConfigError
from vmagent.keys import HostKey
from vmagent.ledger import book, certificate, close, report
from vmagent.ledger.periods import period_of

T0 = ns("2026-11-30T10:00:00+00:00")
HOUR = period_of(T0, "hour", "UTC")
LATER = T0 + 3 * H  # the wall clock of the tests


@pytest.fixture
def ev(tmp_path):
    e = Evidence(tmp_path)
    yield e
    e.close()


@pytest.fixture
def key(ev):
    k = HostKey.generate()
    ev.store.put_instance_key("c1", k.public, k.key_id.hex())
    return k


def hour_of_evidence(ev, t0=T0):
    """A VM from 10:00, read at 10:50, listed at 11:05 (the watermark)."""
    ev.batch({"kind": "agent_start", "t": t0 - S},
             start(t0, vcpus=2, mem=GIB), sample(t0 + 50 * M, cpu=50 * S))
    ev.batch(inventory(t0 + 65 * M, "g1"))


def quantity(records, meter, status=None):
    return sum(int(r["quantity"]) for r in records if r["meter"] == meter
               and (status is None or r["status"] == status))


def test_a_golden_close_freezes_final_records_and_signs_them(ev, key):
    hour_of_evidence(ev)
    closed, cert, rec = close.close(ev.store, HOUR, key, "c1", LATER)
    assert closed and rec.failures == [] and rec.checked == 1
    finals = close.final_records(ev.store, HOUR)
    assert {r["status"] for r in finals} == {"final"}
    assert quantity(finals, "running_ns") == H
    assert quantity(finals, "vcpu_ns") == 2 * H
    assert quantity(finals, "cpu_ns") == 50 * S
    assert cert["period"] == "2026-11-30T10+00:00"
    assert cert["records"] == len(finals)
    assert cert["records_sha256"] == certificate.records_digest(finals)
    assert cert["closed_at"] == "2026-11-30T13:00:00Z"
    assert cert["hosts"][0]["name"] == "hv1"
    assert cert["hosts"][0]["wals"][0]["held"] == [[1, 4]]
    assert close.verify(ev.store, HOUR) == cert
    # reports read the closed hour as billed, the next one from the slices
    live = report.usage(ev.store, T0, T0 + 2 * H, "hour")
    view = close.usage(ev.store, T0, T0 + 2 * H, "hour")
    assert view == [dict(r, status="final") if r["period"] == HOUR.key
                    else r for r in live]
    assert {r["status"] for r in view} == {"final", "provisional"}
    again = close.close(ev.store, HOUR, key, "c1", LATER + H)
    assert again[0] is False and again[1] == cert
    assert close.state_of(ev.store, HOUR, LATER)["state"] == "closed"


def test_a_host_without_evidence_past_the_end_blocks_the_close(ev, key):
    ev.batch({"kind": "agent_start", "t": T0 - S}, start(T0),
             sample(T0 + 50 * M, cpu=S))
    assert close.state_of(ev.store, HOUR, LATER) == {
        "period": HOUR.key, "grain": "hour", "tz": "UTC", "state": "open",
        "blocking": ["hv1"]}
    with pytest.raises(close.CloseError, match="no evidence past its end "
                       "from hv1"):
        close.close(ev.store, HOUR, key, "c1", LATER)
    ev.store.retire_host("hv1", (T0 + 55 * M) / 1e9)
    assert close.state_of(ev.store, HOUR, LATER)["state"] == "closable"
    assert close.close(ev.store, HOUR, key, "c1", LATER)[0]


def test_a_host_not_pulled_yet_blocks_it_may_hold_a_backlog(ev, key):
    hour_of_evidence(ev)
    ev.store.put_host(HostRow("hv2", "http://y", "default", "t",
                              b"\1" * 32))  # added, never pulled
    assert close.state_of(ev.store, HOUR, LATER)["blocking"] == ["hv2"]
    assert close.auto_close(ev.store, ("hour",), "UTC", 0, key, "c1") == []
    # hv2's first evidence comes after the hour: it was not expected
    late = Evidence(None, host="hv2", store=ev.store)
    late.batch({"kind": "agent_start", "t": T0 + 2 * H},
               inventory(T0 + 2 * H + M, "g9"))
    assert close.state_of(ev.store, HOUR, LATER)["state"] == "closable"


def test_a_period_not_ended_cannot_be_closed(ev, key):
    hour_of_evidence(ev)
    with pytest.raises(close.CloseError, match="has not ended"):
        close.close(ev.store, HOUR, key, "c1", T0 + 30 * M)


def test_a_reconciliation_failure_blocks_the_close_and_says_why(ev, key):
    hour_of_evidence(ev)
    with ev.store.transaction() as q:
        q("UPDATE ledger_quantities SET quantity = '1' WHERE meter = "
          "'cpu_ns' AND start_ns = ?", (T0 + 45 * M,))
    with pytest.raises(close.CloseError, match=r"reconciliation failed .*"
                       r"cpu_ns: slices sum to .*, last reading minus "
                       r"baseline is 50000000000"):
        close.close(ev.store, HOUR, key, "c1", LATER)
    assert close.state_of(ev.store, HOUR, LATER)["state"] == "closable"


def with_disk(rec, rd):
    rec["disks"] = [{"path": "/var/vm/web.img", "rd_bytes": rd}]
    return rec


def every_kind_of_baseline(ev):
    """g0 began before the agent (baselines: first readings), its disk a
    block device, its tap made anew at 10:20 (rx 9,000 -> 300); g1 then
    carries the tap (rx 800 -> 1,000)."""
    early = T0 - 2 * H
    ev.batch({"kind": "agent_start", "t": T0 - S},
             with_disk(sample(T0, "g0", cpu=7 * S, rx=5_000,
                              started=early), 100),
             with_disk(sample(T0 + 10 * M, "g0", cpu=8 * S, rx=9_000,
                              started=early), 400),
             with_disk(sample(T0 + 20 * M, "g0", cpu=9 * S, rx=300,
                              started=early), 450),
             {"kind": "vm_stop", "t": T0 + 25 * M,
              "vm": {"uuid": ev_uuid(), "gen": "g0", "name": "web",
                     "started_ns": early},
              "exit": {"source": "pidfd", "at_ns": T0 + 25 * M},
              "nics": [{"name": "tap0", "mac": "52:54:00:00:00:01",
                        "rx_bytes": 800}]},
             start(T0 + 30 * M, "g1"),
             sample(T0 + 40 * M, "g1", cpu=S, rx=1_000))
    ev.batch(inventory(T0 + 65 * M, "g1"))


def ev_uuid():
    return sample(0)["vm"]["uuid"]


def test_a_counter_made_anew_within_a_gen_counts_again_from_zero(ev):
    every_kind_of_baseline(ev)
    recs = ev.usage("2026-11-30T10:00:00Z", "2026-11-30T11:00:00Z", "hour")
    rx = {r["gen"]: int(r["quantity"]) for r in recs
          if r["meter"] == "net_rx_bytes"}
    # g0: 5,000 -> 9,000 (+4,000), made anew: 300 (from 0), then 800
    # (+500); g1 carries 800: 1,000 - 800
    assert rx == {"g0": 4_000 + 300 + 500, "g1": 200}
    assert all(int(r["quantity"]) >= 0 for r in recs)


def test_every_counter_is_reconciled_whatever_its_baseline(ev):
    every_kind_of_baseline(ev)
    rec = close.reconcile(ev.store, HOUR)
    # g0: cpu, rx, disk; g1: cpu, rx
    assert (rec.failures, rec.checked, rec.skipped) == ([], 5, 0)
    with ev.store.transaction() as q:  # one disk slice altered
        q("UPDATE ledger_quantities SET quantity = '1' WHERE meter = "
          "'disk_rd_bytes' AND start_ns = ?", (T0 + 15 * M,))
    [failure] = close.reconcile(ev.store, HOUR).failures
    assert "disk_rd_bytes /var/vm/web.img: slices sum to" in failure
    assert failure.endswith("last reading minus baseline is 350")


def test_cpu_above_vcpus_times_running_time_is_flagged_not_blocking(ev,
                                                                     key):
    ev.batch({"kind": "agent_start", "t": T0 - S}, start(T0, vcpus=1),
             sample(T0 + 10 * M, cpu=20 * M))
    ev.batch(inventory(T0 + 65 * M, "g1"))
    closed, _, rec = close.close(ev.store, HOUR, key, "c1", LATER)
    assert closed and len(rec.flags) == 1
    assert "above 1 vCPUs" in rec.flags[0]


def test_a_tampered_certificate_or_record_fails_verification(ev, key):
    hour_of_evidence(ev)
    close.close(ev.store, HOUR, key, "c1", LATER)
    with ev.store.transaction() as q:
        row = q("SELECT certificate FROM ledger_periods").fetchone()
        cert = json.loads(row[0])
        q("UPDATE ledger_periods SET certificate = ?",
          (json.dumps(dict(cert, records=99)),))
    with pytest.raises(close.CloseError, match="bad signature"):
        close.verify(ev.store, HOUR)
    with ev.store.transaction() as q:
        q("UPDATE ledger_periods SET certificate = ?", (row[0],))
        q("UPDATE ledger_final SET record = replace(record, "
          "'\"quantity\":\"50000000000\"', '\"quantity\":\"1\"')")
    with pytest.raises(close.CloseError, match="records_sha256 differs"):
        close.verify(ev.store, HOUR)


def test_a_certificate_naming_evidence_no_longer_held_fails(ev, key):
    hour_of_evidence(ev)
    close.close(ev.store, HOUR, key, "c1", LATER)
    with ev.store.transaction() as q:
        q("DELETE FROM records WHERE seq = 2")
    with pytest.raises(close.CloseError, match="hosts differs"):
        close.verify(ev.store, HOUR)


def test_late_evidence_becomes_a_reversal_and_a_replacement(ev, key):
    hour_of_evidence(ev)
    close.close(ev.store, HOUR, key, "c1", T0 + 70 * M)
    final_cpu = next(r for r in close.final_records(ev.store, HOUR)
                     if r["meter"] == "cpu_ns")
    # the next reading: 30 s over 10:50-11:20, 10 s of it in the closed hour
    ev.batch(sample(T0 + 80 * M, cpu=80 * S))
    assert close.correct(ev.store, HOUR, T0 + 90 * M) == 2
    assert close.correct(ev.store, HOUR, T0 + 90 * M) == 0  # idempotent
    assert close.final_records(ev.store, HOUR)[0]["status"] == "final"
    rows = close.usage(ev.store, T0, T0 + 2 * H, "hour")
    fixes = [r for r in rows if r["status"] == "correction"]
    into = "2026-11-30T11+00:00"
    assert sorted((r["quantity"], r["supersedes"], r["period"])
                  for r in fixes) == [("-50000000000", final_cpu["id"], into),
                                      ("60000000000", final_cpu["id"], into)]
    assert quantity(rows, "cpu_ns", "final") == 50 * S  # never changed
    assert quantity(rows, "cpu_ns") == 80 * S  # 60 s + 20 s in hour 11
    close.verify(ev.store, HOUR)  # the certificate still holds


def test_a_second_correction_reverses_the_first_replacement(ev, key):
    hour_of_evidence(ev)
    close.close(ev.store, HOUR, key, "c1", T0 + 70 * M)
    ev.batch(sample(T0 + 80 * M, cpu=80 * S))
    close.correct(ev.store, HOUR, T0 + 90 * M)
    with ev.store.transaction() as q:  # as if a rebuild found more
        q("UPDATE ledger_quantities SET quantity = '61000000000' WHERE "
          "meter = 'cpu_ns' AND start_ns = ?", (T0 + 45 * M,))
    assert close.correct(ev.store, HOUR, T0 + 90 * M) == 2
    fixes = [r for r in close.usage(ev.store, T0, T0 + 2 * H, "hour")
             if r["status"] == "correction" and r["meter"] == "cpu_ns"]
    # the hour billed 50 s; it now reads 45 s + 61 s in its last slice
    assert sorted(int(r["quantity"]) for r in fixes) == \
        [-60 * S, -50 * S, 60 * S, 106 * S]


def test_the_sweep_finds_late_evidence_by_itself(ev, key):
    hour_of_evidence(ev)
    close.close(ev.store, HOUR, key, "c1", T0 + 70 * M)
    ev.batch(sample(T0 + 80 * M, cpu=80 * S))
    assert close.sweep(ev.store, T0 + 90 * M) == 2


@pytest.mark.parametrize("text, grain, key", [
    ("2026-11", "month", "2026-11"),
    ("2026-11-30", "day", "2026-11-30"),
    ("2026-11-30T04", "hour", "2026-11-30T04+00:00"),
])
def test_period_keys_name_their_grain(text, grain, key):
    p = close.parse_period(text)
    assert (p.grain, p.key) == (grain, key)


def test_a_repeated_dst_hour_is_named_by_its_offset():
    first = close.parse_period("2026-10-25T02", "Europe/Berlin")
    second = close.parse_period("2026-10-25T02+01:00", "Europe/Berlin")
    assert first.key == "2026-10-25T02+02:00"
    assert second.start_ns == first.end_ns


@pytest.mark.parametrize("text", ["2026-13", "yesterday", "2026-11-30T25",
                                  "2026-11-30T04+05:00"])
def test_a_bad_period_key_is_one_clear_error(text):
    with pytest.raises(close.CloseError, match="bad period"):
        close.parse_period(text)


def test_auto_close_keys_are_read_and_bad_ones_name_the_key():
    cfg = config.parse('[collector]\nauto_close = ["hour", "month"]\n'
                       'calendar = "Europe/Berlin"\ngrace = "5m"\n')
    assert (cfg.auto_close, cfg.calendar, cfg.grace_s) == (
        ("hour", "month"), "Europe/Berlin", 300.0)
    assert config.parse("").auto_close == ("month",)
    for text, problem in (('auto_close = "month"', "auto_close: expected "
                           "a list of hour, day, month"),
                          ('calendar = "Mars/Base"', "calendar: unknown "
                           "time zone 'Mars/Base'"),
                          ('grace = "soon"', "grace: expected")):
        with pytest.raises(ConfigError, match=problem):
            config.parse(f"[collector]\n{text}\n")


def test_the_due_period_is_the_last_one_whose_grace_has_passed():
    assert close.due("hour", "UTC", H, T0 + 2 * H - 1).key == \
        "2026-11-30T09+00:00"
    assert close.due("hour", "UTC", H, T0 + 2 * H).key == \
        "2026-11-30T10+00:00"
    assert close.due("month", "UTC", H, T0).key == "2026-10"


@pytest.fixture
def cfg(tmp_path):
    state = tmp_path / "s"
    state.mkdir()
    e = Evidence(state)
    hour_of_evidence(e, T0 - 24 * H)  # a day that has ended
    e.close()
    path = tmp_path / "c.toml"
    path.write_text(f'[collector]\nstate_dir = "{state}"\nlisten = ""\n'
                    'instance = "c1"\n')
    return str(path)


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("argv, problem", [
    (("close", "2026-13"), "bad period '2026-13'"),
    (("close", "2026-11", "--tz", "Mars/Base"), "unknown time zone"),
    (("evidence", "--vm", "x"), "evidence needs -s, -e, -o"),
    (("evidence", "--verify", "f", "--vm", "x"), "takes no other option"),
])
def test_bad_close_and_evidence_arguments_exit_2_in_one_line(cfg, capsys,
                                                             argv, problem):
    code, _, err = run(capsys, *argv, "-c", cfg)
    assert code == 2 and problem in err and err.count("\n") == 1


def test_the_commands_close_verify_and_close_again(cfg, capsys):
    code, out, err = run(capsys, "close", "2026-11-29T10", "-c", cfg)
    assert code == 0, err
    assert out.startswith("closed 2026-11-29T10+00:00 (hour, UTC): 4 final "
                          "records, certificate signed by c1")
    code, out, _ = run(capsys, "close", "--verify", "2026-11-29T10", "-c",
                       cfg)
    assert code == 0 and "verified: 4 records" in out
    code, out, _ = run(capsys, "close", "2026-11-29T10", "-c", cfg)
    assert code == 0 and "was closed at" in out
    code, _, err = run(capsys, "close", "--verify", "2026-11-29T11", "-c",
                       cfg)
    assert code == 1 and "is not closed" in err
    code, _, err = run(capsys, "close", "2026-11-29T11", "-c", cfg)
    assert code == 1 and "not closable: no evidence past its end from hv1" \
        in err


def test_a_rebuild_over_a_closed_period_turns_differences_into_corrections(
        ev, key):
    hour_of_evidence(ev)
    with ev.store.transaction() as q:  # a slice the incremental fold got wrong
        q("UPDATE ledger_quantities SET quantity = ? WHERE meter = "
          "'running_ns' AND start_ns = ?", (str(14 * M), T0 + 45 * M))
    close.close(ev.store, HOUR, key, "c1", T0 + 70 * M)
    book.rebuild(ev.store, T0, T0 + H, "test")
    assert close.after_rebuild(ev.store, T0, T0 + H) == 2
    fixes = [r for r in close.usage(ev.store, T0 - 24 * H,
                                    ns("2100-01-01T00:00:00+00:00"), "hour")
             if r["status"] == "correction"]  # in the wall clock's hour
    assert sorted((r["meter"], int(r["quantity"])) for r in fixes) == [
        ("running_ns", -59 * M), ("running_ns", 60 * M)]
    assert close.after_rebuild(ev.store, T0, T0 + H) == 0
