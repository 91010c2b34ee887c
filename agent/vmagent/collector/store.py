"""Where the collector keeps evidence: one small interface (``Store``), one
logical schema with versioned migrations, and two implementations that
share their SQL: ``SqliteStore`` (embedded, one process) and
``PostgresStore`` (a fleet; needs the ``postgresql`` extra, psycopg 3).
docs/collector.md has the rules and the schema.

Evidence is keyed by ``(host, wal, seq)``.  A batch is stored in one
transaction together with the host's cursor (wal, seq, hash), so the
cursor never runs ahead of what is stored.  The same seq again with the
same bytes is a no-op; with other bytes, ``EvidenceConflict``.

Leases: each host is pulled by one instance at a time, the holder of its
row in ``leases`` (owner, expires).  ``claim`` renews the caller's leases,
gives back what is above its fair share and takes free or expired ones up
to it (``FOR UPDATE SKIP LOCKED`` on PostgreSQL); ``save_batch`` with an
``owner`` checks the lease in the same transaction (fencing), so an
instance whose lease expired while it stalled stores nothing.  Lease times
are the database's clock, never the instances'.
"""

from __future__ import annotations

import math
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from itertools import repeat
from pathlib import Path
from typing import Any

import msgpack

from vmagent.collector.held import HELD_SCHEMA, note_stored
from vmagent.collector.held import held as held_of
from vmagent.errors import VmagentError
from vmagent.keys import key_id
from vmagent.ledger.close import PERIODS_SCHEMA
from vmagent.ledger.owners import OWNERS_SQL
from vmagent.ledger.schema import LEDGER_SCHEMA, ROLLUP_SCHEMA
from vmagent.log import get_logger
from vmagent.wal.heads import Decoded, Heads, of_decoded

STATES = ("current", "lagging", "failing", "untrusted", "silent", "retired")
# why seqs the agent skipped without a gap record or a 410 are missing
SKIPPED = "skipped by the agent: no gap record or 410 covers these seqs"
MISSING_AT_SOURCE = "missing at the source (410)"
NOT_PULLED = ("untrusted", "retired")


class StoreError(VmagentError):
    """The store cannot be read or written now (retry later)."""


class EvidenceConflict(VmagentError):
    """A seq came back with other bytes than the ones stored."""


class LeaseLost(VmagentError):
    """This instance no longer holds the host's lease: store nothing, ack
    nothing, stop pulling it."""


@dataclass(frozen=True)
class HostRow:
    name: str
    url: str
    consumer: str
    token: str | None
    pubkey: bytes
    cacert: str | None = None
    state: str = "lagging"
    error: str | None = None
    wal: bytes | None = None
    stored_seq: int = 0  # the cursor: stored or recorded missing up to here
    last_hash: bytes | None = None
    acked_seq: int = 0
    last_pull: float | None = None
    behind_records: int | None = None
    clock_offset_s: float | None = None
    retired_at: float | None = None  # epoch seconds, when retired
    inventory_t: int | None = None  # the newest stored inventory's t (ns)
    cert_pem: str | None = None  # mutual TLS: the client certificate (PEM)
    key_pem: str | None = None  # and its private key (PEM), as stored
    keys: tuple[bytes, ...] = ()  # every key pinned for it (host_keys)

    def settings(self) -> tuple[Any, ...]:
        """What an operator sets; a change restarts the host's puller."""
        return (self.url, self.consumer, self.token, self.pubkey, self.cacert,
                self.cert_pem, self.key_pem, self.keys)

    def pinned(self) -> dict[str, bytes]:
        """key id (hex) -> public key, for every key pinned for the host:
        the current one and those it had before (old frames carry them)."""
        return {key_id(k).hex(): k for k in (*self.keys, self.pubkey)}


class StoredFrame:
    """A verified frame as received and its records: their heads (seq,
    kind, t and bytes: what the store keeps of each), decoded in full only
    on demand (``decoded``).  Built from decoded records, or from the
    heads the verifier gives (``heads``)."""

    def __init__(self, first_seq: int, last_seq: int, hash: bytes,  # noqa: A002
                 prev_hash: bytes, sig: bytes, key_id: str, records: bytes,
                 decoded: Sequence[dict[str, Any]] | None = None, *,
                 heads: Heads | None = None) -> None:
        self.first_seq, self.last_seq = first_seq, last_seq
        self.hash, self.prev_hash, self.sig = hash, prev_hash, sig
        self.key_id, self.records = key_id, records
        self._heads = heads
        self._decoded: Sequence[dict[str, Any]] = \
            Decoded(heads) if heads is not None else decoded or []

    @property
    def heads(self) -> Heads:
        if self._heads is None:
            self._heads = of_decoded(self.records, self._decoded)
        return self._heads

    @property
    def decoded(self) -> Sequence[dict[str, Any]]:
        return self._decoded

    @decoded.setter
    def decoded(self, records: Sequence[dict[str, Any]]) -> None:
        self._decoded, self._heads = records, None


