"""``vmcollector run``'s self-monitoring on ``[collector] listen``
(docs/collector.md): ``GET /metrics`` (Prometheus text)
and ``GET /v1/status`` (the ``status --json`` document).

``Metrics`` is what the ingest threads count; it is read by the HTTP
server's threads, so every access holds its lock.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Callable
from typing import Any

from vmagent.api.metrics import escape
from vmagent.log import get_logger

COMMIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """Counters and gauges of one collector process."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.verified: dict[str, int] = {}
        self.rejected: dict[str, int] = {}
        self.behind: dict[str, int | None] = {}
        self.newest_t: dict[str, float] = {}  # newest stored record's t (s)
        self.commit_buckets = [0] * len(COMMIT_BUCKETS)
        self.commit_sum = 0.0
        self.commit_count = 0
        self.lease_changes: dict[str, int] = {"claimed": 0, "released": 0}
        self.ledger_restarts = 0

    def batch_stored(self, host: str, frames: int, seconds: float,
                     behind: int | None, newest_t: float | None) -> None:
        with self.lock:
            self.verified[host] = self.verified.get(host, 0) + frames
            self.behind[host] = behind
            if newest_t is not None:
                self.newest_t[host] = max(newest_t,
                                          self.newest_t.get(host, 0.0))
            self.commit_sum += seconds
            self.commit_count += 1
            for i, bound in enumerate(COMMIT_BUCKETS):
                if seconds <= bound:
                    self.commit_buckets[i] += 1

    def frame_rejected(self, host: str) -> None:
        with self.lock:
            self.rejected[host] = self.rejected.get(host, 0) + 1

    def lease_changed(self, change: str, n: int = 1) -> None:
        with self.lock:
            self.lease_changes[change] = \
                self.lease_changes.get(change, 0) + n

    def ledger_worker_restarted(self) -> None:
        with self.lock:
            self.ledger_restarts += 1

    def render(self, now: float | None = None) -> str:
        """The Prometheus text exposition."""
        now = time.time() if now is None else now
        out: list[str] = []
        with self.lock:
            hosts = sorted(set(self.verified) | set(self.rejected)
                           | set(self.behind))
            self._render_hosts(out, hosts, now)
            self._render_store(out)
        return "\n".join(out) + "\n"

    def _render_hosts(self, out: list[str], hosts: list[str],
                      now: float) -> None:
        """The per-host families (under the lock)."""
        _family(out, "vmcollector_host_behind_records", "gauge",
                "Records the host's agent holds beyond what is stored "
                "(0: the last reply was not full; absent: unknown).",
                [(_host(h), str(self.behind[h])) for h in hosts
                 if self.behind.get(h) is not None])
        _family(out, "vmcollector_host_lag_seconds", "gauge",
                "Now minus the newest stored record's t.",
                [(_host(h), f"{max(0.0, now - self.newest_t[h]):.3f}")
                 for h in hosts if h in self.newest_t])
        _family(out, "vmcollector_frames_verified_total", "counter",
                "Frames verified and stored.",
                [(_host(h), str(self.verified.get(h, 0))) for h in hosts])
        _family(out, "vmcollector_frames_rejected_total", "counter",
                "Frames that failed verification or came back with "
                "other bytes (the host turned untrusted).",
                [(_host(h), str(self.rejected.get(h, 0))) for h in hosts])

    def _render_store(self, out: list[str]) -> None:
        """The commit histogram and the lease changes (under the lock)."""
        name = "vmcollector_store_commit_seconds"
        buckets = [(f'{{le="{bound:g}"}}', str(n)) for bound, n in
                   zip(COMMIT_BUCKETS, self.commit_buckets)]
        buckets.append(('{le="+Inf"}', str(self.commit_count)))
        _family(out, name, "histogram",
                "Time to store one batch (one transaction, committed).",
                [])
        out.extend(f"{name}_bucket{labels} {value}"
                   for labels, value in buckets)
        out.append(f"{name}_sum {self.commit_sum:.6f}")
        out.append(f"{name}_count {self.commit_count}")
        _family(out, "vmcollector_lease_changes_total", "counter",
                "Leases this instance claimed or gave back.",
                [(f'{{change="{change}"}}', str(n))
                 for change, n in sorted(self.lease_changes.items())])
        _family(out, "vmcollector_ledger_worker_restarts_total", "counter",
                "Times the ledger worker process was started again after "
                "it died.", [("", str(self.ledger_restarts))])


