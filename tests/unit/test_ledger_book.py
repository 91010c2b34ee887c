"""The stored ledger over literal evidence in a SQLite store: usage records
from vm_start/sample/vm_stop/inventory records (golden scenarios of the
accounting research, expected values computed by hand), incremental
updates equal to a rebuild, and byte-identical JSON."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime

import msgpack
import pytest

from vmagent.collector.store import HostRow, SqliteStore, StoredFrame
from vmagent.ledger import book, report

S = 10**9
M = 60 * S
H = 3600 * S
GIB = 1 << 30
WAL = b"\x01" * 16
UUID = "6f1c2a52-5f0e-4c4a-9d55-2f7d3c1f0a01"


def ns(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp()) * S


def vm(gen="g1", started=None, uuid=UUID, name="web"):
    out = {"uuid": uuid, "gen": gen, "name": name}
    if started is not None:
        out["started_ns"] = started
    return out


def start(t, gen="g1", vcpus=2, mem=GIB, uuid=UUID, started=None):
    return {"kind": "vm_start", "t": t,
            "vm": vm(gen, t if started is None else started, uuid),
            "config": {"vcpus": vcpus, "alloc_bytes": mem, "nics": [],
                       "disks": []}}


def sample(t, gen="g1", cpu=None, rx=None, uuid=UUID, started=None,
           rss=None):
    rec = {"kind": "sample", "t": t, "vm": vm(gen, started, uuid)}
    if cpu is not None:
        rec["cpu"] = {"total_ns": cpu}
    if rx is not None:
        rec["nics"] = [{"name": "tap0", "mac": "52:54:00:00:00:01",
                        "rx_bytes": rx}]
    if rss is not None:
        rec["mem"] = {"rss_bytes": rss}
    return rec


def stop(t, gen="g1", at=None, after=None, before=None, cpu=None, rx=None):
    ex = {"source": "pidfd" if at is not None else "poll"}
    if at is not None:
        ex["at_ns"] = at
    else:
        ex["after_ns"], ex["before_ns"] = after, before
    rec = {"kind": "vm_stop", "t": t, "vm": vm(gen), "exit": ex}
    if cpu is not None:
        rec["cpu"] = {"total_ns": cpu}
    if rx is not None:
        rec["nics"] = [{"name": "tap0", "mac": "52:54:00:00:00:01",
                        "rx_bytes": rx}]
    return rec


def inventory(t, *gens, uuid=UUID):
    return {"kind": "inventory", "t": t,
            "vms": [{"uuid": uuid, "gen": g, "name": "web"} for g in gens]}


class Evidence:
    """A host's records stored batch by batch, the ledger following."""

    def __init__(self, tmp_path, host="hv1", store=None):
        self.store = store or SqliteStore(tmp_path / "collector.db")
        self.store.migrate()
        self.store.put_host(HostRow(host, "http://x", "default", "t",
                                    b"\0" * 32))
        self.host, self.seq = host, 0

    def batch(self, *records):
        recs = []
        for r in records:
            self.seq += 1
            recs.append({**r, "seq": self.seq, "host": "agent-id"})
        body = b"".join(msgpack.packb(r, use_bin_type=True) for r in recs)
        frame = StoredFrame(recs[0]["seq"], recs[-1]["seq"],
                            hashlib.sha256(body).digest(), b"\0" * 32,
                            b"\0" * 64, "k", body, recs)
        self.store.save_batch(self.host, WAL, [frame], [], self.seq, None)
        book.update(self.store, self.host, WAL)
        return self

    def usage(self, s, e, grain="month", tz="UTC"):
        return report.usage(self.store, report.parse_time(s),
                            report.parse_time(e), grain, tz)

    def close(self):
        self.store.close()


@pytest.fixture
def ev(tmp_path):
    e = Evidence(tmp_path)
    yield e
    e.close()


def totals(records, meter, by="period"):
    out: dict[str, int] = {}
    for r in records:
        if r["meter"] == meter:
            out[r[by]] = out.get(r[by], 0) + int(r["quantity"])
    return out