@dataclass(frozen=True)
class Claim:
    """What ``claim`` decided: the hosts this instance holds now, those it
    must give back (above its fair share), the ones it just took (with
    their previous owner), and the live instances."""

    held: list[str]
    excess: list[str]
    taken: dict[str, str | None]
    live: int


class Store:
    """The interface every store implements."""

    name = "?"

    def describe(self) -> str:
        """The store as ``status`` names it (never a password)."""
        return self.name

    def version(self) -> int:
        raise NotImplementedError

    def migrate(self) -> int:  # returns the schema version
        raise NotImplementedError

    def put_host(self, host: HostRow) -> None:
        """Add or replace a host's settings (name, url, consumer, token,
        key, cacert); a re-added host is trusted again."""
        raise NotImplementedError

    def remove_host(self, name: str) -> bool:
        raise NotImplementedError

    def retire_host(self, name: str, at: float) -> bool:
        """``retired`` from ``at`` (epoch seconds) on: no longer pulled,
        never blocking; its evidence stays.  False if there is no such
        host."""
        raise NotImplementedError

    def put_instance_key(self, instance: str, pubkey: bytes,
                         key_id: str) -> None:
        """Record an instance's public key (every key it ever had stays,
        for the certificates it signed)."""
        raise NotImplementedError

    def hosts(self) -> list[HostRow]:
        raise NotImplementedError

    def save_batch(self, host: str, wal: bytes, frames: Sequence[StoredFrame],
                   missing: Sequence[tuple[int, int, str]], stored_seq: int,
                   last_hash: bytes | None, *, owner: str | None = None,
                   **progress: Any) -> None:
        """Frames, records, missing ranges and the cursor, atomically.
        With ``owner``: only while ``owner`` holds the host's lease
        (checked in the same transaction), else ``LeaseLost``."""
        raise NotImplementedError

    def set_state(self, host: str, state: str, error: str | None,
                  **progress: Any) -> None:
        raise NotImplementedError

    def set_acked(self, host: str, seq: int) -> None:
        raise NotImplementedError

    def wals(self, host: str, exact: bool = False) -> list[dict[str, Any]]:
        """Per WAL: held seq ranges, missing ranges, last seq, newest t."""
        raise NotImplementedError

    def claim(self, instance: str, lease_s: float) -> Claim:
        """Heartbeat, renew, give back above the fair share, take free or
        expired leases up to it; one transaction."""
        raise NotImplementedError

    def release(self, instance: str, hosts: Sequence[str] | None = None) \
            -> None:
        """Give back ``hosts`` (all, and the heartbeat, when None)."""
        raise NotImplementedError

    def leases(self) -> dict[str, tuple[str | None, float]]:
        """host -> (owner, expires) for every lease row."""
        raise NotImplementedError

    def bound_waits(self, lease_s: float) -> None:
        """From now on, no transaction of this store waits on, or holds
        locks for, a stalled peer for long (``vmcollector run`` in a
        fleet).  A no-op where one process owns the store."""

    def close(self) -> None:
        raise NotImplementedError


