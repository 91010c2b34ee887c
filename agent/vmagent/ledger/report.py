"""``usage`` and ``history`` output: records from the stored slices, sums
per key, and the table, JSON, CSV and XML forms (docs/usage.md).  Reports
read only the ledger's slices, never the raw evidence."""

from __future__ import annotations

import csv
import io
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from vmagent.errors import VmagentError
from vmagent.ledger import book, rollup
from vmagent.ledger.facts import GenState
from vmagent.ledger.owners import UNOWNED
from vmagent.ledger.periods import NS, Period, period_of, zone
from vmagent.ledger.records import (
    UNITS,
    Owner,
    StoredSlice,
    canonical,
    merge,
    records_of,
    rfc3339,
)
from vmagent.ledger.records import _kept_rfc3339 as kept_rfc3339
from vmagent.ledger.records import period_of as kept_period_of
from vmagent.ledger.rollup import MAX_METER

GROUPS = ("vm", "account", "host")
HISTORY_METERS = ("cpu_ns", "net_rx_bytes", "net_tx_bytes", "io_rd_bytes",
                  "io_wr_bytes", "mem_rss_max_bytes")


class ReportError(VmagentError):
    """A bad time, zone or option in a report's arguments."""


def parse_time(text: str, tz: str = "UTC") -> int:
    """RFC 3339 (offset or ``Z``), or ``YYYY-MM``, ``YYYY-MM-DD``,
    ``YYYY-MM-DDTHH`` read in ``tz``; Unix ns."""
    z = zone(tz)
    t = text.strip()
    try:
        if re.fullmatch(r"\d{4}-\d{2}", t):
            naive = datetime.strptime(t, "%Y-%m")
        elif re.fullmatch(r"\d{4}-\d{2}-\d{2}", t):
            naive = datetime.strptime(t, "%Y-%m-%d")
        elif re.fullmatch(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}", t):
            naive = datetime.strptime(t[:10] + "T" + t[11:], "%Y-%m-%dT%H")
        else:
            when = datetime.fromisoformat(t.replace("z", "Z"))
            if when.tzinfo is None:
                raise ValueError
            return _ns(when)
    except ValueError:
        raise ReportError(f"bad time {text!r}: expected RFC 3339 with an "
                          "offset or Z, or YYYY-MM[-DD[THH]]") from None
    return _ns(naive.replace(tzinfo=z, fold=0))


def _ns(when: datetime) -> int:
    delta = when - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return delta // timedelta(microseconds=1) * 1000


def usage(store: Any, start_ns: int, end_ns: int, grain: str = "month",
          tz: str = "UTC", vm: str | None = None,
          host: str | None = None,
          account: str | None = None) -> list[dict[str, Any]]:
    """The records whose slice starts in ``[start_ns, end_ns)`` (of
    ``account`` only if given; ``UNOWNED`` for VMs without an owner)."""
    if end_ns <= start_ns:
        raise ReportError("the end must be after the start")
    lo = period_of(start_ns, grain, tz).start_ns
    hi = period_of(end_ns - 1, grain, tz).end_ns
    gens = book.gens(store, lo, hi)
    infos = {(h, g.uuid, g.gen): book.info_of(g) for h, g in gens}
    parts = book.slices(store, lo, hi, vm, host)
    union_time(parts, gens)
    index = book.owners(store)
    seen: dict[tuple[str, int], Owner] = {}  # merge asks twice a slice

    def owner_of(s: StoredSlice) -> Owner:
        key = (s.uuid, s.start_ns)
        found = seen.get(key)
        if found is None:
            row = index.at(s.uuid, s.start_ns)
            found = seen[key] = (row.account, row.project) if row \
                else (None, None)
        return found

    out: list[dict[str, Any]] = []
    for key, run in merge(parts, grain, tz, owner_of):
        first = run[0]
        info = infos.get((first.host, first.uuid, first.gen))
        if start_ns <= first.start_ns < end_ns:
            out.extend(records_of(key, run, grain, tz, info,
                                  owner_of(first)))
    out = of_account(out, account)
    out.sort(key=lambda r: (r["start"], r["host"], r["vm"]["uuid"],
                            r["gen"], r["meter"], r.get("nic", ""),
                            r.get("disk", "")))
    return out


