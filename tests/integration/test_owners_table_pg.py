"""The owners table's SQL (ledger/owners.py) on a real PostgreSQL, as the
store runs its migrations: ``{int}`` is BIGINT, ``?`` becomes ``%s``."""

from __future__ import annotations

from vmagent.ledger.exact import parse_rfc3339_ns
from vmagent.ledger.owners import (
    OWNERS_SELECT_SQL,
    OWNERS_SQL,
    OWNERS_UPSERT_SQL,
    OwnerRow,
)

VM = "6f1c8a52-3b1e-4c7a-9d2e-0a1b2c3d4e5f"


def test_the_owners_table_stores_ns_instants_and_replaces_rows(pg_url):
    import psycopg

    first = OwnerRow(VM, parse_rfc3339_ns("2026-11-01T00:00:00.000000001Z"),
                     "acme", "shop")
    later = OwnerRow(VM, parse_rfc3339_ns("2262-04-11T23:47:16Z"), "globex",
                     None)  # near the largest int64 ns
    again = OwnerRow(VM, first.from_ns, "initech", None)
    upsert = OWNERS_UPSERT_SQL.replace("?", "%s")
    with psycopg.connect(pg_url, autocommit=True) as db:
        db.execute(OWNERS_SQL.format(int="BIGINT", blob="BYTEA",
                                     real="DOUBLE PRECISION"))
        for row in (first, later, again):
            db.execute(upsert, row.params())
        stored = [OwnerRow(*r) for r in db.execute(OWNERS_SELECT_SQL)]
    assert stored == [again, later]
