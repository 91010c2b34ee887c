"""Evidence -> usage, as a fold over one host's records (docs/usage.md).

``Fold`` reads a host's records in the order they were written (WAL by
WAL, seq by seq) and adds each gen's usage to its base slices as the
evidence comes: running time up to the gen's newest evidence, each
counter's delta since its previous reading split by time.  Every step
only adds to slices, so folding the records in batches (as the collector
stores them) gives exactly what folding them at once gives (``rebuild``).
Its state between batches (``HostState``, ``GenState``) is plain data,
kept by ``ledger/book.py``; this module does no I/O.

Rules: a gen runs from ``max(vm.started_ns, the host's first evidence)``
to its newest evidence, extended (never shortened) by its exit:
``exit.at_ns``, else the accounting record (``started_ns + elapsed``),
else ``exit.after_ns`` with ``before_ns - after_ns`` as ``gap_ns``.  A
reading at ``t`` belongs to the slice holding ``t - 1`` (it closes the
interval before it); at the gen's start, to its first slice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from operator import ge
from typing import Any

from vmagent.ledger.readings import (
    PROCESS_METERS,
    Key,
    Reading,
    Vm,
    counters,
    dict_of,
    dicts_of,
    int_of,
    of_record,
    rss_of,
    vm_of,
)
from vmagent.ledger.split import BASE_NS, pieces, split

__all__ = ["RSS", "Fold", "GenState", "HostState", "Key", "SliceAcc"]

#: A slice: (vm uuid, gen, slice start ns).
SliceId = tuple[str, str, int]

RSS = ("mem_rss_max_bytes", "")


@dataclass
class GenState:
    """What the fold keeps of one gen between batches."""

    uuid: str
    gen: str
    name: str
    started_ns: int
    start_ns: int
    end_ns: int
    fresh: bool  # started at or after the host's first evidence
    configs: list[list[Any]] = field(default_factory=list)  # [t, vcpus, mem]
    last: dict[Key, list[int]] = field(default_factory=dict)  # key: [t, v]
    # per counter, its last reading minus what its slices hold: the
    # baseline, less the readings a restart dropped (close.py reconciles)
    base: dict[Key, int] = field(default_factory=dict)
    last_t: int | None = None  # the newest reading's t
    ended: bool = False
    end_reason: str | None = None
    exit: dict[str, Any] | None = None
    lost: bool = False
    gap_ns: int = 0
    samples: int = 0

    def config_at(self, t: int) -> tuple[int | None, int | None]:
        vcpus = mem = None
        for ct, v, m in self.configs:
            if ct <= t:
                vcpus, mem = v, m
        return vcpus, mem

    def slice_start(self, t: int, extra: Sequence[int] = ()) -> int:
        """The start of the slice holding instant ``t``; ``extra``: more
        cuts (owner changes)."""
        best = t // BASE_NS * BASE_NS  # the latest cut at or before t
        if best < self.start_ns <= t:
            best = self.start_ns
        for c in self.configs[1:] if len(self.configs) > 1 else ():
            if best < c[0] <= t:
                best = c[0]
        for cut in extra:
            if best < cut <= t:
                best = cut
        return best

    def to_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["last"] = [[m, dev, t, v] for (m, dev), (t, v) in
                     sorted(self.last.items())]
        d["base"] = [[m, dev, v] for (m, dev), v in sorted(self.base.items())]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> GenState:
        d = dict(d)
        d["last"] = {(m, dev): [t, v] for m, dev, t, v in d["last"]}
        # a state written before bases were kept: its counters unknown
        d["base"] = {(m, dev): v for m, dev, v in d.get("base", ())}
        return cls(**d)


@dataclass
class HostState:
    """What the fold keeps of one host between batches."""

    first_t: int | None = None  # the host's first evidence
    outages: list[int] = field(default_factory=list)  # agent_start, gap t
    open: list[list[str]] = field(default_factory=list)  # [uuid, gen]
    latest: dict[str, str] = field(default_factory=dict)  # uuid -> gen


@dataclass
class SliceAcc:
    """What a batch adds to one slice."""

    end_ns: int
    vcpus: int | None
    mem: int | None
    quantities: dict[Key, int] = field(default_factory=dict)
    seqs: dict[str, list[int]] = field(default_factory=dict)  # wal: [lo, hi]
    samples: int = 0
    interpolated_ns: int = 0
    clock_step_ns: int = 0


class Fold:
    """Folds records into gen states and slice additions.  ``owner_cuts``
    gives a VM's owner changes (Unix ns): slices are cut there too."""

    #: Samples of a gen in one slice added up at once (``_Run``); False:
    #: each folded by itself (the same result, slower: tests compare them)
    RUNS = True

    def __init__(self, host: HostState,
                 load: Callable[[str, str], GenState | None],
                 owner_cuts: Callable[[str], Sequence[int]] | None = None) \
            -> None:
        self.host = host
        self._load = load
        self._owner_cuts = owner_cuts or (lambda _uuid: ())
        self.gens: dict[tuple[str, str], GenState] = {}
        self.slices: dict[SliceId, SliceAcc] = {}
        self._open = {(u, g) for u, g in host.open}  # host.open, as a set
        self._wal = ""
        self._seq = 0
        self._runs: dict[tuple[str, str], _Run] = {}
        self._outages_to = max(host.outages, default=None)

    def feed(self, wal: str,
             records: Iterable[dict[str, Any] | Reading]) -> None:
        """``records`` of WAL ``wal`` (hex), in seq order: decoded, or a
        sample's ``Reading`` (ledger/readings.py)."""
        self._wal = wal
        host = self.host
        for rec in records:
            if type(rec) is Reading:  # the common case first
                self._seq = rec.seq
                if host.first_t is None:
                    host.first_t = rec.t
                self._sample(rec)
            else:
                self._seq = int_of(rec.get("seq"))  # type: ignore[union-attr]
                self.one(rec)  # type: ignore[arg-type]
        for key in list(self._runs):
            self._get(key)  # every run settled: the state is whole

    def one(self, rec: dict[str, Any]) -> None:
        t, kind = rec.get("t"), rec.get("kind")
        if not isinstance(t, int):
            return
        if self.host.first_t is None:
            self.host.first_t = t
        if kind == "sample":
            self._sample(of_record(rec, t, self._seq))
        elif kind in ("agent_start", "gap"):
            self.host.outages.append(t)
            self._outages_to = max(t, self._outages_to or t)
        elif kind == "coalesced":
            for s in dicts_of(rec.get("samples")):
                if isinstance(s.get("t"), int):
                    self._sample(of_record(s, s["t"], self._seq))
        elif kind == "vm_start":
            self._vm_start(t, rec)
        elif kind == "vm_config":
            self._vm_config(t, rec)
        elif kind == "vm_stop":
            self._vm_stop(t, rec)
        elif kind == "vm_acct":
            self._vm_acct(rec)
        elif kind == "inventory":
            self._inventory(t, rec)
        elif kind == "clock_step":
            self._clock_step(t, rec)

    # --- gens ---------------------------------------------------------

    def _gen(self, vm: Vm | None, t: int,
             config: tuple[int | None, int | None] | None = None) \
            -> GenState | None:
        """The gen ``vm`` names, loaded or new (its configuration:
        ``config``)."""
        if vm is None:
            return None
        key = (vm.uuid, vm.gen)
        g = self._get(key)
        if g is None:
            g = self._new_gen(key, vm, t, config)
        self.gens[key] = g
        if g.lost and not g.ended:
            g.lost = False  # seen again: it was not lost
        if not g.ended and key not in self._open:
            self.host.open.append(list(key))
            self._open.add(key)
        return g

    def _new_gen(self, key: tuple[str, str], vm: Vm, t: int,
                 config: tuple[int | None, int | None] | None) -> GenState:
        first = self.host.first_t if self.host.first_t is not None else t
        started = vm.started_ns if vm.started_ns is not None else t
        start = max(started, first)
        g = GenState(key[0], key[1], vm.name, started, start, start,
                     fresh=started >= first)
        vcpus, mem = config if config is not None else (None, None)
        g.configs.append([start, vcpus, mem])
        prev = self.host.latest.get(key[0])
        if prev is not None and prev != key[1]:
            before = self._get((key[0], prev))
            if before is not None:
                self._carry_taps(before, g)
        self.host.latest[key[0]] = key[1]
        return g

    @staticmethod
    def _carry_taps(before: GenState, g: GenState) -> None:
        """A tap the VM's previous gen reported keeps counting: its final
        reading is this gen's baseline (applied at the first reading)."""
        for (meter, dev), (_, v) in before.last.items():
            if meter.startswith("net_"):
                g.last[(meter, dev)] = [-1, v]  # t -1: a carried baseline

    def _cuts(self, g: GenState) -> list[int]:
        """Where the gen's slices are cut besides the base grain: its
        configuration changes and its VM's owner changes."""
        return [c[0] for c in g.configs[1:]] + list(self._owner_cuts(g.uuid))

    def _advance(self, g: GenState, t: int) -> tuple[int, SliceAcc] | None:
        """Running time up to ``t`` (the gen's newest evidence); the
        holder of a reading at ``t`` (``_holder_at``) if it looked it up."""
        if t <= g.end_ns:
            return None
        start, s = held = self._holder_at(g, t)
        if start <= g.end_ns:  # no cut inside: one piece, in t's slice
            s.vcpus, s.mem = g.config_at(g.end_ns)
            self._running(s, g.end_ns, t)
            g.end_ns = t
            return held
        for a, b in pieces(g.end_ns, t, self._cuts(g)):
            s = self._slice(g, a)
            s.vcpus, s.mem = g.config_at(a)  # a first config comes late
            self._running(s, a, b)
        g.end_ns = t
        return held

    @staticmethod
    def _running(s: SliceAcc, a: int, b: int) -> None:
        """Running time ``[a, b)`` in slice ``s``."""
        s.end_ns = max(s.end_ns, b)
        run = b - a
        _add(s, ("running_ns", ""), run)
        if s.vcpus is not None:
            _add(s, ("vcpu_ns", ""), s.vcpus * run)
        if s.mem is not None:
            _add(s, ("mem_alloc_byte_ns", ""), s.mem * run)

    def _slice(self, g: GenState, t: int) -> SliceAcc:
        start = g.slice_start(t, self._owner_cuts(g.uuid))
        sid = (g.uuid, g.gen, start)
        s = self.slices.get(sid)
        if s is None:
            vcpus, mem = g.config_at(start)
            s = self.slices[sid] = SliceAcc(start, vcpus, mem)
        return s

    def _holder(self, g: GenState, t: int) -> SliceAcc:
        """The slice a reading at ``t`` belongs to."""
        return self._slice(g, t - 1 if t > g.start_ns else g.start_ns)

    def _holder_at(self, g: GenState, t: int) -> tuple[int, SliceAcc]:
        """``_holder`` and its start: no cut lies in ``(start, t)``."""
        at = t - 1 if t > g.start_ns else g.start_ns
        start = g.slice_start(at, self._owner_cuts(g.uuid))
        s = self.slices.get((g.uuid, g.gen, start))
        return start, s if s is not None else self._slice(g, at)

    def _touch(self, s: SliceAcc, seq: int | None = None) -> None:
        seq = self._seq if seq is None else seq
        lo_hi = s.seqs.get(self._wal)
        if lo_hi is None:
            s.seqs[self._wal] = [seq, seq]
        elif seq < lo_hi[0]:
            lo_hi[0] = seq
        elif seq > lo_hi[1]:
            lo_hi[1] = seq

    # --- records ------------------------------------------------------

    def _vm_start(self, t: int, rec: dict[str, Any]) -> None:
        cfg = dict_of(rec.get("config"))
        config = (_opt(cfg.get("vcpus")), _opt(cfg.get("alloc_bytes")))
        g = self._gen(vm_of(rec.get("vm")), t, config)
        if g is None:
            return
        if g.configs and g.configs[0][1:] == [None, None]:
            g.configs[0][1:] = list(config)
        self._advance(g, t)
        self._touch(self._holder(g, t))

    def _vm_config(self, t: int, rec: dict[str, Any]) -> None:
        g = self._gen(vm_of(rec.get("vm")), t)
        if g is None:
            return
        self._advance(g, t)
        changed = dict_of(rec.get("changed"))
        vcpus, mem = g.config_at(g.end_ns)
        new_vcpus = _new(changed.get("vcpus"), vcpus)
        new_mem = _new(changed.get("alloc_bytes"), mem)
        if (new_vcpus, new_mem) != (vcpus, mem):
            at = max(t, g.end_ns)  # never before evidence already used
            g.configs.append([at, new_vcpus, new_mem])
        self._touch(self._holder(g, t))

    def _get(self, key: tuple[str, str]) -> GenState | None:
        """A gen, loaded if need be, its run (if any) settled first."""
        run = self._runs.pop(key, None)
        if run is not None:
            self._settle(run)
        return self.gens.get(key) or self._load(*key)

    def _sample(self, r: Reading) -> None:
        if r.vm is None:
            return
        run = self._runs.get((r.vm.uuid, r.vm.gen))
        if run is not None and run.extend(r, self._seq, self._outages_to):
            return
        g = self._gen(r.vm, r.t, (r.vcpus, r.alloc))
        if g is None or g.ended:
            return
        if g.configs[0][1:] == [None, None]:
            g.configs[0][1:] = [r.vcpus, r.alloc]
        self._reading(g, r.t, r.keys, r.values, r.rss, sample=True)
        if self.RUNS and g.last_t == g.end_ns and \
                g.configs[0][1:] != [None, None]:
            self._runs[(g.uuid, g.gen)] = self._run_from(g, r)

    # --- runs: a gen's samples within one slice, added up at once -------

    def _run_from(self, g: GenState, r: Reading) -> _Run:
        """A run from the reading ``r`` just folded into ``g`` (at
        ``g.last_t``): later samples in the same slice join it."""
        start, holder = self._holder_at(g, g.last_t or g.end_ns)
        cuts = [c for c in (*self._cuts(g), g.start_ns) if c > start]
        limit = min([(start // BASE_NS + 1) * BASE_NS, *cuts])
        return _Run(g, holder, g.end_ns, limit, r.keys, r.values)

    def _settle(self, run: _Run) -> None:
        """What the run's samples add: exactly what folding them one by
        one (``_reading``) adds."""
        if not run.n:
            return
        g, s = run.g, run.holder
        s.vcpus, s.mem = g.config_at(g.end_ns)
        self._running(s, g.end_ns, run.t)
        q = s.quantities
        for key, v0, v in zip(run.keys, run.entry, run.values):
            q[key] = q.get(key, 0) + v - v0
            g.last[key] = [run.t, v]
        if run.rss is not None:
            q[RSS] = max(q.get(RSS, run.rss), run.rss)
        s.samples += run.n
        g.samples += run.n
        self._touch(s, run.seq)  # the entry reading touched it before
        g.end_ns = g.last_t = run.t

    def _reading(self, g: GenState, t: int, keys: Sequence[Key],
                 values: Sequence[int], rss: int | None,
                 sample: bool) -> None:
        """Counters (``keys`` sorted) and RSS read at ``t``."""
        held = self._advance(g, t)
        floor = g.last_t or g.start_ns  # never before the last reading
        if floor > t:
            t, held = floor, None
        if g.last_t is not None and any(
                g.last_t < o < t for o in self.host.outages):
            self._interpolated(g, g.last_t, t)
        start, holder = held or self._holder_at(g, t)
        last, quantities, inside = g.last, holder.quantities, False
        for key, v in zip(keys, values):
            prev = last.get(key)
            if prev is not None and prev[0] != -1 and \
                    start <= prev[0] < t and v >= prev[1]:
                # the common case: the delta lies inside the holder slice
                quantities[key] = quantities.get(key, 0) + v - prev[1]
                prev[0], prev[1] = t, v
                inside = True
            else:
                self._delta(g, key, t, v)
        if inside and holder.end_ns < t:
            holder.end_ns = t
        if rss is not None:
            holder.quantities[RSS] = max(holder.quantities.get(RSS, rss),
                                         rss)
        if sample:
            holder.samples += 1
            g.samples += 1
        self._touch(holder)
        g.last_t = t

    def _delta(self, g: GenState, key: Key, t: int, v: int) -> None:
        prev = g.last.get(key)
        if prev is None or prev[0] == -1:
            if prev is not None:  # a tap carried from the previous gen
                base = prev[1] if v >= prev[1] else 0
            elif g.fresh and (key[0] in PROCESS_METERS or
                              key[0].startswith("net_")):
                base = 0
            else:  # block devices; gens older than the host's evidence
                g.last[key], g.base[key] = [t, v], v
                return
            g.base[key] = base
            prev = [g.start_ns, base]
        t0, v0 = prev
        if v < v0:  # restarted (a tap or disk made anew): counts from 0
            if key in g.base:
                g.base[key] -= v0
            v0 = 0
        g.last[key] = [t, v]
        if t <= t0:
            _add(self._holder(g, t), key, v - v0)
            return
        parts = pieces(t0, t, self._cuts(g))
        for (a, b), share in zip(parts, split(v - v0, t0, t, parts)):
            s = self._slice(g, a)
            s.end_ns = max(s.end_ns, b)
            _add(s, key, share)
            self._touch(s)

    def _interpolated(self, g: GenState, t0: int, t1: int) -> None:
        for a, b in pieces(t0, t1, self._cuts(g)):
            self._slice(g, a).interpolated_ns += b - a

    def _vm_stop(self, t: int, rec: dict[str, Any]) -> None:
        g = self._gen(vm_of(rec.get("vm")), t)
        if g is None or (g.ended and g.end_reason != "acct"):
            return
        ex = dict_of(rec.get("exit"))
        at, after, before = (ex.get(k) for k in ("at_ns", "after_ns",
                                                 "before_ns"))
        end = g.end_ns
        if isinstance(at, int):
            end = max(end, at)
        elif isinstance(after, int):
            end = max(end, after)
            if isinstance(before, int) and before > after:
                g.gap_ns = before - after
        g.end_reason = _reason(ex)
        g.exit = {k: ex[k] for k in ("code", "signal", "reason") if k in ex}
        self._advance(g, end)
        found = sorted(counters(rec).items())
        self._reading(g, end, [k for k, _ in found], [v for _, v in found],
                      rss_of(rec), sample=False)
        g.ended = True
        self._close(g)

    def _vm_acct(self, rec: dict[str, Any]) -> None:
        vm, acct = rec.get("vm"), dict_of(rec.get("acct"))
        if not isinstance(vm, dict):
            return
        key = (str(vm.get("uuid")), str(vm.get("gen")))
        g = self._get(key)
        if g is None:
            return
        self.gens[key] = g
        if isinstance(acct.get("exit"), dict):
            g.exit = {**(g.exit or {}), **acct["exit"]}
        elapsed = acct.get("elapsed_us")
        if g.end_reason in (None, "poll", "lost") and \
                isinstance(elapsed, int):
            end = g.started_ns + elapsed * 1000
            if end > g.end_ns:  # never shorter than the evidence
                self._advance(g, end)
                self._touch(self._holder(g, end))
            g.end_reason = "acct"
            g.gap_ns = 0
            g.ended, g.lost = True, False
            self._close(g)

    def _inventory(self, t: int, rec: dict[str, Any]) -> None:
        listed = set()
        for vm in dicts_of(rec.get("vms")):
            if isinstance(vm, dict):
                listed.add((str(vm.get("uuid")), str(vm.get("gen"))))
        for uuid, gen in list(self.host.open):
            g = self._get((uuid, gen))
            if g is None:
                continue
            self.gens[(uuid, gen)] = g
            if (uuid, gen) in listed:
                g.lost = False
                self._advance(g, t)
            elif t > g.end_ns:
                g.lost = True  # ended at its last evidence, unless seen again

    def retire(self) -> int:
        """The host is retired (``hosts retire``): its gens still open
        ended at their last evidence, lost; how many."""
        n = 0
        for uuid, gen in list(self.host.open):
            g = self._get((uuid, gen))
            if g is not None and not g.ended and not g.lost:
                self.gens[(uuid, gen)] = g
                g.lost = True
                n += 1
        return n

    def _clock_step(self, t: int, rec: dict[str, Any]) -> None:
        """Reported on the slice of each running gen that holds it, never
        corrected."""
        step = rec.get("step_ns")
        if not isinstance(step, int):
            return
        for uuid, gen in self.host.open:
            g = self._get((uuid, gen))
            if g is not None:
                self.gens[(uuid, gen)] = g
                s = self._holder(g, min(t, g.end_ns))
                s.clock_step_ns += step
                self._touch(s)

    def _close(self, g: GenState) -> None:
        if [g.uuid, g.gen] in self.host.open:
            self.host.open.remove([g.uuid, g.gen])
            if [g.uuid, g.gen] not in self.host.open:
                self._open.discard((g.uuid, g.gen))


class _Run:
    """Samples of one gen after a reading at ``t0`` (``entry``: its
    counters), all inside the slice ``holder`` (``t <= limit``), with the
    same counters, none lower than before and no outage among them: they
    add to that slice only, so they are added up when the run settles."""

    __slots__ = ("entry", "g", "holder", "keys", "limit", "n", "rss", "seq",
                 "t", "values")

    def __init__(self, g: GenState, holder: SliceAcc, t0: int, limit: int,
                 keys: tuple[Key, ...], values: tuple[int, ...]) -> None:
        self.g, self.holder, self.t, self.limit = g, holder, t0, limit
        self.keys, self.entry, self.values = keys, values, values
        self.n, self.rss = 0, None  # type: int, int | None
        self.seq = 0

    def extend(self, r: Reading, seq: int, outages_to: int | None) -> bool:
        """``r`` joins the run (True), or it must be folded by itself."""
        if not self.t < r.t <= self.limit or r.keys != self.keys or \
                (outages_to is not None and outages_to > self.t) or \
                not all(map(ge, r.values, self.values)):
            return False
        self.t, self.values, self.seq = r.t, r.values, seq
        self.n += 1
        if r.rss is not None:
            self.rss = r.rss if self.rss is None else max(self.rss, r.rss)
        return True


def _add(s: SliceAcc, key: Key, value: int) -> None:
    s.quantities[key] = s.quantities.get(key, 0) + value


def _opt(value: Any) -> int | None:
    return value if isinstance(value, int) else None


def _new(change: Any, old: int | None) -> int | None:
    if isinstance(change, (list, tuple)) and len(change) == 2 and \
            isinstance(change[1], int):
        return change[1]
    return old


def _reason(ex: dict[str, Any]) -> str:
    if isinstance(ex.get("signal"), int):
        return f"signal {ex['signal']}"
    if isinstance(ex.get("code"), int):
        return f"exit {ex['code']}"
    return str(ex.get("source") or "stop")
