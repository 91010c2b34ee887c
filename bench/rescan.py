"""The rescan's cost (every ``[probes] rescan``): comparing each VM's
signature and reopening only what changed, against re-reading every VM's
layout and reopening its files (what a rescan did before).

Starts N paused KVM guests (as bench/sweep.py), then once a second runs
``Prober.discover()`` with a rescan due, alternating the two ways, and
reports the thread CPU time of each rescan (ms) and per VM (µs).

Run as root from the repository:
    sudo .venv/bin/python bench/rescan.py --vms 40 --rounds 10
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from sweep import not_root, start_guests, stop_guests, wait_all  # noqa: E402

from vmagent.probes import Prober  # noqa: E402


def one_rescan(prober: Prober, everything: bool) -> int:
    """Thread CPU ns of one discover() with a rescan due."""
    prober.rescan_s = 0
    t0 = time.thread_time_ns()
    if everything:  # the old rescan: every VM looked at again
        for m in prober._metered.values():  # noqa: SLF001 - bench only
            m.stale = True
    prober.discover()
    took = time.thread_time_ns() - t0
    prober.rescan_s = 3600
    return took


def measure(n: int, rounds: int, workdir: Path) -> dict[str, list[int]]:
    guests, taps = start_guests(n, workdir)
    try:
        with Prober("bench-host") as prober:
            wait_all(prober, {g.pid for g in guests})
            prober.sample()
            out: dict[str, list[int]] = {"signature": [], "everything": []}
            for r in range(2 * rounds):
                time.sleep(1 - time.time() % 1)  # the daemon's cadence
                everything = r % 2 == 1
                took = one_rescan(prober, everything)
                prober.sample()
                out["everything" if everything else "signature"].append(took)
            return out
    finally:
        stop_guests(guests, taps)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vms", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    if not_root():
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        r = measure(args.vms, args.rounds, Path(tmp))
    print(f"rescan thread CPU, {args.vms} paused KVM guests, 1 Hz, "
          f"median of {args.rounds}")
    for way, ns in r.items():
        ms = statistics.median(ns) / 1e6
        print(f"| {way} | {ms:.2f} ms | {ms * 1e3 / args.vms:.1f} µs/VM |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
