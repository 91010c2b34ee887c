"""Golden scenarios of the accounting research (§4.8) that the other ledger
tests do not pin to the unit: a shutdown seen by pidfd at a nanosecond
that is on no second, and ``rebuild`` run twice over a resize and an hour
end.  Literal agent-shaped evidence; every expected value is computed by
hand in the comments."""

from __future__ import annotations

import pytest

from unit.test_ledger_book import (
    GIB,
    Evidence,
    M,
    S,
    inventory,
    ns,
    sample,
    start,
    stop,
    totals,
    vm,
)
from vmagent.ledger import book, report


@pytest.fixture
def ev(tmp_path):
    e = Evidence(tmp_path)
    yield e
    e.close()


def test_a_pidfd_shutdown_ends_running_time_at_its_nanosecond(ev):
    t0 = ns("2026-11-30T10:00:00+00:00")
    at = t0 + 17 * M + 3 * S + 123_456_789  # 10:17:03.123456789
    ev.batch({"kind": "agent_start", "t": t0 - S}, start(t0),
             sample(t0 + 15 * M, cpu=15 * S),
             stop(at + 2_000_000, at=at, cpu=17 * S))
    ev.batch(inventory(t0 + 20 * M))  # gone, and not lost: it stopped
    recs = ev.usage("2026-11-30T10:00:00Z", "2026-11-30T11:00:00Z", "hour")
    ran = 17 * M + 3 * S + 123_456_789  # 1,023,123,456,789 ns
    assert totals(recs, "running_ns") == {"2026-11-30T10+00:00": ran}
    assert totals(recs, "vcpu_ns") == {"2026-11-30T10+00:00": 2 * ran}
    assert totals(recs, "mem_alloc_byte_ns") == {
        "2026-11-30T10+00:00": GIB * ran}
    # 15 s up to 10:15, then the stop's reading: 2 s more, nothing after
    assert totals(recs, "cpu_ns") == {"2026-11-30T10+00:00": 17 * S}
    run = next(r for r in recs if r["meter"] == "running_ns")
    end = "2026-11-30T10:17:03.123456789Z"
    assert (run["start"], run["end"]) == ("2026-11-30T10:00:00Z", end)
    assert run["provenance"]["gap_ns"] == 0
    assert not run["provenance"]["lost"]
    [row] = report.history(ev.store)
    assert (row["end_reason"], row["end"], row["cpu_ns"]) == (
        "pidfd", end, str(17 * S))


def resize_across_an_hour(ev: Evidence) -> None:
    """10:40-11:30, 2 vCPUs then 4 from 11:10; CPU read at 10:50 (6 s),
    11:05 (+900,000,001) and at the pidfd stop, 11:30 (+1 s)."""
    t0 = ns("2026-11-30T10:40:00+00:00")
    ev.batch({"kind": "agent_start", "t": t0 - S}, start(t0, vcpus=2),
             sample(t0 + 10 * M, cpu=6 * S))
    ev.batch(sample(t0 + 25 * M, cpu=6 * S + 900_000_001),
             {"kind": "vm_config", "t": t0 + 30 * M, "vm": vm(),
              "changed": {"vcpus": [2, 4]}})
    ev.batch(stop(t0 + 50 * M, at=t0 + 50 * M, cpu=7 * S + 900_000_001))


def expected_by_record() -> dict[tuple[str, str], int]:
    """(record start, meter) -> quantity, by hand.  The delta 10:50-11:05
    (900,000,001 over 15 min) is cut at 11:00: 2/3 and 1/3, i.e.
    600,000,000.67 and 300,000,000.33; floors 600,000,000 + 300,000,000,
    the unit left to the larger remainder: 600,000,001.  The last delta
    (1 s over 11:05-11:30) puts 5 min of 25 (0.2 s) before the resize."""
    return {
        ("2026-11-30T10:40:00Z", "running_ns"): 20 * M,
        ("2026-11-30T10:40:00Z", "vcpu_ns"): 2 * 20 * M,
        ("2026-11-30T10:40:00Z", "cpu_ns"): 6 * S + 600_000_001,
        ("2026-11-30T11:00:00Z", "running_ns"): 10 * M,
        ("2026-11-30T11:00:00Z", "vcpu_ns"): 2 * 10 * M,
        ("2026-11-30T11:00:00Z", "cpu_ns"): 300_000_000 + 200_000_000,
        ("2026-11-30T11:10:00Z", "running_ns"): 20 * M,
        ("2026-11-30T11:10:00Z", "vcpu_ns"): 4 * 20 * M,
        ("2026-11-30T11:10:00Z", "cpu_ns"): 800_000_000,
    }


def test_rebuild_twice_reproduces_hand_computed_records(ev):
    resize_across_an_hour(ev)

    def hours() -> list[dict]:
        return ev.usage("2026-11-30T10:00:00Z", "2026-11-30T12:00:00Z",
                        "hour")
    before = hours()
    got = {(r["start"], r["meter"]): int(r["quantity"]) for r in before
           if r["meter"] in ("running_ns", "vcpu_ns", "cpu_ns")}
    assert got == expected_by_record()
    assert sum(v for (_, m), v in got.items() if m == "cpu_ns") == \
        7 * S + 900_000_001  # the last reading, baseline 0
    text = report.as_json(before)
    span = (ns("2026-11-30T00:00:00+00:00"), ns("2026-12-01T00:00:00+00:00"))
    for reason in ("first", "second"):
        assert book.rebuild(ev.store, *span, reason) == (["hv1"], 0)
        assert report.as_json(hours()) == text  # ids and quantities too
    assert totals(hours(), "running_ns") == {
        "2026-11-30T10+00:00": 20 * M, "2026-11-30T11+00:00": 30 * M}
