"""WAL benchmark: durable commit throughput, bytes per VM sample, recovery.

- records/s with one fdatasync per commit, at 1, 100 and 1000 records per
  commit, for records shaped like real VM samples (2 vCPUs, 1 NIC, 1 disk)
  and for small flat records;
- bytes on disk per VM sample at 50 samples per commit (a 50-VM sweep);
- recovery (opening the WAL: scan, checksums, chain) of a 1 GiB WAL, from
  the page cache and, as root, after dropping it;
- what the high-water mark adds to a commit: one 68-byte pwrite (timed
  alone), and an fdatasync per 4096 seqs.

    .venv/bin/python bench/wal.py [--dir DIR] [--gib 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from vmagent.keys import HostKey
from vmagent.wal import FileOps, Wal

KEY = HostKey.generate()


def vm_sample(i: int, vm: int) -> dict:
    """A sample record as the daemon writes it for a typical VM."""
    return {
        "kind": "sample", "t": 1_790_000_000_000_000_000 + i * 10**10,
        "vm": {"uuid": f"5b0e7c1e-2f4a-4c1b-9d3e-{vm:012x}",
               "name": f"customer-vm-{vm}",
               "gen": f"27cb0952-2efe-4ec9-ab18-480aea044a69-{4000 + vm}-"
                      f"{40000 + vm}", "hypervisor": "kvm"},
        "cpu": {"total_ns": 10**9 * i, "user_ns": 9 * 10**8 * i,
                "system_ns": 10**8 * i, "guest_ns": 8 * 10**8 * i,
                "vcpus": [{"id": c, "run_ns": 4 * 10**8 * i,
                           "wait_ns": 10**6 * i} for c in range(2)]},
        "mem": {"rss_bytes": 2 << 30, "alloc_bytes": 2 << 30,
                "hugetlb_bytes": 0},
        "nics": [{"name": f"vnet{vm}", "mac": "52:54:00:12:34:56",
                  "rx_bytes": 1500 * i, "rx_packets": i, "rx_errors": 0,
                  "rx_drops": 0, "tx_bytes": 900 * i, "tx_packets": i,
                  "tx_errors": 0, "tx_drops": 0}],
        "io": {"rd_bytes": 4096 * i, "wr_bytes": 8192 * i},
        "disks": [{"path": f"/var/lib/vms/customer-vm-{vm}.qcow2",
                   "capacity_bytes": 20 << 30, "allocated_bytes": 3 << 30}],
    }


def small_record(i: int, vm: int) -> dict:
    """About 140 bytes: the record size of the research notes' figures."""
    return {"kind": "sample", "t": 1_790_000_000_000_000_000 + i,
            "vm": f"5b0e7c1e-{vm:08x}", "cpu": 10**9 * i, "rx": 1500 * i,
            "tx": 900 * i, "rd": 4096 * i, "wr": 8192 * i, "mem": 2 << 20}


def throughput(d: Path, per_commit: int, make: Callable[[int, int], dict],
               seconds: float = 3.0) -> float:
    w = Wal(d, host="bench-host", key=KEY)
    batch = [make(1, v) for v in range(per_commit)]
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        w.commit(batch)
        n += per_commit
    rate = n / (time.perf_counter() - t0)
    w.close()
    return rate


def bytes_per_sample(d: Path, vms: int = 50, sweeps: int = 200) -> float:
    w = Wal(d, host="bench-host", key=KEY)
    for i in range(sweeps):
        w.commit([vm_sample(i, v) for v in range(vms)])
    size = w.status()["bytes"]
    w.close()
    return size / (vms * sweeps)


class NoSync(FileOps):
    """Builds the big WAL for the recovery benchmark faster (no fsync)."""

    def fdatasync(self, fd: int) -> None:
        pass


def recovery(d: Path, gib: float) -> tuple[float, float, float | None]:
    w = Wal(d, host="bench-host", key=KEY, max_bytes=int(gib * 2**30) +
            (64 << 20), ops=NoSync())
    i = 0
    while w.status()["bytes"] < gib * 2**30:
        w.commit([vm_sample(i, v) for v in range(50)])
        i += 1
    size = w.status()["bytes"]
    w.close()
    os.sync()
    t0 = time.perf_counter()
    Wal(d, host="bench-host", key=KEY).close()
    warm = time.perf_counter() - t0
    cold = None
    if os.geteuid() == 0:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        t0 = time.perf_counter()
        Wal(d, host="bench-host", key=KEY).close()
        cold = time.perf_counter() - t0
    mb = size / 1e6
    return mb, mb / warm, (mb / cold if cold else None)


def high_water_cost(d: Path, n: int = 200_000) -> float:
    """Microseconds per ``advance`` of one seq, the reservation's fdatasync
    (one per RESERVE seqs) included."""
    w = Wal(d, host="bench-host", key=KEY)
    hw = w.high_water
    t0 = time.perf_counter()
    for seq in range(1, n + 1):
        hw.advance(seq)
    per = (time.perf_counter() - t0) / n * 1e6
    w.close()
    return per


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=None,
                    help="where to write (default: a temp dir on /var/tmp)")
    ap.add_argument("--gib", type=float, default=1.0)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(dir=args.dir or "/var/tmp",
                                 prefix="vmagent-walbench"))
    try:
        print("| records per commit | VM samples (≈650 B) records/s | "
              "small records (≈140 B) records/s |")
        print("|---|---|---|")
        for n in (1, 100, 1000):
            big = throughput(base / f"t{n}", n, vm_sample)
            small = throughput(base / f"s{n}", n, small_record)
            print(f"| {n} | {big:,.0f} | {small:,.0f} |", flush=True)
        hw = high_water_cost(base / "hw")
        print(f"\nhigh-water mark per commit: {hw:.2f} µs (pwrite, and an "
              "fdatasync per 4096 seqs)")
        per = bytes_per_sample(base / "size")
        print(f"\nbytes on disk per VM sample (50 per commit): {per:.0f}")
        mb, warm, cold = recovery(base / "big", args.gib)
        print(f"recovery of {mb:.0f} MB: {warm:.0f} MB/s from the page cache"
              + (f", {cold:.0f} MB/s after dropping it" if cold else ""))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
