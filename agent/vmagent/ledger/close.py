"""Closing periods: closability, reconciliation, the signed certificate,
final records, corrections for late evidence and the view reports read
(COLLECTOR.md section 5, docs/usage.md "Closing a period").

A period (grain, tz, key) is closable when every expected host (evidence
before its end, not retired) has a watermark (its newest record's ``t``)
at or past its end; an untrusted host blocks.  Closing reconciles the
period's slices, freezes its records as ``final`` (``ledger_final``) and
stores the certificate signed by the closing instance's key
(``ledger_periods``).  Closed records never change: what later evidence
changes in a closed period becomes ``correction`` records
(``ledger_corrections``) in the open period of the same calendar.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

from vmagent.errors import VmagentError
from vmagent.keys import HostKey
from vmagent.ledger import book, certificate, report
from vmagent.ledger.exact import parse_rfc3339_ns
from vmagent.ledger.periods import NS, Period, period_of, zone
from vmagent.ledger.records import rfc3339
from vmagent.log import get_logger

#: Migration 7 of the collector's store.
PERIODS_SCHEMA = """
    CREATE TABLE ledger_periods (
        grain TEXT NOT NULL, tz TEXT NOT NULL, period TEXT NOT NULL,
        start_ns {int} NOT NULL, end_ns {int} NOT NULL,
        certificate TEXT NOT NULL, sig {blob} NOT NULL,
        checked {real} NOT NULL, PRIMARY KEY (grain, tz, period));
    CREATE TABLE ledger_final (
        grain TEXT NOT NULL, tz TEXT NOT NULL, period TEXT NOT NULL,
        id TEXT NOT NULL, record TEXT NOT NULL,
        PRIMARY KEY (grain, tz, id));
    CREATE INDEX ledger_final_period ON ledger_final (grain, tz, period);
    CREATE TABLE ledger_corrections (
        grain TEXT NOT NULL, tz TEXT NOT NULL, id TEXT NOT NULL,
        target TEXT NOT NULL, round {int} NOT NULL, kind TEXT NOT NULL,
        closed_period TEXT NOT NULL, period_start_ns {int} NOT NULL,
        record TEXT NOT NULL, created {real} NOT NULL,
        PRIMARY KEY (grain, tz, id));
    CREATE INDEX frames_received ON frames (received)
