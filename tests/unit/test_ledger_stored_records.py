"""``book.update`` given the records the caller has just stored: folded
without reading the store again when they line up with the ledger's
position, read from the store when they do not; the same slices either
way."""

from __future__ import annotations

import hashlib
from typing import Any

import msgpack
import pytest

from vmagent.collector.store import HostRow, SqliteStore, StoredFrame
from vmagent.ledger import book

S = 10**9
T0 = 1_790_000_000 * S
WAL = b"\x02" * 16
UUID = "6f1c2a52-5f0e-4c4a-9d55-2f7d3c1f0a01"


def _records(n: int) -> list[dict[str, Any]]:
    vm = {"uuid": UUID, "gen": "g1", "name": "web", "started_ns": T0}
    out: list[dict[str, Any]] = [
        {"kind": "agent_start", "t": T0 - S},
        {"kind": "vm_start", "t": T0, "vm": vm,
         "config": {"vcpus": 2, "alloc_bytes": 1 << 30}}]
    for i in range(1, n):
        out.append({"kind": "sample", "t": T0 + i * 70 * S, "vm": vm,
                    "cpu": {"total_ns": i * 3 * S},
                    "nics": [{"mac": "52:54:00:00:00:01",
                              "rx_bytes": i * 1500}]})
    return [{**r, "seq": seq} for seq, r in enumerate(out, 1)]


class Host:
    """A store with one host whose batches are stored and folded."""

    def __init__(self, path: Any) -> None:
        self.store = SqliteStore(path)
        self.store.migrate()
        self.store.put_host(HostRow("hv1", "http://x", "default", "t",
                                    b"\0" * 32))

    def save(self, recs: list[dict[str, Any]]) -> None:
        body = b"".join(msgpack.packb(r) for r in recs)
        frame = StoredFrame(recs[0]["seq"], recs[-1]["seq"],
                            hashlib.sha256(body).digest(), b"\0" * 32,
                            b"\0" * 64, "k", body, recs)
        self.store.save_batch("hv1", WAL, [frame], [], recs[-1]["seq"],
                              None)

    def ledger(self) -> Any:
        with self.store.transaction() as q:
            pos = q("SELECT seq FROM ledger_pos").fetchall()
        return pos, [(s.uuid, s.start_ns, s.end_ns, s.samples,
                      sorted(s.quantities.items()), sorted(s.seqs.items()))
                     for s in book.slices(self.store, 0, 2**62)]


@pytest.fixture
def hosts(tmp_path):
    made = [Host(tmp_path / "given.db"), Host(tmp_path / "read.db")]
    yield made
    for h in made:
        h.store.close()


@pytest.fixture
def reads(monkeypatch):
    """How many records ``update`` decoded from the store."""
    count = [0]
    real = book._decode_rows

    def counted(rows: list[Any]) -> Any:
        count[0] += len(rows)
        return real(rows)

    monkeypatch.setattr(book, "_decode_rows", counted)
    return count


def test_stored_records_given_fold_as_reading_them_back(hosts, reads):
    given, read = hosts
    recs = _records(60)
    for part in (recs[:7], recs[7:30], recs[30:]):
        for h in hosts:
            h.save(part)
        assert book.update(given.store, "hv1", WAL, part) == len(part)
    assert reads[0] == 0  # nothing read back
    book.update(read.store, "hv1", WAL)
    assert reads[0] == len(recs)
    assert given.ledger() == read.ledger()
    assert given.ledger()[0] == [(len(recs),)]


def test_given_records_behind_an_unfolded_batch_are_read_from_the_store(
        hosts, reads):
    given, read = hosts
    recs = _records(40)
    for h in hosts:
        h.save(recs[:15])  # stored, its fold failed or never ran
        h.save(recs[15:])
    assert book.update(given.store, "hv1", WAL, recs[15:]) == len(recs)
    assert reads[0] == len(recs)  # they did not line up: the store's
    book.update(read.store, "hv1", WAL)
    assert given.ledger() == read.ledger()


def test_given_records_already_folded_fold_nothing_again(hosts, reads):
    given, _ = hosts
    recs = _records(20)
    given.save(recs)
    assert book.update(given.store, "hv1", WAL, recs) == len(recs)
    before = given.ledger()
    assert book.update(given.store, "hv1", WAL, recs) == 0
    assert given.ledger() == before


def test_given_records_out_of_seq_order_are_read_from_the_store(hosts,
                                                                  reads):
    given, read = hosts
    recs = _records(20)
    for h in hosts:
        h.save(recs)
    shuffled = [recs[1], recs[0], *recs[2:]]
    assert book.update(given.store, "hv1", WAL, shuffled) == len(recs)
    assert reads[0] == len(recs)
    book.update(read.store, "hv1", WAL)
    assert given.ledger() == read.ledger()
