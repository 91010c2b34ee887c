"""The roll-up on PostgreSQL: ``usage --group-by`` read from it gives the
records' bytes over a seeded random fleet (unit/test_ledger_grouped.py),
the same bytes as on SQLite, and exact sums past 64 bits (numeric sums of
the limbs)."""

from __future__ import annotations

from unit.test_ledger_grouped import (
    T0,
    assert_same,
    fleet,
    matrix,
)
from vmagent.collector.store import PostgresStore, SqliteStore
from vmagent.ledger import close, report, rollup
from vmagent.ledger.periods import NS

H = 3600 * NS


def test_a_random_fleet_groups_alike_on_both_paths_and_both_stores(
        pg_url, tmp_path):
    pg = PostgresStore(pg_url)
    lite = SqliteStore(tmp_path / "collector.db")
    try:
        for store in (pg, lite):
            store.migrate()
            fleet(store, 5)
        assert matrix(pg) > 1000
        for by in report.GROUPS:
            got = [report.as_json(close.grouped(
                s, T0 - H, T0 + 8 * H, by, "hour", "Europe/Berlin"))
                for s in (pg, lite)]
            assert got[0] == got[1]
        assert_same(pg, T0 - H, T0 + 8 * H, "account", "day",
                    "Asia/Kathmandu")
    finally:
        pg.close()
        lite.close()


def test_postgresql_sums_the_limbs_past_64_bits(pg_url):
    store = PostgresStore(pg_url)
    try:
        store.migrate()
        v = 2**93 - 1
        with store.transaction() as q:
            for i in range(64):
                q("INSERT INTO ledger_rollup VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                  (f"hv{i}", 0, "A", "vcpu_ns", str(v), *rollup.limbs(v)))
            got = rollup.sums(q, [(0, 1)], "account", postgresql=True)
        assert got == {(0, "A", "vcpu_ns"): 64 * v}
    finally:
        store.close()
