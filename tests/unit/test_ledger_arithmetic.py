"""The ledger's arithmetic: integer splits that always sum exactly, base
slices of 15 minutes, and calendar periods across DST changes."""

from __future__ import annotations

from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmagent.ledger.periods import PeriodError, period_of, periods_between
from vmagent.ledger.split import BASE_NS, base_cuts, overlap, pieces, split

S = 10**9


def ns(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp()) * S


@given(quantity=st.integers(-10**15, 10**15),
       start=st.integers(0, 10**13), length=st.integers(0, 10**13),
       cuts=st.lists(st.integers(0, 2 * 10**13), max_size=6))
def test_a_split_always_sums_exactly_and_is_within_one_of_proportional(
        quantity, start, length, cuts):
    end = start + length
    parts = pieces(start, end, cuts) or [(start, start + 1)]
    shares = split(quantity, start, end, parts)
    assert sum(shares) == quantity
    if length:
        for (a, b), share in zip(parts, shares):
            exact = quantity * (b - a) / length
            assert abs(share - exact) < 1 + 1e-6 * abs(exact)


def test_remainders_go_to_the_largest_then_to_the_earlier_slice():
    thirds = [(0, 1), (1, 2), (2, 3)]
    assert split(10, 0, 3, thirds) == [4, 3, 3]  # ties: the earliest first
    assert split(2, 0, 3, thirds) == [1, 1, 0]
    assert split(-10, 0, 3, thirds) == [-4, -3, -3]  # a reversal mirrors
    assert split(7, 0, 4, [(0, 1), (1, 4)]) == [2, 5]  # 1.75 -> 2, 5.25 -> 5


def test_an_instant_reading_goes_wholly_to_the_slice_holding_it():
    assert split(9, 5, 5, [(0, 5), (5, 10)]) == [0, 9]


def test_base_slices_are_15_minutes_on_utc_boundaries():
    start = ns("2026-11-30T04:10:00+00:00")
    end = ns("2026-11-30T04:50:00+00:00")
    assert base_cuts(start, end) == [ns("2026-11-30T04:15:00+00:00"),
                                     ns("2026-11-30T04:30:00+00:00"),
                                     ns("2026-11-30T04:45:00+00:00")]
    resize = ns("2026-11-30T04:20:00+00:00")
    got = pieces(start, end, [resize])
    assert [b - a for a, b in got] == [5 * 60 * S, 5 * 60 * S, 10 * 60 * S,
                                      15 * 60 * S, 5 * 60 * S]
    assert all(a % BASE_NS == 0 or a in (start, resize) for a, _ in got)
    assert overlap(0, 10, 5, 20) == 5 and overlap(0, 10, 10, 20) == 0


def test_a_berlin_day_lasts_23_or_25_hours_at_the_dst_changes():
    spring = period_of(ns("2026-03-29T12:00:00+00:00"), "day", "Europe/Berlin")
    autumn = period_of(ns("2026-10-25T12:00:00+00:00"), "day", "Europe/Berlin")
    assert (spring.key, spring.end_ns - spring.start_ns) == \
        ("2026-03-29", 23 * 3600 * S)
    assert (autumn.key, autumn.end_ns - autumn.start_ns) == \
        ("2026-10-25", 25 * 3600 * S)
    assert autumn.start_ns == ns("2026-10-24T22:00:00+00:00")


def test_the_repeated_hour_of_a_dst_change_has_two_distinct_keys():
    hours = periods_between(ns("2026-10-24T23:00:00+00:00"),
                            ns("2026-10-25T02:00:00+00:00"), "hour",
                            "Europe/Berlin")
    assert [h.key for h in hours] == ["2026-10-25T01+02:00",
                                      "2026-10-25T02+02:00",
                                      "2026-10-25T02+01:00"]
    assert all(h.end_ns - h.start_ns == 3600 * S for h in hours)
    assert [h.start_ns for h in hours[1:]] == [h.end_ns for h in hours[:-1]]


def test_a_day_whose_midnight_is_skipped_starts_when_the_clock_jumps():
    day = period_of(ns("2026-09-06T12:00:00+00:00"), "day",
                    "America/Santiago")  # 24:00 -> 01:00 on Sep 6
    assert day.start_ns == ns("2026-09-06T04:00:00+00:00")
    assert day.end_ns - day.start_ns == 23 * 3600 * S


def test_months_in_a_half_hour_zone_and_in_utc():
    m = period_of(ns("2026-11-30T20:00:00+00:00"), "month", "Asia/Kolkata")
    assert m.key == "2026-12"  # already December there
    assert m.start_ns == ns("2026-11-30T18:30:00+00:00")
    dec = period_of(ns("2026-12-31T23:59:59+00:00"), "month")
    assert (dec.key, dec.end_ns) == ("2026-12",
                                    ns("2027-01-01T00:00:00+00:00"))


@given(t=st.integers(0, 4 * 10**18),
       tz=st.sampled_from(["UTC", "Europe/Berlin", "America/Santiago",
                           "Asia/Kolkata", "Australia/Lord_Howe",
                           "Pacific/Chatham"]),
       grain=st.sampled_from(["hour", "day", "month"]))
def test_every_instant_lies_in_exactly_its_period(t, tz, grain):
    p = period_of(t, grain, tz)
    assert p.start_ns <= t < p.end_ns
    assert period_of(p.start_ns, grain, tz) == p
    assert period_of(p.end_ns, grain, tz).start_ns == p.end_ns


def test_unknown_zones_and_grains_are_named():
    with pytest.raises(PeriodError, match="Mars/Olympus"):
        period_of(0, "day", "Mars/Olympus")
    with pytest.raises(PeriodError, match="fortnight"):
        period_of(0, "fortnight")
