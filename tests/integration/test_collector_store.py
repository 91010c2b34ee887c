"""The store contract (``vmagent.collector.store.Store``), the same tests
against SQLite and a real PostgreSQL: migrations, hosts, batches exactly
once, conflicts rolled back whole, leases, fair shares, fencing."""

from __future__ import annotations

import time
from contextlib import suppress

import pytest

from vmagent.collector.store import (
    MIGRATIONS,
    EvidenceConflict,
    HostRow,
    LeaseLost,
    StoredFrame,
    StoreError,
    connect,
    open_store,
)

WAL = b"w" * 16


@pytest.fixture(params=["sqlite", pytest.param("postgresql",
                                               marks=pytest.mark.postgresql)])
def kind(request, tmp_path):
    """The store's configured value: "sqlite" or a fresh database's URL."""
    if request.param == "sqlite":
        return "sqlite"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def opened(kind, tmp_path):
    """``opened()``: another connection to the same store (an instance)."""
    made = []

    def make():
        store = open_store(tmp_path, kind)
        made.append(store)
        return store

    yield make
    for s in made:
        s.close()


def host(name: str = "hv", key: bytes = b"k" * 32) -> HostRow:
    return HostRow(name, f"http://{name}:9740", "default", "tok", key)


def frame(seq: int, h: bytes = b"h", n: int = 1) -> StoredFrame:
    recs = [{"seq": s, "kind": "inventory", "t": 10**18 + s, "vms": []}
            for s in range(seq, seq + n)]
    return StoredFrame(seq, seq + n - 1, h * 32, b"\0" * 32, b"s" * 64,
                       "00" * 8, b"raw" + bytes([seq]), recs)


def test_migrations_hosts_and_batches(opened):
    store = opened()
    assert store.version() == len(MIGRATIONS) == store.migrate()
    store.put_host(host("hv"))
    store.put_host(host("hv2"))
    assert [h.name for h in store.hosts()] == ["hv", "hv2"]
    row = store.hosts()[0]
    assert row.pubkey == b"k" * 32 and row.token == "tok"
    assert row.state == "lagging" and row.stored_seq == 0
    store.save_batch("hv", WAL, [frame(1, n=3), frame(4, n=2)],
                     [(6, 8, "missing at the source (410)")], 8, b"x" * 32,
                     last_pull=1.5, behind_records=0, state="current",
                     error=None)
    store.save_batch("hv", WAL, [frame(9)], [], 9, b"y" * 32)
    row = store.hosts()[0]
    assert (row.wal, row.stored_seq, row.last_hash) == (WAL, 9, b"y" * 32)
    assert row.state == "current" and row.last_pull == 1.5
    [w] = store.wals("hv")
    assert w["wal"] == WAL and w["held"] == [[1, 5], [9, 9]]
    assert w["gaps"] == [{"from_seq": 6, "to_seq": 8,
                          "reason": "missing at the source (410)"}]
    assert w["last_seq"] == 9 and w["newest_t"] == 10**18 + 9
    assert [s for _, s, _ in store.records("hv")] == [1, 2, 3, 4, 5, 9]
    store.set_acked("hv", 9)
    store.set_acked("hv", 4)  # never backwards
    assert store.hosts()[0].acked_seq == 9
    store.set_state("hv2", "failing", "connection refused")
    assert store.hosts()[1].error == "connection refused"
    other = opened()  # another instance sees the same hosts
    assert [h.name for h in other.hosts()] == ["hv", "hv2"]
    assert other.remove_host("hv2") and not other.remove_host("hv2")
    assert [h.name for h in store.hosts()] == ["hv"]
    store.save_batch("hv", b"v" * 16, [frame(1)], [], 1, b"z" * 32)
    assert [w["wal"] for w in store.wals("hv")] == [WAL, b"v" * 16]


def test_same_bytes_harmless_other_bytes_refused_whole(opened):
    store = opened()
    store.put_host(host())
    store.save_batch("hv", WAL, [frame(1)], [], 1, b"h" * 32)
    store.save_batch("hv", WAL, [frame(1)], [], 1, b"h" * 32)  # no-op
    assert [s for _, s, _ in store.records("hv")] == [1]
    with pytest.raises(EvidenceConflict):
        store.save_batch("hv", WAL, [frame(2), frame(1, h=b"H")], [], 2,
                         b"H" * 32)
    assert [s for _, s, _ in store.records("hv")] == [1]  # frame 2 too
    assert store.hosts()[0].last_hash == b"h" * 32
    bad = frame(1)
    bad.decoded[0]["vms"] = [1]
    with pytest.raises(EvidenceConflict):
        store.save_batch("hv", WAL, [bad], [], 1, b"h" * 32)
    store.put_host(host(key=b"n" * 32))  # re-added: the new key
    assert store.hosts()[0].pubkey == b"n" * 32
    assert store.migrate() == len(MIGRATIONS)  # again: nothing to do