# One logical schema for both stores.  {int} is a 64-bit integer, {blob}
# bytes, {real} a double: INTEGER/BLOB/REAL on SQLite, bigint/bytea/double
# precision on PostgreSQL.  Statements are separated by ";".
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE hosts (
        name TEXT PRIMARY KEY, url TEXT NOT NULL, consumer TEXT NOT NULL,
        token TEXT, pubkey {blob} NOT NULL, cacert TEXT,
        state TEXT NOT NULL DEFAULT 'lagging', error TEXT,
        wal {blob}, stored_seq {int} NOT NULL DEFAULT 0, last_hash {blob},
        acked_seq {int} NOT NULL DEFAULT 0, last_pull {real},
        behind_records {int}, clock_offset_s {real});
    CREATE TABLE frames (
        host TEXT NOT NULL, wal {blob} NOT NULL, first_seq {int} NOT NULL,
        last_seq {int} NOT NULL, hash {blob} NOT NULL,
        prev_hash {blob} NOT NULL, sig {blob} NOT NULL, key_id TEXT NOT NULL,
        records {blob} NOT NULL, received {real} NOT NULL,
        PRIMARY KEY (host, wal, first_seq));
    CREATE TABLE records (
        host TEXT NOT NULL, wal {blob} NOT NULL, seq {int} NOT NULL,
        kind TEXT NOT NULL, t {int}, body {blob} NOT NULL,
        PRIMARY KEY (host, wal, seq));
    CREATE TABLE missing (
        host TEXT NOT NULL, wal {blob} NOT NULL, from_seq {int} NOT NULL,
        to_seq {int} NOT NULL, reason TEXT NOT NULL,
        PRIMARY KEY (host, wal, from_seq, to_seq));
    """,
    """
    CREATE TABLE leases (
        host TEXT PRIMARY KEY, owner TEXT, expires {real} NOT NULL DEFAULT 0,
        changed {real});
    CREATE TABLE instances (
        name TEXT PRIMARY KEY, heartbeat {real} NOT NULL,
        started {real} NOT NULL);
    INSERT INTO leases (host) SELECT name FROM hosts
    """,
    """
    ALTER TABLE hosts ADD COLUMN retired_at {real};
    ALTER TABLE hosts ADD COLUMN inventory_t {int};
    CREATE TABLE instance_keys (
        instance TEXT NOT NULL, pubkey {blob} NOT NULL, key_id TEXT NOT NULL,
        first_seen {real} NOT NULL, PRIMARY KEY (instance, pubkey))
    """,
    """
    ALTER TABLE hosts ADD COLUMN cert_pem TEXT;
    ALTER TABLE hosts ADD COLUMN key_pem TEXT;
    CREATE TABLE host_keys (
        host TEXT NOT NULL, key_id TEXT NOT NULL, pubkey {blob} NOT NULL,
        added {real} NOT NULL, PRIMARY KEY (host, key_id))
    """,  # 4: host keys kept per key id (filled by _fill_host_keys), mTLS
    LEDGER_SCHEMA,  # 5: the ledger (ledger/schema.py)
    OWNERS_SQL,  # 6: VM owners, time-versioned (ledger/owners.py)
    PERIODS_SCHEMA,  # 7: period close, certificates, corrections
    ROLLUP_SCHEMA,  # 8: the ledger's roll-up for grouped reports
    HELD_SCHEMA,  # 9: the seq ranges held per WAL (collector/held.py)
)

_FRAME_COLUMNS = ("host", "wal", "first_seq", "last_seq", "hash",
                  "prev_hash", "sig", "key_id", "records", "received")
_RECORD_COLUMNS = ("host", "wal", "seq", "kind", "t", "body")
_PG_TYPES = {"host": "text", "wal": "bytea", "first_seq": "int8",
             "last_seq": "int8", "hash": "bytea", "prev_hash": "bytea",
             "sig": "bytea", "key_id": "text", "records": "bytea",
             "received": "float8", "seq": "int8", "kind": "text",
             "t": "int8", "body": "bytea"}
_HOST_COLUMNS = ("name", "url", "consumer", "token", "pubkey", "cacert",
                 "state", "error", "wal", "stored_seq", "last_hash",
                 "acked_seq", "last_pull", "behind_records", "clock_offset_s",
                 "retired_at", "inventory_t", "cert_pem", "key_pem")


class SqlStore(Store):
    """The SQL both stores share.  Statements use ``?`` parameters and the
    placeholders {now} (the database's clock, epoch seconds) and {lock}
    / {skip_locked} (row locks, empty on SQLite, which locks the whole
    database for a write transaction)."""

    TYPES: dict[str, str] = {}
    NOW = ""
    LOCK = SKIP_LOCKED = ""

    def _sql(self, sql: str) -> str:
        return sql.replace("{now}", self.NOW).replace(
            "{lock}", self.LOCK).replace("{skip_locked}", self.SKIP_LOCKED)

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        raise NotImplementedError
        yield

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """A write transaction for the ledger's tables (ledger/book.py):
        yields ``q(sql, args)`` with this store's placeholders."""
        with self._tx() as q:
            yield q

    def read(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        """One statement's rows (this store's placeholders), without the
        write lock where the store has one (SQLite)."""
        return self._read(sql, args)

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        with self._tx() as q:
            return q(sql, args).fetchall()

    def _migrate_lock(self, q: Any) -> None:
        """Serialises concurrent migrations (SQLite: the write lock)."""

    def migrate(self) -> int:
        """Applies the missing migrations, each in a write transaction that
        looks at the version first (two processes migrating at once apply
        each migration once)."""
        with self._tx() as q:
            self._migrate_lock(q)
            q("CREATE TABLE IF NOT EXISTS schema_version ("
              "version INTEGER PRIMARY KEY, applied {real} NOT NULL)"
              .replace("{real}", self.TYPES["real"]))
        for number, sql in enumerate(MIGRATIONS, start=1):
            with self._tx() as q:
                self._migrate_lock(q)
                if q("SELECT 1 FROM schema_version WHERE version = ?",
                     (number,)).fetchone():
                    continue
                for statement in filter(str.strip, sql.split(";")):
                    q(statement.format(**self.TYPES))
                if number in _AFTER_MIGRATION:
                    _AFTER_MIGRATION[number](q)
                q("INSERT INTO schema_version VALUES (?, ?)",
                  (number, time.time()))
        return len(MIGRATIONS)

    def put_host(self, host: HostRow) -> None:
        """The key joins the host's pinned keys; the ones it had stay
        (frames already stored, or still to be read, carry them)."""
        with self._tx() as q:
            q("INSERT INTO hosts (name, url, consumer, token, pubkey, "
              "cacert, cert_pem, key_pem) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
              "ON CONFLICT (name) DO "
              "UPDATE SET url=excluded.url, consumer=excluded.consumer, "
              "token=excluded.token, cacert=excluded.cacert, "
              "cert_pem=excluded.cert_pem, key_pem=excluded.key_pem, "
              "state=CASE WHEN hosts.pubkey != excluded.pubkey AND "
              "hosts.state = 'untrusted' THEN 'lagging' ELSE hosts.state "
              "END, error=CASE WHEN hosts.pubkey != excluded.pubkey THEN "
              "NULL ELSE hosts.error END, pubkey=excluded.pubkey",
              (host.name, host.url, host.consumer, host.token, host.pubkey,
               host.cacert, host.cert_pem, host.key_pem))
            _pin_key(q, host.name, host.pubkey)
            q("INSERT INTO leases (host) VALUES (?) ON CONFLICT (host) DO "
              "NOTHING", (host.name,))

    def host_keys(self, host: str | None = None) \
            -> list[tuple[str, str, bytes, float]]:
        """(host, key id hex, public key, added) of every key pinned for
        ``host`` (every host when None), oldest first.  Kept when a host
        is re-added with another key or removed: its evidence stays, and
        verifies with the key id each frame carries."""
        rows = self._read(
            "SELECT host, key_id, pubkey, added FROM host_keys"
            + (" WHERE host = ?" if host is not None else "")
            + " ORDER BY host, added, key_id",
            () if host is None else (host,))
        return [(h, k, bytes(p), a) for h, k, p, a in rows]

    def remove_host(self, name: str) -> bool:
        with self._tx() as q:
            q("DELETE FROM leases WHERE host = ?", (name,))
            return q("DELETE FROM hosts WHERE name = ?",
                     (name,)).rowcount > 0

    def retire_host(self, name: str, at: float) -> bool:
        with self._tx() as q:
            return q("UPDATE hosts SET state = 'retired', error = NULL, "
                     "retired_at = ? WHERE name = ?", (at, name)).rowcount > 0

    def put_instance_key(self, instance: str, pubkey: bytes,
                         key_id: str) -> None:
        with self._tx() as q:
            q("INSERT INTO instance_keys VALUES (?, ?, ?, {now}) ON CONFLICT "
              "(instance, pubkey) DO NOTHING", (instance, pubkey, key_id))

    def instance_keys(self) -> list[tuple[str, bytes, str]]:
        """(instance, public key, key id), oldest first."""
        return [(i, bytes(k), kid) for i, k, kid in self._read(
            "SELECT instance, pubkey, key_id FROM instance_keys ORDER BY "
            "first_seen, instance")]

    def hosts(self) -> list[HostRow]:
        rows = self._read(f"SELECT {', '.join(_HOST_COLUMNS)} FROM hosts "
                          "ORDER BY name")
        pinned: dict[str, list[bytes]] = {}
        for name, _, pub, _ in self.host_keys():
            pinned.setdefault(name, []).append(pub)
        return [replace(h, keys=tuple(pinned.get(h.name, ())))
                for h in map(_host_row, rows)]

    def save_batch(self, host: str, wal: bytes, frames: Sequence[StoredFrame],
                   missing: Sequence[tuple[int, int, str]], stored_seq: int,
                   last_hash: bytes | None, *, owner: str | None = None,
                   **progress: Any) -> None:
        now = time.time()
        with self._tx() as q:
            if owner is not None and not q(
                    "SELECT 1 FROM leases WHERE host = ? AND owner = ? AND "
                    "expires > {now} {lock}", (host, owner)).fetchone():
                raise LeaseLost(f"{host}: lease not held by {owner}")
            self._insert_frames(q, host, wal, frames, now)
            for a, b, reason in missing:
                q("INSERT INTO missing VALUES (?, ?, ?, ?, ?) ON CONFLICT "
                  "DO NOTHING", (host, wal, a, b, reason))
            _update_host(q, host, {"wal": wal, "stored_seq": stored_seq,
                                   "last_hash": last_hash, **progress})

    def _insert_frames(self, q: Any, host: str, wal: bytes,
                       frames: Sequence[StoredFrame], now: float) -> None:
        """Frames and their records, in bulk: one range query finds what
        is already stored (the same bytes: skipped; other bytes:
        ``EvidenceConflict``), the rest goes in with ``_insert_many``."""
        if not frames:
            return
        old_frames, old_records = _stored_range(q, host, wal, frames)
        frame_rows: list[tuple[Any, ...]] = []
        record_rows: list[tuple[Any, ...]] = []
        gaps: list[tuple[int, int, str]] = []
        for f in frames:
            known = old_frames.get(f.first_seq)
            if known is None:
                frame_rows.append((host, wal, f.first_seq, f.last_seq,
                                   f.hash, f.prev_hash, f.sig, f.key_id,
                                   f.records, now))
            elif known != (f.last_seq, f.hash):
                raise EvidenceConflict(f"frame {f.first_seq}-{f.last_seq} "
                                       "came back with other content than "
                                       "stored")
            record_rows += _record_rows(host, wal, f.heads, old_records)
            gaps += [(r["from_seq"], r["to_seq"],
                      f"gap record: {r.get('reason', '')}")
                     for r in f.heads.gap_records()]
        self._insert_many("frames", _FRAME_COLUMNS, frame_rows)
        self._insert_many("records", _RECORD_COLUMNS, record_rows)
        note_stored(q, host, wal, [r[2] for r in record_rows],
                    [r[4] for r in record_rows], now)
        for a, b, reason in gaps:
            _record_gap(q, host, wal, a, b, reason)

    def _insert_many(self, table: str, columns: Sequence[str],
                     rows: list[tuple[Any, ...]]) -> None:
        """Rows known not to be stored yet, inside the transaction."""
        raise NotImplementedError

    def set_state(self, host: str, state: str, error: str | None,
                  **progress: Any) -> None:
        assert state in STATES, state
        with self._tx() as q:
            _update_host(q, host, {"state": state, "error": error,
                                   **progress})

    def set_acked(self, host: str, seq: int) -> None:
        with self._tx() as q:
            q("UPDATE hosts SET acked_seq = ? WHERE name = ? AND "
              "acked_seq < ?", (seq, host, seq))

    def wals(self, host: str, exact: bool = False) -> list[dict[str, Any]]:
        """From what ``_insert_frames`` keeps (collector/held.py): a few
        rows per WAL, however many records are stored; ``exact``: from the
        records themselves (a period's certificate, its verification, an
        evidence bundle: what the store holds now, whatever changed it)."""
        out = self._held_exact(host) if exact else held_of(self._read, host)
        gaps = self._read("SELECT wal, from_seq, to_seq, reason FROM missing "
                          "WHERE host = ? ORDER BY from_seq", (host,))
        for w in out:
            w["gaps"] = [{"from_seq": a, "to_seq": b, "reason": r}
                         for wal, a, b, r in gaps if bytes(wal) == w["wal"]]
        return out

    def _held_exact(self, host: str) -> list[dict[str, Any]]:
        out = []
        first = dict(self._read("SELECT wal, min(received) FROM frames "
                                "WHERE host = ? GROUP BY wal", (host,)))
        for wal, last_seq, newest_t in self._read(
                "SELECT wal, max(seq), max(t) FROM records WHERE host = ? "
                "GROUP BY wal", (host,)):
            wal = bytes(wal)
            held = self._read(
                "SELECT min(seq), max(seq) FROM (SELECT seq, seq - "
                "row_number() OVER (ORDER BY seq) AS g FROM records WHERE "
                "host = ? AND wal = ?) AS runs GROUP BY g ORDER BY 1",
                (host, wal))
            out.append({"wal": wal, "held": [list(r) for r in held],
                        "last_seq": last_seq, "newest_t": newest_t,
                        "first": first.get(wal, math.inf)})
        out.sort(key=lambda w: w.pop("first"))
        return out

    def records(self, host: str) -> list[tuple[bytes, int, dict[str, Any]]]:
        """Every stored record of ``host``: (wal, seq, record), WAL by WAL
        in the order they arrived, for tests and tools."""
        order = {w["wal"]: i for i, w in enumerate(self.wals(host))}
        rows = self._read("SELECT wal, seq, body FROM records WHERE host = ? "
                          "ORDER BY seq", (host,))
        rows.sort(key=lambda r: order.get(bytes(r[0]), len(order)))
        return [(bytes(w), s, msgpack.unpackb(bytes(b), raw=False))
                for w, s, b in rows]

    def claim(self, instance: str, lease_s: float) -> Claim:
        with self._tx() as q:
            q("INSERT INTO instances (name, heartbeat, started) VALUES "
              "(?, {now}, {now}) ON CONFLICT (name) DO UPDATE SET "
              "heartbeat = excluded.heartbeat", (instance,))
            q("DELETE FROM instances WHERE heartbeat < {now} - ?",
              (10 * lease_s,))
            live = q("SELECT count(*) FROM instances WHERE "
                     "heartbeat > {now} - ?", (lease_s,)).fetchone()[0]
            q("INSERT INTO leases (host) SELECT name FROM hosts WHERE name "
              "NOT IN (SELECT host FROM leases) ON CONFLICT (host) DO "
              "NOTHING")
            # ours that are gone or no longer pulled: give back
            q("UPDATE leases SET owner = NULL, expires = 0, changed = {now} "
              "WHERE owner = ? AND host NOT IN (SELECT name FROM hosts "
              "WHERE state NOT IN ('untrusted', 'retired'))", (instance,))
            q("UPDATE leases SET expires = {now} + ? WHERE owner = ?",
              (lease_s, instance))
            held = [r[0] for r in q("SELECT host FROM leases WHERE owner = ? "
                                    "ORDER BY host", (instance,))]
            pulled = q("SELECT count(*) FROM hosts WHERE state NOT IN "
                       "('untrusted', 'retired')").fetchone()[0]
            share = math.ceil(pulled / max(live, 1))
            excess = held[share:] if live > 1 else []
            taken: dict[str, str | None] = {}
            want = share - len(held)
            if want > 0:
                for host, owner in q(
                        "SELECT l.host, l.owner FROM leases l JOIN hosts h ON "
                        "h.name = l.host WHERE (l.owner IS NULL OR "
                        "l.expires <= {now}) AND h.state NOT IN "
                        "('untrusted', 'retired') ORDER BY l.expires, l.host "
                        "LIMIT ? {skip_locked}", (want,)).fetchall():
                    q("UPDATE leases SET owner = ?, expires = {now} + ?, "
                      "changed = {now} WHERE host = ?",
                      (instance, lease_s, host))
                    taken[host] = owner
            return Claim(sorted(held + list(taken)), excess, taken, live)

    def release(self, instance: str, hosts: Sequence[str] | None = None) \
            -> None:
        with self._tx() as q:
            if hosts is None:
                q("UPDATE leases SET owner = NULL, expires = 0, changed = "
                  "{now} WHERE owner = ?", (instance,))
                q("DELETE FROM instances WHERE name = ?", (instance,))
                return
            for host in hosts:
                q("UPDATE leases SET owner = NULL, expires = 0, changed = "
                  "{now} WHERE owner = ? AND host = ?", (instance, host))

    def leases(self) -> dict[str, tuple[str | None, float]]:
        return {h: (o, e) for h, o, e in self._read(
            "SELECT host, owner, expires FROM leases ORDER BY host")}

    def instances(self, lease_s: float) -> list[str]:
        """The instances whose heartbeat is younger than ``lease_s``."""
        return [r[0] for r in self._read(
            "SELECT name FROM instances WHERE heartbeat > {now} - ? "
            "ORDER BY name", (lease_s,))]


class SqliteStore(SqlStore):
    """``<state_dir>/collector.db``: WAL journal, ``synchronous=FULL``, one
    connection shared by the ingest threads under a lock."""

    name = "sqlite"
    TYPES = {"int": "INTEGER", "blob": "BLOB", "real": "REAL",
             "num": "TEXT"}
    NOW = "((julianday('now') - 2440587.5) * 86400.0)"

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), timeout=timeout,
                                       isolation_level=None,
                                       check_same_thread=False)
            _wal_journal(self._db, timeout)
            self._db.execute("PRAGMA synchronous=FULL")
        except (OSError, sqlite3.Error) as err:
            raise StoreError(f"cannot open {path}: {err}") from err

    def describe(self) -> str:
        return f"sqlite:{self.path}"

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        """One write transaction; sqlite errors become StoreError."""
        def q(sql: str, args: Sequence[Any] = ()) -> sqlite3.Cursor:
            return self._db.execute(self._sql(sql), args)

        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as err:
                raise StoreError(f"{self.path}: {err}") from err
            try:
                yield q
                self._db.execute("COMMIT")
            except BaseException as err:
                with suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                if isinstance(err, sqlite3.Error):
                    raise StoreError(f"{self.path}: {err}") from err
                raise

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            try:
                return self._db.execute(self._sql(sql), args).fetchall()
            except sqlite3.Error as err:
                raise StoreError(f"{self.path}: {err}") from err

    def _insert_many(self, table: str, columns: Sequence[str],
                     rows: list[tuple[Any, ...]]) -> None:
        if rows:  # under the lock, in the transaction _tx began
            self._db.executemany(
                f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
                f"({', '.join('?' * len(columns))})", rows)

    def version(self) -> int:
        rows = self._read("SELECT name FROM sqlite_master WHERE type='table'"
                          " AND name='schema_version'")
        if not rows:
            return 0
        return int(self._read("SELECT max(version) FROM schema_version")[0][0]
                   or 0)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def redact(url: str) -> str:
    """A postgresql:// URL without its password."""
    return re.sub(r"^(\w+://[^:@/]*):[^@/]*@", r"\1@", url)