def test_a_vm_across_a_month_end_is_split_in_utc_and_berlin(ev):
    t0 = ns("2025-01-31T22:00:00+00:00")
    ev.batch({"kind": "agent_start", "t": t0 - S}, start(t0),
             sample(t0 + H, cpu=10 * S))
    ev.batch(sample(t0 + 3 * H, cpu=30 * S),
             stop(t0 + 4 * H + S, at=t0 + 4 * H, cpu=30 * S))
    utc = ev.usage("2025-01-01T00:00:00Z", "2025-03-01T00:00:00Z")
    assert totals(utc, "running_ns") == {"2025-01": 2 * H, "2025-02": 2 * H}
    assert totals(utc, "vcpu_ns") == {"2025-01": 4 * H, "2025-02": 4 * H}
    # cpu: 10 s in the first hour, 20 s over the next two, 0 after
    assert totals(utc, "cpu_ns") == {"2025-01": 10 * S + 10 * S,
                                     "2025-02": 10 * S}
    berlin = ev.usage("2025-01-01T00:00:00Z", "2025-03-01T00:00:00Z",
                      tz="Europe/Berlin")
    assert totals(berlin, "running_ns") == {"2025-01": 1 * H,
                                            "2025-02": 3 * H}


def test_a_resize_at_half_past_gives_two_hour_records(ev):
    t0 = ns("2026-11-30T10:00:00+00:00")
    ev.batch({"kind": "agent_start", "t": t0 - S}, start(t0, vcpus=2),
             {"kind": "vm_config", "t": t0 + 30 * M, "vm": vm(),
              "changed": {"vcpus": [2, 8]}},
             inventory(t0 + H, "g1"))
    recs = [r for r in ev.usage("2026-11-30T10:00:00Z",
                                "2026-11-30T11:00:00Z", "hour")
            if r["meter"] == "vcpu_ns"]
    assert [(r["start"], r["end"], r["quantity"]) for r in recs] == [
        ("2026-11-30T10:00:00Z", "2026-11-30T10:30:00Z", str(2 * 30 * M)),
        ("2026-11-30T10:30:00Z", "2026-11-30T11:00:00Z", str(8 * 30 * M))]
    assert {r["period"] for r in recs} == {"2026-11-30T10+00:00"}


def test_a_poll_stop_ends_at_after_ns_with_the_gap_reported(ev):
    t0 = ns("2026-11-30T10:00:00+00:00")
    ev.batch({"kind": "agent_start", "t": t0 - S}, start(t0),
             sample(t0 + 5 * M, cpu=S),
             stop(t0 + 6 * M, after=t0 + 5 * M, before=t0 + 6 * M, cpu=S))
    recs = ev.usage("2026-11-30", "2026-12-01", "day")
    assert totals(recs, "running_ns") == {"2026-11-30": 5 * M}
    run = next(r for r in recs if r["meter"] == "running_ns")
    assert run["provenance"]["gap_ns"] == M
    [row] = report.history(ev.store)
    assert row["end"] == "2026-11-30T10:05:00Z"
    assert row["end_reason"] == "poll"
    assert row["cpu_ns"] == str(S)


def test_a_gen_older_than_the_hosts_evidence_is_not_back_billed(ev):
    first = ns("2026-11-30T10:00:00+00:00")
    old = first - 5 * H
    ev.batch({"kind": "agent_start", "t": first},
             sample(first + M, cpu=100 * S, started=old),
             sample(first + 2 * M, cpu=101 * S, started=old))
    recs = ev.usage("2026-11-30", "2026-12-01", "day")
    assert totals(recs, "running_ns") == {"2026-11-30": 2 * M}
    assert totals(recs, "cpu_ns") == {"2026-11-30": S}  # from the first


def test_a_restart_keeps_counting_a_persistent_tap_from_its_last_value(ev):
    t0 = ns("2026-11-30T10:00:00+00:00")
    ev.batch({"kind": "agent_start", "t": t0 - S}, start(t0),
             sample(t0 + M, rx=1000),
             stop(t0 + 2 * M, at=t0 + 2 * M, rx=1500),
             start(t0 + 3 * M, gen="g2"),
             sample(t0 + 4 * M, gen="g2", rx=1700))
    recs = ev.usage("2026-11-30", "2026-12-01", "day")
    by_gen = totals(recs, "net_rx_bytes", by="gen")
    assert by_gen == {"g1": 1500, "g2": 200}
    assert all(r.get("nic") == "52:54:00:00:00:01" for r in recs
               if r["meter"] == "net_rx_bytes")


