"""The owners CSV (`vmcollector owners import`): parsing, one-line errors
naming file, line and field, the time-versioned lookup, open periods only,
and the table's SQL on SQLite."""

from __future__ import annotations

import sqlite3

import pytest

from vmagent.ledger.exact import parse_rfc3339_ns
from vmagent.ledger.owners import (
    OWNERS_SELECT_SQL,
    OWNERS_SQL,
    OWNERS_UPSERT_SQL,
    OwnerRow,
    OwnersError,
    clamp_to_open,
    owner_at,
    owner_cuts,
    parse_owners,
    read_owners,
)

VM1 = "6f1c8a52-3b1e-4c7a-9d2e-0a1b2c3d4e5f"
VM2 = "0b7d2e41-9c3f-4a8b-8e1d-5f6a7b8c9d0e"
GOOD = (
    "vm_uuid,account,project,from\n"
    f"{VM1},acme,shop,2026-11-01T00:00:00Z\n"
    "\n"
    f"{VM1.upper()},\"Globex, Inc.\",,2026-11-15T10:30:00+01:00\n"
    f"{VM2},acme,db,2026-10-01T00:00:00.5Z\n"
)


def t(text: str) -> int:
    return parse_rfc3339_ns(text)


def rows() -> list[OwnerRow]:
    return parse_owners(GOOD, "owners.csv")


def test_a_good_file_parses_to_utc_rows_with_lowercase_uuids():
    assert rows() == [
        OwnerRow(VM1, t("2026-11-01T00:00:00Z"), "acme", "shop"),
        OwnerRow(VM1, t("2026-11-15T09:30:00Z"), "Globex, Inc.", None),
        OwnerRow(VM2, t("2026-10-01T00:00:00.5Z"), "acme", "db"),
    ]


def test_columns_may_come_in_any_order_and_a_bom_is_accepted(tmp_path):
    path = tmp_path / "o.csv"
    path.write_bytes("\ufefffrom,Project,vm_uuid,account\r\n"
                     f"2026-11-01T00:00:00Z,shop,{VM1},acme\r\n"
                     .encode())
    assert read_owners(path) == [
        OwnerRow(VM1, t("2026-11-01T00:00:00Z"), "acme", "shop")]


def test_a_header_only_file_has_no_rows():
    assert parse_owners("vm_uuid,account,project,from\n", "o.csv") == []


@pytest.mark.parametrize("text, message", [
    ("", "o.csv:1: empty file; expected the header "
         "vm_uuid,account,project,from"),
    ("vm_uuid,account,from\n", "o.csv:1: project: missing column"),
    ("vm_uuid,account,project,from,cost\n", "o.csv:1: cost: unknown column"),
    ("vm_uuid,account,project,from,from\n", "o.csv:1: from: column given "
                                            "twice"),
    ("vm_uuid,account,project,from\n"
     "not-a-uuid,acme,shop,2026-11-01T00:00:00Z\n",
     "o.csv:2: vm_uuid: not a UUID: 'not-a-uuid'"),
    ("vm_uuid,account,project,from\n"
     f"{VM1},acme,shop,2026-11-01 00:00\n",
     "o.csv:2: from: not an RFC 3339 time with Z or an offset"),
    ("vm_uuid,account,project,from\n"
     f"{VM1},acme,shop,2026-11-31T00:00:00Z\n",
     "o.csv:2: from: not a valid time"),
    ("vm_uuid,account,project,from\n"
     f"{VM1},,shop,2026-11-01T00:00:00Z\n", "o.csv:2: account: empty"),
    ("vm_uuid,account,project,from\n"
     f"{VM1},acme,2026-11-01T00:00:00Z\n",
     "o.csv:2: expected 4 fields, got 3"),
    ("vm_uuid,account,project,from\n"
     f"{VM1},acme,shop,2026-11-01T00:00:00Z\n\n"
     f"{VM1},globex,,2026-11-01T01:00:00+01:00\n",
     "o.csv:4: from: duplicate of line 2 (same vm_uuid and from)"),
    ("vm_uuid,account,project,from\n"
     f"{VM1},\"acme,shop,2026-11-01T00:00:00Z\n", "o.csv:"),
])
def test_a_bad_file_is_a_one_line_error_naming_file_line_and_field(
        text, message):
    with pytest.raises(OwnersError) as e:
        parse_owners(text, "o.csv")
    assert str(e.value).startswith(message)
    assert "\n" not in str(e.value)


