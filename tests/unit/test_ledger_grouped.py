"""``usage --group-by`` read from the roll-up (close.grouped) gives the
bytes of grouping every VM's records (report.group of close.usage), in
every form: over seeded random fleets (VMs on two hosts, owners changing
mid-period, an unowned VM, a live migration, a resize, DST zones, a
closed hour with corrections, owner re-imports, rebuilds), over the
golden scenarios and over the report-speed benchmark's pinned output."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from unit import test_ledger_close as closing
from unit import test_ledger_golden as golden
from unit import test_ledger_report_speed as speed
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
    stop,
)
from vmagent.collector.store import SqliteStore
from vmagent.keys import HostKey
from vmagent.ledger import book, close, report, rollup
from vmagent.ledger.owners import OwnerRow
from vmagent.ledger.periods import period_of

T0 = ns("2026-10-24T23:00:00+00:00")  # Berlin leaves summer time at 01:00Z
UUIDS = [f"{i:08x}-0000-4000-8000-{i:012x}" for i in range(1, 6)]
MIGRANT = UUIDS[4]
ZONES = ("UTC", "Europe/Berlin", "Asia/Kathmandu", "America/St_Johns")
CLOSED = period_of(T0 + 2 * H, "hour", "UTC")


def vm_of(uuid, gen="g1", started=None):
    return {"uuid": uuid, "gen": gen, "name": f"vm-{uuid[:8]}",
            **({"started_ns": started} if started is not None else {})}


def readings(rnd, uuid, gen, a, b, skip=(0, 0)):
    """Samples of one gen from ``a`` to ``b`` every 3-11 minutes, none in
    ``skip``; the vm_stop at ``b``."""
    out, t, cpu, rx = [], a, 0, 0
    recs = [{"kind": "vm_start", "t": a, "vm": vm_of(uuid, gen, a),
             "config": {"vcpus": rnd.randint(1, 4),
                        "alloc_bytes": rnd.randint(1, 8) * GIB,
                        "nics": [], "disks": []}}]
    while True:
        t += rnd.randint(3, 11) * M + rnd.randrange(S)
        if t >= b:
            break
        cpu += rnd.randrange(60 * S)
        rx += rnd.randrange(10**7)
        if not skip[0] <= t < skip[1]:
            rec = sample(t, gen, cpu=cpu, rx=rx, uuid=uuid,
                         rss=rnd.randrange(1 << 33))
            rec["vm"] = vm_of(uuid, gen, a)
            out.append(rec)
    last = {"kind": "vm_stop", "t": b, "vm": vm_of(uuid, gen, a),
            "exit": {"source": "pidfd", "at_ns": b},
            "cpu": {"total_ns": cpu + S}}
    return recs + out + [last]


def fleet(store, seed: int) -> None:
    """Two hosts' evidence over six hours around Berlin's DST change,
    owners imported and changed, an hour closed, late evidence turned
    into corrections, another owners import after it."""
    rnd = random.Random(seed)
    book.import_owners(store, [
        OwnerRow(UUIDS[0], T0 - H, "A", None),
        OwnerRow(UUIDS[1], T0, "B", "p1"),
        OwnerRow(UUIDS[1], T0 + rnd.randint(40, 170) * M + 7 * S, "A", None),
        OwnerRow(UUIDS[3], T0 + rnd.randint(10, 200) * M, "C", None),
        OwnerRow(UUIDS[0], T0 + 4 * H + 5 * M, "B", None),
        OwnerRow(MIGRANT, T0 - H, "B", None)])  # UUIDS[2]: unowned
    end = T0 + 6 * H
    hole = (CLOSED.end_ns - 25 * M, CLOSED.end_ns + 30 * M)
    hv1 = [{"kind": "agent_start", "t": T0 - S}]
    hv1 += readings(rnd, UUIDS[0], "g1", T0 + rnd.randrange(H), end, hole)
    hv1 += readings(rnd, UUIDS[1], "g1", T0, end - rnd.randrange(H))
    hv1 += readings(rnd, UUIDS[2], "g1", T0 + 5 * M, end)
    move = T0 + rnd.randint(150, 200) * M  # the migrant's overlap begins
    hv1 += readings(rnd, MIGRANT, "g1", T0, move + rnd.randint(5, 40) * M)
    hv1.append({"kind": "vm_config", "t": T0 + 100 * M + 3 * S,
                "vm": vm_of(UUIDS[2], "g1", T0 + 5 * M),
                "changed": {"vcpus": [1, 6]}})
    hv2 = [{"kind": "agent_start", "t": T0 - S}]
    hv2 += readings(rnd, UUIDS[3], "g1", T0 + 20 * M, end)
    hv2 += readings(rnd, MIGRANT, "d1", move, end)
    for recs, t in ((hv1, end + M), (hv2, end + M)):
        recs.append({"kind": "inventory", "t": t, "vms": []})
        recs.sort(key=lambda r: r["t"])
    hosts = {"hv1": Evidence(None, "hv1", store),
             "hv2": Evidence(None, "hv2", store)}
    plan = {"hv1": hv1, "hv2": hv2}
    _feed(rnd, hosts, plan, until=CLOSED.end_ns + 20 * M)
    key = HostKey.generate()
    store.put_instance_key("c1", key.public, key.key_id.hex())
    closed, _, _ = close.close(store, CLOSED, key, "c1", end + 2 * H)
    assert closed
    _feed(rnd, hosts, plan, until=end + 2 * H)
    assert close.correct(store, CLOSED, end + 2 * H) > 0
    done = book.import_owners(store, [  # new instants (re-derived) and
        OwnerRow(UUIDS[2], T0 + 4 * H + 20 * M, "C", None),  # an old one
        OwnerRow(UUIDS[3], T0 + 4 * H, "C", "p2"),
        OwnerRow(UUIDS[0], T0 + 4 * H + 5 * M, "D", "p3")])
    assert done.rederived == 2


def _feed(rnd, hosts, plan, until: int) -> None:
    """Batches of 1-9 records, the hosts taking turns, up to ``until``."""
    while any(r and r[0]["t"] < until for r in plan.values()):
        for host, recs in plan.items():
            n = 0
            while n < min(rnd.randint(1, 9), len(recs)) and \
                    recs[n]["t"] < until:
                n += 1
            if n:
                hosts[host].batch(*recs[:n])
                del recs[:n]


def slow(store, s, e, by, grain, tz, vm=None, host=None, account=None):
    rows = report.of_account(close.usage(store, s, e, grain, tz, vm, host),
                             account)
    return report.group(rows, by)


def assert_same(store, s, e, by, grain, tz, **filters) -> list[dict]:
    """The roll-up's rows are the records' rows, key order included, and
    so are all four forms."""
    want = slow(store, s, e, by, grain, tz, **filters)
    got = close.grouped(store, s, e, by, grain, tz, **filters)
    assert [list(r.items()) for r in got] == \
        [list(r.items()) for r in want], (by, grain, tz, filters)
    columns = (by, "period", "meter", "quantity")
    for form in (report.as_json, report.as_csv, report.as_xml,
                 lambda rows: report.as_table(rows, columns)):
        assert form(got) == form(want)
    return got


def ranges(tz: str, grain: str) -> list[tuple[int, int]]:
    """Whole periods in ``tz``, and a range cut inside periods."""
    whole = ("2026-10", "2026-11") if grain == "month" else \
        ("2026-10-24", "2026-10-26")
    return [(report.parse_time(whole[0], tz), report.parse_time(whole[1], tz)),
            (T0 + 37 * M + 5, T0 + 4 * H + 11 * M)]


def matrix(store) -> int:
    """Every grouping, grain, zone, range and filter; how many rows."""
    rows = 0
    for grain in ("hour", "day", "month"):
        for tz in ZONES:
            for s, e in ranges(tz, grain):
                for by in report.GROUPS:
                    rows += len(assert_same(store, s, e, by, grain, tz))
                for by, filters in (
                        ("account", {"host": "hv2"}),
                        ("host", {"account": "A"}),
                        ("account", {"account": "-"}),
                        ("host", {"vm": MIGRANT})):
                    assert_same(store, s, e, by, grain, tz, **filters)
    return rows


@pytest.fixture
def store(tmp_path):
    s = SqliteStore(tmp_path / "collector.db")
    s.migrate()
    yield s
    s.close()


@pytest.mark.parametrize("seed", range(3))
def test_random_fleets_give_the_records_bytes_in_every_grouping(store, seed):
    fleet(store, seed)
    assert matrix(store) > 1000


def test_a_rebuild_and_a_pending_fill_keep_the_roll_up_exact(store):
    fleet(store, 7)
    before = close.grouped(store, T0 - H, T0 + 8 * H, "account", "hour")
    book.rebuild(store, T0 - H, T0 + 8 * H, "test")
    assert close.grouped(store, T0 - H, T0 + 8 * H, "account",
                         "hour") == before  # corrections: none were due
    with store.transaction() as q:  # as a store migrated with a ledger
        q("DELETE FROM ledger_rollup")
        q("INSERT INTO ledger_rollup_pending SELECT DISTINCT host FROM "
          "ledger_slices")
    assert book.roll_up_pending(store) == ["hv1", "hv2"]
    assert book.roll_up_pending(store) == []
    assert_same(store, T0 - H, T0 + 8 * H, "account", "hour", "UTC")
    assert_same(store, T0 - H, T0 + 8 * H, "host", "day", "Europe/Berlin")


def test_whole_periods_are_read_from_the_roll_up_not_the_records(
        store, monkeypatch):
    fleet(store, 3)
    want = slow(store, T0 - H, T0 + 8 * H, "account", "hour", "UTC")

    def refuse(*args, **kwargs):
        raise AssertionError("the records' path was taken")
    monkeypatch.setattr(report, "usage", refuse)
    got = close.grouped(store, T0 - H, T0 + 8 * H, "account", "hour")
    assert got == want
    assert {r["account"] for r in got} >= {"A", "B", "C", "D", "-"}


def test_the_migrant_overlap_is_taken_out_of_time_meters_only(store):
    fleet(store, 1)
    day = (report.parse_time("2026-10-24"), report.parse_time("2026-10-26"))
    rows = assert_same(store, *day, "host", "day", "UTC", vm=MIGRANT)
    running = sum(int(r["quantity"]) for r in rows
                  if r["meter"] == "running_ns")
    recs = close.usage(store, *day, "day", "UTC", vm=MIGRANT)
    overlap = sum(r["provenance"].get("overlap_ns", 0) for r in recs
                  if r["meter"] == "running_ns")
    spans = book.gen_spans(store, *day)
    runs = sum(b - a for _, u, _, a, b in spans if u == MIGRANT)
    assert overlap > 0 and running == runs - overlap


GOLDEN: dict[str, Callable[[Evidence], None]] = {
    "resize across an hour": golden.resize_across_an_hour,
    "an hour then a close": closing.hour_of_evidence,
    "every kind of baseline": closing.every_kind_of_baseline,
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_scenarios_group_alike_on_both_paths(tmp_path, name):
    ev = Evidence(tmp_path)
    try:
        GOLDEN[name](ev)
        day = ns("2026-11-30T00:00:00+00:00")
        for grain in ("hour", "day", "month"):
            for tz in ("UTC", "Europe/Berlin", "Asia/Kathmandu"):
                for by in report.GROUPS:
                    assert_same(ev.store, day, day + 24 * H, by, grain, tz)
    finally:
        ev.close()


def test_a_golden_migration_groups_alike_on_both_paths(tmp_path):
    ev = Evidence(tmp_path)
    try:
        t0 = ns("2026-11-30T10:00:00+00:00")
        ev.batch({"kind": "agent_start", "t": t0 - S}, start(t0),
                 sample(t0 + 10 * M, cpu=10 * S),
                 stop(t0 + 12 * M, at=t0 + 12 * M, cpu=11 * S))
        dest = Evidence(None, "hv2", ev.store)
        dest.batch({"kind": "agent_start", "t": t0 - S},
                   start(t0 + 8 * M, gen="d1"),
                   sample(t0 + 20 * M, gen="d1", cpu=3 * S),
                   stop(t0 + 20 * M, gen="d1", at=t0 + 20 * M, cpu=3 * S),
                   inventory(t0 + 30 * M))
        rows = assert_same(ev.store, t0 - 10 * H, t0 + 14 * H, "account",
                           "day", "UTC")
        assert {r["meter"]: r["quantity"] for r in rows}["vcpu_ns"] == \
            str(2 * 20 * M)  # billed once over the 4 minutes of overlap
    finally:
        ev.close()


@pytest.mark.parametrize("grain,tz", sorted(speed.BEFORE))
def test_the_benchmark_ledger_keeps_its_pinned_grouped_bytes(tmp_path, grain,
                                                             tz):
    s = SqliteStore(tmp_path / "c.db")
    try:
        s.migrate()
        speed._bench().fill(s, vms=4, hosts=2, days=2, accounts=2)
        got = report.as_json(close.grouped(s, speed.START, speed.END,
                                           "account", grain, tz))
        assert speed._sha(got) == speed.BEFORE[(grain, tz)][1]
    finally:
        s.close()


@pytest.mark.parametrize("v", [0, 1, -1, 2**32 - 1, 2**32, -(2**32),
                               2**64 + 5, -(2**70) - 3, 2**94 - 1,
                               -(2**94) + 1])
def test_limbs_give_back_the_value(v):
    q2, q1, q0 = rollup.limbs(v)
    assert q1 is not None and q0 is not None and 0 <= q1 < 2**32
    assert rollup.unlimb(q2, q1, q0) == v


def test_sums_beyond_64_bits_and_beyond_limbs_are_exact(store):
    big, huge = 2**80 + 12345, 2**100 + 7
    rows = [(f"hv{i}", 0, "A", "mem_alloc_byte_ns", str(v),
             *rollup.limbs(v)) for i, v in enumerate((big, huge))]
    rows += [(f"hv{i}", 0, "A", "mem_alloc_byte_ns", str(2**63 - 1),
              *rollup.limbs(2**63 - 1)) for i in range(2, 2000)]
    rss = "mem_rss_max_bytes"
    rows += [("hv1", 0, "A", rss, "5", *rollup.limbs(5)),
             ("hv2", 0, "A", rss, str(2**99), None, None, None),
             ("hv3", 0, "A", rss, str(2**70), *rollup.limbs(2**70)),
             ("hv1", -3, "A", rss, str(2**70), *rollup.limbs(2**70)),
             ("hv2", -3, "A", rss, "7", *rollup.limbs(7)),
             ("hv1", -3, "B", rss, "9", *rollup.limbs(9)),
             ("hv1", -2, "B", "cpu_ns", "-4", *rollup.limbs(-4)),
             ("hv2", -2, "B", "cpu_ns", "1", *rollup.limbs(1))]
    with store.transaction() as q:
        for r in rows:
            q("INSERT INTO ledger_rollup VALUES (?, ?, ?, ?, ?, ?, ?, ?)", r)
        got = rollup.sums(q, [(-5, 0), (0, 1)], "account")
    assert got == {(1, "A", "mem_alloc_byte_ns"):
                   big + huge + 1998 * (2**63 - 1),
                   (1, "A", rss): 2**99, (0, "A", rss): 2**70,
                   (0, "B", rss): 9, (0, "B", "cpu_ns"): -3}
    assert rollup.limbs(huge) == (None, None, None)


def test_an_unknown_grouping_is_one_clear_error(store) -> None:
    with pytest.raises(report.ReportError, match="unknown --group-by"):
        close.grouped(store, T0, T0 + H, "project", "hour")
    with pytest.raises(report.ReportError, match="end must be after"):
        close.grouped(store, T0, T0, "account", "hour")