HOST_STATES = ("current", "lagging", "failing", "untrusted", "silent",
               "retired")
PERIOD_STATES = ("open", "closable", "closed")


def render_status(doc: dict[str, Any]) -> str:
    """The families read from the status document (the store): each host's
    state and clock offset, each period's state (the ledger)."""
    out: list[str] = []
    hosts = doc.get("hosts", [])
    _family(out, "vmcollector_host_state", "gauge",
            "1 for the host's state (COLLECTOR.md section 4), else 0.",
            [(f'{{host="{escape(h["name"])}",state="{state}"}}',
              str(int(h["state"] == state)))
             for h in hosts for state in HOST_STATES])
    _family(out, "vmcollector_host_clock_offset_seconds", "gauge",
            "The host's records' t against their arrival.",
            [(_host(h["name"]), str(h["clock_offset_s"])) for h in hosts
             if h.get("clock_offset_s") is not None])
    _family(out, "vmcollector_host_missing_seqs", "gauge",
            "Seqs missing at the source (gap records, 410s, skips).",
            [(_host(h["name"]), str(sum(
                g["to_seq"] - g["from_seq"] + 1
                for w in h.get("wals", []) for g in w.get("gaps", []))))
             for h in hosts])
    _family(out, "vmcollector_ledger_lag_records", "gauge",
            "Records stored and not yet folded into the usage ledger.",
            [(_host(h["name"]), str(h["ledger_lag_records"])) for h in hosts
             if h.get("ledger_lag_records") is not None])
    _family(out, "vmcollector_period_state", "gauge",
            "1 for the period's state in the ledger, else 0.",
            [(f'{{period="{escape(p["period"])}",grain="{p.get("grain", "")}"'
              f',tz="{escape(p.get("tz", ""))}",state="{state}"}}',
              str(int(p["state"] == state)))
             for p in doc.get("periods", []) for state in PERIOD_STATES])
    return "\n".join(out) + "\n"


def _family(out: list[str], name: str, kind: str, text: str,
            samples: list[tuple[str, str]]) -> None:
    """A metric family: its HELP and TYPE, then (labels, value) lines."""
    out.append(f"# HELP {name} {text}")
    out.append(f"# TYPE {name} {kind}")
    out.extend(f"{name}{labels} {value}" for labels, value in samples)


def _host(host: str) -> str:
    return f'{{host="{escape(host)}"}}'




class MonitorServer:
    """``GET /metrics`` and ``GET /v1/status`` on ``(host, port)``, in
    threads; ``status`` builds the status document (it reads the store)."""

    def __init__(self, address: tuple[str, int], metrics: Metrics,
                 status: Callable[[], dict[str, Any]]) -> None:
        self.metrics, self.status = metrics, status
        self.server = http.server.ThreadingHTTPServer(address,
                                                      self._handler())
        self.server.daemon_threads = True
        bound = self.server.server_address
        self.address: tuple[str, int] = (str(bound[0]), int(bound[1]))
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       name="monitor", daemon=True)

    def start(self) -> MonitorServer:
        self.thread.start()
        return self

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        monitor = self
        log = get_logger()

        class Handler(http.server.BaseHTTPRequestHandler):
            server_version = "vmcollector"

            def log_message(self, format: str,  # noqa: A002
                            *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                path = self.path.split("?")[0]
                if path == "/metrics":
                    text = monitor.metrics.render()
                    try:
                        text += render_status(monitor.status())
                    except Exception as err:  # noqa: BLE001 - the rest
                        log.warning("status_failed", error=str(err))
                    self.reply(200, text.encode(),
                               "text/plain; version=0.0.4")
                elif path == "/v1/status":
                    try:
                        doc = monitor.status()
                    except Exception as err:  # noqa: BLE001 - a reply
                        log.warning("status_failed", error=str(err))
                        self.reply(503, json.dumps(
                            {"error": str(err)}).encode(),
                            "application/json")
                        return
                    self.reply(200, json.dumps(doc).encode(),
                               "application/json")
                else:
                    self.reply(404, b'{"error": "not found"}',
                               "application/json")

            def reply(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler
