"""The cost of a Prometheus scrape of the agent's /metrics at 50 VMs.

1. Rendering alone: ``render_vms`` over 50 sample records shaped like a
   real KVM guest's (2 vCPUs, a NIC, a disk, KVM counters): µs per scrape.
2. End to end: a real ``vmagent run`` with 50 VMs of a fixture /proc,
   scraped N times over loopback with a bearer token; the agent's CPU time
   per scrape (utime + stime from /proc/<pid>/stat, less what the same
   agent spends over the same time unscraped) and the reply's size.

    .venv/bin/python bench/scrape.py [--vms 50] [--scrapes 500]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from integration.agent_process import AgentProcess  # noqa: E402
from vmagent.api.vm_metrics import render_vms  # noqa: E402


def kvm_like_sample(i: int) -> dict:
    return {
        "kind": "sample", "t": 1, "host": "h",
        "vm": {"uuid": f"00000000-0000-0000-0000-{i:012d}",
               "name": f"vm{i}", "gen": f"g-{i}", "hypervisor": "kvm",
               "started_ns": 1},
        "cpu": {"total_ns": 10**12 + i, "user_ns": 10**11, "system_ns": 10**10,
                "guest_ns": 9 * 10**10,
                "vcpus": [{"id": v, "tid": 100 + v, "run_ns": 10**11 + v,
                           "wait_ns": 10**8} for v in range(2)]},
        "mem": {"rss_bytes": 2**30, "alloc_bytes": 2**31, "hugetlb_bytes": 0},
        "nics": [{"name": f"tap{i}", "mac": "52:54:00:00:00:01",
                  **{f"{d}_{u}": 12345 for d in ("rx", "tx")
                     for u in ("bytes", "packets", "errors", "drops")}}],
        "io": {"rd_bytes": 2**20, "wr_bytes": 2**21},
        "disks": [{"path": f"/var/lib/images/vm{i}.qcow2",
                   "capacity_bytes": 10 * 2**30, "allocated_bytes": 2**30}],
        "kvm": {k: 1000 for k in ("exits", "halt_exits", "halt_wakeup",
                                  "io_exits", "mmio_exits", "irq_exits",
                                  "signal_exits", "insn_emulation",
                                  "pf_taken")} | {"pages_4k": 10,
                                                  "pages_2m": 1000},
    }


def render_cost(vms: int, rounds: int = 2000) -> tuple[float, int]:
    samples = [kvm_like_sample(i) for i in range(vms)]
    lines = render_vms(samples)
    started = time.process_time()
    for _ in range(rounds):
        render_vms(samples)
    return (time.process_time() - started) / rounds * 1e6, len(lines)


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def scrape_cost(vms: int, scrapes: int) -> tuple[float, float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        a = AgentProcess(Path(tmp), fake_vms=vms, interval=1.0).start()
        try:
            time.sleep(3)  # the first sweeps, the exit rechecks
            req = urllib.request.Request(
                a.url + "/metrics",
                headers={"Authorization": f"Bearer {a.token()}"})
            size = len(urllib.request.urlopen(req, timeout=10).read())
            began, cpu0 = time.monotonic(), cpu_s(a.pid())
            for _ in range(scrapes):
                urllib.request.urlopen(req, timeout=10).read()
            busy = cpu_s(a.pid()) - cpu0
            took = time.monotonic() - began
            cpu1 = cpu_s(a.pid())
            time.sleep(took)  # the same time unscraped: the sweeps' share
            idle = cpu_s(a.pid()) - cpu1
        finally:
            a.kill()
    per_scrape = (busy - idle) / scrapes
    return per_scrape * 1e6, took / scrapes * 1e3, size


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vms", type=int, default=50)
    p.add_argument("--scrapes", type=int, default=500)
    args = p.parse_args()
    us, lines = render_cost(args.vms)
    print(f"render_vms, {args.vms} KVM-like VMs: {us:.0f} µs per scrape, "
          f"{lines} lines")
    cpu_us, wall_ms, size = scrape_cost(args.vms, args.scrapes)
    print(f"vmagent run, {args.vms} fixture VMs, {args.scrapes} scrapes: "
          f"{cpu_us:.0f} µs agent CPU per scrape, {wall_ms:.2f} ms per "
          f"request, {size} bytes")


if __name__ == "__main__":
    main()