"""

#: Evidence this long after a closed period's end may still change it
#: (a counter delta whose earlier reading lies inside it).
LATE_MARGIN_NS = 3600 * NS
_PERIOD_COLUMNS = "grain, tz, period, start_ns, end_ns, certificate, sig"


class CloseError(VmagentError):
    """A period that cannot be closed or verified, or a bad period key."""


def parse_period(text: str, tz: str = "UTC") -> Period:
    """``2026-11`` (month), ``2026-11-30`` (day), ``2026-11-30T04``
    (hour; ``2026-11-30T04+01:00`` names a repeated DST hour) in ``tz``."""
    zone(tz)
    t = text.strip()
    grain = {7: "month", 10: "day"}.get(len(t), "hour")
    try:
        start = report.parse_time(t[:13], tz)
    except report.ReportError:
        raise CloseError(f"bad period {text!r}: expected YYYY-MM, "
                         "YYYY-MM-DD or YYYY-MM-DDTHH") from None
    p = period_of(start, grain, tz)
    if len(t) > 13:  # an hour with its offset: the second of two
        later = period_of(p.end_ns, grain, tz)
        p = later if later.key == t else p
    if p.key != t and p.key[:13] != t:
        raise CloseError(f"bad period {text!r}: no such {grain} in {tz} "
                         f"(did you mean {p.key}?)")
    return p


@dataclass
class Reconciliation:
    failures: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)  # cpu above vCPUs x time
    checked: int = 0  # gen counters whose sum was checked
    skipped: int = 0  # counters never read, or folded before bases were kept


# --- closability ----------------------------------------------------------

def _first_t(store: Any, host: str) -> int | None:
    rows = store.read("SELECT state FROM ledger_hosts WHERE host = ?",
                      (host,))
    if rows:
        first = json.loads(rows[0][0]).get("first_t")
        if first is not None:
            return int(first)
    rows = store.read("SELECT min(t) FROM records WHERE host = ?", (host,))
    return None if not rows or rows[0][0] is None else int(rows[0][0])


def blocking(store: Any, p: Period) -> list[str]:
    """The expected hosts whose evidence does not reach past the end.  A
    host not pulled yet blocks: its agent may hold evidence of the period
    (a fresh collector must not close last month before its backlog)."""
    out = []
    for h in store.hosts():
        if h.state == "retired":
            continue
        first = _first_t(store, h.name)
        if first is None:
            out.append(h.name)
            continue
        if first >= p.end_ns:
            continue  # first seen after the period: not expected
        if h.state == "untrusted" or _watermark(store, h.name) < p.end_ns:
            out.append(h.name)
    return out


def _watermark(store: Any, host: str) -> int:
    """The host's newest record ``t`` (gap records do not hold it back),
    as the store keeps it per WAL (collector/held.py): no scan of the
    records, no write lock (a status, a scrape)."""
    rows = store.read("SELECT max(newest_t) FROM wal_summary WHERE host = ?",
                      (host,))
    return 0 if not rows or rows[0][0] is None else int(rows[0][0])


def closed_row(store: Any, p: Period) -> tuple[dict[str, Any], bytes] | None:
    with store.transaction() as q:
        row = q("SELECT certificate, sig FROM ledger_periods WHERE grain = ? "
                "AND tz = ? AND period = ?", (p.grain, p.tz, p.key)).fetchone()
    return None if row is None else (json.loads(row[0]), bytes(row[1]))


def state_of(store: Any, p: Period,
             now_ns: int | None = None) -> dict[str, Any]:
    """``status --json``'s entry: open, closable or closed, and the hosts
    that block it."""
    if closed_row(store, p) is not None:
        return {"period": p.key, "grain": p.grain, "tz": p.tz,
                "state": "closed", "blocking": []}
    held_up = blocking(store, p)
    now_ns = time.time_ns() if now_ns is None else now_ns
    state = "closable" if not held_up and p.end_ns <= now_ns else "open"
    return {"period": p.key, "grain": p.grain, "tz": p.tz, "state": state,
            "blocking": held_up}


# --- reconciliation -------------------------------------------------------

def reconcile(store: Any, p: Period) -> Reconciliation:
    """Per gen with slices in the period and counter: the sum of its
    slices equals its last reading minus its baseline (whichever rule gave
    it, less the readings a restart of the counter dropped: facts.py
    ``GenState.base``); ``running_ns`` never exceeds a slice's length.
    ``cpu_ns`` above vCPUs x running time is flagged."""
    r = Reconciliation()
    parts = book.slices(store, p.start_ns, p.end_ns)
    for s in parts:
        run = s.quantities.get(("running_ns", ""), 0)
        where = f"{s.host} {s.uuid} gen {s.gen} at {rfc3339(s.start_ns)}"
        if not 0 <= run <= s.end_ns - s.start_ns:
            r.failures.append(f"{where}: running_ns {run} exceeds the "
                              f"slice's {s.end_ns - s.start_ns} ns")
        cpu = s.quantities.get(("cpu_ns", ""))
        if cpu is not None and s.vcpus and cpu > s.vcpus * run:
            r.flags.append(f"{where}: cpu_ns {cpu} above {s.vcpus} vCPUs "
                           f"x running_ns {run}")
    gens = {(h, g.uuid, g.gen): g
            for h, g in book.gens(store, p.start_ns, p.end_ns)}
    for key in sorted({(s.host, s.uuid, s.gen) for s in parts}):
        g = gens.get(key)
        if g is None:
            r.failures.append(f"{' '.join(key)}: slices without a gen")
            continue
        _reconcile_gen(store, key, g, r)
    return r


def _reconcile_gen(store: Any, key: tuple[str, str, str], g: Any,
                   r: Reconciliation) -> None:
    with store.transaction() as q:
        rows = q("SELECT meter, device, quantity FROM ledger_quantities "
                 "WHERE host = ? AND uuid = ? AND gen = ?", key).fetchall()
    sums: dict[tuple[str, str], int] = {}
    for meter, dev, v in rows:
        sums[(meter, dev)] = sums.get((meter, dev), 0) + int(v)
    for (meter, dev), (t, last) in sorted(g.last.items()):
        base = g.base.get((meter, dev))
        if t == -1 or base is None:  # never read; or folded before bases
            r.skipped += 1
            continue
        r.checked += 1
        got = sums.get((meter, dev), 0)
        if got != last - base:
            r.failures.append(
                f"{' '.join(key)} {meter}{' ' + dev if dev else ''}: slices "
                f"sum to {got}, last reading minus baseline is "
                f"{last - base}")


# --- closing --------------------------------------------------------------

def catch_up(store: Any) -> None:
    """Fold whatever is stored and not folded yet."""
    for h in store.hosts():
        for w in store.wals(h.name):
            book.update(store, h.name, w["wal"])


def hosts_section(store: Any, p: Period) -> list[dict[str, Any]]:
    """Every host with evidence before the end: retired or not, and per
    WAL the seq ranges held and the missing ranges."""
    out = []
    for h in store.hosts():
        first = _first_t(store, h.name)
        if first is None or first >= p.end_ns:
            continue
        out.append({"name": h.name, "retired": h.state == "retired",
                    "wals": [{"wal": w["wal"].hex(), "held": w["held"],
                              "gaps": w["gaps"]}
                             for w in store.wals(h.name, exact=True)]})
    return out


def close(store: Any, p: Period, key: HostKey, instance: str,
          now_ns: int | None = None) -> tuple[bool, dict[str, Any],
                                              Reconciliation]:
    """Close ``p``: (False, its certificate, nothing) if it was closed
    already; CloseError naming what blocks it otherwise."""
    done = closed_row(store, p)
    if done is not None:
        return False, done[0], Reconciliation()
    now_ns = time.time_ns() if now_ns is None else now_ns
    if p.end_ns > now_ns:
        raise CloseError(f"period {p.key} has not ended yet")
    held_up = blocking(store, p)
    if held_up:
        raise CloseError(f"period {p.key} is not closable: no evidence past "
                         f"its end from {', '.join(held_up)}")
    catch_up(store)
    rec = reconcile(store, p)
    if rec.failures:
        raise CloseError(f"reconciliation failed for {p.key} "
                         f"({len(rec.failures)} failures): {rec.failures[0]}")
    records = [dict(r, status="final") for r in
               report.usage(store, p.start_ns, p.end_ns, p.grain, p.tz)]
    cert = {"period": p.key, "grain": p.grain, "tz": p.tz,
            "start": rfc3339(p.start_ns), "end": rfc3339(p.end_ns),
            "closed_at": rfc3339(now_ns // NS * NS), "instance": instance,
            "key_id": key.key_id.hex(), "hosts": hosts_section(store, p),
            "records": len(records),
            "records_sha256": certificate.records_digest(records)}
    sig = certificate.sign(cert, key)
    if not _store_close(store, p, cert, sig, records):
        return False, cert, rec
    get_logger().info("period_closed", period=p.key, grain=p.grain, tz=p.tz,
                      records=len(records), flags=len(rec.flags),
                      checked=rec.checked)
    return True, cert, rec


def _store_close(store: Any, p: Period, cert: dict[str, Any], sig: bytes,
                 records: list[dict[str, Any]]) -> bool:
    with store.transaction() as q:
        if q(f"INSERT INTO ledger_periods ({_PERIOD_COLUMNS}, checked) "
             "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (grain, tz, period) "
             "DO NOTHING", (p.grain, p.tz, p.key, p.start_ns, p.end_ns,
                            _text(cert), sig, time.time())).rowcount == 0:
            return False  # another instance closed it meanwhile
        for r in records:
            q("INSERT INTO ledger_final VALUES (?, ?, ?, ?, ?)",
              (p.grain, p.tz, p.key, r["id"], _text(r)))
    return True


def _text(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False)


def final_records(store: Any, p: Period) -> list[dict[str, Any]]:
    with store.transaction() as q:
        rows = q("SELECT record FROM ledger_final WHERE grain = ? AND tz = ? "
                 "AND period = ? ORDER BY id", (p.grain, p.tz,
                                                p.key)).fetchall()
    return [json.loads(r[0]) for r in rows]


def verify(store: Any, p: Period) -> dict[str, Any]:
    """The period's certificate, checked: its signature with the instance
    key it names, its records against the final records stored, and the
    seq ranges it names against the evidence stored; CloseError with one
    line saying what differs."""
    row = closed_row(store, p)
    if row is None:
        raise CloseError(f"period {p.key} ({p.grain}, {p.tz}) is not closed")
    cert, sig = row
    keys = {kid: pub for _, pub, kid in store.instance_keys()}
    try:
        certificate.check_signature(cert, sig, keys)
    except certificate.CertificateError as err:
        raise CloseError(f"certificate of {p.key}: {err}") from None
    finals = final_records(store, p)
    derived = {"period": p.key, "grain": p.grain, "tz": p.tz,
               "start": rfc3339(p.start_ns), "end": rfc3339(p.end_ns),
               "records": len(finals),
               "records_sha256": certificate.records_digest(finals),
               "hosts": _held_now(store, cert.get("hosts") or [])}
    diff = certificate.difference(cert, derived)
    if diff is not None:
        raise CloseError(f"certificate of {p.key}: {diff}")
    return cert


def _held_now(store: Any, hosts: list[dict[str, Any]]) -> list[Any]:
    """The certificate's hosts section re-derived from the store, each WAL
    up to the last seq the certificate names (later evidence is not its
    business)."""
    out = []
    for h in hosts:
        now = {w["wal"].hex(): w for w in store.wals(h["name"], exact=True)}
        wals = []
        for w in h.get("wals") or []:
            top = max([0, *(b for _, b in w["held"]),
                       *(g["to_seq"] for g in w["gaps"])])
            cur = now.get(w["wal"], {"held": [], "gaps": []})
            wals.append({"wal": w["wal"],
                         "held": [[a, min(b, top)] for a, b in cur["held"]
                                  if a <= top],
                         "gaps": [g for g in cur["gaps"]
                                  if g["from_seq"] <= top]})
        out.append({"name": h["name"], "retired": h.get("retired"),
                    "wals": wals})
    return out


# --- corrections ----------------------------------------------------------

def landing(store: Any, grain: str, tz: str, now_ns: int) -> Period:
    """The open period of the calendar where corrections go now."""
    p = period_of(now_ns, grain, tz)
    while closed_row(store, p) is not None:
        p = period_of(p.end_ns, grain, tz)
    return p


def correct(store: Any, p: Period, now_ns: int | None = None) -> int:
    """Compare the closed period's records as the slices give them now
    with what was billed (final records and earlier corrections); every
    difference becomes a reversal and a replacement in the open period.
    Returns how many correction records were written."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    current = {r["id"]: r for r in report.usage(store, p.start_ns, p.end_ns,
                                                 p.grain, p.tz)}
    land = landing(store, p.grain, p.tz, now_ns)
    billed = {r["id"]: r for r in final_records(store, p)}
    rounds: dict[str, int] = {}
    with store.transaction() as q:
        done = q("SELECT target, round, kind, record FROM "
                 "ledger_corrections WHERE grain = ? AND tz = ? AND "
                 "closed_period = ?", (p.grain, p.tz, p.key)).fetchall()
        # each round: the reversal, then its replacement
        for target, rnd, kind, text in sorted(
                done, key=lambda r: (r[1], r[2] != "reversal")):
            rounds[target] = rnd
            billed[target] = json.loads(text)
            if kind == "reversal":
                del billed[target]
        written = 0
        for target in sorted({*current, *billed}):
            was, now = billed.get(target), current.get(target)
            if _quantity(was) == _quantity(now):
                continue
            rnd = rounds.get(target, 0) + 1
            for kind, rec in (("reversal", was), ("replacement", now)):
                if rec is not None:
                    row = _correction(rec, target, kind, rnd, land, p.key)
                    q("INSERT INTO ledger_corrections VALUES (?, ?, ?, ?, ?, "
                      "?, ?, ?, ?, ?) ON CONFLICT (grain, tz, id) DO NOTHING",
                      (p.grain, p.tz, row["id"], target,
                                         rnd, kind, p.key, land.start_ns,
                                         _text(row), time.time()))
                    written += 1
    if written:
        get_logger().info("period_corrected", period=p.key, grain=p.grain,
                          tz=p.tz, corrections=written, into=land.key)
    return written