def test_a_vm_missing_from_inventory_is_lost_at_its_last_evidence(ev):
    t0 = ns("2026-11-30T10:00:00+00:00")
    ev.batch({"kind": "agent_start", "t": t0 - S}, start(t0),
             sample(t0 + M, cpu=S), inventory(t0 + 2 * M))
    [row] = report.history(ev.store)
    assert (row["end_reason"], row["end"]) == ("lost",
                                              "2026-11-30T10:01:00Z")
    recs = ev.usage("2026-11-30", "2026-12-01", "day")
    assert all(r["provenance"]["lost"] for r in recs)
    ev.batch(sample(t0 + 3 * M, cpu=2 * S))  # seen again: not lost
    [row] = report.history(ev.store)
    assert row["end"] is None and row["end_reason"] is None
    recs = ev.usage("2026-11-30", "2026-12-01", "day")
    assert totals(recs, "running_ns") == {"2026-11-30": 3 * M}
    assert not any(r["provenance"]["lost"] for r in recs)


def test_retiring_the_host_closes_its_open_vms_as_lost_rebuild_agrees(ev):
    t0 = ns("2026-11-30T10:00:00+00:00")
    ev.batch({"kind": "agent_start", "t": t0 - S}, start(t0),
             sample(t0 + M, cpu=S), inventory(t0 + 2 * M, "g1"))
    [row] = report.history(ev.store)
    assert row["end"] is None  # running, as far as the evidence goes
    ev.store.retire_host("hv1", (t0 + 3 * M) / 1e9)
    assert book.retire(ev.store, "hv1") == 1
    [row] = report.history(ev.store)
    assert (row["end_reason"], row["end"]) == ("lost",
                                              "2026-11-30T10:02:00Z")
    before = ev.usage("2026-11-30", "2026-12-01", "day")
    assert any(r["provenance"]["lost"] for r in before)
    book.rebuild(ev.store, t0 - H, t0 + H, "test")
    assert ev.usage("2026-11-30", "2026-12-01", "day") == before
    assert book.retire(ev.store, "hv1") == 0  # already closed


def test_an_agent_outage_keeps_running_time_and_marks_interpolation(ev):
    t0 = ns("2026-11-30T10:00:00+00:00")
    ev.batch({"kind": "agent_start", "t": t0 - S}, start(t0),
             sample(t0 + M, cpu=60 * S))
    ev.batch({"kind": "agent_start", "t": t0 + 20 * M},
             sample(t0 + 21 * M, cpu=120 * S))
    recs = ev.usage("2026-11-30", "2026-12-01", "day")
    assert totals(recs, "running_ns") == {"2026-11-30": 21 * M}
    assert totals(recs, "cpu_ns") == {"2026-11-30": 120 * S}
    assert sum(r["provenance"]["interpolated_ns"] for r in recs
               if r["meter"] == "cpu_ns") == 20 * M


def test_samples_inside_coalesced_count_as_samples(ev):
    t0 = ns("2026-11-30T10:00:00+00:00")
    ev.batch({"kind": "agent_start", "t": t0 - S}, start(t0),
             {"kind": "coalesced", "t": t0 + 5 * M, "sweeps": 3,
              "samples": [sample(t0 + 4 * M, cpu=4 * S)]})
    recs = ev.usage("2026-11-30", "2026-12-01", "day")
    assert totals(recs, "cpu_ns") == {"2026-11-30": 4 * S}
    assert recs[0]["provenance"]["samples"] == 1


def test_incremental_batches_equal_a_rebuild_from_the_frames(ev):
    t0 = ns("2026-11-30T09:55:00+00:00")
    ev.batch({"kind": "agent_start", "t": t0 - S}, start(t0))
    for i in range(1, 12):  # batches straddling base slices
        ev.batch(sample(t0 + i * 7 * M + 13 * S, cpu=i * 7_777_777,
                        rx=i * 1001, rss=i * 4096))
    ev.batch(stop(t0 + 90 * M, at=t0 + 90 * M, cpu=99_999_999, rx=12_345))
    before = ev.usage("2026-11-30", "2026-12-01", "hour")
    text = report.as_json(before)
    hosts, changed = book.rebuild(ev.store, ns("2026-11-30T00:00:00Z"),
                                  ns("2026-12-01T00:00:00Z"), "test")
    after = ev.usage("2026-11-30", "2026-12-01", "hour")
    assert (hosts, changed) == (["hv1"], 0)
    assert [(r["id"], r["quantity"]) for r in after] == \
        [(r["id"], r["quantity"]) for r in before]
    assert report.as_json(after) == text
    # 09:55-10:00: 300 s of the first delta (7,777,777 over 433 s):
    # floor(7777777 * 300 / 433) = 5,388,760 (remainder .05, the unit left
    # goes to the other part, .95).  11:00-11:25: 313 s of the delta
    # 10:58:13-11:05:13 (floor 5,796,295, remainder .7 > .3: +1), the
    # next delta whole, and the stop's 99,999,999 - 11 * 7,777,777.
    h11 = 5_796_296 + 7_777_777 + (99_999_999 - 11 * 7_777_777)
    assert totals(after, "cpu_ns") == {
        "2026-11-30T09+00:00": 5_388_760,
        "2026-11-30T10+00:00": 99_999_999 - 5_388_760 - h11,
        "2026-11-30T11+00:00": h11}
    assert sum(totals(after, "cpu_ns").values()) == 99_999_999
    assert sum(totals(after, "net_rx_bytes").values()) == 12_345


