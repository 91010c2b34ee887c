"""``GET /metrics``: the status document as Prometheus text (format 0.0.4)."""

from __future__ import annotations

from typing import Any


def _line(out: list[str], name: str, value: float | int | None,
          labels: dict[str, str] | None = None) -> None:
    if value is None:
        return
    tags = ""
    if labels:
        tags = "{" + ",".join(f'{k}="{escape(v)}"'
                              for k, v in labels.items()) + "}"
    out.append(f"{name}{tags} {float(value):g}" if isinstance(value, float)
               else f"{name}{tags} {value}")


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _help(out: list[str], name: str, kind: str, text: str) -> None:
    out += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]


def render(doc: dict[str, Any]) -> str:
    """Prometheus text for a status document (daemon.Agent.status)."""
    out: list[str] = []
    sweep = doc.get("last_sweep") or {}
    wal = doc["wal"]
    gauges = [
        ("vmagent_up", "1 while the agent runs", 1),
        ("vmagent_healthy", "1 healthy, 0 degraded",
         int(doc["health"]["state"] == "healthy")),
        ("vmagent_uptime_seconds", "seconds since start", doc["uptime_s"]),
        ("vmagent_sweep_duration_seconds", "duration of the last sweep",
         sweep.get("duration_s")),
        ("vmagent_vms", "VMs metered in the last sweep", doc["vms"]),
        ("vmagent_wal_bytes", "bytes in WAL segments", wal["bytes"]),
        ("vmagent_wal_segments", "WAL segment files", wal["segments"]),
        ("vmagent_wal_first_seq", "lowest seq kept", wal["first_seq"]),
        ("vmagent_wal_durable_seq", "last durable seq", wal["durable_seq"]),
        ("vmagent_wal_coalescing", "1 while sweeps are kept in memory",
         int(wal["coalescing"])),
        ("vmagent_wal_quarantined", "damaged segments quarantined at start",
         wal["quarantined"]),
    ]
    for name, text, value in gauges:
        _help(out, name, "gauge", text)
        _line(out, name, value)
    _help(out, "vmagent_sweeps_total", "counter", "sweeps since start")
    _line(out, "vmagent_sweeps_total", doc["sweeps"])
    _help(out, "vmagent_consumer_acked_seq", "gauge", "seq acked")
    _help(out, "vmagent_consumer_lag_records", "gauge", "seqs not acked")
    _help(out, "vmagent_consumer_lag_seconds", "gauge",
          "age of the oldest record not acked")
    for name, lag in sorted(doc["consumers"].items()):
        labels = {"consumer": name}
        _line(out, "vmagent_consumer_acked_seq", lag["acked_seq"], labels)
        _line(out, "vmagent_consumer_lag_records", lag["lag_records"], labels)
        _line(out, "vmagent_consumer_lag_seconds", float(lag["lag_s"]), labels)
    _help(out, "vmagent_recent_errors", "gauge",
          "errors among the last 20 kept, by event")
    by_event: dict[str, int] = {}
    for e in doc["errors"]:
        by_event[e["event"]] = by_event.get(e["event"], 0) + 1
    for event, n in sorted(by_event.items()):
        _line(out, "vmagent_recent_errors", n, {"event": event})
    return "\n".join(out) + "\n"