#: PostgreSQL tables whose rows are updated in place by every fold, and how
#: full their pages are filled by inserts (the rest: room for updates)
_UPDATED_TABLES = ("ledger_hosts", "ledger_pos", "ledger_gens",
                   "ledger_slices", "ledger_quantities", "ledger_rollup")
_FILLFACTOR = 60


class PostgresStore(SqlStore):
    """``postgresql://user@host:port/db``: a fleet of ``vmcollector run``
    shares one database.  One connection shared by the ingest threads under
    a lock; a broken connection is opened again at the next transaction
    (a database outage is a StoreError: no ack, retry)."""

    name = "postgresql"
    TYPES = {"int": "BIGINT", "blob": "BYTEA", "real": "DOUBLE PRECISION",
             "num": "NUMERIC"}
    NOW = "EXTRACT(EPOCH FROM clock_timestamp())::float8"
    LOCK = "FOR UPDATE"
    SKIP_LOCKED = "FOR UPDATE OF l SKIP LOCKED"

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        try:
            import psycopg
        except ImportError:
            raise StoreError(f"{redact(url)}: PostgreSQL needs psycopg 3: "
                             "pip install 'vmagent[postgresql]'") from None
        self._psycopg = psycopg
        self.url, self.timeout = url, timeout
        self._lock = threading.Lock()
        self._db: Any = None
        self._settings: dict[str, str] = {}
        with self._lock:
            self._connect()

    def describe(self) -> str:
        return redact(self.url)

    def _connect(self) -> Any:
        if self._db is not None and not self._db.closed:
            return self._db
        try:
            self._db = self._psycopg.connect(
                self.url, autocommit=True,
                connect_timeout=max(1, int(self.timeout)))
            for name, value in self._settings.items():
                self._db.execute(f"SET {name} = '{value}'")
        except self._psycopg.Error as err:
            if self._db is not None:
                with suppress(self._psycopg.Error):
                    self._db.close()
            self._db = None
            raise StoreError(f"{self.describe()}: {_one_line(err)}") from None
        return self._db

    def bound_waits(self, lease_s: float) -> None:
        """Server-side limits on this instance's session, so that an
        instance stalled inside a transaction (SIGSTOP, swapped out) holds
        no row lock its peers need for longer than its leases last:
        PostgreSQL ends a session idle in a transaction for a lease period
        (what it held is rolled back; it reconnects when it wakes and finds
        its leases gone); a statement waiting for a lock gives up after
        half a lease (a fold is retried with the next batch, the evidence
        stays stored, and the instance's lease renewals are not held up);
        no statement runs past four leases or a minute (a stall in the
        middle of a COPY)."""
        ms = max(1000, int(lease_s * 1000))
        self._settings = {
            "idle_in_transaction_session_timeout": f"{ms}ms",
            "lock_timeout": f"{ms // 2}ms",
            "statement_timeout": f"{max(4 * ms, 60_000)}ms"}
        with self._lock:
            if self._db is not None:
                with suppress(self._psycopg.Error):
                    self._db.close()
                self._db = None
            self._connect()

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        with self._lock:
            db = self._connect()

            def q(sql: str, args: Sequence[Any] = ()) -> Any:
                return db.execute(self._sql(sql).replace("?", "%s"), args)

            try:
                with db.transaction():
                    yield q
            except self._psycopg.Error as err:
                if db.closed or isinstance(err,
                                           self._psycopg.OperationalError):
                    with suppress(self._psycopg.Error):
                        db.close()
                    self._db = None
                raise StoreError(f"{self.describe()}: {_one_line(err)}") \
                    from None

    def _migrate_lock(self, q: Any) -> None:
        q("SELECT pg_advisory_xact_lock(7413001)")

    def migrate(self) -> int:
        """The migrations, then lz4 for the frames' records where the
        server has it (PostgreSQL 14+ built with lz4): it compresses the
        kept frames about as well as the default pglz at a fraction of
        the CPU (bench/collector.py).  Only new rows are affected; a
        server without lz4 keeps pglz.  The ledger's tables, whose rows
        every fold updates, leave room in their pages for the updated
        rows (fillfactor): updates in place, without new index entries
        (PostgreSQL's HOT updates), twice as fast (docs/benchmarks.md)."""
        version = super().migrate()
        self._leave_room()
        try:
            with self._tx() as q:
                row = q("SELECT attcompression FROM pg_attribute WHERE "
                        "attrelid = 'frames'::regclass AND attname = "
                        "'records'").fetchone()
                if row is not None and row[0] != "l":
                    self._migrate_lock(q)
                    q("ALTER TABLE frames ALTER COLUMN records SET "
                      "COMPRESSION lz4")
        except StoreError as err:  # an older server, or no lz4: pglz
            get_logger().info("frames_compression_default",
                              reason=str(err))
        return version

    def _leave_room(self) -> None:
        with self._tx() as q:
            tables = [r[0] for r in q(
                "SELECT relname FROM pg_class WHERE relname = ANY(%s) AND "
                "NOT coalesce(reloptions, '{}') @> ARRAY[%s]",
                (list(_UPDATED_TABLES), f"fillfactor={_FILLFACTOR}"))]
            if tables:
                self._migrate_lock(q)
            for table in tables:
                q(f"ALTER TABLE {table} SET (fillfactor = {_FILLFACTOR})")

    def _insert_many(self, table: str, columns: Sequence[str],
                     rows: list[tuple[Any, ...]]) -> None:
        """COPY, in the transaction _tx began (under the lock).  A row
        stored meanwhile by someone else (only without a lease: the lease
        row is locked) is a unique violation: the batch is retried."""
        if not rows:
            return
        with self._db.cursor() as cur, cur.copy(
                f"COPY {table} ({', '.join(columns)}) FROM STDIN "
                "(FORMAT BINARY)") as copy:
            copy.set_types([_PG_TYPES[c] for c in columns])
            for row in rows:
                copy.write_row(row)

    def version(self) -> int:
        rows = self._read("SELECT to_regclass('schema_version') IS NOT NULL")
        if not rows[0][0]:
            return 0
        return int(self._read("SELECT max(version) FROM schema_version")[0][0]
                   or 0)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


