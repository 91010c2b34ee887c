"""Where the collector keeps evidence: one small interface (``Store``) and
its SQLite implementation (COLLECTOR.md §1; docs/collector.md has the
schema).  PostgreSQL is a later slice.

Evidence is keyed by ``(host, wal, seq)``.  A batch is stored in one
transaction together with the host's cursor (wal, seq, hash), so the
cursor never runs ahead of what is stored.  The same seq again with the
same bytes is a no-op; with other bytes, ``EvidenceConflict``.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from vmagent.errors import VmagentError

STATES = ("current", "lagging", "failing", "untrusted", "silent", "retired")


class StoreError(VmagentError):
    """The store cannot be read or written now (retry later)."""


class EvidenceConflict(VmagentError):
    """A seq came back with other bytes than the ones stored."""


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


@dataclass
class StoredFrame:
    """A verified frame as received, and its decoded records."""

    first_seq: int
    last_seq: int
    hash: bytes
    prev_hash: bytes
    sig: bytes
    key_id: str
    records: bytes
    decoded: list[dict[str, Any]] = field(default_factory=list)


class Store:
    """The interface every store implements."""

    name = "?"

    def migrate(self) -> int:  # returns the schema version
        raise NotImplementedError

    def put_host(self, host: HostRow) -> None:
        """Add or replace a host's settings (name, url, consumer, token,
        key, cacert); a re-added host is trusted again."""
        raise NotImplementedError

    def remove_host(self, name: str) -> bool:
        raise NotImplementedError

    def hosts(self) -> list[HostRow]:
        raise NotImplementedError

    def save_batch(self, host: str, wal: bytes, frames: Sequence[StoredFrame],
                   missing: Sequence[tuple[int, int, str]], stored_seq: int,
                   last_hash: bytes | None, **progress: Any) -> None:
        """Frames, records, missing ranges and the cursor, atomically."""
        raise NotImplementedError

    def set_state(self, host: str, state: str, error: str | None,
                  **progress: Any) -> None:
        raise NotImplementedError

    def set_acked(self, host: str, seq: int) -> None:
        raise NotImplementedError

    def wals(self, host: str) -> list[dict[str, Any]]:
        """Per WAL: held seq ranges, missing ranges, last seq, newest t."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE hosts (
        name TEXT PRIMARY KEY, url TEXT NOT NULL, consumer TEXT NOT NULL,
        token TEXT, pubkey BLOB NOT NULL, cacert TEXT,
        state TEXT NOT NULL DEFAULT 'lagging', error TEXT,
        wal BLOB, stored_seq INTEGER NOT NULL DEFAULT 0, last_hash BLOB,
        acked_seq INTEGER NOT NULL DEFAULT 0, last_pull REAL,
        behind_records INTEGER, clock_offset_s REAL);
    CREATE TABLE frames (
        host TEXT NOT NULL, wal BLOB NOT NULL, first_seq INTEGER NOT NULL,
        last_seq INTEGER NOT NULL, hash BLOB NOT NULL, prev_hash BLOB NOT NULL,
        sig BLOB NOT NULL, key_id TEXT NOT NULL, records BLOB NOT NULL,
        received REAL NOT NULL, PRIMARY KEY (host, wal, first_seq));
    CREATE TABLE records (
        host TEXT NOT NULL, wal BLOB NOT NULL, seq INTEGER NOT NULL,
        kind TEXT NOT NULL, t INTEGER, body BLOB NOT NULL,
        PRIMARY KEY (host, wal, seq));
    CREATE TABLE missing (
        host TEXT NOT NULL, wal BLOB NOT NULL, from_seq INTEGER NOT NULL,
        to_seq INTEGER NOT NULL, reason TEXT NOT NULL,
        PRIMARY KEY (host, wal, from_seq, to_seq));
    """,
)

_HOST_COLUMNS = ("name", "url", "consumer", "token", "pubkey", "cacert",
                 "state", "error", "wal", "stored_seq", "last_hash",
                 "acked_seq", "last_pull", "behind_records", "clock_offset_s")
_PROGRESS = ("last_pull", "behind_records", "clock_offset_s")


class SqliteStore(Store):
    """``<state_dir>/collector.db``: WAL journal, ``synchronous=FULL``, one
    connection shared by the ingest threads under a lock."""

    name = "sqlite"

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), timeout=timeout,
                                       isolation_level=None,
                                       check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
        except (OSError, sqlite3.Error) as err:
            raise StoreError(f"cannot open {path}: {err}") from err

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; sqlite errors become StoreError."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as err:
                raise StoreError(f"{self.path}: {err}") from err
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException as err:
                try:
                    self._db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                if isinstance(err, sqlite3.Error):
                    raise StoreError(f"{self.path}: {err}") from err
                raise

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as err:
                raise StoreError(f"{self.path}: {err}") from err

    def version(self) -> int:
        rows = self._read("SELECT name FROM sqlite_master WHERE type='table'"
                          " AND name='schema_version'")
        if not rows:
            return 0
        return int(self._read("SELECT max(version) FROM schema_version")[0][0]
                   or 0)

    def migrate(self) -> int:
        """Applies the missing migrations, each in a write transaction that
        looks at the version first (two processes migrating at once apply
        each migration once)."""
        with self._tx() as db:
            db.execute("CREATE TABLE IF NOT EXISTS schema_version ("
                       "version INTEGER PRIMARY KEY, applied REAL NOT NULL)")
        for number, sql in enumerate(MIGRATIONS, start=1):
            with self._tx() as db:
                if db.execute("SELECT 1 FROM schema_version WHERE "
                              "version = ?", (number,)).fetchone():
                    continue
                for statement in filter(str.strip, sql.split(";")):
                    db.execute(statement)
                db.execute("INSERT INTO schema_version VALUES (?, ?)",
                           (number, time.time()))
        return len(MIGRATIONS)

    def put_host(self, host: HostRow) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO hosts (name, url, consumer, token, pubkey, "
                "cacert) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO "
                "UPDATE SET url=excluded.url, consumer=excluded.consumer, "
                "token=excluded.token, cacert=excluded.cacert, "
                "state=CASE WHEN hosts.pubkey != excluded.pubkey AND "
                "hosts.state = 'untrusted' THEN 'lagging' ELSE hosts.state "
                "END, error=CASE WHEN hosts.pubkey != excluded.pubkey THEN "
                "NULL ELSE hosts.error END, pubkey=excluded.pubkey",
                (host.name, host.url, host.consumer, host.token, host.pubkey,
                 host.cacert))

    def remove_host(self, name: str) -> bool:
        with self._tx() as db:
            return db.execute("DELETE FROM hosts WHERE name = ?",
                              (name,)).rowcount > 0

    def hosts(self) -> list[HostRow]:
        rows = self._read(f"SELECT {', '.join(_HOST_COLUMNS)} FROM hosts "
                          "ORDER BY name")
        return [HostRow(**dict(zip(_HOST_COLUMNS, r))) for r in rows]

    def save_batch(self, host: str, wal: bytes, frames: Sequence[StoredFrame],
                   missing: Sequence[tuple[int, int, str]], stored_seq: int,
                   last_hash: bytes | None, **progress: Any) -> None:
        now = time.time()
        with self._tx() as db:
            for f in frames:
                _insert_frame(db, host, wal, f, now)
            for a, b, reason in missing:
                db.execute("INSERT OR IGNORE INTO missing VALUES "
                           "(?, ?, ?, ?, ?)", (host, wal, a, b, reason))
            _update_host(db, host, {"wal": wal, "stored_seq": stored_seq,
                                    "last_hash": last_hash, **progress})

    def set_state(self, host: str, state: str, error: str | None,
                  **progress: Any) -> None:
        assert state in STATES, state
        with self._tx() as db:
            _update_host(db, host, {"state": state, "error": error,
                                    **progress})

    def set_acked(self, host: str, seq: int) -> None:
        with self._tx() as db:
            db.execute("UPDATE hosts SET acked_seq = max(acked_seq, ?) "
                       "WHERE name = ?", (seq, host))

    def wals(self, host: str) -> list[dict[str, Any]]:
        out = []
        for wal, last_seq, newest_t in self._read(
                "SELECT wal, max(seq), max(t) FROM records WHERE host = ? "
                "GROUP BY wal ORDER BY min(rowid)", (host,)):
            held = self._read(
                "SELECT min(seq), max(seq) FROM (SELECT seq, seq - "
                "row_number() OVER (ORDER BY seq) AS g FROM records WHERE "
                "host = ? AND wal = ?) GROUP BY g ORDER BY 1", (host, wal))
            gaps = self._read("SELECT from_seq, to_seq, reason FROM missing "
                              "WHERE host = ? AND wal = ? ORDER BY from_seq",
                              (host, wal))
            out.append({"wal": wal, "held": [list(r) for r in held],
                        "gaps": [{"from_seq": a, "to_seq": b, "reason": r}
                                 for a, b, r in gaps],
                        "last_seq": last_seq, "newest_t": newest_t})
        return out

    def records(self, host: str) -> list[tuple[bytes, int, dict[str, Any]]]:
        """Every stored record of ``host``: (wal, seq, record), for tests
        and tools."""
        rows = self._read("SELECT wal, seq, body FROM records WHERE host = ? "
                          "ORDER BY rowid", (host,))
        return [(w, s, msgpack.unpackb(b, raw=False)) for w, s, b in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _insert_frame(db: sqlite3.Connection, host: str, wal: bytes,
                  f: StoredFrame, now: float) -> None:
    row = db.execute("SELECT last_seq, hash FROM frames WHERE host = ? AND "
                     "wal = ? AND first_seq = ?",
                     (host, wal, f.first_seq)).fetchone()
    if row is not None:
        if tuple(row) != (f.last_seq, f.hash):
            raise EvidenceConflict(f"frame {f.first_seq}-{f.last_seq} came "
                                   "back with other content than stored")
    else:
        db.execute("INSERT INTO frames VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (host, wal, f.first_seq, f.last_seq, f.hash, f.prev_hash,
                    f.sig, f.key_id, f.records, now))
    for rec in f.decoded:
        _insert_record(db, host, wal, rec)


def _insert_record(db: sqlite3.Connection, host: str, wal: bytes,
                   rec: dict[str, Any]) -> None:
    body = msgpack.packb(rec, use_bin_type=True)
    seq, t = rec["seq"], rec.get("t")
    done = db.execute("INSERT OR IGNORE INTO records VALUES (?, ?, ?, ?, ?, ?)",
                      (host, wal, seq, str(rec.get("kind")),
                       t if isinstance(t, int) else None, body)).rowcount
    if not done:
        old = db.execute("SELECT body FROM records WHERE host = ? AND wal = ? "
                         "AND seq = ?", (host, wal, seq)).fetchone()[0]
        if old != body:
            raise EvidenceConflict(f"seq {seq} came back with other bytes "
                                   "than stored")
    if rec.get("kind") == "gap":
        db.execute("INSERT OR IGNORE INTO missing VALUES (?, ?, ?, ?, ?)",
                   (host, wal, rec["from_seq"], rec["to_seq"],
                    f"gap record: {rec.get('reason', '')}"))


def _update_host(db: sqlite3.Connection, host: str,
                 values: dict[str, Any]) -> None:
    for key in values:
        assert key in _HOST_COLUMNS, key
    sets = ", ".join(f"{k} = ?" for k in values)
    db.execute(f"UPDATE hosts SET {sets} WHERE name = ?",
               (*values.values(), host))


def open_store(state_dir: Path, kind: str = "sqlite") -> SqliteStore:
    """The configured store, migrated to the current schema."""
    if kind != "sqlite":
        raise StoreError(f"store {kind!r} is not built yet")
    store = SqliteStore(state_dir / "collector.db")
    store.migrate()
    return store
