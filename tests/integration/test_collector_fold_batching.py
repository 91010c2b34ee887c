"""When the collector folds the usage ledger (``HostIngest``): after every
batch once the host is caught up, once per ``FOLD_RECORDS`` while a backlog
drains, and whatever is left when the puller halts; the ledger always ends
at the last stored seq."""

from __future__ import annotations

from typing import Any

import pytest

from integration.conftest import wait_until
from integration.test_collector import fresh_pull
from integration.test_collector_ingest import ingest_for
from vmagent.collector import ingest as ingest_mod
from vmagent.collector.store import SqliteStore
from vmagent.ledger import book


def folded_seq(store: SqliteStore) -> int:
    with store.transaction() as q:
        row = q("SELECT max(seq) FROM ledger_pos").fetchone()
    return row[0] or 0


@pytest.fixture
def folds(monkeypatch) -> list[int]:  # noqa: ANN001
    """The calls of ``book.follow`` (one per fold), counted."""
    calls: list[int] = []
    real = book.follow

    def counted(*args: Any, **kwargs: Any) -> None:
        calls.append(1)
        real(*args, **kwargs)

    monkeypatch.setattr(book, "follow", counted)
    return calls


def test_a_draining_backlog_is_folded_in_fewer_larger_folds(
        agent, tmp_path, monkeypatch, folds):
    a = agent(interval=0.2, fake_vms=2)
    wait_until(lambda: len(fresh_pull(a, 40)) >= 40)
    monkeypatch.setattr(ingest_mod, "FOLD_RECORDS", 12)
    store = SqliteStore(tmp_path / "c.db")
    store.migrate()
    ing = ingest_for(store, a)
    ing.max_records = 2  # every batch of the backlog is full
    batches = 0
    try:
        while ing.state.last_seq < 40:
            held = ing.state.last_seq
            assert ing.cycle() is True
            batches += ing.state.last_seq > held
        for _ in range(200):  # until a batch is not full: caught up
            assert ing.cycle() is True
            if ing.unfolded == 0:
                break
        assert 0 < len(folds) <= batches // 2
        assert folded_seq(store) == ing.state.last_seq
    finally:
        store.close()


def test_halt_folds_the_records_stored_so_far(agent, tmp_path, monkeypatch,
                                              folds):
    a = agent(interval=0.2, fake_vms=2)
    wait_until(lambda: len(fresh_pull(a, 20)) >= 20)
    monkeypatch.setattr(ingest_mod, "FOLD_RECORDS", 10**9)
    store = SqliteStore(tmp_path / "c.db")
    store.migrate()
    ing = ingest_for(store, a)
    ing.max_records = 2
    try:
        while ing.state.last_seq < 10:
            assert ing.cycle() is True
        assert ing.unfolded > 0
        assert folded_seq(store) < ing.state.last_seq
        ing.halt()
        assert ing.unfolded == 0
        assert folded_seq(store) == ing.state.last_seq
    finally:
        store.close()
