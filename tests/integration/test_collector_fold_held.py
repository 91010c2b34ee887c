"""The decoded records ``HostIngest`` keeps for the ledger's next fold:
folded without reading the store back, given back after each fold, and
past the process's budget (``HELD_RECORDS``) not kept: that fold reads
the store, with the same ledger."""

from __future__ import annotations

from typing import Any

import pytest

from integration.conftest import wait_until
from integration.test_collector import fresh_pull
from integration.test_collector_ingest import ingest_for
from vmagent.collector import ingest as ingest_mod
from vmagent.collector.store import SqliteStore
from vmagent.ledger import book


@pytest.fixture
def given(monkeypatch) -> list[bool]:  # noqa: ANN001
    """Per fold: whether it was given the stored records."""
    calls: list[bool] = []
    real = book.follow

    def spy(store: Any, host: str, wal: bytes, stored: Any = None) -> None:
        calls.append(bool(stored))
        real(store, host, wal, stored)

    monkeypatch.setattr(book, "follow", spy)
    return calls


def _drain(a: Any, path: Any, upto: int) -> tuple[int, int]:
    """Stores and folds ``a``'s records up to ``upto``; (the ledger's
    position, slices a rebuild from the stored frames changes)."""
    store = SqliteStore(path)
    store.migrate()
    try:
        ing = ingest_for(store, a)
        ing.max_records = 3
        while ing.state.last_seq < upto:
            assert ing.cycle() is True
        ing.halt()
        with store.transaction() as q:
            pos = q("SELECT max(seq) FROM ledger_pos").fetchone()[0]
        assert pos == ing.state.last_seq
        assert book.slices(store, 0, 2**62)
        return pos, book.rebuild(store, 0, 2**62, "test")[1]
    finally:
        store.close()


def test_held_records_are_folded_and_given_back(agent, tmp_path,
                                                monkeypatch, given):
    a = agent(interval=0.2, fake_vms=2)
    wait_until(lambda: len(fresh_pull(a, 30)) >= 30)
    monkeypatch.setattr(ingest_mod, "FOLD_RECORDS", 9)
    held = ingest_mod.HELD.count  # other tests' pullers may hold some
    pos, changed = _drain(a, tmp_path / "c.db", 30)
    assert len(given) >= 2 and all(given)
    assert ingest_mod.HELD.count == held
    assert pos >= 30 and changed == 0  # what a fold from the frames gives


def test_past_the_budget_folds_read_the_store(agent, tmp_path, monkeypatch,
                                             given):
    a = agent(interval=0.2, fake_vms=2)
    wait_until(lambda: len(fresh_pull(a, 30)) >= 30)
    monkeypatch.setattr(ingest_mod, "FOLD_RECORDS", 9)
    held = ingest_mod.HELD.count
    monkeypatch.setattr(ingest_mod, "HELD_RECORDS", held + 4)  # ~a batch
    pos, changed = _drain(a, tmp_path / "c.db", 30)
    assert len(given) >= 2 and not all(given)
    assert ingest_mod.HELD.count == held
    assert pos >= 30 and changed == 0