def _quantity(rec: dict[str, Any] | None) -> str | None:
    return None if rec is None else str(rec["quantity"])


def _correction(rec: dict[str, Any], target: str, kind: str, rnd: int,
                land: Period, closed: str) -> dict[str, Any]:
    out = dict(rec)
    canon = json.dumps([target, kind, rnd], separators=(",", ":"))
    out["id"] = hashlib.sha256(canon.encode()).hexdigest()
    if kind == "reversal":
        out["quantity"] = str(-int(rec["quantity"]))
    out.update(status="correction", supersedes=target, period=land.key,
               period_start=rfc3339(land.start_ns),
               period_end=rfc3339(land.end_ns))
    out["provenance"] = dict(rec.get("provenance") or {}, corrects=closed)
    return out


def sweep(store: Any, now_ns: int | None = None) -> int:
    """Corrections for every closed period that evidence stored since its
    last check may touch; returns how many were written."""
    with store.transaction() as q:
        since = q("SELECT min(checked) FROM ledger_periods").fetchone()[0]
        if since is None:
            return 0
        stamp = time.time()
        # the oldest record stored since: what it may touch is checked
        oldest = q("SELECT min(r.t) FROM frames f JOIN records r ON "
                   "r.host = f.host AND r.wal = f.wal AND r.seq >= "
                   "f.first_seq AND r.seq <= f.last_seq WHERE f.received "
                   "> ?", (since,)).fetchone()[0]
        rows = q("SELECT grain, tz, period, start_ns, end_ns FROM "
                 "ledger_periods WHERE end_ns + ? > ? ORDER BY start_ns",
                 (LATE_MARGIN_NS, oldest if oldest is not None else
                  2**62)).fetchall()
        # a batch stored but not folded yet is looked at again next time
        q("UPDATE ledger_periods SET checked = ?", (stamp - 30.0,))
    return sum(correct(store, Period(*r), now_ns) for r in rows)


