"""The pull API under attack: what a collector at the same address sees.

300 idle connections, 200 slowloris connections (a request's headers at one
byte a second) and 2000 malformed requests, all from 127.0.0.1, for
``--duration`` seconds (tests/integration/hostile_clients.py), against a
``vmagent run`` with two fake VMs.  Meanwhile a collector pulls and
verifies once a second; a failed pull is retried every 0.1 s.  Reported:
the collector's worst wait for a successful pull (the outage), the sweeps'
interval jitter (from the records' ``t``), the agent's RSS and CPU.

    .venv/bin/python bench/api_hostile.py [--duration 30]
    # another tree, e.g. the server before the rewrite:
    git archive <rev> agent | tar -x -C /tmp/old
    cp agent/vmagent/_vmprobe.abi3.so /tmp/old/agent/vmagent/
    .venv/bin/python bench/api_hostile.py --src /tmp/old/agent
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from integration.agent_process import AgentProcess  # noqa: E402
from integration.hostile_clients import Attack  # noqa: E402
from vmagent.collector import ChainState, Client, verify_batch  # noqa: E402


class Collector:
    """Pulls once a second; records how long each success took to get,
    counting failed attempts and their retries."""

    def __init__(self, a: AgentProcess) -> None:
        self.client = Client(a.url, "default", a.token(), timeout=30)
        self.key, self.state = a.public_key(), ChainState()
        self.waits: list[float] = []
        self.failures = 0

    def pull_until(self, end: float) -> None:
        while time.monotonic() < end:
            t0 = time.monotonic()
            while True:
                try:
                    list(verify_batch(self.client.batch(
                        self.state.last_seq, max_records=10000),
                        self.state, self.key))
                    break
                except Exception:  # noqa: BLE001  (503, reset, timeout)
                    self.failures += 1
                    time.sleep(0.1)
            self.waits.append(time.monotonic() - t0)
            time.sleep(max(0.0, 1.0 - self.waits[-1]))


def sweep_times(a: AgentProcess, since_ns: int, until_ns: int) -> list[int]:
    """The distinct ``t`` of the sample records in the window."""
    client, state, after, ts = a.client(), ChainState(), 0, set()
    while True:
        batch = client.batch(after, max_records=10000)
        if not batch["frames"]:
            break
        for rec in verify_batch(batch, state, a.public_key()):
            if rec["kind"] == "sample" and since_ns <= rec["t"] <= until_ns:
                ts.add(rec["t"])
        after = state.last_seq
    return sorted(ts)


def run(args: argparse.Namespace, work: Path) -> None:
    a = AgentProcess(work, fake_vms=2, interval=args.interval)
    env = {"PYTHONPATH": args.src} if args.src else None
    a.start(env=env)
    try:
        proc = psutil.Process(a.pid())
        collector = Collector(a)
        collector.pull_until(time.monotonic() + 3)  # before: a baseline
        before = collector.waits[:]
        cpu0, t0, since = proc.cpu_times(), time.monotonic(), time.time_ns()
        attack = Attack(a.port, idle=args.idle, slow=args.slow,
                        garbage=args.garbage, duration=args.duration).start()
        rss = [proc.memory_info().rss]
        end = time.monotonic() + args.duration
        while time.monotonic() < end:
            collector.pull_until(min(end, time.monotonic() + 1))
            rss.append(proc.memory_info().rss)
        stats = attack.join()
        cpu1, t1, until = proc.cpu_times(), time.monotonic(), time.time_ns()
        during = collector.waits[len(before):]
        ts = sweep_times(a, since, until)
        report(args, before, during, collector.failures, ts, rss,
               (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / (t1 - t0),
               stats, traceback="Traceback" in a.log_text(),
               lines=a.log_text().count("\n"))
    finally:
        a.kill()


def report(args: argparse.Namespace, before: list[float],
           during: list[float], failures: int, ts: list[int],
           rss: list[int], cpu: float, stats: object, traceback: bool,
           lines: int) -> None:
    gaps = [(b - a) / 1e9 for a, b in zip(ts, ts[1:])]
    jitter = max((abs(g - args.interval) for g in gaps), default=float("nan"))
    print(f"agent: {args.src or 'this tree'}; attack {args.duration:g} s: "
          f"{args.idle} idle, {args.slow} slowloris, {args.garbage} malformed")
    print("| figure | value |\n|---|---|")
    print(f"| collector pull, before the attack (median) | "
          f"{statistics.median(before) * 1000:.1f} ms |")
    print(f"| collector pull during the attack: median / worst (outage) | "
          f"{statistics.median(during) * 1000:.1f} ms / "
          f"{max(during):.3f} s |")
    print(f"| failed pull attempts | {failures} of {len(during) + failures}"
          " |")
    print(f"| sweeps during the attack (every {args.interval:g} s) | "
          f"{len(ts)}; interval {min(gaps, default=0):.3f}–"
          f"{max(gaps, default=0):.3f} s, worst jitter "
          f"{jitter * 1000:.1f} ms |")
    print(f"| agent RSS: before / peak | {rss[0] / 2**20:.1f} / "
          f"{max(rss) / 2**20:.1f} MiB |")
    print(f"| agent CPU during the attack | {cpu * 100:.0f} % of one core |")
    print(f"| agent log | {lines} lines, traceback: {traceback} |")
    print(f"\nattack: {stats}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--interval", type=float, default=0.5)
    p.add_argument("--idle", type=int, default=300)
    p.add_argument("--slow", type=int, default=200)
    p.add_argument("--garbage", type=int, default=2000)
    p.add_argument("--src", help="run the agent from this package root "
                   "(the directory holding vmagent/) instead")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="vmagent-hostile-") as work:
        run(args, Path(work))


if __name__ == "__main__":
    main()