def _one_line(err: BaseException) -> str:
    lines = [s.strip() for s in str(err).splitlines() if s.strip()]
    return lines[0] if lines else type(err).__name__


def _stored_range(q: Any, host: str, wal: bytes,
                  frames: Sequence[StoredFrame]) \
        -> tuple[dict[int, tuple[int, bytes]], dict[int, bytes]]:
    """What is already stored in the batch's seq range: frames by first
    seq (last seq, hash) and record bodies by seq."""
    lo = min(f.first_seq for f in frames)
    hi = max(f.last_seq for f in frames)
    old_frames = {r[0]: (r[1], bytes(r[2])) for r in q(
        "SELECT first_seq, last_seq, hash FROM frames WHERE host = ? "
        "AND wal = ? AND first_seq BETWEEN ? AND ?",
        (host, wal, lo, hi)).fetchall()}
    old_records = {r[0]: bytes(r[1]) for r in q(
        "SELECT seq, body FROM records WHERE host = ? AND wal = ? AND "
        "seq BETWEEN ? AND ?", (host, wal, lo, hi)).fetchall()}
    return old_frames, old_records


def _record_rows(host: str, wal: bytes, heads: Heads,
                 stored: dict[int, bytes]) -> Iterator[tuple[Any, ...]]:
    """The records rows to insert: those not stored yet (the same bytes
    stored: skipped; other bytes: ``EvidenceConflict``)."""
    rows = zip(repeat(host), repeat(wal), heads.seqs, heads.kinds,
               heads.ts, heads.bodies())
    if not stored:
        return rows
    return (r for r in rows if not _stored_already(r[2], r[5], stored))


