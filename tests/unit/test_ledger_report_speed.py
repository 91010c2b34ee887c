"""The report read path's shortcuts (ledger/records.py, ledger/report.py:
kept periods and times, the record id built without the JSON encoder, the
owner looked up once a slice) change no byte of any output: SHA-256 of
``usage`` in every form over bench/ledger.py's synthetic base slices, as
the code before the shortcuts printed them."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import pytest

from vmagent.collector.store import SqliteStore
from vmagent.ledger import close, records, report
from vmagent.ledger.periods import period_of

BENCH = Path(__file__).resolve().parents[2] / "bench" / "ledger.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_ledger", BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    bench = _bench()
    s = SqliteStore(tmp_path_factory.mktemp("rep") / "c.db")
    s.migrate()
    bench.fill(s, vms=4, hosts=2, days=2, accounts=2)
    yield s
    s.close()


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


START = report.parse_time("2026-11-01")
END = report.parse_time("2026-11-03")

# (grain, tz): SHA-256 of usage --json, of usage --group-by account --json
BEFORE = {
    ("hour", "UTC"): (
        "fa93db6e1a21464455a31c1c8456d22a665922918d3b6917414d5140b6de4be2",
        "8a22a71363fcdf26a1cf018dbafef805e404f71f94a6794700435b2e4c0d8275"),
    ("hour", "Asia/Kathmandu"): (
        "2694a05965abe238bec4075072bcbb20cfd796ae0ee5657cfaaef7846479353f",
        "0d078248d89cdc87e820cde95f031888f6696f07c22dc0abed41ab5dc38c2736"),
    ("day", "Europe/Berlin"): (
        "80252d05d055a1eabfaef982f1c148c59636cb7e7b49dfd5f68d387c2e9fbfa6",
        "aee6626b3f28a23baa32e96ecf93e5507a00319c2dc8be45ca2b2b17cba79bea"),
    ("month", "UTC"): (
        "077df5f15c73becfdbdf3bed6da737892504fbfd707b613ecdd47fab827c4917",
        "42ebdbc2ca052de53d633b522e2a7e10b7b73f57634cfbbd1513a9ff3b231bdc"),
}


@pytest.mark.parametrize("grain,tz", sorted(BEFORE))
def test_usage_json_and_grouped_json_are_byte_identical_to_before(
        store, grain, tz):
    rows = close.usage(store, START, END, grain, tz)
    assert rows, "the synthetic ledger gave no records"
    got = (_sha(report.as_json(rows)),
           _sha(report.as_json(report.group(rows, "account"))))
    assert got == BEFORE[(grain, tz)]


def test_usage_xml_and_csv_keep_their_column_order(store):
    rows = close.usage(store, START, END, "hour", "UTC")
    assert _sha(report.as_xml(rows)) == \
        "92a76a46068592770cc154155d35b923aa391bf9304acdceeeea95ac4c7a437f"
    assert _sha(report.as_csv(rows)) == \
        "50b664f0b8711c15f4aca5ebce2d3f529bd71c1fa3b79f250d1c71a076c5b69a"


def test_grouped_rows_cover_every_account_hour_and_meter(store):
    rows = report.group(close.usage(store, START, END, "hour", "UTC"),
                        "account")
    # 2 accounts (4 VMs: none of them is the unowned tenth), 48 hours,
    # 11 meters
    assert len(rows) == 2 * 48 * 11
    assert {r["account"] for r in rows} == {"acct-00", "acct-01"}


@pytest.mark.parametrize("text", ["hv1", 'a"b\\c', "ünï\u2028", "\x01tab\t",
                                  "", "Asia/Kathmandu"])
def test_record_id_is_sha256_of_the_canonical_json_tuple(text):
    canon = json.dumps([text, "u", "g1", "net_rx_bytes", text, 5, 2**70,
                        "hour", "UTC", records.VERSION],
                       separators=(",", ":"), ensure_ascii=False)
    assert records.record_id(text, "u", "g1", "net_rx_bytes", text, 5,
                             2**70, "hour", "UTC") == \
        hashlib.sha256(canon.encode()).hexdigest()


@pytest.mark.parametrize("tz", ["UTC", "Europe/Berlin", "Asia/Kathmandu",
                                "America/St_Johns"])
def test_kept_periods_equal_fresh_ones_across_a_dst_change(tz):
    t = report.parse_time("2026-10-25T00:00:00Z")
    for k in range(0, 24 * 4 * 3):
        at = t + k * 900 * 10**9
        for grain in ("hour", "day", "month"):
            assert records.period_of(at, grain, tz) == \
                period_of(at, grain, tz)


def test_kept_rfc3339_keeps_nanoseconds():
    kept = records._kept_rfc3339
    assert kept(1) == "1970-01-01T00:00:00.000000001Z"
    assert kept(1) == records.rfc3339(1)
    assert kept(10**9) == "1970-01-01T00:00:01Z"
