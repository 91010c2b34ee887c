"""The stored ledger: base slices kept up to date as evidence is stored,
rebuilt from the signed frames, and read by reports (docs/usage.md).

``update`` folds the records of a host's WAL stored since the last update
(``ledger_pos``) into the slices, in one transaction with the gens' and
the host's fold state; only the gens those records name and the slices
they touch are read and written.  ``rebuild`` folds every stored frame of
the hosts with evidence in a range again from nothing, compares, and
replaces.  Quantities are exact decimal strings in the store.  Owners
(``import_owners``) cut slices where a VM's owner changes; reports look the
owner of a slice up (``owners``).
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import msgpack

from vmagent.errors import VmagentError
from vmagent.ledger import rollup
from vmagent.ledger.facts import Fold, GenState, HostState, SliceAcc
from vmagent.ledger.owners import (
    OWNERS_SELECT_SQL,
    OWNERS_UPSERT_SQL,
    OwnerIndex,
    OwnerRow,
    clamp_to_open,
)
from vmagent.ledger.readings import FromBytes, Reading
from vmagent.ledger.records import GenInfo, StoredSlice
from vmagent.log import get_logger

_SLICE_COLUMNS = ("host, uuid, gen, start_ns, end_ns, vcpus, mem, seqs, "
                  "samples, interpolated_ns, clock_step_ns")
_GEN_COLUMNS = ("host", "uuid", "gen", "start_ns", "end_ns", "state")
_QUANTITY_COLUMNS = ("host", "uuid", "gen", "start_ns", "meter", "device",
                     "quantity")
_CHUNK = 200  # rows per multi-row statement
#: PostgreSQL array types of the ledger's columns for ``unnest`` (else text)
_PG_ARRAYS = {c: "bigint" for c in ("start_ns", "end_ns", "vcpus", "mem",
                                    "samples", "interpolated_ns",
                                    "clock_step_ns", "q2", "q1", "q0")} | {
                                        "quantity": "numeric"}


class _Unnest:
    """A PostgreSQL transaction's ``q``: ``_upsert`` writes a table in one
    ``INSERT ... SELECT FROM unnest(...)`` (one parameter per column)."""

    def __init__(self, q: Any) -> None:
        self.q = q

    def __call__(self, sql: str, args: Sequence[Any] = ()) -> Any:
        return self.q(sql, args)


@contextmanager
def _writing(store: Any) -> Iterator[Any]:
    """``store.transaction()`` for the ledger's writes."""
    with store.transaction() as q:
        yield _Unnest(q) if getattr(store, "name", "") == "postgresql" else q


def update(store: Any, host: str, wal: bytes,
           limit: int | None = None) -> int:
    """Fold what ``host`` stored in ``wal`` since the last update (at most
    ``limit`` records, in seq order: the next update takes the rest);
    returns how many records were folded.

    The records are read and folded outside the write transaction, so that
    SQLite's one write lock (which the collector's stores need too) and
    PostgreSQL's row lock are held only while writing: every ledger row the
    fold read is read again in the write transaction, and if any changed
    (another fold, a rebuild, an owners import meanwhile) the fold is done
    again from the new state."""
    for _ in range(_TRIES):
        reads = _Reads(store)
        planned = _plan(store, reads, host, wal, limit)
        if planned is None:
            return 0
        fold, last, n = planned
        with _writing(store) as q:
            if not reads.unchanged(q):
                continue
            _save(q, host, fold)
            q("INSERT INTO ledger_pos VALUES (?, ?, ?) ON CONFLICT (host, "
              "wal) DO UPDATE SET seq = excluded.seq", (host, wal, last))
            return n
    raise LedgerBusy(f"the ledger of {host} changed during each of "
                     f"{_TRIES} folds")


_TRIES = 10


class LedgerBusy(VmagentError):
    """A fold kept finding what it read changed (``update``)."""