def test_usage_json_is_byte_identical_and_ids_are_stable(ev):
    t0 = ns("2026-11-30T10:00:00+00:00")
    ev.batch({"kind": "agent_start", "t": t0 - S}, start(t0),
             sample(t0 + M, cpu=S))
    one = report.as_json(ev.usage("2026-11", "2026-12"))
    two = report.as_json(ev.usage("2026-11", "2026-12"))
    assert one == two
    doc = json.loads(one)
    ids = [r["id"] for r in doc["records"]]
    assert len(ids) == len(set(ids)) and all(len(i) == 64 for i in ids)
    assert {r["status"] for r in doc["records"]} == {"provisional"}


def test_group_by_host_sums_and_keeps_the_rss_maximum(ev):
    t0 = ns("2026-11-30T10:00:00+00:00")
    other = "0b6f7b7e-2f41-4c8a-8d0c-6b1b0d2e9a77"
    ev.batch({"kind": "agent_start", "t": t0 - S}, start(t0),
             start(t0, uuid=other),
             sample(t0 + M, cpu=S, rss=100),
             sample(t0 + M, cpu=2 * S, rss=300, uuid=other))
    rows = report.group(ev.usage("2026-11", "2026-12"), "host")
    got = {r["meter"]: r["quantity"] for r in rows}
    assert got["cpu_ns"] == str(3 * S)
    assert got["mem_rss_max_bytes"] == "300"
    assert got["running_ns"] == str(2 * M)


def test_bad_times_are_refused_with_one_line_errors():
    with pytest.raises(report.ReportError, match="bad time"):
        report.parse_time("yesterday")
    with pytest.raises(report.ReportError, match="bad time"):
        report.parse_time("2026-11-30T10:00:00")  # no offset
    assert report.parse_time("2026-11", "Europe/Berlin") == \
        ns("2026-10-31T23:00:00+00:00")


def test_a_clock_step_is_reported_on_the_slice_it_touches(ev):
    t0 = ns("2026-11-30T10:00:00+00:00")
    ev.batch({"kind": "agent_start", "t": t0 - S}, start(t0),
             sample(t0 + 20 * M, cpu=S),
             {"kind": "clock_step", "t": t0 + 20 * M, "wall_ns": t0,
              "mono_ns": 5, "step_ns": -600 * S},
             sample(t0 + 21 * M, cpu=2 * S))
    recs = ev.usage("2026-11-30", "2026-12-01", "hour")
    steps = {r["start"]: r["provenance"]["clock_step_ns"] for r in recs}
    assert steps == {"2026-11-30T10:00:00Z": -600 * S}  # reported only
    assert totals(recs, "running_ns") == {"2026-11-30T10+00:00": 21 * M}


def test_a_live_migration_overlap_is_billed_once_and_counters_add(ev):
    t0 = ns("2026-11-30T10:00:00+00:00")
    ev.batch({"kind": "agent_start", "t": t0 - S}, start(t0),
             sample(t0 + 10 * M, cpu=10 * S),
             stop(t0 + 12 * M, at=t0 + 12 * M, cpu=11 * S))
    ev.store.put_host(HostRow("hv2", "http://y", "default", "t", b"\0" * 32))
    ev.host, ev.seq = "hv2", 0  # the destination, from 10:08
    ev.batch({"kind": "agent_start", "t": t0 - S},
             start(t0 + 8 * M, gen="d1"),
             sample(t0 + 20 * M, gen="d1", cpu=3 * S),
             stop(t0 + 20 * M, gen="d1", at=t0 + 20 * M, cpu=3 * S))
    recs = ev.usage("2026-11-30", "2026-12-01", "day")
    assert totals(recs, "running_ns", by="host") == {"hv1": 12 * M,
                                                      "hv2": 8 * M}
    assert totals(recs, "vcpu_ns") == {"2026-11-30": 2 * 20 * M}
    assert totals(recs, "cpu_ns") == {"2026-11-30": 14 * S}
    dest = next(r for r in recs if r["host"] == "hv2")
    assert dest["provenance"]["overlap_ns"] == 4 * M


