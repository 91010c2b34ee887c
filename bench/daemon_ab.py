"""Two trees' daemons side by side: ``vmagent run`` from this tree and from
another (``--other``: the ``agent/`` directory of a checkout with its own
built ``_vmprobe`` module) metering the same paused KVM guests over the
same seconds, so that the load other work puts on the machine weighs on
both alike (bench/daemon.py measures one tree at a time).

For each daemon: its CPU per VM-sweep (every thread's ``sum_exec_runtime``
divided by its sweeps and VMs, as bench/daemon.py) and its RSS at the end;
the floor (bench/floor.c at 1 Hz) meanwhile.  ``--rounds`` repeats the
measurement window (the daemons keep running), one row per round.

Run as root from the repository:
    sudo .venv/bin/python bench/daemon_ab.py --vms 50 --seconds 45 \\
        --other /tmp/before/agent
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from daemon import WARMUP_S, rss_kb, threads_ns  # noqa: E402
from sweep import (  # noqa: E402
    floor_at_cadence,
    floor_plan,
    not_root,
    result,
    start_guests,
    stop_guests,
    wait_all,
)

from integration.agent_process import AgentProcess  # noqa: E402
from vmagent.api.control import query_status  # noqa: E402
from vmagent.probes import Prober  # noqa: E402


def window(agents: dict[str, AgentProcess], seconds: int,
           floor_bin: Path, plan: str) -> dict[str, float]:
    """µs per VM-sweep of each daemon over one window, and the floor."""
    floor_proc = floor_at_cadence(floor_bin, plan, seconds)
    before = {k: (threads_ns(a.proc.pid), query_status(a.state))
              for k, a in agents.items()}
    time.sleep(seconds)
    out = {"floor": 0.0}
    for k, a in agents.items():
        t0, s0 = before[k]
        t1, s1 = threads_ns(a.proc.pid), query_status(a.state)
        ns = sum(t1[tid] - t0.get(tid, 0) for tid in t1)
        out[k] = ns / 1e3 / ((s1["sweeps"] - s0["sweeps"]) * s1["vms"])
        out[f"{k} rss"] = rss_kb(a.proc.pid) / 1024
    out["floor"] = result(floor_proc)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vms", type=int, default=50)
    ap.add_argument("--seconds", type=int, default=45)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--other", type=Path, required=True,
                    help="the other tree's agent/ directory")
    args = ap.parse_args()
    if not_root():
        return 2
    if not (args.other / "vmagent").is_dir():
        print(f"error: no vmagent package in {args.other}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        floor_bin = work / "floor"
        subprocess.run(["cc", "-O2", "-Wall", "-Werror", "-o", str(floor_bin),
                        str(ROOT / "bench/floor.c")], check=True)
        guests, taps = start_guests(args.vms, work)
        agents = {"this": AgentProcess(work / "this", interval=1.0),
                  "other": AgentProcess(work / "other", interval=1.0)}
        try:
            with Prober("bench-host") as prober:
                wait_all(prober, {g.pid for g in guests})
                plan = floor_plan(prober, prober.vms())
            agents["this"].start()
            agents["other"].start(env={"PYTHONPATH": str(args.other)})
            time.sleep(WARMUP_S)
            print("CPU µs per VM-sweep at 1 Hz, both daemons at once")
            print("| round | this tree | other tree | floor | this / floor "
                  "| other / floor | RSS MB this / other |")
            print("|---|---|---|---|---|---|---|")
            for r in range(args.rounds):
                w = window(agents, args.seconds, floor_bin, plan)
                print(f"| {r + 1} | {w['this']:.1f} | {w['other']:.1f} | "
                      f"{w['floor']:.1f} | {w['this'] / w['floor']:.2f} | "
                      f"{w['other'] / w['floor']:.2f} | "
                      f"{w['this rss']:.1f} / {w['other rss']:.1f} |",
                      flush=True)
        finally:
            for a in agents.values():
                a.kill()
            stop_guests(guests, taps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