def _plan(store: Any, reads: _Reads, host: str, wal: bytes,
          limit: int | None) -> tuple[Fold, int, int] | None:
    """The fold of the records past ``ledger_pos`` (None: there are none),
    its last seq and how many; what it read is in ``reads``."""
    with store.transaction() as q:
        # the row to lock exists: two first folds of a host (two fleet
        # instances' workers at a lease's hand-over) wait for each other
        q("INSERT INTO ledger_hosts VALUES (?, ?) ON CONFLICT (host) DO "
          "NOTHING", (host, "{}"))
        reads.q = q
        state = _host_state(reads, host)
        row = reads("SELECT seq FROM ledger_pos WHERE host = ? AND wal = ?",
                    (host, wal)).fetchone()
        pos = row[0] if row else 0
        rows = q("SELECT seq, body FROM records WHERE host = ? AND wal = ? "
                 "AND seq > ? ORDER BY seq"  # stored once, never changed
                 + (f" LIMIT {int(limit)}" if limit is not None else ""),
                 (host, wal, pos)).fetchall()
    if not rows:
        return None
    records = list(_decode_rows(rows))
    keys = _named(state, records)
    with store.transaction() as q:
        reads.q = q
        fold = Fold(state, _loader(reads, host, keys),
                    _owner_cuts(reads, {u for u, _ in keys}))
    reads.q = None  # what the fold looks up now: a transaction each
    fold.feed(wal.hex(), records)
    return fold, rows[-1][0], len(rows)


class _Reads:
    """A fold's reads, kept with the rows they gave (``unchanged``), in
    ``q``'s transaction or, when it is None, each in one of its own."""

    def __init__(self, store: Any) -> None:
        self.store, self.q = store, None
        self.seen: list[tuple[str, tuple[Any, ...], list[Any]]] = []

    def __call__(self, sql: str, args: Sequence[Any] = ()) -> _Rows:
        if self.q is not None:
            rows = list(self.q(sql, args).fetchall())
        else:
            with self.store.transaction() as q:
                rows = list(q(sql, args).fetchall())
        self.seen.append((sql, tuple(args), rows))
        return _Rows(rows)

    def unchanged(self, q: Any) -> bool:
        """Every read gives the same rows again (the first one locks the
        host's ``ledger_hosts`` row)."""
        return all([tuple(r) for r in q(sql, args).fetchall()] ==
                   [tuple(r) for r in rows] for sql, args, rows in self.seen)


class _Rows:
    def __init__(self, rows: list[Any]) -> None:
        self.rows = rows

    def fetchall(self) -> list[Any]:
        return self.rows

    def fetchone(self) -> Any:
        return self.rows[0] if self.rows else None


def retire(store: Any, host: str) -> int:
    """``hosts retire``: the VMs still open on the host are closed at
    their last evidence as ``lost`` (COLLECTOR.md section 3); how many."""
    with _writing(store) as q:
        state = _host_state(q, host)
        fold = Fold(state, _loader(q, host, _named(state, [])))
        n = fold.retire()
        _save(q, host, fold)
    return n


def _decode_rows(rows: list[Any]) -> Iterator[dict[str, Any] | Reading]:
    """Stored records as the fold takes them: a sample's ``Reading`` made
    from its bytes, anything else decoded."""
    reading = FromBytes()
    for seq, body in rows:
        body = bytes(body)
        found = reading(body, seq)
        if found is not None:
            yield found
            continue
        rec = msgpack.unpackb(body, raw=False)
        if isinstance(rec, dict):
            rec["seq"] = seq
            yield rec


def _host_state(q: Any, host: str) -> HostState:
    row = q("SELECT state FROM ledger_hosts WHERE host = ? {lock}",
            (host,)).fetchone()
    return HostState(**json.loads(row[0])) if row else HostState()


def _named(state: HostState, records: list[dict[str, Any] | Reading]) \
        -> set[tuple[str, str]]:
    """(uuid, gen) of the open gens and of those the records name."""
    keys = {(u, g) for u, g in state.open}
    for rec in records:
        if isinstance(rec, Reading):
            if rec.vm is not None:
                keys.add((rec.vm.uuid, rec.vm.gen))
            continue
        inner = rec.get("samples")
        for r in [rec, *(inner if isinstance(inner, list) else [])]:
            vm = r.get("vm") if isinstance(r, dict) else None
            if isinstance(vm, dict):
                keys.add((str(vm.get("uuid")), str(vm.get("gen"))))
    return keys


