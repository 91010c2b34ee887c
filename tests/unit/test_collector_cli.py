"""``vmcollector key show``, ``hosts retire`` and the states ``status``
computes (``silent``, ``retired``; docs/collector.md)."""

from __future__ import annotations

import datetime as dt
import json
import time

import pytest

from vmagent.collector.cli import SILENT_AFTER_S, host_state, main
from vmagent.collector.ingest import Ingest
from vmagent.collector.store import (
    MIGRATIONS,
    HostRow,
    SqliteStore,
    open_store,
)
from vmagent.keys import load_public_key

KEY = bytes(range(32))


@pytest.fixture
def cfg(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(f'[collector]\nstate_dir = "{tmp_path / "s"}"\n'
                    'listen = ""\ninstance = "me"\n')
    return path


def test_key_show_generates_once_and_prints_hex(cfg, tmp_path, capsys):
    assert main(["key", "show", "-c", str(cfg)]) == 0
    first = capsys.readouterr().out.strip()
    assert len(bytes.fromhex(first)) == 32
    assert (tmp_path / "s" / "host.key").stat().st_mode & 0o077 == 0
    assert main(["key", "show", "-c", str(cfg)]) == 0
    assert capsys.readouterr().out.strip() == first  # the same key
    pub = tmp_path / "collector.pub"
    pub.write_text(first + "\n")  # what `key show > F` gives is a key file
    assert load_public_key(pub).hex() == first


def test_instance_keys_kept_per_instance(tmp_path):
    store = open_store(tmp_path)
    try:
        store.put_instance_key("a", b"1" * 32, "k1")
        store.put_instance_key("a", b"1" * 32, "k1")  # again: once
        store.put_instance_key("a", b"2" * 32, "k2")  # a new key: both kept
        store.put_instance_key("b", b"3" * 32, "k3")
        assert sorted(store.instance_keys()) == [
            ("a", b"1" * 32, "k1"), ("a", b"2" * 32, "k2"),
            ("b", b"3" * 32, "k3")]
    finally:
        store.close()


def add(store: SqliteStore, name: str) -> None:
    store.put_host(HostRow(name, f"http://{name}:1", "default", "t", KEY))


def test_retire_stops_pulling_never_blocks_and_sticks(cfg, tmp_path, capsys):
    store = open_store(tmp_path / "s")
    add(store, "old")
    add(store, "new")
    ingest = Ingest(store, 0.1, "me", lease_s=30)
    ingest.tick()
    assert set(ingest.threads) == {"old", "new"}
    try:
        assert main(["hosts", "retire", "old", "--at",
                     "2026-11-30T04:00:00+01:00", "-c", str(cfg)]) == 0
        assert "2026-11-30T03:00:00Z" in capsys.readouterr().out
        ingest.tick()  # the next lease round: no longer pulled
        assert set(ingest.threads) == {"new"}
        assert store.leases()["old"] == (None, 0)
        # a batch in hand when it was retired does not bring it back
        store.set_state("old", "current", None, last_pull=time.time())
        store.put_host(HostRow("old", "http://old:2", "default", "t", KEY))
        [old] = [h for h in store.hosts() if h.name == "old"]
        assert old.state == "retired" and old.error is None
        assert old.retired_at == dt.datetime(
            2026, 11, 30, 3, tzinfo=dt.timezone.utc).timestamp()
        store.set_state("new", "current", None, last_pull=time.time(),
                        inventory_t=time.time_ns())
        assert main(["status", "--json", "-c", str(cfg)]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert {h["name"]: h["state"] for h in doc["hosts"]} == {
            "new": "current", "old": "retired"}
        assert doc["hosts"][1]["retired_at"] == "2026-11-30T03:00:00Z"
        store.set_state("new", "failing", "refused")
        assert main(["status", "-c", str(cfg)]) == 1
    finally:
        ingest.shutdown()
        store.close()
    assert main(["hosts", "retire", "nope", "-c", str(cfg)]) == 1
    for bad in ("yesterday", "2026-11-30T04:00:00", "2026-11-30"):
        with pytest.raises(SystemExit) as exit_:
            main(["hosts", "retire", "old", "--at", bad, "-c", str(cfg)])
        assert exit_.value.code == 2


def row(**kw) -> HostRow:
    return HostRow("h", "http://h:1", "default", None, KEY, **kw)


def test_states_first_match_wins():
    now = 1_000_000.0
    fresh = int((now - 10) * 1e9)
    stale = int((now - SILENT_AFTER_S - 1) * 1e9)
    # never pulled: not known to be reachable, so not silent
    assert host_state(row(state="lagging"), now) == "lagging"
    # reached, but no inventory at all, or none in the last 3 minutes
    assert host_state(row(state="current", last_pull=now), now) == "silent"
    assert host_state(row(state="current", last_pull=now,
                          inventory_t=stale), now) == "silent"
    assert host_state(row(state="lagging", last_pull=now,
                          inventory_t=stale), now) == "silent"
    assert host_state(row(state="current", last_pull=now,
                          inventory_t=fresh), now) == "current"
    assert host_state(row(state="lagging", last_pull=now,
                          inventory_t=fresh), now) == "lagging"
    # untrusted, failing and retired win over silent
    for state in ("untrusted", "failing", "retired"):
        assert host_state(row(state=state, last_pull=now,
                              inventory_t=stale), now) == state


def test_store_keeps_the_newest_inventory_t(tmp_path):
    store = open_store(tmp_path)
    try:
        add(store, "h")
        store.set_state("h", "current", None, inventory_t=5)
        store.set_state("h", "current", None, inventory_t=3)  # older
        assert store.hosts()[0].inventory_t == 5
        store.set_state("h", "current", None, inventory_t=7)
        assert store.hosts()[0].inventory_t == 7
    finally:
        store.close()


def test_status_on_an_old_schema_asks_for_migrate(cfg, tmp_path, capsys):
    store = open_store(tmp_path / "s")
    store._read("DELETE FROM schema_version WHERE version = ?",  # noqa: SLF001
                (len(MIGRATIONS),))
    store.close()
    assert main(["status", "-c", str(cfg)]) == 3
    assert "run `vmcollector migrate`" in capsys.readouterr().err