def test_leases_fair_share_expiry_release_and_fencing(opened):
    a, b = opened(), opened()
    for name in ("h1", "h2", "h3"):
        a.put_host(host(name))
    first = a.claim("A", 1.0)
    assert first.held == ["h1", "h2", "h3"] and first.live == 1
    assert first.taken == {"h1": None, "h2": None, "h3": None}
    second = b.claim("B", 1.0)  # all held by A, unexpired: nothing
    assert second.held == [] and second.live == 2
    again = a.claim("A", 1.0)  # two live instances: A keeps ceil(3/2)
    assert again.held == ["h1", "h2", "h3"] and again.excess == ["h3"]
    a.release("A", again.excess)
    assert b.claim("B", 1.0).held == ["h3"]
    assert a.leases()["h3"][0] == "B"
    # fencing: only the holder stores
    a.save_batch("h1", WAL, [frame(1)], [], 1, b"h" * 32, owner="A")
    with pytest.raises(LeaseLost):
        a.save_batch("h3", WAL, [frame(1)], [], 1, b"h" * 32, owner="A")
    assert a.records("h3") == [] and a.hosts()[2].stored_seq == 0
    # A stalls: its leases run out and B takes them (and A's heartbeat
    # is gone, so B's share is all of them)
    time.sleep(1.3)
    taken = b.claim("B", 1.0)
    assert taken.held == ["h1", "h2", "h3"] and taken.live == 1
    assert taken.taken == {"h1": "A", "h2": "A"}
    with pytest.raises(LeaseLost):  # A wakes up: stores nothing
        a.save_batch("h1", WAL, [frame(2)], [], 2, b"i" * 32, owner="A")
    assert [s for _, s, _ in a.records("h1")] == [1]
    # an untrusted host is given back; a removed one too
    b.set_state("h2", "untrusted", "bad signature")
    b.remove_host("h3")
    assert b.claim("B", 1.0).held == ["h1"]
    assert b.leases()["h2"][0] is None and "h3" not in b.leases()
    b.release("B")  # SIGTERM: everything back at once, heartbeat gone
    assert all(o is None for o, _ in b.leases().values())
    assert b.instances(1.0) == []
    assert a.claim("A", 1.0).held == ["h1"]


@pytest.mark.postgresql
def test_an_instance_stalled_in_a_transaction_does_not_block_its_peers(
        pg_url, tmp_path):
    """What a SIGSTOP in the middle of a fold did to a fleet: the stalled
    instance held a ledger row lock, and the peer that took its hosts
    waited on it for as long as the stall lasted.  With ``bound_waits``
    the server ends the stalled session after a lease period, and the
    peer's wait for the lock gives up after half of one."""
    lease = 1.0
    stalled, peer = open_store(tmp_path, pg_url), open_store(tmp_path, pg_url)
    try:
        stalled.bound_waits(lease)
        peer.bound_waits(lease)
        lock = "SELECT host FROM ledger_hosts WHERE host = 'hv' FOR UPDATE"
        with peer.transaction() as q:
            q("INSERT INTO ledger_hosts (host, state) VALUES ('hv', '{}')")
        took: list[float] = []
        waits: list[str] = []
        # its session is gone when it wakes: the commit fails
        with pytest.raises(StoreError), stalled.transaction() as q:
            q(lock)
            began = time.monotonic()
            while time.monotonic() - began < 6 * lease and not took:
                try:
                    with peer.transaction() as p:
                        p(lock)
                    took.append(time.monotonic() - began)
                except StoreError as err:  # lock_timeout: retried
                    waits.append(str(err))
        assert took and took[0] < 4 * lease, (took, waits)
        assert all("lock timeout" in w for w in waits), waits
        with stalled.transaction() as q:  # reconnects, limits kept
            assert q("SHOW idle_in_transaction_session_timeout"
                     ).fetchone()[0] == "1s"
    finally:
        stalled.close()
        peer.close()


@pytest.mark.postgresql
def test_the_ledger_tables_leave_room_for_updates_once(pg_url, tmp_path):
    """Every fold updates the ledger's rows: PostgreSQL fills their pages
    only partly (fillfactor), so that updates stay in the page; set at
    the first migrate, left alone by the next."""
    store = open_store(tmp_path, pg_url)
    try:
        with store.transaction() as q:
            options = dict(q(
                "SELECT relname, reloptions FROM pg_class WHERE relname IN "
                "('ledger_quantities', 'ledger_slices', 'ledger_rebuilds')"
            ).fetchall())
        assert options["ledger_quantities"] == ["fillfactor=60"], options
        assert options["ledger_slices"] == ["fillfactor=60"], options
        assert options["ledger_rebuilds"] is None  # only inserted
        store.migrate()  # again: nothing to do, no error
    finally:
        store.close()