def _loader(q: Any, host: str, keys: set[tuple[str, str]]) \
        -> Callable[[str, str], GenState | None]:
    """Loads the gens ``keys`` names in one query per chunk of uuids;
    others (a previous gen's taps) one by one."""
    found: dict[tuple[str, str], GenState] = {}
    uuids = sorted({u for u, _ in keys})
    for i in range(0, len(uuids), _CHUNK):
        part = uuids[i:i + _CHUNK]
        for u, g, st in q("SELECT uuid, gen, state FROM ledger_gens WHERE "
                          f"host = ? AND uuid IN ({_marks(part)}) ORDER BY "
                          "uuid, gen",  # the same order when re-read
                          (host, *part)).fetchall():
            if (u, g) in keys:
                found[(u, g)] = GenState.from_json(json.loads(st))

    def load(uuid: str, gen: str) -> GenState | None:
        if (uuid, gen) in keys:
            return found.get((uuid, gen))
        return _load_gen(q, host, uuid, gen)

    return load


def _load_gen(q: Any, host: str, uuid: str, gen: str) -> GenState | None:
    row = q("SELECT state FROM ledger_gens WHERE host = ? AND uuid = ? AND "
            "gen = ?", (host, uuid, gen)).fetchone()
    return GenState.from_json(json.loads(row[0])) if row else None


def _owner_cuts(q: Any, uuids: set[str]) -> Callable[[str], list[int]]:
    """A VM's owner changes: those of ``uuids`` read in one query per
    chunk, any other VM on demand."""
    wanted = sorted({u.lower() for u in uuids})
    cuts: dict[str, list[int]] = {u: [] for u in wanted}  # none: no query
    for i in range(0, len(wanted), _CHUNK):
        part = wanted[i:i + _CHUNK]
        for u, t in q("SELECT vm_uuid, from_ns FROM owners WHERE vm_uuid "
                      f"IN ({_marks(part)}) ORDER BY vm_uuid, from_ns",
                      tuple(part)).fetchall():
            cuts.setdefault(u, []).append(t)

    def of(uuid: str) -> list[int]:
        found = cuts.get(uuid)  # called per reading: the uuid as given
        if found is None:
            key = uuid.lower()
            if key not in cuts:
                cuts[key] = [r[0] for r in q(
                    "SELECT from_ns FROM owners WHERE vm_uuid = ? ORDER BY "
                    "from_ns", (key,)).fetchall()]
            found = cuts[uuid] = cuts[key]
        return found

    return of


def _marks(items: Sequence[Any]) -> str:
    return ", ".join("?" * len(items))


def _upsert(q: Any, table: str, columns: Sequence[str], key: Sequence[str],
            rows: list[tuple[Any, ...]]) -> None:
    """Rows inserted or, where ``key`` exists, updated: multi-row
    statements of at most ``_CHUNK`` rows; on PostgreSQL one statement
    with an array per column."""
    sets = ", ".join(f"{c} = excluded.{c}" for c in columns
                     if c not in key)
    if isinstance(q, _Unnest):
        if rows:
            arrays = ", ".join(f"%b::{_PG_ARRAYS.get(c, 'text')}[]"
                               for c in columns)
            q(f"INSERT INTO {table} ({', '.join(columns)}) SELECT * FROM "
              f"unnest({arrays}) ON CONFLICT ({', '.join(key)}) DO UPDATE "
              f"SET {sets}", [list(c) for c in zip(*rows)])
        return
    one = f"({_marks(columns)})"
    for i in range(0, len(rows), _CHUNK):
        part = rows[i:i + _CHUNK]
        q(f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
          f"{', '.join([one] * len(part))} ON CONFLICT ({', '.join(key)}) "
          f"DO UPDATE SET {sets}", [x for r in part for x in r])


