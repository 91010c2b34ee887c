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

from vmagent.ledger.facts import Fold, GenState, HostState, SliceAcc
from vmagent.ledger.owners import (
    OWNERS_SELECT_SQL,
    OWNERS_UPSERT_SQL,
    OwnerIndex,
    OwnerRow,
    clamp_to_open,
)
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
                                    "clock_step_ns")} | {"quantity": "numeric"}


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
           stored: Sequence[dict[str, Any]] | None = None) -> int:
    """Fold what ``host`` stored in ``wal`` since the last update; returns
    how many records were folded.  ``stored``: the decoded records of
    ``wal`` the caller has just stored, in seq order; folded instead of
    reading the store again when they are exactly the stored records past
    the ledger's position (``_as_stored``), else ignored."""
    with _writing(store) as q:
        state = _host_state(q, host)
        row = q("SELECT seq FROM ledger_pos WHERE host = ? AND wal = ?",
                (host, wal)).fetchone()
        pos = row[0] if row else 0
        records = _as_stored(q, host, wal, pos, stored) if stored else None
        if records is None:
            rows = q("SELECT seq, body FROM records WHERE host = ? AND "
                     "wal = ? AND seq > ? ORDER BY seq",
                     (host, wal, pos)).fetchall()
            if not rows:
                return 0
            records = list(_decode_rows(rows))
            last, n = rows[-1][0], len(rows)
        else:
            last, n = records[-1]["seq"], len(records)
        keys = _named(state, records)
        fold = Fold(state, _loader(q, host, keys),
                    _owner_cuts(q, {u for u, _ in keys}))
        fold.feed(wal.hex(), records)
        _save(q, host, fold)
        q("INSERT INTO ledger_pos VALUES (?, ?, ?) ON CONFLICT (host, wal) "
          "DO UPDATE SET seq = excluded.seq", (host, wal, last))
        return n


def _as_stored(q: Any, host: str, wal: bytes, pos: int,
               stored: Sequence[dict[str, Any]]) \
        -> list[dict[str, Any]] | None:
    """``stored`` past ``pos`` if they are all the store holds past it:
    each was stored under its seq (the store keeps one body per seq and
    refuses other bytes), so the same count and the same last seq mean
    the same records; None when they do not line up."""
    mine = [r for r in stored if isinstance(r, dict) and
            isinstance(r.get("seq"), int) and r["seq"] > pos]
    seqs = [r["seq"] for r in mine]
    if not mine or any(a >= b for a, b in zip(seqs, seqs[1:])):
        return None
    count, top = q("SELECT count(*), max(seq) FROM records WHERE host = ? "
                   "AND wal = ? AND seq > ?", (host, wal, pos)).fetchone()
    return mine if (count, top) == (len(mine), seqs[-1]) else None


def retire(store: Any, host: str) -> int:
    """``hosts retire``: the VMs still open on the host are closed at
    their last evidence as ``lost`` (COLLECTOR.md section 3); how many."""
    with _writing(store) as q:
        state = _host_state(q, host)
        fold = Fold(state, _loader(q, host, _named(state, [])))
        n = fold.retire()
        _save(q, host, fold)
    return n


def _decode_rows(rows: list[Any]) -> Iterator[dict[str, Any]]:
    for seq, body in rows:
        rec = msgpack.unpackb(bytes(body), raw=False)
        if isinstance(rec, dict):
            rec["seq"] = seq
            yield rec


def _host_state(q: Any, host: str) -> HostState:
    row = q("SELECT state FROM ledger_hosts WHERE host = ? {lock}",
            (host,)).fetchone()
    return HostState(**json.loads(row[0])) if row else HostState()


def _named(state: HostState,
           records: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """(uuid, gen) of the open gens and of those the records name."""
    keys = {(u, g) for u, g in state.open}
    for rec in records:
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
                          f"host = ? AND uuid IN ({_marks(part)})",
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
            arrays = ", ".join(f"?::{_PG_ARRAYS.get(c, 'text')}[]"
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
                  "ledger_quantities"):
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
           stored: Sequence[dict[str, Any]] | None = None) -> None:
    """``update`` after a batch was stored (collector/ingest.py).  The
    evidence is stored either way: a failure is logged and the next batch
    folds what this one could not (``ledger_pos``)."""
    try:
        update(store, host, wal, stored)
    except Exception as err:  # noqa: BLE001 - the evidence is safe
        get_logger().warning("ledger_update_failed", host=host,
                             error=f"{type(err).__name__}: {err}")


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
    for table in ("ledger_slices", "ledger_quantities"):
        q(f"DELETE FROM {table} WHERE host = ? AND uuid IN ({marks})",
          (host, *sorted(uuids)))
    _upsert(q, "ledger_gens", _GEN_COLUMNS, _GEN_COLUMNS[:3], [
        (host, g.uuid, g.gen, g.start_ns, g.end_ns, json.dumps(g.to_json()))
        for g in fold.gens.values()])
    _write_slices(q, [
        _merged(StoredSlice(host, u, g, a, acc.end_ns, acc.vcpus, acc.mem),
                acc) for (u, g, a), acc in sorted(fold.slices.items())])


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
