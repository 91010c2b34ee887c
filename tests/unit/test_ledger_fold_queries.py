"""The ledger fold's reads stay one query per chunk of VMs, however many
VMs have no owner rows (ledger/book.py)."""

from __future__ import annotations

from typing import Any

from unit.test_ledger_book import Evidence
from vmagent.ledger import book


def test_vms_without_owners_cost_no_query_each(tmp_path):
    ev = Evidence(tmp_path)
    seen: list[str] = []
    try:
        with ev.store.transaction() as q:
            def counted(sql: str, args: Any = ()) -> Any:
                seen.append(sql)
                return q(sql, args)

            uuids = {f"5B0E7C1E-0000-0000-0000-{i:012x}" for i in range(50)}
            of = book._owner_cuts(counted, uuids)
            assert all(of(u) == [] and of(u.lower()) == [] for u in uuids)
        assert len(seen) == 1  # the chunk's query, none per VM
    finally:
        ev.store.close()