def _save(q: Any, host: str, fold: Fold) -> None:
    q("INSERT INTO ledger_hosts VALUES (?, ?) ON CONFLICT (host) DO UPDATE "
      "SET state = excluded.state", (host, json.dumps(vars(fold.host))))
    _upsert(q, "ledger_gens", _GEN_COLUMNS, _GEN_COLUMNS[:3], [
        (host, g.uuid, g.gen, g.start_ns, g.end_ns, json.dumps(g.to_json()))
        for g in fold.gens.values()])
    old: dict[tuple[str, str, int], StoredSlice] = {}
    starts = sorted({start for _, _, start in fold.slices})
    for i in range(0, len(starts), _CHUNK):
        part = starts[i:i + _CHUNK]
        for s in _slices(q, f"host = ? AND start_ns IN ({_marks(part)})",
                         (host, *part)):
            old[(s.uuid, s.gen, s.start_ns)] = s
    merged = []
    for sid, acc in sorted(fold.slices.items()):
        s = old.get(sid) or StoredSlice(host, sid[0], sid[1], sid[2],
                                        acc.end_ns, acc.vcpus, acc.mem)
        merged.append(_merged(s, acc))
    _write_slices(q, merged)
    _roll_up(q, host, starts, [*old.values(), *(
        s for s in merged if (s.uuid, s.gen, s.start_ns) not in old)])


def _merged(s: StoredSlice, acc: SliceAcc) -> StoredSlice:
    s.end_ns = max(s.end_ns, acc.end_ns)
    s.vcpus, s.mem = acc.vcpus, acc.mem  # the configuration last seen
    for k, v in acc.quantities.items():
        s.quantities[k] = max(s.quantities.get(k, v), v) \
            if k[0] == "mem_rss_max_bytes" else s.quantities.get(k, 0) + v
    for wal, (lo, hi) in acc.seqs.items():
        cur = s.seqs.setdefault(wal, [lo, hi])
        cur[0], cur[1] = min(cur[0], lo), max(cur[1], hi)
    s.samples += acc.samples
    s.interpolated_ns += acc.interpolated_ns
    s.clock_step_ns += acc.clock_step_ns
    return s


def _write_slices(q: Any, slices: list[StoredSlice]) -> None:
    _upsert(q, "ledger_slices", _SLICE_COLUMNS.split(", "),
            _SLICE_COLUMNS.split(", ")[:4], [
                (s.host, s.uuid, s.gen, s.start_ns, s.end_ns, s.vcpus,
                 s.mem, json.dumps(sorted(s.seqs.items())), s.samples,
                 s.interpolated_ns, s.clock_step_ns) for s in slices])
    _upsert(q, "ledger_quantities", _QUANTITY_COLUMNS,
            _QUANTITY_COLUMNS[:6], [
                (s.host, s.uuid, s.gen, s.start_ns, meter, dev, str(v))
                for s in slices
                for (meter, dev), v in sorted(s.quantities.items())])


def _slices(q: Any, where: str, args: tuple[Any, ...]) -> list[StoredSlice]:
    """Stored slices matching ``where`` (over the slice columns), with
    their quantities, sorted by host, uuid, gen, start."""
    out: dict[tuple[str, str, str, int], StoredSlice] = {}
    for h, u, g, a, b, vcpus, mem, seqs, samples, interp, step in q(
            f"SELECT {_SLICE_COLUMNS} FROM ledger_slices WHERE {where} "
            "ORDER BY host, uuid, gen, start_ns", args).fetchall():
        out[(h, u, g, a)] = StoredSlice(h, u, g, a, b, vcpus, mem, {},
                                        dict(json.loads(seqs)), samples,
                                        interp, step)
    for h, u, g, a, meter, dev, v in q(
            "SELECT host, uuid, gen, start_ns, meter, device, quantity FROM "
            f"ledger_quantities WHERE {where}", args).fetchall():
        s = out.get((h, u, g, a))
        if s is not None:
            s.quantities[(meter, dev)] = int(v)
    return list(out.values())


def slices(store: Any, start_ns: int, end_ns: int, vm: str | None = None,
           host: str | None = None) -> list[StoredSlice]:
    """The stored slices starting in ``[start_ns, end_ns)``."""
    where = "start_ns >= ? AND start_ns < ?"
    args: list[Any] = [start_ns, end_ns]
    if vm is not None:
        where, args = where + " AND uuid = ?", [*args, vm]
    if host is not None:
        where, args = where + " AND host = ?", [*args, host]
    with store.transaction() as q:
        return _slices(q, where, tuple(args))


