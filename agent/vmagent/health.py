"""Healthy or degraded: one rule set for ``vmagent status``'s exit code,
``GET /v1/status`` and the metrics."""

from __future__ import annotations

import time
from typing import Any

#: A consumer this far behind (seconds, or intervals if longer) degrades.
LAG_LIMIT_S = 600.0
LAG_LIMIT_INTERVALS = 10
#: A sweep this many intervals late degrades.
OVERDUE_INTERVALS = 3


def assess(doc: dict[str, Any], now_ns: int | None = None) -> dict[str, Any]:
    """``{"state": "healthy" | "degraded", "reasons": [...]}`` of a status
    document (daemon.Agent.status)."""
    now_ns = now_ns or time.time_ns()
    interval = doc["interval_s"]
    reasons = []
    last = doc.get("last_sweep") or {}
    if "t" in last and (now_ns - last["t"]) / 1e9 > OVERDUE_INTERVALS * \
            interval + 5:
        reasons.append(f"last sweep {(now_ns - last['t']) / 1e9:.0f} s ago "
                       f"(interval {interval:g} s)")
    recent = now_ns - 3 * interval * 1e9
    failing = {e.get("vm") for e in doc.get("errors", [])
               if e["event"] == "vm_sample_failed" and e["t"] >= recent}
    if failing:
        reasons.append(f"probes failing for {len(failing)} VM(s)")
    if doc["wal"].get("coalescing"):
        reasons.append(f"WAL coalescing ({doc['wal']['coalesced_sweeps']} "
                       "sweeps kept in memory)")
    pending = (doc.get("state_files") or {}).get("pending") or {}
    if pending:
        reasons.append("state files not written: " + ", ".join(
            f"{name} ({error})" for name, error in pending.items()))
    limit = max(LAG_LIMIT_S, LAG_LIMIT_INTERVALS * interval)
    for name, lag in doc.get("consumers", {}).items():
        if lag["lag_s"] > limit:
            reasons.append(f"consumer {name} is {lag['lag_s']:.0f} s behind")
    return {"state": "degraded" if reasons else "healthy",
            "reasons": reasons}