def _stored_already(seq: int, body: bytes, stored: dict[int, bytes]) -> bool:
    old = stored.get(seq)
    if old is not None and old != body:
        raise EvidenceConflict(f"seq {seq} came back with other bytes than "
                               "stored")
    return old is not None


def _record_gap(q: Any, host: str, wal: bytes, a: int, b: int,
                reason: str) -> None:
    """A gap record's range as missing; it replaces the ``SKIPPED`` rows
    it explains (seqs skipped before the gap record arrived)."""
    q("DELETE FROM missing WHERE host = ? AND wal = ? AND reason = ? AND "
      "from_seq >= ? AND to_seq <= ?", (host, wal, SKIPPED, a, b))
    q("INSERT INTO missing VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
      (host, wal, a, b, reason))


def _pin_key(q: Any, host: str, pubkey: bytes) -> None:
    """Pin ``pubkey`` for ``host`` (once); a key id already pinned with
    another key is refused (never silently replaced)."""
    kid = key_id(pubkey).hex()
    q("INSERT INTO host_keys VALUES (?, ?, ?, {now}) ON CONFLICT "
      "(host, key_id) DO NOTHING", (host, kid, pubkey))
    row = q("SELECT pubkey FROM host_keys WHERE host = ? AND key_id = ?",
            (host, kid)).fetchone()
    if row is not None and bytes(row[0]) != pubkey:
        raise VmagentError(f"{host}: key id {kid} is already pinned for "
                           "another key")