def test_unreachable_store_is_one_line_naming_it(tmp_path):
    from integration.agent_process import free_port
    pytest.importorskip("psycopg")
    url = f"postgresql://someone:secret@127.0.0.1:{free_port()}/nothing"
    with pytest.raises(StoreError) as err:
        connect(tmp_path, url)
    text = str(err.value)
    assert "\n" not in text and "secret" not in text
    assert text.startswith("postgresql://someone@127.0.0.1:")


def test_status_and_run_on_an_unreachable_database(tmp_path):
    import subprocess
    import sys

    from integration.agent_process import free_port
    pytest.importorskip("psycopg")
    url = f"postgresql://billing:pw@127.0.0.1:{free_port()}/metering"
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[collector]\nstate_dir = "{tmp_path}"\nstore = "{url}"\n')
    for command, code in (("status", 3), ("run", 1), ("migrate", 1)):
        out = subprocess.run([sys.executable, "-m", "vmagent.collector.cli",
                              command, "-c", str(cfg)], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == code, (command, out.stderr)
        line = out.stderr.strip().splitlines()[-1]
        assert line.startswith("vmcollector: store unreachable: "
                               "postgresql://billing@127.0.0.1:"), line
        assert "pw" not in line


def test_what_is_held_is_kept_as_records_are_stored(opened):
    """``wals`` reads the held ranges kept by each batch (collector/
    held.py) instead of every record: after any batches -- in order, with
    holes, filling holes, replayed, refused whole, on two WALs -- it is
    what the records themselves say (``exact``)."""
    import random

    store = opened()
    store.put_host(host())
    rng = random.Random(20261130)
    for i in range(60):
        wal = WAL if rng.random() < 0.8 else b"v" * 16
        first = rng.randint(1, 80)
        frames = [frame(first, n=rng.randint(1, 6))]
        if rng.random() < 0.3:  # a second frame right after it
            frames.append(frame(frames[0].last_seq + 1, n=2))
        with suppress(EvidenceConflict):  # overlaps with other bytes
            store.save_batch("hv", wal, frames, [], i, b"h" * 32)
        assert store.wals("hv") == store.wals("hv", exact=True), i
    assert sum(len(w["held"]) for w in store.wals("hv")) > 2


def test_migration_9_fills_what_is_held_from_the_records(opened):
    store = opened()
    store.put_host(host())
    store.save_batch("hv", WAL, [frame(1, n=3), frame(7, n=2)], [], 8,
                     b"h" * 32)
    store.save_batch("hv", b"v" * 16, [frame(2, n=2)], [], 3, b"h" * 32)
    want = store.wals("hv", exact=True)
    with store.transaction() as q:  # as a store made before migration 9
        q("DROP TABLE wal_held")
        q("DROP TABLE wal_summary")
        q("DELETE FROM schema_version WHERE version = 9")
    assert store.migrate() == len(MIGRATIONS)
    assert store.wals("hv") == want
    assert [w["held"] for w in want] == [[[1, 3], [7, 8]], [[2, 3]]]


def real_frame(seq: int, n: int, extra: str = "") -> StoredFrame:
    """A frame whose records bytes are its records' msgpack, as an agent
    writes them (the store keeps each record's bytes as signed)."""
    import msgpack

    recs = [{"seq": s, "kind": "sample", "t": 10**18 + s, "x": extra}
            for s in range(seq, seq + n)]
    raw = b"".join(msgpack.packb(r) for r in recs)
    return StoredFrame(seq, seq + n - 1, (extra or "h").encode()[:1] * 32,
                       b"\0" * 32, b"s" * 64, "00" * 8, raw, recs)


def test_bulk_batches_overlap_once_and_conflicts_roll_back(opened):
    """The bulk path (executemany on SQLite, COPY on PostgreSQL): a batch
    overlapping what is stored stores only the new seqs; one stored seq
    with other bytes refuses the whole batch."""
    import msgpack

    store = opened()
    store.put_host(host("hv"))
    store.save_batch("hv", WAL, [real_frame(1, 500), real_frame(501, 500)],
                     [], 1000, b"a" * 32)
    store.save_batch("hv", WAL, [real_frame(501, 500), real_frame(1001, 3)],
                     [], 1003, b"b" * 32)
    [w] = store.wals("hv")
    assert w["held"] == [[1, 1003]]
    stored = store.records("hv")
    assert [s for _, s, _ in stored] == list(range(1, 1004))
    assert stored[0][2] == msgpack.unpackb(msgpack.packb(
        real_frame(1, 1).decoded[0]))
    with pytest.raises(EvidenceConflict, match="1001"):
        store.save_batch("hv", WAL, [real_frame(1001, 3, "other"),
                                     real_frame(1004, 2)], [], 1005,
                         b"c" * 32)
    assert store.wals("hv")[0]["held"] == [[1, 1003]]  # nothing of it
    assert store.hosts()[0].stored_seq == 1003