def gens(store: Any, start_ns: int | None = None,
         end_ns: int | None = None) -> list[tuple[str, GenState]]:
    """(host, gen state) of the gens running at some time in the range,
    by start."""
    where, args = "1 = 1", list[Any]()
    if end_ns is not None:
        where, args = where + " AND start_ns < ?", [*args, end_ns]
    if start_ns is not None:
        where, args = where + " AND end_ns >= ?", [*args, start_ns]
    with store.transaction() as q:
        rows = q(f"SELECT host, state FROM ledger_gens WHERE {where} ORDER "
                 "BY start_ns, host, uuid, gen", tuple(args)).fetchall()
    return [(h, GenState.from_json(json.loads(s))) for h, s in rows]


def info_of(g: GenState) -> GenInfo:
    return GenInfo(g.name, g.end_ns, g.ended, g.lost and not g.ended,
                   g.gap_ns)


def totals(store: Any, meters: tuple[str, ...]) \
        -> dict[tuple[str, str, str], dict[str, int]]:
    """(host, uuid, gen) -> meter -> the gen's total over all slices and
    devices (a maximum for ``mem_rss_max_bytes``)."""
    marks = ", ".join("?" * len(meters))
    with store.transaction() as q:
        rows = q("SELECT host, uuid, gen, meter, quantity FROM "
                 f"ledger_quantities WHERE meter IN ({marks})",
                 meters).fetchall()
    out: dict[tuple[str, str, str], dict[str, int]] = {}
    for h, u, g, meter, v in rows:
        t = out.setdefault((h, u, g), {})
        t[meter] = max(t.get(meter, 0), int(v)) \
            if meter == "mem_rss_max_bytes" else t.get(meter, 0) + int(v)
    return out


# --- rebuild ------------------------------------------------------------

def rebuild(store: Any, start_ns: int, end_ns: int, reason: str) \
        -> tuple[list[str], int]:
    """Re-derive every host with evidence in ``[start_ns, end_ns)`` from
    its stored frames; returns (hosts, slices in the range that changed)."""
    with _writing(store) as q:
        hosts = [r[0] for r in q(
            "SELECT DISTINCT host FROM records WHERE t >= ? AND t < ? "
            "ORDER BY host", (start_ns, end_ns)).fetchall()]
        changed = 0
        for host in hosts:
            where = "host = ? AND start_ns >= ? AND start_ns < ?"
            before = _fingerprint(_slices(q, where, (host, start_ns,
                                                     end_ns)))
            _rebuild_host(q, host)
            after = _fingerprint(_slices(q, where, (host, start_ns, end_ns)))
            changed += len(set(before.items()) ^ set(after.items()))
        q("INSERT INTO ledger_rebuilds VALUES (?, ?, ?, ?, ?)",
          (time.time(), start_ns, end_ns, reason, changed))
    get_logger().info("ledger_rebuilt", hosts=hosts, changed=changed,
                      reason=reason)
    return hosts, changed


def _fingerprint(rows: list[StoredSlice]) -> dict[Any, Any]:
    return {(s.host, s.uuid, s.gen, s.start_ns):
            (s.end_ns, s.vcpus, s.mem, tuple(sorted(s.quantities.items())),
             s.samples, s.interpolated_ns, s.clock_step_ns) for s in rows}


def _rebuild_host(q: Any, host: str) -> None:
    """Fold the host's frames, decoded again, WAL by WAL in the order they
    arrived, into an empty ledger.  The host's ``ledger_hosts`` row is
    locked first and then replaced (never deleted), so a collector folding
    the host meanwhile waits and continues from the rebuilt state."""
    _host_state(q, host)  # the lock (PostgreSQL; SQLite: the write lock)
    for table in ("ledger_pos", "ledger_gens", "ledger_slices",
                  "ledger_quantities", "ledger_rollup",
                  "ledger_rollup_pending"):
        q(f"DELETE FROM {table} WHERE host = ?", (host,))
    index = OwnerIndex(_owner_rows(q))
    fold = Fold(HostState(), lambda *_: None, index.cuts)
    for wal in _wals(q, host):
        frames = q("SELECT records FROM frames WHERE host = ? AND wal = ? "
                   "ORDER BY first_seq", (host, wal)).fetchall()
        last = 0
        for (blob,) in frames:
            recs = [r for r in msgpack.Unpacker(
                io.BytesIO(bytes(blob)), raw=False) if isinstance(r, dict)]
            fold.feed(wal.hex(), recs)
            last = max([last, *(r.get("seq", 0) for r in recs)])
        q("INSERT INTO ledger_pos VALUES (?, ?, ?)", (host, wal, last))
    if q("SELECT retired_at FROM hosts WHERE name = ?",
         (host,)).fetchone() not in (None, (None,)):
        fold.retire()
    _save(q, host, fold)


