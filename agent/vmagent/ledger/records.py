"""Usage records: stored base slices merged into periods, their ids and
their JSON shape (COLLECTOR.md section 5, docs/usage.md).

A record is one meter (and device) of one gen over consecutive base slices
of one period that share the configuration and the owner; its ``id`` is
SHA-256 over a canonical tuple, so the same evidence always gives the same ids.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from json.encoder import encode_basestring
from typing import Any

from vmagent.ledger.exact import format_rfc3339_ns
from vmagent.ledger.facts import RSS, Key
from vmagent.ledger.periods import Period
from vmagent.ledger.periods import period_of as _period_of

#: Bumped when what a record means changes (part of every id).
VERSION = 1

UNITS = {"running_ns": "ns", "vcpu_ns": "vCPU-ns",
         "mem_alloc_byte_ns": "byte-ns", "mem_rss_max_bytes": "bytes",
         "cpu_ns": "ns", "net_rx_bytes": "bytes", "net_tx_bytes": "bytes",
         "net_rx_packets": "packets", "net_tx_packets": "packets",
         "io_rd_bytes": "bytes", "io_wr_bytes": "bytes",
         "disk_rd_bytes": "bytes", "disk_wr_bytes": "bytes",
         "disk_rd_ops": "ops", "disk_wr_ops": "ops"}


@dataclass
class StoredSlice:
    """One base slice of one gen as the book keeps it."""

    host: str
    uuid: str
    gen: str
    start_ns: int
    end_ns: int
    vcpus: int | None
    mem: int | None
    quantities: dict[Key, int] = field(default_factory=dict)
    seqs: dict[str, list[int]] = field(default_factory=dict)
    samples: int = 0
    interpolated_ns: int = 0
    clock_step_ns: int = 0
    overlap_ns: int = 0  # billed by an earlier gen of the VM (migration)


@dataclass(frozen=True)
class GenInfo:
    """What a record needs of its gen."""

    name: str
    end_ns: int
    ended: bool
    lost: bool
    gap_ns: int


#: The owner of a slice as a record shows it: (account, project).
Owner = tuple[str | None, str | None]

#: Reports ask for the period of the same base-slice starts again and again
#: (every VM's slice of a quarter hour): a pure function of its arguments
#: (the zone database is read once per process), so it is kept.
period_of: Callable[[int, str, str], Period] = \
    functools.lru_cache(maxsize=1 << 16)(_period_of)


def merge(slices: list[StoredSlice], grain: str, tz: str,
          owner_of: Callable[[StoredSlice], Owner] | None = None) \
        -> list[tuple[str, list[StoredSlice]]]:
    """Consecutive slices of one gen and period (in ``tz``) with the same
    configuration (and owner, by ``owner_of``), as (period key, slices);
    ``slices`` sorted by host, uuid, gen, start."""
    out: list[tuple[str, list[StoredSlice]]] = []
    for s in slices:
        key = period_of(s.start_ns, grain, tz).key
        if out:
            pkey, run = out[-1]
            last = run[-1]
            if pkey == key and (last.host, last.uuid, last.gen) == \
                    (s.host, s.uuid, s.gen) and last.end_ns == s.start_ns \
                    and (last.vcpus, last.mem) == (s.vcpus, s.mem) and (
                        owner_of is None or owner_of(last) == owner_of(s)):
                run.append(s)
                continue
        out.append((key, [s]))
    return out


def record_id(host: str, uuid: str, gen: str, meter: str, device: str,
              start_ns: int, end_ns: int, grain: str, tz: str) -> str:
    # the bytes of json.dumps([...], separators=(",", ":"),
    # ensure_ascii=False), built without the encoder's per-call set-up
    canon = (f"[{encode_basestring(host)},{encode_basestring(uuid)},"
             f"{encode_basestring(gen)},{encode_basestring(meter)},"
             f"{encode_basestring(device)},{int(start_ns)},{int(end_ns)},"
             f"{encode_basestring(grain)},{encode_basestring(tz)},"
             f"{VERSION}]")
    return hashlib.sha256(canon.encode()).hexdigest()


def records_of(period: str, run: list[StoredSlice], grain: str, tz: str,
               info: GenInfo | None,
               owner: Owner = (None, None)) -> list[dict[str, Any]]:
    """One record per meter and device of a merged run, attributed to
    ``owner`` (account, project)."""
    first, last = run[0], run[-1]
    p = period_of(first.start_ns, grain, tz)
    totals: dict[Key, int] = {}
    for s in run:
        for k, v in s.quantities.items():
            totals[k] = max(totals.get(k, v), v) if k == RSS \
                else totals.get(k, 0) + v
    at_end = info is not None and last.end_ns == info.end_ns and info.ended
    lost = info is not None and info.lost and last.end_ns == info.end_ns
    prov = {"seq_ranges": seq_ranges(first.host, run),
            "samples": sum(s.samples for s in run),
            "gap_ns": info.gap_ns if at_end and info is not None else 0,
            "interpolated_ns": sum(s.interpolated_ns for s in run),
            "lost": lost,
            "clock_step_ns": sum(s.clock_step_ns for s in run),
            "overlap_ns": sum(s.overlap_ns for s in run)}
    times = {"start": _kept_rfc3339(first.start_ns),
             "end": _kept_rfc3339(last.end_ns), "period": period,
             "period_start": _kept_rfc3339(p.start_ns),
             "period_end": _kept_rfc3339(p.end_ns), "status": "provisional",
             "supersedes": None, "provenance": prov}
    name = info.name if info else ""
    out = []
    for (meter, dev), q in sorted(totals.items()):
        rec: dict[str, Any] = {
            "id": record_id(first.host, first.uuid, first.gen, meter, dev,
                            first.start_ns, last.end_ns, grain, tz),
            "vm": {"uuid": first.uuid, "name": name},
            "gen": first.gen, "host": first.host,
            "account": owner[0], "project": owner[1],
            "meter": meter, "unit": UNITS.get(meter, ""),
            "quantity": str(q)}
        if meter.startswith("net_"):
            rec["nic"] = dev
        elif meter.startswith("disk_"):
            rec["disk"] = dev
        rec.update(times)  # the same keys in the same order as before
        out.append(rec)
    return out


def seq_ranges(host: str, run: list[StoredSlice]) -> list[list[Any]]:
    """Per WAL, the span of seqs that hold the run's evidence (other VMs'
    records interleave)."""
    spans: dict[str, list[int]] = {}
    for s in run:
        for wal, (lo, hi) in s.seqs.items():
            cur = spans.setdefault(wal, [lo, hi])
            cur[0], cur[1] = min(cur[0], lo), max(cur[1], hi)
    return [[host, wal, lo, hi] for wal, (lo, hi) in sorted(spans.items())]


#: UTC, with nanoseconds only where they are not zero (one formatter for
#: records, reports and exports: ``exact.format_rfc3339_ns``).
rfc3339 = format_rfc3339_ns
#: The same, kept for records: the same slice and period bounds recur
#: across a report's VMs.
_kept_rfc3339: Callable[[int], str] = \
    functools.lru_cache(maxsize=1 << 16)(format_rfc3339_ns)


def canonical(records: list[dict[str, Any]]) -> str:
    """``usage --json``: byte-identical for the same evidence."""
    return json.dumps({"records": records}, sort_keys=True,
                      separators=(",", ":"), ensure_ascii=False) + "\n"
