"""A backlog's next batch is pulled while the last one is stored
(``Client.prefetch`` from ``HostIngest._save``): against a real agent,
every record is still stored once and acked after its commit, also when a
store fails with a batch pulled ahead."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from integration.conftest import wait_until
from integration.test_collector import acked, fresh_pull
from integration.test_collector_ingest import FlakyStore, drain, ingest_for
from vmagent.collector.client import Client
from vmagent.collector.store import StoreError


def test_a_backlog_pulled_ahead_is_stored_once_after_a_store_failure(
        agent, tmp_path, monkeypatch):
    a = agent(interval=0.2, fake_vms=1)
    wait_until(lambda: len(fresh_pull(a, 10**9)) > 12)
    store = FlakyStore(tmp_path / "c.db")
    store.migrate()
    ing = ingest_for(store, a)
    ing.max_records = 2  # every batch of the backlog is full
    asked: list[str] = []  # which thread sent each pull
    real = Client._batch

    def batch(self: Client, *args: Any) -> dict[str, Any]:
        asked.append(threading.current_thread().name)
        return real(self, *args)

    monkeypatch.setattr(Client, "_batch", batch)
    assert ing.cycle() is True
    stored = ing.state.last_seq
    store.failures = 1  # the batch pulled ahead is not stored
    with pytest.raises(StoreError):
        ing.cycle()
    assert ing.state.last_seq == stored and acked(a) == stored
    drain(ing)
    got = [s for _, s, _ in store.records("hv")]
    assert got == list(range(1, len(got) + 1)) and len(got) > 12
    assert acked(a) == got[-1]
    assert [r for _, _, r in store.records("hv")] == fresh_pull(a, got[-1])
    # the backlog's batches were pulled ahead; this thread asked only for
    # the first, after the failure (another cursor) and once caught up
    assert asked.count("prefetch") >= 4
    assert asked.count(threading.current_thread().name) <= 5