def of_account(records: list[dict[str, Any]],
               account: str | None) -> list[dict[str, Any]]:
    """The records of ``account`` (``UNOWNED``: of no account); all of
    them for None."""
    if account is None:
        return records
    return [r for r in records if (r["account"] or UNOWNED) == account]


def union_time(parts: list[StoredSlice],
               gens: list[tuple[str, GenState]]) -> None:
    """Overlapping gens of one VM (a live migration) are billed once for
    time-based meters: where an earlier gen (by start, then host and gen)
    already runs, a later one's running time, vCPU-ns and byte-ns are
    taken out and reported as ``overlap_ns``.  Counters add up."""
    covered = overlaps((h, g.uuid, g.gen, g.start_ns, g.end_ns)
                       for h, g in gens)
    for s in parts:
        if (s.host, s.uuid, s.gen) in covered:
            _take_out(s, _union_overlap(covered[(s.host, s.uuid, s.gen)],
                                        s.start_ns, s.end_ns))


def overlaps(spans: Iterable[tuple[str, str, str, int, int]]) \
        -> dict[tuple[str, str, str], list[tuple[int, int]]]:
    """(host, uuid, gen) -> the spans of earlier gens of the VM that it
    overlaps, from (host, uuid, gen, start, end) of gens."""
    runs: dict[str, list[tuple[int, str, str, int]]] = {}
    for h, uuid, gen, a, b in spans:
        runs.setdefault(uuid, []).append((a, h, gen, b))
    covered: dict[tuple[str, str, str], list[tuple[int, int]]] = {}
    for uuid, items in runs.items():
        items.sort()
        for i, (a, h, gen, b) in enumerate(items):
            cover = [(max(a, a2), min(b, b2)) for a2, _, _, b2 in items[:i]
                     if a2 < b and b2 > a]
            if cover:
                covered[(h, uuid, gen)] = cover
    return covered


def _union_overlap(cover: list[tuple[int, int]], a: int, b: int) -> int:
    """How much of ``[a, b)`` the union of ``cover`` holds."""
    total, reach = 0, a
    for x, y in sorted(cover):
        x, y = max(x, reach), min(y, b)
        if y > x:
            total += y - x
            reach = y
    return total


def _take_out(s: StoredSlice, ns: int) -> None:
    if ns <= 0:
        return
    s.overlap_ns += ns
    for meter, factor in (("running_ns", 1), ("vcpu_ns", s.vcpus),
                          ("mem_alloc_byte_ns", s.mem)):
        key = (meter, "")
        if key in s.quantities and factor is not None:
            s.quantities[key] -= factor * ns


def group(records: list[dict[str, Any]], by: str) -> list[dict[str, Any]]:
    """Sums per (key, period, meter) over gens and devices; a maximum for
    ``mem_rss_max_bytes``.  Unowned VMs group under account ``UNOWNED``."""
    groups = Groups(by)
    groups.add_records(records)
    return groups.rows()


class Groups:
    """``group``'s sums, fed records or partial sums (the roll-up's): a
    row per (key, period, meter) from 0 (a maximum from 0 for
    ``MAX_METER``), its period bounds and unit from the first feed."""

    def __init__(self, by: str) -> None:
        if by not in GROUPS:
            raise ReportError(f"unknown --group-by {by!r}; expected one of "
                              f"{', '.join(GROUPS)}")
        self.by = by
        self.sums: dict[tuple[str, str, str], dict[str, Any]] = {}

    def add(self, k: str, period: str, period_start: str, period_end: str,
            meter: str, unit: str, q: int) -> None:
        row = self.sums.get((k, period, meter))
        if row is None:
            row = self.sums[(k, period, meter)] = {
                self.by: k, "period": period, "period_start": period_start,
                "period_end": period_end, "meter": meter, "unit": unit,
                "quantity": 0}
        row["quantity"] = max(row["quantity"], q) \
            if meter == MAX_METER else row["quantity"] + q

    def add_records(self, records: Iterable[dict[str, Any]]) -> None:
        by = self.by
        for r in records:
            k = r["vm"]["uuid"] if by == "vm" else \
                (r["account"] or UNOWNED) if by == "account" else r["host"]
            self.add(k, r["period"], r["period_start"], r["period_end"],
                     r["meter"], r["unit"], int(r["quantity"]))

    def rows(self) -> list[dict[str, Any]]:
        return [dict(row, quantity=str(row["quantity"])) for _, row in
                sorted(self.sums.items(),
                       key=lambda kv: (kv[1]["period_start"], kv[0]))]