def _wals(q: Any, host: str) -> list[bytes]:
    """The host's WALs in the order they arrived."""
    return [bytes(r[0]) for r in q(
        "SELECT wal FROM frames WHERE host = ? GROUP BY wal ORDER BY "
        "min(received), wal", (host,)).fetchall()]


def follow(store: Any, host: str, wal: bytes,
           limit: int | None = None) -> int:
    """``update`` after evidence was stored (collector/ingest.py, the
    ledger worker collector/folder.py); how many records it folded.  The
    evidence is stored either way: a failure is logged (-1) and the next
    fold takes what this one could not (``ledger_pos``)."""
    try:
        return update(store, host, wal, limit)
    except Exception as err:  # noqa: BLE001 - the evidence is safe
        get_logger().warning("ledger_update_failed", host=host,
                             error=f"{type(err).__name__}: {err}")
        return -1


# --- owners -------------------------------------------------------------

def open_from_ns(store: Any) -> int:
    """Where the open periods begin (Unix ns): owner imports take effect
    from here on, so closed records are never re-attributed.  The end of
    the last closed period (ledger/close.py), 0 while none is closed."""
    with store.transaction() as q:
        row = q("SELECT max(end_ns) FROM ledger_periods").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def _owner_rows(q: Any) -> list[OwnerRow]:
    return [OwnerRow(*r) for r in q(OWNERS_SELECT_SQL).fetchall()]


def owners(store: Any) -> OwnerIndex:
    """The stored owners, for reports."""
    with store.transaction() as q:
        return OwnerIndex(_owner_rows(q))


class Imported(NamedTuple):
    """What an owners import did."""

    rows: int  # rows stored
    rederived: int  # VMs with evidence whose slices were cut anew
    hosts: list[str]  # where they ran


def import_owners(store: Any, rows: list[OwnerRow]) -> Imported:
    """Store an owners import, clamped to the open periods.  A VM whose
    owner-change instants moved needs its slices cut anew: they are
    re-derived from the frames of the hosts that ran it (``_rederive``) in
    the same transaction.  A new account or project at an instant already
    stored needs nothing more: reports look the owner of each slice up."""
    rows = clamp_to_open(rows, open_from_ns(store))
    uuids = sorted({r.vm_uuid for r in rows})
    with _writing(store) as q:
        # every host's row locked (PostgreSQL; SQLite: the write lock), in
        # rebuild's order: a fold in flight commits first, so its gens are
        # seen (``ran``) and its slices and roll-up rows recomputed; later
        # folds wait, then find the owners changed and fold again
        q("SELECT host FROM ledger_hosts ORDER BY host {lock}").fetchall()
        before = _owner_cuts(q, set(uuids))
        old = {u: list(before(u)) for u in uuids}
        for row in rows:
            q(OWNERS_UPSERT_SQL, row.params())
        after = _owner_cuts(q, set(uuids))
        moved = [u for u in uuids if after(u) != old[u]]
        ran: dict[str, set[str]] = {}
        for i in range(0, len(moved), _CHUNK):
            part = moved[i:i + _CHUNK]
            for host, uuid in q(
                    "SELECT DISTINCT host, uuid FROM ledger_gens WHERE "
                    f"lower(uuid) IN ({_marks(part)})",
                    tuple(part)).fetchall():
                ran.setdefault(host, set()).add(uuid)
        for host, vms in sorted(ran.items()):
            _rederive(q, host, vms)
        # the others' cuts stand: only the accounts of their slices change
        since = min((r.from_ns for r in rows), default=0)
        _recompute_vms(q, [u for u in uuids if u not in moved], since)
    cut = len({u.lower() for vms in ran.values() for u in vms})
    get_logger().info("owners_imported", rows=len(rows), vms=len(uuids),
                      rederived=cut, hosts=sorted(ran))
    return Imported(len(rows), cut, sorted(ran))


