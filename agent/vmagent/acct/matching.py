"""Which VM gen an accounting record closes (never a guess): Linux records
match on pid and start time; FreeBSD ones, which have no pid, on command
name, start second and uid.  Only a single candidate is a match."""

from __future__ import annotations

from collections.abc import Iterable

from vmagent.acct.records import AcctRecord
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
    """The ``acct`` map of a ``vm_acct`` record (ARCHITECTURE §3)."""
    out: dict[str, object] = {
        "cpu_user_us": record.cpu_user_us,
        "cpu_system_us": record.cpu_system_us,
        "elapsed_us": record.elapsed_us,
        "start_ns": record.start_s * 10**9,
        "match": match_kind(record)}
    if record.exit is not None:
        out["exit"] = dict(record.exit)
    return out
