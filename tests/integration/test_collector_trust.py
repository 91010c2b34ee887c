"""The collector's trust and completeness rules in the store, on SQLite and
a real PostgreSQL: every key a host had stays pinned per key id (migration
4 fills them from the hosts rows), certificates and keys are stored as
text, and seqs an agent skipped without a gap record are missing until a
gap record explains them."""

from __future__ import annotations

import pytest

from integration.test_collector_store import WAL, frame, host
from vmagent.collector.store import (
    MIGRATIONS,
    SKIPPED,
    StoredFrame,
    connect,
    open_store,
)
from vmagent.errors import VmagentError
from vmagent.keys import key_id

OLD, NEW = b"o" * 32, b"n" * 32


@pytest.fixture(params=["sqlite", pytest.param("postgresql",
                                               marks=pytest.mark.postgresql)])
def store(request, tmp_path):
    kind = "sqlite" if request.param == "sqlite" else \
        request.getfixturevalue("pg_url")
    s = open_store(tmp_path, kind)
    yield s
    s.close()


def test_readding_a_host_with_a_new_key_keeps_the_old_one(store):
    store.put_host(host(key=OLD))
    store.set_state("hv", "untrusted", "frame 7-8: signed by another key")
    store.put_host(host(key=NEW))
    store.put_host(host(key=NEW))  # again: pinned once
    row = store.hosts()[0]
    assert row.state == "lagging" and row.error is None  # trusted again
    assert row.pubkey == NEW and set(row.keys) == {OLD, NEW}
    assert row.pinned() == {key_id(OLD).hex(): OLD, key_id(NEW).hex(): NEW}
    assert [(h, k, p) for h, k, p, _ in store.host_keys("hv")] == [
        ("hv", key_id(OLD).hex(), OLD), ("hv", key_id(NEW).hex(), NEW)]


def test_removed_host_keeps_its_keys_for_its_evidence(store):
    store.put_host(host(key=OLD))
    assert store.remove_host("hv")
    assert [p for _, _, p, _ in store.host_keys()] == [OLD]


def test_certificate_and_key_are_stored_as_text(store):
    from dataclasses import replace

    store.put_host(replace(host(), token=None, cert_pem="CERT PEM",
                           key_pem="KEY PEM"))
    row = store.hosts()[0]
    assert (row.token, row.cert_pem, row.key_pem) == \
        (None, "CERT PEM", "KEY PEM")
    store.put_host(host())  # back to a token: the certificate is gone
    row = store.hosts()[0]
    assert (row.token, row.cert_pem, row.key_pem) == ("tok", None, None)


def test_migration_4_pins_every_existing_hosts_key(tmp_path):
    old = connect(tmp_path)
    try:  # a store at schema 3, with two hosts
        with old._tx() as q:  # noqa: SLF001
            q("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, "
              "applied REAL NOT NULL)")
            for number, sql in enumerate(MIGRATIONS[:3], start=1):
                for statement in filter(str.strip, sql.split(";")):
                    q(statement.format(**old.TYPES))
                q("INSERT INTO schema_version VALUES (?, 0)", (number,))
            for name, key in (("a", OLD), ("b", NEW)):
                q("INSERT INTO hosts (name, url, consumer, token, pubkey) "
                  "VALUES (?, 'http://x:1', 'default', 't', ?)", (name, key))
        assert old.version() == 3
    finally:
        old.close()
    store = open_store(tmp_path)
    try:
        assert store.version() == len(MIGRATIONS)
        assert [(h, k, p) for h, k, p, _ in store.host_keys()] == [
            ("a", key_id(OLD).hex(), OLD), ("b", key_id(NEW).hex(), NEW)]
        assert [h.keys for h in store.hosts()] == [(OLD,), (NEW,)]
    finally:
        store.close()


def test_a_key_id_pinned_for_another_key_is_refused(store, monkeypatch):
    import vmagent.collector.store as store_mod

    store.put_host(host(key=OLD))
    monkeypatch.setattr(store_mod, "key_id", lambda _: key_id(OLD))
    with pytest.raises(VmagentError, match="already pinned"):
        store.put_host(host(key=NEW))
    assert store.hosts()[0].pubkey == OLD  # nothing of it stored


def gap_frame(seq: int, a: int, b: int) -> StoredFrame:
    f = frame(seq)
    f.decoded = [{"seq": seq, "kind": "gap", "t": 10**18, "from_seq": a,
                  "to_seq": b, "reason": "write failed: EIO"}]
    return f


def gaps(store) -> list[tuple[int, int, str]]:
    return [(g["from_seq"], g["to_seq"], g["reason"])
            for g in store.wals("hv")[0]["gaps"]]


def test_skipped_seqs_are_missing_until_a_gap_record_explains_them(store):
    store.put_host(host())
    store.save_batch("hv", WAL, [frame(1), frame(4)], [(2, 3, SKIPPED)], 4,
                     b"h" * 32)
    store.save_batch("hv", WAL, [frame(8)], [(5, 7, SKIPPED)], 8, b"h" * 32)
    assert gaps(store) == [(2, 3, SKIPPED), (5, 7, SKIPPED)]
    store.save_batch("hv", WAL, [gap_frame(9, 5, 7)], [], 9, b"h" * 32)
    assert gaps(store) == [(2, 3, SKIPPED),
                           (5, 7, "gap record: write failed: EIO")]
    assert SKIPPED.startswith("skipped by the agent")
