"""The Python side of a sweep at 100 to 5,000 VMs, on a synthetic host:
a fixture ``/proc`` + ``/sys`` tree (tests/unit/fake_procfs.py) with N
QEMU-like processes (2 named vCPU threads, one tap, one raw disk each).

This is synthetic: the files are tmpfs files, not the kernel's, so the
absolute figures are not the real cost (bench/daemon.py measures that);
what it shows is whether the daemon's own work per VM stays flat as N
grows.  The daemon's sweep (``Agent.sweep``: discovery, prober, records,
WAL commit, state files) runs in this process once a second; the exit
watcher is left out (the fixture's pids are not processes).  Also one
rescan each way (bench/rescan.py) per N.

Run from the repository (no root needed):
    .venv/bin/python bench/scale_synthetic.py --vms 100 1000 5000
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from rescan import one_rescan  # noqa: E402

from integration.agent_process import free_port  # noqa: E402
from unit.fake_procfs import FakeHost  # noqa: E402
from vmagent import config as config_mod  # noqa: E402
from vmagent import daemon as daemon_mod  # noqa: E402

FIRST_PID = 10_000


class NoExits:
    """Stands in for the pidfd exit watcher: fixture pids are no processes."""

    def watch(self, pid: int) -> None:
        pass

    def close(self) -> None:
        pass


def build_host(root: Path, n: int) -> FakeHost:
    host = FakeHost(root)
    disks = root / "disks"
    disks.mkdir()
    for i in range(n):
        pid = FIRST_PID + 10 * i
        disk = disks / f"d{i}.img"
        disk.write_bytes(b"\0" * 4096)
        host.process(
            pid, "qemu-system-x86",
            ["qemu-system-x86_64", "-name", f"guest=syn-{i}", "-smp", "2",
             "-m", "64"],
            exe="/usr/bin/qemu-system-x86_64",
            fds={3: "/dev/kvm", 4: "anon_inode:kvm-vm", 9: "/dev/net/tun",
                 10: str(disk)},
            threads={pid: "qemu-system-x86", pid + 1: "CPU 0/KVM",
                     pid + 2: "CPU 1/KVM"})
        host.tap(pid, 9, f"syn{i}", {"rx_bytes": i, "tx_bytes": 2 * i})
    for i in range(n):
        (host.sys / "class/net" / f"syn{i}/statistics").mkdir(
            parents=True, exist_ok=True)
    return host


def enough_fds(n: int) -> str | None:
    """Six fds per VM stay open (stat, status, io, two schedstat, the
    disk): raise the limit where allowed (root may raise the hard one; the
    daemon itself raises its soft limit to the hard one, api/server.py).
    Returns why not when the limit stays too low."""
    want = 6 * n + 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE,
                               (want, max(hard, want)))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        return (f"needs ~{want} open files, the limit is {soft} "
                f"(hard {hard}, not raisable here)")
    return None


def measure(n: int, seconds: int, workdir: Path) -> dict[str, Any]:
    host = build_host(workdir / "host", n)
    cfg = config_mod.parse(
        f'[agent]\nstate_dir = "{workdir / "state"}"\ninterval = 1\n'
        f'[api]\nlisten = "127.0.0.1:{free_port()}"\n'
        f'[probes]\nprocfs = "{host.proc}"\nsysfs = "{host.sys}"\n'
        f'debugfs = "{host.debug}"\nacct_file = "{workdir / "acct"}"\n')
    agent = daemon_mod.Agent(cfg)
    agent.exits.close()
    agent.exits = NoExits()  # type: ignore[assignment]
    try:
        agent.sweep(first=True)
        agent.sweep()
        per_sweep = []
        for _ in range(seconds):
            time.sleep(1 - time.time() % 1)  # the daemon's cadence
            t0 = time.thread_time_ns()
            agent.sweep()
            per_sweep.append(time.thread_time_ns() - t0)
        vms = len(agent.vms.running)
        rescans = {way: one_rescan(agent.prober, way == "everything")
                   for way in ("signature", "everything")}
        status = Path("/proc/self/status").read_text().splitlines()
        rss_kb = next(int(line.split()[1]) for line in status
                      if line.startswith("VmRSS"))
        return {"vms": vms,
                "sweep_us": statistics.median(per_sweep) / 1e3 / vms,
                "rescan_sig_us": rescans["signature"] / 1e3 / vms,
                "rescan_all_us": rescans["everything"] / 1e3 / vms,
                "rss_mib": rss_kb / 1024}
    finally:
        agent.prober.close()
        agent.wal.close()
        agent.links.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vms", type=int, nargs="+", default=[100, 1000, 5000])
    ap.add_argument("--seconds", type=int, default=20)
    args = ap.parse_args()
    print("| VMs (synthetic) | sweep µs/VM | rescan µs/VM: signature | "
          "everything | RSS MiB (this process) |")
    for n in args.vms:
        if (why := enough_fds(n)) is not None:
            print(f"| {n} | not run: {why} |", flush=True)
            continue
        with tempfile.TemporaryDirectory() as tmp:
            r = measure(n, args.seconds, Path(tmp))
        print(f"| {r['vms']} | {r['sweep_us']:.1f} | "
              f"{r['rescan_sig_us']:.1f} | {r['rescan_all_us']:.1f} | "
              f"{r['rss_mib']:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
