"""What the WAL keeps in memory while it cannot write (cap or full disk).

Counters are cumulative within a VM gen, so the latest ``sample`` of each
gen carries every total exactly: keeping it, and only it, loses resolution,
never usage.  Other records (lifecycle events) are few and all kept; of the
``inventory`` heartbeats only the latest.  Sweeps never written take no seqs.
"""

from __future__ import annotations

from typing import Any

from vmagent import records as record_kinds

Record = dict[str, Any]


class Coalescer:
    def __init__(self) -> None:
        self.sweeps = 0
        self.from_t: int | None = None
        self.to_t: int | None = None
        self.samples: dict[tuple[str, str], Record] = {}
        self.events: list[Record] = []
        self.inventory: Record | None = None

    def __bool__(self) -> bool:
        return self.sweeps > 0

    def add(self, records: list[Record]) -> None:
        """Keep what matters of one sweep that could not be written."""
        self.sweeps += 1
        for rec in records:
            rec = {k: v for k, v in rec.items() if k != "seq"}
            t = rec.get("t")
            if isinstance(t, int):
                self.from_t = t if self.from_t is None else min(self.from_t, t)
                self.to_t = t + 1 if self.to_t is None else max(self.to_t,
                                                                t + 1)
            kind = rec.get("kind")
            if kind == "sample":
                vm = rec.get("vm") or {}
                self.samples[(vm.get("uuid", ""), vm.get("gen", ""))] = rec
            elif kind == "inventory":
                self.inventory = rec
            else:
                self.events.append(rec)

    def records(self, host: str, now_ns: int) -> list[Record]:
        """The records to write in place of the sweeps kept here."""
        out = list(self.events)
        if self.inventory is not None:
            out.append(self.inventory)
        out.append(record_kinds.coalesced(now_ns, host, self.sweeps,
                                          list(self.samples.values()),
                                          self.from_t, self.to_t))
        return out