def _rederive(q: Any, host: str, uuids: set[str]) -> None:
    """Fold again the stored records of ``uuids`` on ``host`` (up to
    ``ledger_pos``: the rest is the next update's) with the host-wide
    ones (outages, inventories, clock steps), and replace those VMs'
    slices.  Other VMs' records are skipped: a VM's usage depends on them
    only through the host's first evidence, taken from the host's state
    (locked first, as ``_rebuild_host`` does)."""
    state = _host_state(q, host)
    pos = {bytes(w): seq for w, seq in q(
        "SELECT wal, seq FROM ledger_pos WHERE host = ?",
        (host,)).fetchall()}
    fold = Fold(HostState(first_t=state.first_t), lambda *_: None,
                OwnerIndex(_owner_rows(q)).cuts)
    for wal in _wals(q, host):
        limit = pos.get(wal, 0)
        for (blob,) in q("SELECT records FROM frames WHERE host = ? AND "
                         "wal = ? AND first_seq <= ? ORDER BY first_seq",
                         (host, wal, limit)).fetchall():
            recs = (_only(r, uuids) for r in msgpack.Unpacker(
                io.BytesIO(bytes(blob)), raw=False))
            fold.feed(wal.hex(), [r for r in recs if r is not None
                                  and _int_seq(r) <= limit])
    marks = _marks(sorted(uuids))
    starts = {r[0] for r in q(
        f"SELECT DISTINCT start_ns FROM ledger_slices WHERE host = ? AND "
        f"uuid IN ({marks})", (host, *sorted(uuids))).fetchall()}
    for table in ("ledger_slices", "ledger_quantities"):
        q(f"DELETE FROM {table} WHERE host = ? AND uuid IN ({marks})",
          (host, *sorted(uuids)))
    _upsert(q, "ledger_gens", _GEN_COLUMNS, _GEN_COLUMNS[:3], [
        (host, g.uuid, g.gen, g.start_ns, g.end_ns, json.dumps(g.to_json()))
        for g in fold.gens.values()])
    _write_slices(q, [
        _merged(StoredSlice(host, u, g, a, acc.end_ns, acc.vcpus, acc.mem),
                acc) for (u, g, a), acc in sorted(fold.slices.items())])
    _recompute(q, host, starts | {a for _, _, a in fold.slices})


def _only(rec: Any, uuids: set[str]) -> dict[str, Any] | None:
    """``rec`` if it is host-wide or of one of ``uuids`` (a ``coalesced``
    record keeps only their samples); None otherwise."""
    if not isinstance(rec, dict):
        return None
    vm = rec.get("vm")
    if isinstance(vm, dict):
        return rec if str(vm.get("uuid")) in uuids else None
    inner = rec.get("samples")
    if rec.get("kind") == "coalesced" and isinstance(inner, list):
        return {**rec, "samples": [s for s in inner if isinstance(s, dict)
                                   and _only(s, uuids) is not None]}
    return rec


def _int_seq(rec: dict[str, Any]) -> int:
    seq = rec.get("seq")
    return seq if isinstance(seq, int) else 0


# --- the roll-up (ledger/rollup.py) -------------------------------------

_JOINED = ("SELECT s.host, s.uuid, s.start_ns, x.meter, x.quantity FROM "
           "ledger_slices s JOIN ledger_quantities x ON x.host = s.host AND "
           "x.uuid = s.uuid AND x.gen = s.gen AND x.start_ns = s.start_ns")
_WINDOW_NS = 86400 * 10**9  # how much of the fleet a pending fill reads


def _owner_index(q: Any, uuids: set[str]) -> OwnerIndex:
    """The owner rows of ``uuids`` only."""
    wanted = sorted({u.lower() for u in uuids})
    found: list[OwnerRow] = []
    for i in range(0, len(wanted), _CHUNK):
        part = wanted[i:i + _CHUNK]
        found += [OwnerRow(*r) for r in q(
            "SELECT vm_uuid, from_ns, account, project FROM owners WHERE "
            f"vm_uuid IN ({_marks(part)})", tuple(part)).fetchall()]
    return OwnerIndex(found)


