"""Where a daemon sweep's CPU goes: the daemon's own sweep (``Agent.sweep``)
run in this process once a second on N paused KVM guests, with the thread
CPU time of each part (discovery, prober, records, WAL commit, state files,
accounting) measured around it.  Complements bench/daemon.py, which
measures the whole ``vmagent run`` process from outside.

Run as root from the repository:
    sudo .venv/bin/python bench/daemon_parts.py --vms 40 --seconds 60
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from sweep import not_root, start_guests, stop_guests, wait_all  # noqa: E402

from integration.agent_process import free_port  # noqa: E402
from vmagent import config as config_mod  # noqa: E402
from vmagent import daemon as daemon_mod  # noqa: E402
from vmagent.probes import Prober  # noqa: E402

WARMUP = 10  # sweeps before measuring


class Parts:
    """Thread CPU time spent inside wrapped callables, by name, exclusive:
    the time of a wrapped callable called inside another is counted for
    the inner one only."""

    def __init__(self) -> None:
        self.ns: dict[str, int] = defaultdict(int)
        self._stack: list[list[int]] = []  # [start, time of inner calls]

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            self._stack.append([time.thread_time_ns(), 0])
            try:
                return fn(*args, **kwargs)
            finally:
                start, inner = self._stack.pop()
                took = time.thread_time_ns() - start
                self.ns[name] += took - inner
                if self._stack:
                    self._stack[-1][1] += took
        return timed


def measure(n: int, seconds: int, workdir: Path) -> dict[str, float]:
    guests, taps = start_guests(n, workdir)
    try:
        with Prober("bench-host") as warm:
            wait_all(warm, {g.pid for g in guests})
        cfg = config_mod.parse(
            f'[agent]\nstate_dir = "{workdir / "state"}"\ninterval = 1\n'
            f'[api]\nlisten = "127.0.0.1:{free_port()}"\n')
        agent = daemon_mod.Agent(cfg)
        parts = Parts()
        a: Any = agent
        for obj, attr, name in (
                (a.prober, "discover", "discover (the rest)"),
                (a.prober, "_candidates", "discover: /proc listing"),
                (a.prober, "_examine", "discover: new processes"),
                (a.prober, "_refresh_stale", "discover: rescan re-layout"),
                (a.prober, "sample", "prober sample"),
                (a.wal, "commit", "WAL commit"),
                (a.state_files, "save", "state files"),
                (a.state_files, "flush", "state files"),
                (a, "_acct_records", "accounting"),
                (a, "_save_vms", "vms file")):
            setattr(obj, attr, parts.wrap(name, getattr(obj, attr)))
        daemon_mod.rec.sample = parts.wrap("sample records",
                                           daemon_mod.rec.sample)
        total = 0
        for s in range(WARMUP + seconds):
            if s == WARMUP:
                parts.ns.clear()
                total = 0
            time.sleep(1 - time.time() % 1)  # wall-clock aligned, as run
            t0 = time.thread_time_ns()
            agent.sweep(first=s == 0)
            total += time.thread_time_ns() - t0
        vms = len(agent.vms.running)
        div = seconds * vms * 1e3  # ns -> µs per VM-sweep
        out = {name: ns / div for name, ns in sorted(parts.ns.items())}
        out["rest of the sweep"] = (total - sum(parts.ns.values())) / div
        out["whole sweep"] = total / div
        out["vms"] = vms
        agent.prober.close()
        agent.wal.close()
        agent.exits.close()
        return out
    finally:
        stop_guests(guests, taps)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vms", type=int, default=40)
    ap.add_argument("--seconds", type=int, default=60)
    args = ap.parse_args()
    if not_root():
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        r = measure(args.vms, args.seconds, Path(tmp))
    print(f"sweep thread CPU µs per VM-sweep, {r.pop('vms'):.0f} VMs, 1 Hz")
    for name, us in r.items():
        print(f"| {name} | {us:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