def add_open(groups: Groups, store: Any, start_ns: int, end_ns: int,
             grain: str, tz: str, vm: str | None = None,
             host: str | None = None, account: str | None = None,
             closed: frozenset[str] = frozenset()) -> None:
    """Feed ``groups`` what ``group(of_account(usage(...)))`` sums over
    ``[start_ns, end_ns)`` (without the ``closed`` periods): the whole
    periods from the roll-up (``rolled_up``); a period cut by a bound of
    the range, a VM's records (``vm``) and ``--group-by vm`` from the
    records themselves."""
    whole = [] if vm is not None or groups.by == "vm" else \
        whole_periods(start_ns, end_ns, grain, tz)
    head = whole[0].start_ns if whole else end_ns
    tail = whole[-1].end_ns if whole else end_ns
    for a, b in ((start_ns, head), (tail, end_ns)):
        if b > a:
            groups.add_records(r for r in of_account(
                usage(store, a, b, grain, tz, vm, host), account)
                if r["period"] not in closed)
    if whole:
        rolled_up(groups, store, whole, host, account, closed)


def whole_periods(start_ns: int, end_ns: int, grain: str,
                  tz: str) -> list[Period]:
    """The consecutive periods that lie wholly in ``[start_ns, end_ns)``
    ([] if they do not follow each other without a gap)."""
    p = kept_period_of(start_ns, grain, tz)
    if p.start_ns != start_ns:
        p = kept_period_of(p.end_ns, grain, tz)
    out: list[Period] = []
    while p.end_ns <= end_ns:
        if out and out[-1].end_ns != p.start_ns:
            return []
        out.append(p)
        p = kept_period_of(p.end_ns, grain, tz)
    return out


def rolled_up(groups: Groups, store: Any, periods: list[Period],
              host: str | None = None, account: str | None = None,
              closed: frozenset[str] = frozenset()) -> None:
    """Whole ``periods`` from the roll-up: its sums per period, less what
    ``union_time`` takes out of overlapping gens' slices (read one by one:
    live migrations are few)."""
    book.roll_up_pending(store)
    p0 = periods[0]
    start_ns, end_ns = p0.start_ns, periods[-1].end_ns
    with store.transaction() as q:
        sums = rollup.sums(q, [(p.start_ns, p.end_ns) for p in periods],
                           groups.by, host, account,
                           getattr(store, "name", "") == "postgresql")
    bounds = [(kept_rfc3339(p.start_ns), kept_rfc3339(p.end_ns))
              for p in periods]
    for (i, k, meter), v in sums.items():
        if periods[i].key not in closed:
            groups.add(k, periods[i].key, *bounds[i], meter,
                       UNITS.get(meter, ""), v)
    covered = overlaps(book.gen_spans(store, start_ns, end_ns))
    owners = book.owners(store) if covered else None
    for (h, uuid, gen), cover in sorted(covered.items()):
        if host is not None and h != host:
            continue
        for s in book.slices(store, start_ns, end_ns, uuid, h):
            p = kept_period_of(s.start_ns, p0.grain, p0.tz)
            row = owners.at(s.uuid, s.start_ns) if owners else None
            owner = (row.account if row else None) or UNOWNED
            if s.gen != gen or p.key in closed or account not in (None,
                                                                  owner):
                continue
            k = h if groups.by == "host" else owner
            before = dict(s.quantities)
            _take_out(s, _union_overlap(cover, s.start_ns, s.end_ns))
            for (meter, dev), v in sorted(s.quantities.items()):
                if v != before[(meter, dev)]:
                    groups.add(k, p.key, kept_rfc3339(p.start_ns),
                               kept_rfc3339(p.end_ns), meter,
                               UNITS.get(meter, ""),
                               v - before[(meter, dev)])


