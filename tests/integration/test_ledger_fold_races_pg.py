"""Folds racing other ledger writers on PostgreSQL (READ COMMITTED, row
locks): an owners import that re-attributes a VM's slices while the
ledger worker folds new evidence of the same slice leaves the roll-up
what the slices give (no row counted for both accounts); one that cuts a
VM's slices anew while a fold of its first evidence on a host is in
flight cuts that host's slices too (a rebuild changes nothing)."""

from __future__ import annotations

import hashlib
import threading

import msgpack

from unit.test_ledger_book import GIB, UUID, WAL, S, sample, start
from vmagent.collector.store import HostRow, PostgresStore, StoredFrame
from vmagent.ledger import book
from vmagent.ledger.owners import OwnerRow

T0 = 1_790_000_000 * S


def fill(store: PostgresStore, records: int = 30) -> None:
    """``records`` records of one VM on hv1, each in a frame of its own,
    all in one base slice."""
    store.migrate()
    store.put_host(HostRow("hv1", "http://x", "default", "t", b"\0" * 32))
    for seq in range(1, records + 1):
        r = start(T0, vcpus=2, mem=GIB) if seq == 1 else \
            sample(T0 + seq * S, cpu=seq * S, rx=seq * 100)
        rec = {**r, "seq": seq, "host": "agent-id"}
        body = msgpack.packb(rec, use_bin_type=True)
        store.save_batch("hv1", WAL, [StoredFrame(
            seq, seq, hashlib.sha256(body).digest(), b"\0" * 32,
            b"\0" * 64, "k", body, [rec])], [], seq, None)


def rollup_rows(store: PostgresStore) -> list[tuple]:
    with store.transaction() as q:
        return [tuple(r) for r in q(
            "SELECT host, start_ns, account, meter, quantity FROM "
            "ledger_rollup ORDER BY 1, 2, 3, 4").fetchall()]


def race(store: PostgresStore, other: PostgresStore, rows: list[OwnerRow],
         monkeypatch) -> None:
    """A fold of what hv1 stored, held between its writes and its commit
    while ``rows`` are imported through ``other``."""
    written, go = threading.Event(), threading.Event()
    real_save = book._save

    def save(q, host, fold):
        real_save(q, host, fold)
        written.set()
        go.wait(30)

    monkeypatch.setattr(book, "_save", save)
    fold = threading.Thread(target=book.update, args=(store, "hv1", WAL))
    owners = threading.Thread(target=book.import_owners, args=(other, rows))
    try:
        fold.start()
        assert written.wait(30)
        owners.start()
        owners.join(1.5)  # it reads, or waits for the fold's locks
    finally:
        go.set()
        fold.join(30)
        if owners.ident is not None:
            owners.join(30)
        monkeypatch.setattr(book, "_save", real_save)


def test_an_owners_import_during_a_first_fold_cuts_its_slices_too(
        pg_url, monkeypatch):
    store, other = PostgresStore(pg_url), PostgresStore(pg_url)
    try:
        fill(store)
        race(store, other, [OwnerRow(UUID, T0 + 15 * S, "B", None)],
             monkeypatch)
        _, changed = book.rebuild(store, T0 - 3600 * S, T0 + 3600 * S,
                                  "test")
        assert changed == 0
    finally:
        store.close()
        other.close()


def test_an_owners_import_during_a_fold_leaves_the_roll_up_exact(
        pg_url, monkeypatch):
    store, other = PostgresStore(pg_url), PostgresStore(pg_url)
    try:
        fill(store)
        book.import_owners(store, [OwnerRow(UUID, 0, "A", None)])
        assert book.update(store, "hv1", WAL, limit=10) == 10
        # the same instant, another account: the slices stand, the
        # roll-up's account changes
        race(store, other, [OwnerRow(UUID, 0, "B", None)], monkeypatch)
        got = rollup_rows(store)
        assert {r[2] for r in got} == {"B"}
        with store.transaction() as q:  # from the slices as they are
            book._recompute(q, "hv1", {r[1] for r in got})
        assert got == rollup_rows(store)
    finally:
        store.close()
        other.close()
