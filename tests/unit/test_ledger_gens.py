"""A gen's usage per slice and period: the golden scenarios of the
accounting research that the arithmetic alone decides (month boundary in
two calendars, a resize inside an hour, a stop closing running time, a
reboot's counters starting again, a DST day)."""

from __future__ import annotations

from datetime import datetime

from vmagent.ledger.gen import Config, GenFacts, Reading, by_period, slices

S = 10**9
H = 3600 * S
GIB = 1 << 30


def ns(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp()) * S


def totals(records, meter):
    return {r.period: r.quantities[(meter, "")] for r in records}


def test_a_vm_across_a_month_boundary_is_split_by_calendar():
    g = GenFacts(ns("2025-01-31T22:00:00+00:00"),
                 ns("2025-02-01T02:00:00+00:00"),
                 (Config(ns("2025-01-31T22:00:00+00:00"), 2, GIB),), ())
    utc = by_period(slices(g), "month")
    assert totals(utc, "running_ns") == {"2025-01": 2 * H, "2025-02": 2 * H}
    berlin = by_period(slices(g), "month", "Europe/Berlin")  # 23:00 UTC
    assert totals(berlin, "running_ns") == {"2025-01": 1 * H,
                                            "2025-02": 3 * H}
    assert sum(totals(berlin, "vcpu_ns").values()) == 2 * 4 * H


def test_a_resize_inside_an_hour_gives_two_records():
    start = ns("2026-11-30T10:00:00+00:00")
    g = GenFacts(start, start + H,
                 (Config(start, 2, GIB), Config(start + H // 2, 8, 4 * GIB)),
                 ())
    [before, after] = by_period(slices(g), "hour")
    assert before.period == after.period == "2026-11-30T10+00:00"
    assert before.quantities[("vcpu_ns", "")] == 2 * H // 2
    assert after.quantities[("vcpu_ns", "")] == 8 * H // 2
    assert after.quantities[("mem_alloc_byte_ns", "")] == 4 * GIB * H // 2


def test_counters_split_exactly_and_start_from_zero_with_the_gen():
    start = ns("2026-11-30T10:10:00+00:00")
    readings = (Reading(start + 10 * 60 * S, {("cpu_ns", ""): 1_000_001}),
                Reading(start + 40 * 60 * S, {("cpu_ns", ""): 3_000_000,
                                              ("net_rx_bytes", "tap0"): 7},
                        rss_bytes=5))
    g = GenFacts(start, start + 40 * 60 * S, (Config(start, 1, GIB),),
                 readings)
    parts = slices(g)
    assert sum(p.quantities.get(("cpu_ns", ""), 0) for p in parts) == \
        3_000_000  # from 0 at the gen's start: a reboot starts again at 0
    assert all(v >= 0 for p in parts for v in p.quantities.values())
    [hour] = by_period(parts, "hour")
    assert hour.quantities[("net_rx_bytes", "tap0")] == 7
    assert hour.quantities[("mem_rss_max_bytes", "")] == 5


def test_a_gen_older_than_the_hosts_first_evidence_is_not_back_billed():
    first = ns("2026-11-30T10:00:00+00:00")
    readings = (Reading(first, {("cpu_ns", ""): 10**12}),
                Reading(first + H, {("cpu_ns", ""): 10**12 + 60 * S}))
    g = GenFacts(first, first + H, (Config(first, 1, GIB),), readings,
                 baseline_zero=False)
    [hour] = by_period(slices(g), "hour")
    assert hour.quantities[("cpu_ns", "")] == 60 * S  # not the 10^12 before
    assert hour.quantities[("running_ns", "")] == H


def test_a_stop_closes_running_time_where_it_was_observed():
    start = ns("2026-11-30T10:00:00+00:00")
    g = GenFacts(start, start + 17 * 60 * S + 3, (Config(start, 2, GIB),),
                 ())
    [hour] = by_period(slices(g), "hour")
    assert hour.quantities[("running_ns", "")] == 17 * 60 * S + 3


def test_a_berlin_dst_day_bills_its_25_hours():
    start = ns("2026-10-24T22:00:00+00:00")  # Berlin midnight
    g = GenFacts(start, start + 25 * H, (Config(start, 1, GIB),), ())
    [day] = by_period(slices(g), "day", "Europe/Berlin")
    assert (day.period, day.quantities[("running_ns", "")]) == \
        ("2026-10-25", 25 * H)