def history(store: Any, start_ns: int | None = None,
            end_ns: int | None = None,
            vm: str | None = None) -> list[dict[str, Any]]:
    """One row per gen (oneacct-style), by start."""
    totals = book.totals(store, HISTORY_METERS)
    out = []
    for host, g in book.gens(store, start_ns, end_ns):
        if vm is not None and g.uuid != vm:
            continue
        t = totals.get((host, g.uuid, g.gen), {})
        vcpus, mem = g.config_at(g.end_ns)
        reason = g.end_reason if g.ended else ("lost" if g.lost else None)
        out.append({
            "host": host, "vm": {"uuid": g.uuid, "name": g.name},
            "gen": g.gen, "start": rfc3339(g.start_ns),
            "end": rfc3339(g.end_ns) if g.ended or g.lost else None,
            "end_reason": reason, "exit": g.exit,
            "vcpus": vcpus, "memory_bytes": mem,
            "cpu_ns": _str(t.get("cpu_ns")),
            "net_rx_bytes": _str(t.get("net_rx_bytes")),
            "net_tx_bytes": _str(t.get("net_tx_bytes")),
            "io_rd_bytes": _str(t.get("io_rd_bytes")),
            "io_wr_bytes": _str(t.get("io_wr_bytes")),
            "mem_rss_max_bytes": _str(t.get("mem_rss_max_bytes"))})
    return out


def _str(v: int | None) -> str | None:
    return None if v is None else str(v)


# --- forms ----------------------------------------------------------------

def as_json(rows: list[dict[str, Any]]) -> str:
    return canonical(rows)


CSV_COLUMNS = ("id", "vm_uuid", "vm_name", "gen", "host", "account",
               "project", "meter", "unit", "quantity", "nic", "disk",
               "start", "end", "period", "period_start", "period_end",
               "status", "supersedes", "seq_ranges", "samples", "gap_ns",
               "interpolated_ns", "lost")


def flat(r: dict[str, Any]) -> dict[str, Any]:
    """A record or a row as one level of columns."""
    out: dict[str, Any] = {}
    for k, v in r.items():
        if isinstance(v, dict):
            for k2, v2 in v.items():
                out[k2 if k == "provenance" else f"{k}_{k2}"] = v2
        else:
            out[k] = v
    return out


def as_csv(rows: list[dict[str, Any]]) -> str:
    flats = [flat(r) for r in rows]
    columns = list(CSV_COLUMNS) if rows and "id" in rows[0] else \
        list(dict.fromkeys(k for f in flats for k in f))
    buf = io.StringIO()
    w = csv.DictWriter(buf, columns, extrasaction="ignore",
                       lineterminator="\n")
    w.writeheader()
    for f in flats:
        w.writerow({k: _cell(f.get(k)) for k in columns})
    return buf.getvalue()


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return ";".join(":".join(str(x) for x in item)
                        if isinstance(item, list) else str(item)
                        for item in v)
    return str(v)


def as_xml(rows: list[dict[str, Any]], root: str = "usage",
           item: str = "record") -> str:
    top = ET.Element(root)
    for r in rows:
        el = ET.SubElement(top, item)
        for k, v in flat(r).items():
            ET.SubElement(el, k).text = _cell(v)
    ET.indent(top)
    return ET.tostring(top, encoding="unicode") + "\n"


def as_table(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    """Aligned columns; quantities in human units."""
    flats = [flat(r) for r in rows]
    cells = [[human(f) if c == "quantity" else _cell(f.get(c))
              for c in columns] for f in flats]
    widths = [max([len(c), *(len(row[i]) for row in cells)])
              for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))
             .rstrip()]
    lines += ["  ".join(x.ljust(w) for x, w in zip(row, widths)).rstrip()
              for row in cells]
    return "\n".join(lines) + "\n"


_HUMAN = {"ns": (Decimal(3600 * NS), "h"),
          "vCPU-ns": (Decimal(3600 * NS), "vCPU-h"),
          "byte-ns": (Decimal(3600 * NS) * 2**30, "GiB-h"),
          "bytes": (Decimal(2**20), "MiB")}


def human(f: dict[str, Any]) -> str:
    q = Decimal(str(f.get("quantity") or 0))
    div, unit = _HUMAN.get(str(f.get("unit")), (Decimal(1), str(
        f.get("unit") or "")))
    if f.get("meter") == "cpu_ns":  # CPU time reads best in seconds
        div, unit = Decimal(NS), "s"
    return f"{(q / div).quantize(Decimal('0.001'))} {unit}".strip()
