"""What a store holds of each (host, WAL), kept as records are stored:
the seq ranges held (``wal_held``: one row per run of consecutive seqs)
and the last seq, newest ``t`` and first arrival (``wal_summary``), so
that ``Store.wals`` -- the status document, every /metrics scrape, period
closes -- reads a few rows per WAL instead of every record
(docs/collector.md).  Migration 9 fills both from the records stored
before it, once."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

#: Migration 9 (``{blob}`` etc. as in the store's MIGRATIONS).
HELD_SCHEMA = """
    CREATE TABLE wal_held (
        host TEXT NOT NULL, wal {blob} NOT NULL, from_seq {int} NOT NULL,
        to_seq {int} NOT NULL, PRIMARY KEY (host, wal, from_seq));
    CREATE TABLE wal_summary (
        host TEXT NOT NULL, wal {blob} NOT NULL, last_seq {int} NOT NULL,
        newest_t {int}, first_received {real}, PRIMARY KEY (host, wal));
    INSERT INTO wal_held SELECT host, wal, min(seq), max(seq) FROM (
        SELECT host, wal, seq, seq - row_number() OVER (
            PARTITION BY host, wal ORDER BY seq) AS run
        FROM records) AS runs GROUP BY host, wal, run;
    INSERT INTO wal_summary SELECT r.host, r.wal, max(r.seq), max(r.t), (
        SELECT min(f.received) FROM frames f WHERE f.host = r.host AND
        f.wal = r.wal) FROM records r GROUP BY r.host, r.wal
"""


def runs(seqs: Sequence[int]) -> list[tuple[int, int]]:
    """Sorted distinct seqs as runs of consecutive ones: [(first, last)]."""
    out: list[tuple[int, int]] = []
    for s in sorted(set(seqs)):
        if out and out[-1][1] == s - 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return out


def note_stored(q: Any, host: str, wal: bytes, seqs: Sequence[int],
                ts: Sequence[int | None], received: float) -> None:
    """Records with ``seqs`` (none stored before) and ``ts`` were stored
    in ``q``'s transaction: the runs that touch them are merged."""
    if not seqs:
        return
    for a, b in runs(seqs):
        around = q("SELECT from_seq, to_seq FROM wal_held WHERE host = ? AND "
                   "wal = ? AND to_seq >= ? AND from_seq <= ?",
                   (host, wal, a - 1, b + 1)).fetchall()
        for lo, hi in around:
            a, b = min(a, lo), max(b, hi)
            q("DELETE FROM wal_held WHERE host = ? AND wal = ? AND "
              "from_seq = ?", (host, wal, lo))
        q("INSERT INTO wal_held VALUES (?, ?, ?, ?)", (host, wal, a, b))
    known = [t for t in ts if t is not None]
    q("INSERT INTO wal_summary VALUES (?, ?, ?, ?, ?) ON CONFLICT (host, "
      "wal) DO UPDATE SET last_seq = CASE WHEN excluded.last_seq > "
      "wal_summary.last_seq THEN excluded.last_seq ELSE wal_summary.last_seq "
      "END, newest_t = CASE WHEN wal_summary.newest_t IS NULL OR "
      "excluded.newest_t > wal_summary.newest_t THEN excluded.newest_t ELSE "
      "wal_summary.newest_t END",
      (host, wal, max(seqs), max(known) if known else None, received))


def held(read: Callable[[str, Sequence[Any]], list[Any]], host: str) \
        -> list[dict[str, Any]]:
    """Per WAL of ``host``, in the order they first arrived: ``wal``,
    ``held`` ([first, last] runs), ``last_seq``, ``newest_t``; ``read``
    runs a query (the store's reads: no write lock)."""
    out: dict[bytes, dict[str, Any]] = {}
    for wal, last_seq, newest_t, _ in sorted(
            read("SELECT wal, last_seq, newest_t, first_received FROM "
                 "wal_summary WHERE host = ?", (host,)),
            key=lambda r: (r[3] is None, r[3] or 0.0, bytes(r[0]))):
        out[bytes(wal)] = {"wal": bytes(wal), "held": [],
                           "last_seq": last_seq, "newest_t": newest_t}
    for wal, a, b in read("SELECT wal, from_seq, to_seq FROM wal_held "
                          "WHERE host = ? ORDER BY from_seq", (host,)):
        w = out.get(bytes(wal))
        if w is not None:
            w["held"].append([a, b])
    return list(out.values())