def test_an_unreadable_or_binary_file_is_an_error_naming_it(tmp_path):
    with pytest.raises(OwnersError, match=r"missing\.csv: cannot read"):
        read_owners(tmp_path / "missing.csv")
    bad = tmp_path / "bin.csv"
    bad.write_bytes(b"vm_uuid,account,project,from\n\xff\xfe\n")
    with pytest.raises(OwnersError, match=r"bin\.csv: not UTF-8 text"):
        read_owners(bad)


def test_the_owner_at_an_instant_is_the_latest_row_not_after_it():
    r = rows()
    assert owner_at(r, VM1, t("2026-10-31T23:59:59Z")) is None
    assert owner_at(r, VM1, t("2026-11-01T00:00:00Z")).account == "acme"
    assert owner_at(r, VM1, t("2026-11-15T09:29:59Z")).account == "acme"
    assert owner_at(r, VM1, t("2026-11-15T09:30:00Z")).account == \
        "Globex, Inc."
    assert owner_at(r, VM1.upper(), t("2027-01-01T00:00:00Z")).project \
        is None
    assert owner_at(r, VM2, t("2026-11-20T00:00:00Z")).project == "db"


def test_owner_changes_inside_a_range_are_slice_cuts():
    r = rows()
    assert owner_cuts(r, VM1, t("2026-11-01T00:00:00Z"),
                      t("2026-12-01T00:00:00Z")) == [t("2026-11-15T09:30:00Z")]
    assert owner_cuts(r, VM2, t("2026-11-01T00:00:00Z"),
                      t("2026-12-01T00:00:00Z")) == []


def test_an_import_never_reattributes_a_closed_period():
    open_from = t("2026-11-01T00:00:00Z")  # October is closed
    imported = [
        OwnerRow(VM1, t("2026-10-05T00:00:00Z"), "old", None),
        OwnerRow(VM1, t("2026-10-20T00:00:00Z"), "late", None),
        OwnerRow(VM1, t("2026-11-10T00:00:00Z"), "new", None),
        OwnerRow(VM2, t("2026-10-20T00:00:00Z"), "late", None),
        OwnerRow(VM2, open_from, "exact", None),
    ]
    kept = clamp_to_open(imported, open_from)
    assert kept == [
        OwnerRow(VM2, open_from, "exact", None),  # dated there: it wins
        OwnerRow(VM1, open_from, "late", None),  # the latest before it
        OwnerRow(VM1, t("2026-11-10T00:00:00Z"), "new", None),
    ]
    # in the open period the owner is what the file says
    for when in ("2026-11-01T00:00:00Z", "2026-11-09T23:59:59Z",
                 "2026-11-10T00:00:00Z", "2026-12-24T00:00:00Z"):
        for vm in (VM1, VM2):
            now, said = (owner_at(r, vm, t(when)) for r in (kept, imported))
            assert now is not None and said is not None
            assert (now.account, now.project) == (said.account, said.project)


def test_the_owners_table_stores_and_replaces_rows_on_sqlite():
    db = sqlite3.connect(":memory:")
    try:
        db.execute(OWNERS_SQL.format(int="INTEGER", blob="BLOB", real="REAL"))
        for row in rows():
            db.execute(OWNERS_UPSERT_SQL, row.params())
        again = OwnerRow(VM2, t("2026-10-01T00:00:00.5Z"), "globex", None)
        db.execute(OWNERS_UPSERT_SQL, again.params())
        stored = [OwnerRow(*r) for r in db.execute(OWNERS_SELECT_SQL)]
    finally:
        db.close()
    assert stored == sorted(rows()[:2] + [again])
