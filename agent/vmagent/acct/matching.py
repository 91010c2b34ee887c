"""Which VM gen an accounting record closes (never a guess): Linux records
match on pid and start time; FreeBSD ones, which have no pid, on command
name, start second and uid.  Only a single candidate is a match."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from vmagent.acct.records import HYPERVISORS, AcctRecord
from vmagent.probes.types import VM

#: Linux writes ac_btime at exit as now - elapsed, in whole seconds
#: (kernel/acct.c fill_ac); the gen's start is known to the nanosecond.
START_SLACK_S = 2


def candidates(record: AcctRecord, gens: Iterable[VM]) -> list[VM]:
    if record.pid is not None:  # Linux
        return [g for g in gens if g.pid == record.pid and
                abs(g.start_ns / 1e9 - record.start_s) <= START_SLACK_S]
    return [g for g in gens  # FreeBSD: comm+btime+uid
            if g.comm[:16] == record.command and g.uid == record.uid
            and abs(int(g.start_ns // 10**9) - record.start_s) <= 1]


def match(record: AcctRecord, gens: Iterable[VM]) -> VM | None:
    found = candidates(record, gens)
    return found[0] if len(found) == 1 else None


def match_kind(record: AcctRecord) -> str:
    return "pid+start" if record.pid is not None else "comm+btime+uid"


def acct_fields(record: AcctRecord) -> dict[str, object]:
    """The ``acct`` map of a ``vm_acct`` record (docs/records.md)."""
    out: dict[str, object] = {
        "cpu_user_us": record.cpu_user_us,
        "cpu_system_us": record.cpu_system_us,
        "elapsed_us": record.elapsed_us,
        "start_ns": record.start_s * 10**9,
        "match": match_kind(record)}
    if record.exit is not None:
        out["exit"] = dict(record.exit)
    return out


class AcctMatcher:
    """Closes gens with accounting records (``match``'s rule) and counts
    what matched, what matched no gen and what matched more than one."""

    def __init__(self, log: Any) -> None:
        self.log = log
        self.counts = {"matched": 0, "unmatched": 0, "ambiguous": 0}

    def closes(self, record: AcctRecord, gens: list[VM]) -> VM | None:
        """The one gen ``record`` closes, or None."""
        found = match(record, gens)
        if found is not None:
            self.counts["matched"] += 1
        elif HYPERVISORS.fullmatch(record.command):
            key = "ambiguous" if candidates(record, gens) else "unmatched"
            self.counts[key] += 1
            self.log.warning("acct_" + key, command=record.command,
                             pid=record.pid, start_s=record.start_s)
        return found
