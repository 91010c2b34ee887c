"""One gen's usage, slice by slice, from its facts (docs/usage.md).

A gen is one run of a VM's process.  Its facts: when it started (or the
host's first evidence, if later: never back-billed), when it ended (or its
last evidence while it runs), the configurations it had and from when, and
its samples' cumulative counters.  Time-based meters come from the running
interval and the configuration in force; counter meters from the deltas
between consecutive readings, each split across the slices it straddles.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from vmagent.ledger.periods import period_of
from vmagent.ledger.split import overlap, pieces, split

#: A meter and, for per-device meters, the device (NIC or disk); "" if none.
Key = tuple[str, str]


@dataclass(frozen=True)
class Config:
    t: int  # in force from here (the gen's start, or a vm_config's t)
    vcpus: int
    alloc_bytes: int


@dataclass(frozen=True)
class Reading:
    t: int
    counters: dict[Key, int]  # cumulative within the gen
    rss_bytes: int | None = None


@dataclass(frozen=True)
class GenFacts:
    start_ns: int  # max(started_ns, the host's first evidence)
    end_ns: int  # exit (at_ns, acct, after_ns), or the last evidence
    configs: tuple[Config, ...]  # in time order; the first at start_ns
    readings: tuple[Reading, ...]  # in time order
    baseline_zero: bool = True  # counters started with this gen's process


@dataclass
class Slice:
    start_ns: int
    end_ns: int
    config: Config
    quantities: dict[Key, int] = field(default_factory=dict)


def slices(g: GenFacts, cuts: Iterable[int] = ()) -> list[Slice]:
    """The gen's usage per slice: base grain, config changes and ``cuts``
    (host or owner changes) all cut."""
    changes = [c.t for c in g.configs[1:]]
    out = [Slice(a, b, _config_at(g.configs, a))
           for a, b in pieces(g.start_ns, g.end_ns, [*changes, *cuts])]
    for s in out:
        run = s.end_ns - s.start_ns
        s.quantities[("running_ns", "")] = run
        s.quantities[("vcpu_ns", "")] = s.config.vcpus * run
        s.quantities[("mem_alloc_byte_ns", "")] = s.config.alloc_bytes * run
    _add_counters(g, out)
    _add_rss(g, out)
    return out


def _config_at(configs: tuple[Config, ...], t: int) -> Config:
    current = configs[0]
    for c in configs:
        if c.t <= t:
            current = c
    return current


def _add_counters(g: GenFacts, out: list[Slice]) -> None:
    """Each delta between consecutive readings of a counter, split by
    time; from the gen's start at 0 when its counters began with it, else
    from the first reading.  A reading lower than the one before is a
    counter made anew (a tap or disk re-created): it counts from 0."""
    parts = [(s.start_ns, s.end_ns) for s in out]
    keys = sorted({k for r in g.readings for k in r.counters})
    for key in keys:
        points = [(r.t, r.counters[key]) for r in g.readings
                  if key in r.counters]
        if g.baseline_zero:
            points.insert(0, (g.start_ns, 0))
        for (t0, v0), (t1, v1) in zip(points, points[1:]):
            delta = v1 - v0 if v1 >= v0 else v1  # lower: counts anew from 0
            for s, share in zip(out, split(delta, t0, t1, parts)):
                if share or overlap(t0, t1, s.start_ns, s.end_ns):
                    s.quantities[key] = s.quantities.get(key, 0) + share


def _add_rss(g: GenFacts, out: list[Slice]) -> None:
    """The largest RSS read in each slice (a reading at the gen's end
    belongs to its last slice)."""
    for i, s in enumerate(out):
        end = s.end_ns + (1 if i == len(out) - 1 else 0)
        seen = [r.rss_bytes for r in g.readings if r.rss_bytes is not None
                and s.start_ns <= r.t < end]
        if seen:
            s.quantities[("mem_rss_max_bytes", "")] = max(seen)


@dataclass(frozen=True)
class Record:
    """Consecutive slices of one period with the same configuration."""

    period: str
    start_ns: int
    end_ns: int
    config: Config
    quantities: dict[Key, int]


def by_period(parts: list[Slice], grain: str, tz: str = "UTC") -> list[Record]:
    """Merge consecutive slices of one period (in ``tz``) that share their
    configuration: a month record is still cut at a resize.  Quantities
    add, but ``mem_rss_max_bytes`` is a maximum."""
    out: list[Record] = []
    for s in parts:
        key = period_of(s.start_ns, grain, tz).key
        last = out[-1] if out else None
        if last is not None and last.period == key and \
                _shape(last.config) == _shape(s.config) and \
                last.end_ns == s.start_ns:
            merged = dict(last.quantities)
            for k, v in s.quantities.items():
                merged[k] = max(merged.get(k, v), v) \
                    if k[0] == "mem_rss_max_bytes" else merged.get(k, 0) + v
            out[-1] = Record(key, last.start_ns, s.end_ns, last.config,
                             merged)
        else:
            out.append(Record(key, s.start_ns, s.end_ns, s.config,
                              dict(s.quantities)))
    return out


def _shape(c: Config) -> tuple[int, int]:
    """What a configuration is, whenever it took effect."""
    return c.vcpus, c.alloc_bytes