# --- what reports read ----------------------------------------------------

def usage(store: Any, start_ns: int, end_ns: int, grain: str = "month",
          tz: str = "UTC", vm: str | None = None,
          host: str | None = None) -> list[dict[str, Any]]:
    """``report.usage`` with closed periods as they were billed: their
    final records instead of the slices, and the corrections that landed
    in the range's periods."""
    spans = _closed_spans(store, start_ns, end_ns, grain, tz)
    closed = {r[0] for r in spans}
    rows = [r for a, b in _open_runs(start_ns, end_ns, spans)
            for r in report.usage(store, a, b, grain, tz, vm, host)]
    out = [r for r in rows if r["period"] not in closed]
    out += _billed(store, start_ns, end_ns, grain, tz, closed, vm, host)
    out.sort(key=lambda r: (r["period_start"], r["start"], r["host"],
                            r["vm"]["uuid"], r["gen"], r["meter"],
                            r.get("nic", ""), r.get("disk", ""),
                            r["status"], r["id"]))
    return out


def grouped(store: Any, start_ns: int, end_ns: int, by: str,
            grain: str = "month", tz: str = "UTC", vm: str | None = None,
            host: str | None = None,
            account: str | None = None) -> list[dict[str, Any]]:
    """``usage --group-by``: exactly ``report.group`` of ``usage``'s
    records (of ``account`` if given), with the open stretches' whole
    periods summed from the roll-up (``report.add_open``)."""
    groups = report.Groups(by)
    spans = _closed_spans(store, start_ns, end_ns, grain, tz)
    closed = frozenset(r[0] for r in spans)
    for a, b in _open_runs(start_ns, end_ns, spans):
        report.add_open(groups, store, a, b, grain, tz, vm, host, account,
                        closed)
    groups.add_records(report.of_account(_billed(
        store, start_ns, end_ns, grain, tz, closed, vm, host), account))
    return groups.rows()


