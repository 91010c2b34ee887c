"""The ledger worker's loop (collector/folder.py ``Follower``) over a real
SQLite store: folds what it is told of and what a newly held host stored,
at most ``limit`` records per transaction, until caught up; the ledger it
leaves equals one inline fold; the lag it reports counts what is left."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import sqlite3
import sys
import threading
import time

import msgpack
import pytest

from unit.test_ledger_book import GIB, WAL, S, sample, start
from vmagent.collector import folder
from vmagent.collector.folder import (
    Follower,
    LedgerWorker,
    _read_inbox,
    lag_by_host,
    unfolded,
)
from vmagent.collector.metrics import render_status
from vmagent.collector.store import (
    HostRow,
    SqliteStore,
    StoredFrame,
    StoreError,
)
from vmagent.ledger import book

T0 = 1_790_000_000 * S


def stored_store(path, host="hv1", batches=5, per=5) -> SqliteStore:
    """A store holding ``batches`` frames of ``per`` records of ``host``,
    none folded into the ledger."""
    store = SqliteStore(path)
    store.migrate()
    store.put_host(HostRow(host, "http://x", "default", "t", b"\0" * 32))
    for b in range(batches):
        store_frame(store, host, b * per, per)
    return store


def store_frame(store: SqliteStore, host: str, after: int, per: int) -> None:
    """A frame of ``per`` records of ``host`` after seq ``after``."""
    recs = []
    for seq in range(after + 1, after + per + 1):
        r = start(T0, vcpus=2, mem=GIB) if seq == 1 else \
            sample(T0 + seq * S, cpu=seq * S, rx=seq * 100)
        recs.append({**r, "seq": seq, "host": "agent-id"})
    body = b"".join(msgpack.packb(r, use_bin_type=True) for r in recs)
    frame = StoredFrame(after + 1, after + per,
                        hashlib.sha256(body).digest(), b"\0" * 32,
                        b"\0" * 64, "k", body, recs)
    store.save_batch(host, WAL, [frame], [], after + per, None)


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


def test_a_backlog_told_of_in_many_notices_is_folded_in_few_folds(
        tmp_path, counted):
    """Storing a batch every few milliseconds, a fold after each would
    write the same slices again and again: a (host, WAL) folded short of
    the limit waits GATHER_S before its next fold, and gets the batches
    stored meanwhile at once."""
    store = stored_store(tmp_path / "a.db", batches=1)
    whole = stored_store(tmp_path / "b.db", batches=40)
    f = Follower(store, limit=10_000)
    worker = threading.Thread(target=f.run)
    worker.start()
    try:
        f.stored("hv1", WAL)
        for b in range(1, 40):
            time.sleep(0.02)
            store_frame(store, "hv1", b * 5, 5)
            f.stored("hv1", WAL)
        f.stop(60)
        worker.join(60)
        assert not worker.is_alive()
        assert sum(counted) == 200
        assert len([n for n in counted if n]) <= 20, counted  # not 40
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


class _PipeProc:
    """A worker stand-in: its stdin the write end of a real pipe."""

    pid = 0

    def __init__(self) -> None:
        r, w = os.pipe()
        os.set_blocking(w, False)
        self.inbox, self.stdin = os.fdopen(r, "rb"), os.fdopen(w, "wb")


def test_a_fleets_host_list_longer_than_the_pipe_reaches_the_worker(
        tmp_path):
    """A host list of a large fleet is more than a pipe holds: it reaches
    the worker whole (in lines written whole), every later line intact."""
    store = stored_store(tmp_path / "a.db", batches=1)
    proc = _PipeProc()
    f = Follower(store)
    reader = threading.Thread(target=_read_inbox, args=(proc.inbox, f))
    reader.start()
    try:
        worker = LedgerWorker("sqlite:x", 30.0)
        worker.proc = proc
        hosts = {f"hypervisor-{i:05d}.rack-{i % 40:02d}.example.net"
                 for i in range(3000)}  # ~150 kB of JSON
        deadline = time.monotonic() + 30
        while f.hosts != hosts and time.monotonic() < deadline:
            worker.follow(hosts, hosts)  # a tick: a list cut off again
            worker.stored("hv1", WAL)
            time.sleep(0.01)
        worker.stored("hv1", WAL)
        proc.stdin.close()
        reader.join(timeout=30)
        assert f.hosts == hosts
        assert list(f.dirty) == [("hv1", WAL)]
    finally:
        with contextlib.suppress(OSError):
            proc.stdin.close()
        reader.join(timeout=30)
        proc.inbox.close()
        store.close()


def test_a_worker_that_cannot_be_spawned_is_logged_and_tried_later(
        tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-python"))
    monkeypatch.setattr(folder, "backoff", lambda attempt: 60.0)
    worker = LedgerWorker("sqlite:x", 30.0).start()  # does not raise
    assert worker.pid is None and worker.restart_at > time.monotonic()
    worker.check()  # before the backoff ran out: not tried again
    assert worker.pid is None and worker.attempt == 1


def test_a_fold_that_keeps_failing_is_retried_with_a_backoff(
        tmp_path, monkeypatch):
    """A (host, WAL) whose fold fails each time is tried again after a
    growing delay, not at every turn of the loop, and the other hosts'
    folds go on meanwhile."""
    stored_store(tmp_path / "a.db", host="hv2").close()
    store = stored_store(tmp_path / "a.db")  # hv1 and hv2
    monkeypatch.setattr(folder, "TICK_S", 0.01)
    real, calls = book.update, []

    def update(store, host, wal, limit=None):
        calls.append(host)
        if host == "hv1":
            raise book.LedgerBusy("always")
        return real(store, host, wal, limit)

    monkeypatch.setattr(book, "update", update)
    timer = threading.Timer(2.0, lambda: f.lose_parent())
    try:
        f = Follower(store, limit=5)
        f.stored("hv1", WAL)
        f.stored("hv2", WAL)
        timer.start()
        assert f.run() == "parent gone"
        assert lag_by_host(store) == {"hv1": 25}  # hv2 all folded
        assert 1 <= calls.count("hv1") <= 8  # not every 10 ms (~200)
    finally:
        timer.cancel()
        store.close()


def test_the_lag_is_read_while_another_process_holds_the_write_lock(
        tmp_path):
    """``vmcollector status`` (and /metrics) read the lag without SQLite's
    write lock: a long write elsewhere (a rebuild, a fold) does not make
    them fail."""
    stored_store(tmp_path / "a.db").close()
    writer = sqlite3.connect(tmp_path / "a.db", isolation_level=None)
    store = SqliteStore(tmp_path / "a.db", timeout=0.2)
    try:
        writer.execute("BEGIN IMMEDIATE")
        assert lag_by_host(store) == {"hv1": 25}
    finally:
        writer.execute("ROLLBACK")
        writer.close()
        store.close()


class _Down:
    """A store whose database is down: every statement fails at once."""

    def __init__(self) -> None:
        self.tries = 0

    def read(self, *args):
        self.tries += 1
        raise StoreError("connection refused")

    def transaction(self):
        self.tries += 1
        raise StoreError("connection refused")


def test_a_scan_the_store_refuses_is_tried_again_after_a_backoff(
        monkeypatch):
    monkeypatch.setattr(folder, "TICK_S", 0.01)
    store = _Down()
    f = Follower(store)
    f.follow({"hv1"})
    timer = threading.Timer(1.5, f.lose_parent)
    timer.start()
    try:
        assert f.run() == "parent gone"
    finally:
        timer.cancel()
    assert 1 <= store.tries <= 8 and f.scan == {"hv1"}  # not ~150
