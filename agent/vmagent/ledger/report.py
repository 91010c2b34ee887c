"""``usage`` and ``history`` output: records from the stored slices, sums
per key, and the table, JSON, CSV and XML forms (docs/usage.md).  Reports
read only the ledger's slices, never the raw evidence."""

from __future__ import annotations

import csv
import io
import re
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from vmagent.errors import VmagentError
from vmagent.ledger import book
from vmagent.ledger.facts import GenState
from vmagent.ledger.periods import NS, period_of, zone
from vmagent.ledger.records import (
    Owner,
    StoredSlice,
    canonical,
    merge,
    records_of,
    rfc3339,
)

GROUPS = ("vm", "account", "host")
#: The account of unowned VMs in ``--account`` and ``--group-by account``.
UNOWNED = "-"
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
    runs: dict[str, list[tuple[int, str, str, int]]] = {}
    for h, g in gens:
        runs.setdefault(g.uuid, []).append((g.start_ns, h, g.gen, g.end_ns))
    covered: dict[tuple[str, str, str], list[tuple[int, int]]] = {}
    for uuid, items in runs.items():
        items.sort()
        for i, (a, h, gen, b) in enumerate(items):
            cover = [(max(a, a2), min(b, b2)) for a2, _, _, b2 in items[:i]
                     if a2 < b and b2 > a]
            if cover:
                covered[(h, uuid, gen)] = cover
    for s in parts:
        if (s.host, s.uuid, s.gen) in covered:
            _take_out(s, _union_overlap(covered[(s.host, s.uuid, s.gen)],
                                        s.start_ns, s.end_ns))


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
    if by not in GROUPS:
        raise ReportError(f"unknown --group-by {by!r}; expected one of "
                          f"{', '.join(GROUPS)}")
    sums: dict[tuple[str, str, str], dict[str, Any]] = {}
    for r in records:
        k = r["vm"]["uuid"] if by == "vm" else \
            (r["account"] or UNOWNED) if by == "account" else r["host"]
        row = sums.setdefault((k, r["period"], r["meter"]), {
            by: k, "period": r["period"], "period_start": r["period_start"],
            "period_end": r["period_end"], "meter": r["meter"],
            "unit": r["unit"], "quantity": 0})
        q = int(r["quantity"])
        row["quantity"] = max(row["quantity"], q) \
            if r["meter"] == "mem_rss_max_bytes" else row["quantity"] + q
    out = [dict(row, quantity=str(row["quantity"])) for _, row in
           sorted(sums.items(), key=lambda kv: (kv[1]["period_start"],
                                                kv[0]))]
    return out


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