def _fill_host_keys(q: Any) -> None:
    """Migration 4: every host's key so far is its first pinned key."""
    for name, pubkey in q("SELECT name, pubkey FROM hosts").fetchall():
        _pin_key(q, name, bytes(pubkey))


# Python steps run in a migration's transaction, after its statements.
_AFTER_MIGRATION: dict[int, Callable[[Any], None]] = {4: _fill_host_keys}


def _host_row(row: Sequence[Any]) -> HostRow:
    values = dict(zip(_HOST_COLUMNS, row))
    for key in ("pubkey", "wal", "last_hash"):
        if values[key] is not None:
            values[key] = bytes(values[key])
    return HostRow(**values)


def _update_host(q: Any, host: str, values: dict[str, Any]) -> None:
    """A puller's news; never takes a host out of ``retired`` (a batch in
    hand when it was retired is stored, the state stays)."""
    for key in values:
        assert key in _HOST_COLUMNS, key
    sets = ", ".join(
        "state = CASE WHEN state = 'retired' THEN state ELSE ? END"
        if k == "state" else
        "error = CASE WHEN state = 'retired' THEN NULL ELSE ? END"
        if k == "error" else
        "inventory_t = CASE WHEN inventory_t > ? THEN inventory_t ELSE ? END"
        if k == "inventory_t" else f"{k} = ?" for k in values)
    args: list[Any] = []
    for k, v in values.items():
        args += [v, v] if k == "inventory_t" else [v]
    q(f"UPDATE hosts SET {sets} WHERE name = ?", (*args, host))


def is_postgresql(store: str) -> bool:
    return store.startswith(("postgresql://", "postgres://"))


def connect(state_dir: Path, kind: str = "sqlite") -> SqlStore:
    """The configured store as it is (neither created nor migrated)."""
    if is_postgresql(kind):
        return PostgresStore(kind)
    if kind != "sqlite":
        raise StoreError(f"unknown store {kind!r}")
    return SqliteStore(state_dir / "collector.db")


def open_store(state_dir: Path, kind: str = "sqlite") -> SqlStore:
    """The configured store, migrated to the current schema."""
    store = connect(state_dir, kind)
    try:
        store.migrate()
    except BaseException:
        store.close()
        raise
    return store


def _wal_journal(db: sqlite3.Connection, timeout: float) -> None:
    """WAL journal mode, set once for the file.  Switching takes a lock that
    SQLite's busy timeout does not wait for, so while another process (a
    running collector) has the file open it is asked again until
    ``timeout``; a file already in WAL mode needs no switch."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
