"""The ledger worker's loop (collector/folder.py ``Follower``) over a real
SQLite store: folds what it is told of and what a newly held host stored,
at most ``limit`` records per transaction, until caught up; the ledger it
leaves equals one inline fold; the lag it reports counts what is left."""

from __future__ import annotations

import hashlib
import io
import json

import msgpack
import pytest

from unit.test_ledger_book import GIB, WAL, S, sample, start
from vmagent.collector.folder import (
    Follower,
    _read_inbox,
    lag_by_host,
    unfolded,
)
from vmagent.collector.metrics import render_status
from vmagent.collector.store import HostRow, SqliteStore, StoredFrame
from vmagent.ledger import book

T0 = 1_790_000_000 * S


def stored_store(path, host="hv1", batches=5, per=5) -> SqliteStore:
    """A store holding ``batches`` frames of ``per`` records of ``host``,
    none folded into the ledger."""
    store = SqliteStore(path)
    store.migrate()
    store.put_host(HostRow(host, "http://x", "default", "t", b"\0" * 32))
    seq = 0
    for _ in range(batches):
        recs = []
        for _ in range(per):
            seq += 1
            r = start(T0, vcpus=2, mem=GIB) if seq == 1 else \
                sample(T0 + seq * S, cpu=seq * S, rx=seq * 100)
            recs.append({**r, "seq": seq, "host": "agent-id"})
        body = b"".join(msgpack.packb(r, use_bin_type=True) for r in recs)
        frame = StoredFrame(recs[0]["seq"], seq, hashlib.sha256(body)
                            .digest(), b"\0" * 32, b"\0" * 64, "k", body,
                            recs)
        store.save_batch(host, WAL, [frame], [], seq, None)
    return store


def ledger(store: SqliteStore) -> list[tuple]:
    with store.transaction() as q:
        return [*q("SELECT * FROM ledger_slices ORDER BY 1, 2, 3, 4"),
                *q("SELECT * FROM ledger_quantities ORDER BY 1, 2, 3, 4, 5, "
                   "6"), *q("SELECT host, seq FROM ledger_pos")]


@pytest.fixture
def counted(monkeypatch):
    """The records each ``book.update`` folded, in call order."""
    calls: list[int] = []
    real = book.update

    def update(*args, **kwargs):
        n = real(*args, **kwargs)
        calls.append(n)
        return n

    monkeypatch.setattr(book, "update", update)
    return calls


def test_an_update_folds_at_most_its_limit_and_the_next_one_continues(
        tmp_path):
    limited = stored_store(tmp_path / "a.db")
    whole = stored_store(tmp_path / "b.db")
    try:
        assert [book.update(limited, "hv1", WAL, limit=10)
                for _ in range(4)] == [10, 10, 5, 0]
        assert book.update(whole, "hv1", WAL) == 25
        assert ledger(limited) == ledger(whole)
    finally:
        limited.close()
        whole.close()


def test_the_follower_folds_what_it_is_told_in_bounded_transactions(
        tmp_path, counted):
    store = stored_store(tmp_path / "a.db")
    whole = stored_store(tmp_path / "b.db")
    try:
        f = Follower(store, limit=7)
        f.stored("hv1", WAL)
        f.stop(60)  # the stop's drain: returns once caught up
        assert f.run() == "stopped"
        assert counted == [7, 7, 7, 4]
        assert f.folded == {"hv1": 25}
        book.update(whole, "hv1", WAL)
        assert ledger(store) == ledger(whole)
    finally:
        store.close()
        whole.close()


def test_a_host_newly_followed_is_scanned_for_what_it_stored_before(
        tmp_path, counted):
    store = stored_store(tmp_path / "a.db")
    try:
        assert unfolded(store) == {("hv1", WAL): 25}
        f = Follower(store, limit=100)
        f.follow({"other"})  # not this host: nothing to fold
        f.stop(60)
        assert f.run() == "stopped" and counted == []
        f = Follower(store, limit=100)
        f.follow({"hv1"})
        f.stop(60)
        assert f.run() == "stopped"
        assert counted == [25] and unfolded(store) == {}
    finally:
        store.close()


def test_a_parent_gone_ends_the_follower_leaving_the_rest(tmp_path,
                                                          counted):
    store = stored_store(tmp_path / "a.db")
    try:
        f = Follower(store, limit=5)
        f.stored("hv1", WAL)
        f.lose_parent()
        assert f.run() == "parent gone"
        assert counted == [] and lag_by_host(store) == {"hv1": 25}
    finally:
        store.close()


def test_the_lag_counts_records_stored_past_the_ledger_and_is_exported(
        tmp_path):
    store = stored_store(tmp_path / "a.db")
    try:
        assert lag_by_host(store) == {"hv1": 25}
        book.update(store, "hv1", WAL, limit=20)
        assert lag_by_host(store) == {"hv1": 5}
        text = render_status({"hosts": [
            {"name": "hv1", "state": "current", "ledger_lag_records": 5}]})
        assert 'vmcollector_ledger_lag_records{host="hv1"} 5' in text
    finally:
        store.close()


def test_the_parents_lines_reach_the_follower_and_eof_means_gone(tmp_path):
    store = stored_store(tmp_path / "a.db", batches=1)
    try:
        f = Follower(store)
        lines = [json.dumps({"stored": ["hv1", WAL.hex()]}), "not json",
                 json.dumps({"stored": ["hv1"]}),  # malformed: ignored
                 json.dumps({"hosts": ["hv1", "hv2"]})]
        _read_inbox(io.BytesIO("\n".join(lines).encode() + b"\n"), f)
        assert list(f.dirty) == [("hv1", WAL)]
        assert f.hosts == {"hv1", "hv2"} and f.gone
        f = Follower(store)
        _read_inbox(io.BytesIO(b'{"stop": 5}\n'), f)
        assert f.stop_by is not None and not f.gone  # a stop, then EOF
    finally:
        store.close()


def test_a_fold_that_finds_its_reads_changed_is_done_again(tmp_path,
                                                           monkeypatch):
    """Records are folded outside the write transaction: another fold of
    the host in between (here through a second connection) is seen when
    writing, and the fold is done again from the new position."""
    store = stored_store(tmp_path / "a.db")
    other = SqliteStore(tmp_path / "a.db")
    whole = stored_store(tmp_path / "b.db")
    real, plans = book._plan, []

    def plan(*args, **kwargs):
        out = real(*args, **kwargs)
        plans.append(out[2] if out else 0)
        if len(plans) == 1:  # meanwhile, another fold takes 10 records
            assert book.update(other, "hv1", WAL, limit=10) == 10
        return out

    monkeypatch.setattr(book, "_plan", plan)
    try:
        assert book.update(store, "hv1", WAL) == 15
        assert plans == [25, 10, 15]  # ours, the other's, ours again
        monkeypatch.setattr(book, "_plan", real)
        book.update(whole, "hv1", WAL)
        assert ledger(store) == ledger(whole)
    finally:
        for s in (store, other, whole):
            s.close()


def test_the_periodic_check_finds_a_held_hosts_current_wal_behind(
        tmp_path):
    """A notice the pipe could not take: the check of the held hosts'
    current WALs (``hosts.stored_seq`` past ``ledger_pos``) finds it."""
    store = stored_store(tmp_path / "a.db")
    try:
        f = Follower(store)
        f.hosts = {"hv1"}
        f._rescan()
        assert list(f.dirty) == [("hv1", WAL)]
        book.update(store, "hv1", WAL)
        f.dirty.clear()
        f._rescan()
        assert list(f.dirty) == []
    finally:
        store.close()
