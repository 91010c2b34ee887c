"""The collector's ingest step by step (``HostIngest.cycle``) against a real
agent and a real SQLite file: store outages, 410, a new WAL, conflicts."""

from __future__ import annotations

import shutil
import threading
from typing import Any

import pytest

from integration.conftest import wait_until
from integration.test_collector import acked, fresh_pull
from vmagent.collector import PullError
from vmagent.collector.ingest import HostIngest
from vmagent.collector.store import (
    MIGRATIONS,
    EvidenceConflict,
    HostRow,
    SqliteStore,
    StoredFrame,
    StoreError,
    open_store,
)


class FlakyStore(SqliteStore):
    """Fails the next ``failures`` batches like a store outage would."""

    failures = 0

    def save_batch(self, *args: Any, **kwargs: Any) -> None:
        if self.failures:
            self.failures -= 1
            raise StoreError("database is locked (simulated outage)")
        super().save_batch(*args, **kwargs)


def ingest_for(store: SqliteStore, agent, name: str = "hv") -> HostIngest:
    store.put_host(HostRow(name, agent.url, "default", agent.token(),
                           agent.public_key()))
    host = next(h for h in store.hosts() if h.name == name)
    return HostIngest(store, host, threading.Event(), wait_s=0)


def drain(ingest: HostIngest, rounds: int = 50) -> None:
    for _ in range(rounds):
        held = ingest.state.last_seq
        assert ingest.cycle() is True
        if ingest.state.last_seq == held:
            return


def seqs(store: SqliteStore, name: str = "hv") -> list[int]:
    return [s for _, s, _ in store.records(name)]


def test_store_outage_no_ack_then_resumes_without_loss(agent, tmp_path):
    a = agent(interval=0.2, fake_vms=1)
    store = FlakyStore(tmp_path / "c.db")
    store.migrate()
    ing = ingest_for(store, a)
    store.failures = 3
    for _ in range(3):
        with pytest.raises(StoreError):
            ing.cycle()
        assert ing.state.last_seq == 0  # the cursor did not move
    assert seqs(store) == [] and acked(a) in (None, 0)
    drain(ing)
    got = seqs(store)
    assert got == list(range(1, len(got) + 1)) and acked(a) == got[-1]
    assert [r for _, _, r in store.records("hv")] == fresh_pull(a, got[-1])


def test_410_is_recorded_missing_at_the_source(agent, tmp_path):
    a = agent(interval=0.2, fake_vms=1)
    store = open_store(tmp_path)
    ing = ingest_for(store, a)
    real = ing.client.batch
    calls = {"n": 0}

    def batch(*args: Any, **kwargs: Any) -> dict[str, Any]:
        calls["n"] += 1
        if calls["n"] == 2:  # once the WAL is known
            held = ing.state.last_seq
            raise PullError(410, {"error": "gone", "missing_from": held + 1,
                                  "missing_to": held + 3})
        return real(*args, **kwargs)

    ing.client.batch = batch  # type: ignore[method-assign]
    wait_until(lambda: len(fresh_pull(a, 10**9)) > 20)
    ing.max_records = 1
    assert ing.cycle() is True  # the first frame
    first = ing.state.last_seq
    assert ing.cycle() is True  # the 410
    ing.max_records = 1000
    drain(ing)
    wal = store.wals("hv")[0]
    assert wal["gaps"] == [{"from_seq": first + 1, "to_seq": first + 3,
                            "reason": "missing at the source (410)"}]
    assert wal["held"][0] == [1, first]
    assert wal["held"][1][0] == first + 4
    assert acked(a) == ing.state.last_seq


def test_new_wal_is_a_second_wal(agent, tmp_path):
    a = agent(interval=0.2, fake_vms=1)
    store = open_store(tmp_path)
    ing = ingest_for(store, a)
    drain(ing)
    old = ing.state.wal
    a.kill()
    shutil.rmtree(a.state / "wal")  # the WAL lost; the key kept
    a.start()
    drain(ing)  # the 409 names the new WAL: started from seq 1
    drain(ing)
    wals = store.wals("hv")
    assert [w["wal"] for w in wals][0] == old and len(wals) == 2
    assert wals[1]["held"][0][0] == 1
    assert acked(a) == ing.state.last_seq


def test_same_seq_same_bytes_harmless_other_bytes_refused(tmp_path):
    store = open_store(tmp_path)
    store.put_host(HostRow("hv", "http://x:1", "default", "t", b"k" * 32))
    wal = b"w" * 16
    rec = {"seq": 1, "kind": "inventory", "t": 5, "vms": []}
    frame = StoredFrame(1, 1, b"h" * 32, b"\0" * 32, b"s" * 64, "00" * 8,
                        b"raw", [rec])
    store.save_batch("hv", wal, [frame], [], 1, b"h" * 32)
    store.save_batch("hv", wal, [frame], [], 1, b"h" * 32)  # again: no-op
    assert seqs(store) == [1]
    other = StoredFrame(1, 1, b"H" * 32, b"\0" * 32, b"s" * 64, "00" * 8,
                        b"raw2", [{**rec, "vms": [1]}])
    with pytest.raises(EvidenceConflict):
        store.save_batch("hv", wal, [other], [], 1, b"H" * 32)
    assert [r for _, _, r in store.records("hv")] == [rec]
    assert store.hosts()[0].last_hash == b"h" * 32  # rolled back whole
    assert store.migrate() == len(MIGRATIONS)  # again: nothing to do