def _closed_spans(store: Any, start_ns: int, end_ns: int, grain: str,
                  tz: str) -> list[Any]:
    """(key, start, end) of the closed periods the range touches."""
    if end_ns <= start_ns:
        raise report.ReportError("the end must be after the start")
    lo = period_of(start_ns, grain, tz).start_ns
    with store.transaction() as q:
        return q("SELECT period, start_ns, end_ns FROM ledger_periods WHERE "
                 "grain = ? AND tz = ? AND end_ns > ? AND start_ns < ? "
                 "ORDER BY start_ns", (grain, tz, lo, end_ns)).fetchall()


def _billed(store: Any, start_ns: int, end_ns: int, grain: str, tz: str,
            closed: Any, vm: str | None,
            host: str | None) -> list[dict[str, Any]]:
    """The final records of the ``closed`` periods starting in the range
    and the corrections that landed in its periods (of ``vm``, ``host``)."""
    lo = period_of(start_ns, grain, tz).start_ns
    with store.transaction() as q:
        extra = [json.loads(r[0]) for r in q(
            "SELECT record FROM ledger_final WHERE grain = ? AND tz = ? AND "
            f"period IN ({', '.join('?' * len(closed)) or 'NULL'})",
            (grain, tz, *sorted(closed))).fetchall()]
        extra = [r for r in extra
                 if start_ns <= parse_rfc3339_ns(r["start"]) < end_ns]
        extra += [json.loads(r[0]) for r in q(
            "SELECT record FROM ledger_corrections WHERE grain = ? AND "
            "tz = ? AND period_start_ns >= ? AND period_start_ns < ?",
            (grain, tz, lo, end_ns)).fetchall()]
    return [r for r in extra if (vm is None or r["vm"]["uuid"] == vm)
            and (host is None or r["host"] == host)]