def test_malformed_records_are_skipped_without_failing_the_fold(ev):
    t0 = ns("2026-11-30T10:00:00+00:00")
    ev.batch({"kind": "agent_start", "t": t0 - S},
             {"kind": "sample", "t": t0, "vm": "not a map"},
             {"kind": "sample", "t": "late", "vm": vm()},
             {"kind": "sample", "t": t0, "vm": vm(started=t0), "cpu": 7,
              "nics": {"tap0": 1}, "mem": [], "disks": [None, 3]},
             {"kind": "vm_stop", "t": t0 + M, "vm": vm(), "exit": "x"},
             {"kind": "inventory", "t": t0 + M, "vms": "all"},
             {"kind": "coalesced", "t": t0 + M, "samples": [1, {"t": 2}]},
             {"kind": "vm_acct", "t": t0 + M, "vm": vm(), "acct": None})
    assert ev.usage("2026-11-30", "2026-12-01", "day") == []  # ran 0 ns
    [row] = report.history(ev.store)
    assert (row["start"], row["end"], row["end_reason"]) == (
        "2026-11-30T10:00:00Z", "2026-11-30T10:00:00Z", "stop")


@pytest.mark.parametrize("seed", range(5))
def test_any_batching_of_mixed_evidence_equals_a_rebuild(tmp_path, seed):
    import random

    rnd = random.Random(seed)
    t0 = ns("2026-11-30T09:50:00+00:00")
    other = "0b6f7b7e-2f41-4c8a-8d0c-6b1b0d2e9a77"
    third = "9d1e4c70-64a4-4d1c-b7c6-2c8f5e1f3b10"
    records = [{"kind": "agent_start", "t": t0 - S}, start(t0),
               start(t0, uuid=other, vcpus=4)]
    for i in range(1, 30):
        t = t0 + i * 97 * S
        records.append(sample(t, cpu=i * 999_999, rx=i * 1_234,
                              rss=rnd.randrange(1 << 30)))
        if i < 20:
            records.append(sample(t, uuid=other, cpu=i * 5 * S))
        if i == 10:
            records.append({"kind": "vm_config", "t": t, "vm": vm(),
                            "changed": {"vcpus": [2, 3]}})
        if i == 3:  # a gen first named by a vm_config, its config later
            records.append({"kind": "vm_config", "t": t, "vm": vm(
                "h1", t0 - H, uuid=third), "changed": {"disks": [[], []]}})
        if i > 5:
            records.append({"kind": "sample", "t": t,
                            "vm": vm("h1", t0 - H, uuid=third),
                            "cpu": {"total_ns": i * S, "vcpus": [{}, {}]},
                            "mem": {"alloc_bytes": GIB}})
        if i == 15:
            records.append({"kind": "agent_start", "t": t + S})
        if i % 6 == 0:  # lists only UUID: `other` lost, until seen again
            records.append(inventory(t, "g1"))
    records.append(stop(t0 + 31 * 97 * S, at=t0 + 31 * 97 * S, cpu=10**9,
                        rx=99_999))
    ev = Evidence(tmp_path)
    try:
        while records:
            n = rnd.randint(1, 7)
            ev.batch(*records[:n])
            records = records[n:]
        before = report.as_json(ev.usage("2026-11-30", "2026-12-01",
                                         "hour"))
        hist = report.history(ev.store)
        assert book.rebuild(ev.store, ns("2026-11-30T00:00:00Z"),
                            ns("2026-12-01T00:00:00Z"), "test")[1] == 0
        assert report.as_json(ev.usage("2026-11-30", "2026-12-01",
                                       "hour")) == before
        assert report.history(ev.store) == hist
        assert "lost" in {h["end_reason"] for h in hist}  # `other`
        assert any(r["vm"]["uuid"] == third and r["meter"] == "vcpu_ns"
                   for r in json.loads(before)["records"])
    finally:
        ev.close()