def _roll_up(q: Any, host: str, starts: Sequence[int],
             slices: list[StoredSlice]) -> None:
    """The roll-up rows of ``host`` at ``starts`` from ``slices``: all of
    the host's slices there."""
    acc = rollup.Accumulator(_owner_index(q, {s.uuid for s in slices}))
    for s in slices:
        for (meter, _), v in s.quantities.items():
            acc.add(host, s.uuid, s.start_ns, meter, v)
    _replace_rollup(q, host, starts, acc)


def _replace_rollup(q: Any, host: str, starts: Sequence[int],
                    acc: rollup.Accumulator) -> None:
    for i in range(0, len(starts), _CHUNK):
        part = starts[i:i + _CHUNK]
        q(f"DELETE FROM ledger_rollup WHERE host = ? AND start_ns IN "
          f"({_marks(part)})", (host, *part))
    _upsert(q, "ledger_rollup", rollup.COLUMNS, rollup.KEY, acc.rows())


def _recompute(q: Any, host: str, starts: set[int]) -> None:
    """The roll-up rows of ``host`` at ``starts`` from the stored slices."""
    ordered = sorted(starts)
    for i in range(0, len(ordered), _CHUNK):
        part = ordered[i:i + _CHUNK]
        rows = q(f"{_JOINED} WHERE s.host = ? AND s.start_ns IN "
                 f"({_marks(part)})", (host, *part)).fetchall()
        acc = rollup.Accumulator(_owner_index(q, {r[1] for r in rows}))
        acc.add_all(rows)
        _replace_rollup(q, host, part, acc)


def _recompute_vms(q: Any, uuids: list[str], since: int) -> None:
    """The roll-up rows wherever ``uuids`` have slices from ``since``."""
    at: dict[str, set[int]] = {}
    for i in range(0, len(uuids), _CHUNK):
        part = uuids[i:i + _CHUNK]
        for host, start in q(
                "SELECT DISTINCT host, start_ns FROM ledger_slices WHERE "
                f"lower(uuid) IN ({_marks(part)}) AND start_ns >= ?",
                (*part, since)).fetchall():
            at.setdefault(host, set()).add(start)
    for host, starts in sorted(at.items()):
        _recompute(q, host, starts)


def roll_up_pending(store: Any) -> list[str]:
    """Compute the roll-up of the hosts whose slices were stored before it
    existed (``ledger_rollup_pending``), a day of base slices at a time, in
    one transaction with their ``ledger_hosts`` rows locked; returns the
    hosts.  A no-op once done: reports call it before reading."""
    with store.transaction() as q:
        if q("SELECT 1 FROM ledger_rollup_pending LIMIT 1").fetchone() \
                is None:
            return []
    with _writing(store) as q:
        hosts = [r[0] for r in q("SELECT host FROM ledger_rollup_pending "
                                 "ORDER BY host").fetchall()]
        for host in hosts:
            _host_state(q, host)  # the lock, as _rebuild_host takes it
            q("DELETE FROM ledger_rollup WHERE host = ?", (host,))
        lo, hi = q("SELECT min(start_ns), max(start_ns) FROM ledger_slices "
                   "WHERE host IN (SELECT host FROM ledger_rollup_pending)"
                   ).fetchone()
        index = OwnerIndex(_owner_rows(q))
        for a in range(lo or 0, (hi or -1) + 1, _WINDOW_NS):
            acc = rollup.Accumulator(index)
            acc.add_all(q(f"{_JOINED} WHERE s.start_ns >= ? AND s.start_ns "
                          "< ? AND s.host IN (SELECT host FROM "
                          "ledger_rollup_pending)", (a, a + _WINDOW_NS)))
            _upsert(q, "ledger_rollup", rollup.COLUMNS, rollup.KEY,
                    acc.rows())
        q("DELETE FROM ledger_rollup_pending")
    get_logger().info("ledger_rollup_filled", hosts=hosts)
    return hosts


def gen_spans(store: Any, start_ns: int, end_ns: int) \
        -> list[tuple[str, str, str, int, int]]:
    """(host, uuid, gen, start, end) of the gens ``gens`` gives for the
    range, without their states."""
    with store.transaction() as q:
        return [tuple(r) for r in q(
            "SELECT host, uuid, gen, start_ns, end_ns FROM ledger_gens WHERE "
            "start_ns < ? AND end_ns >= ? ORDER BY start_ns, host, uuid, gen",
            (end_ns, start_ns)).fetchall()]