def _open_runs(start_ns: int, end_ns: int,
               spans: list[Any]) -> list[tuple[int, int]]:
    """``[start_ns, end_ns)`` without the closed periods (by start): the
    stretches whose records come from the slices."""
    runs, cursor = [], start_ns
    for _, a, b in spans:
        if a > cursor:
            runs.append((cursor, min(a, end_ns)))
        cursor = max(cursor, b)
    if cursor < end_ns:
        runs.append((cursor, end_ns))
    return [(a, b) for a, b in runs if b > a]


# --- the daemon -----------------------------------------------------------

def due(grain: str, tz: str, grace_ns: int, now_ns: int) -> Period:
    """The latest period whose end + grace the wall clock has passed."""
    current = period_of(now_ns - grace_ns, grain, tz)
    return period_of(current.start_ns - 1, grain, tz)


def auto_close(store: Any, grains: tuple[str, ...], tz: str, grace_s: float,
               key: HostKey, instance: str) -> list[str]:
    """What ``vmcollector run`` does each round: close the periods due,
    then turn late evidence into corrections.  Returns the keys closed; a
    period that is not closable yet waits for the next round."""
    now_ns = time.time_ns()
    out = []
    for grain in grains:
        p = due(grain, tz, int(grace_s * NS), now_ns)
        try:
            closed, _, _ = close(store, p, key, instance, now_ns)
        except CloseError as err:
            get_logger().info("period_not_closed", period=p.key,
                              grain=grain, tz=tz, reason=str(err))
            continue
        if closed:
            out.append(p.key)
    sweep(store, now_ns)
    return out


def periods_status(store: Any, grains: tuple[str, ...],
                   tz: str) -> list[dict[str, Any]]:
    """``status --json`` ``periods``: per auto-close grain (month when
    none) the current and the previous period, and every closed one."""
    now_ns = time.time_ns()
    seen: dict[tuple[str, str, str], dict[str, Any]] = {}
    for grain in grains or ("month",):
        current = period_of(now_ns, grain, tz)
        for p in (period_of(current.start_ns - 1, grain, tz), current):
            seen[(p.grain, p.tz, p.key)] = state_of(store, p, now_ns)
    with store.transaction() as q:
        for grain, ptz, key in q("SELECT grain, tz, period FROM "
                                 "ledger_periods ORDER BY start_ns"):
            seen.setdefault((grain, ptz, key), {
                "period": key, "grain": grain, "tz": ptz, "state": "closed",
                "blocking": []})
    return list(seen.values())



def after_rebuild(store: Any, start_ns: int, end_ns: int) -> int:
    """``rebuild`` over a closed range: its differences become
    corrections; returns how many were written."""
    with store.transaction() as q:
        rows = q("SELECT grain, tz, period, start_ns, end_ns FROM "
                 "ledger_periods WHERE end_ns > ? AND start_ns < ? ORDER BY "
                 "start_ns", (start_ns, end_ns)).fetchall()
    return sum(correct(store, Period(*r)) for r in rows)
