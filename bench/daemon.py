"""Whole-daemon benchmark: a ``vmagent run`` process's CPU per VM-sweep and
its RSS at its own cadence (1 Hz), against the kernel's floor (issue 16).

Starts N paused KVM guests (``qemu -S``; 2 vCPUs, one tap, one raw disk
each, as bench/sweep.py), then a real ``vmagent run`` with ``interval = 1``
in a temporary state dir.  After a warm-up it measures, over ``--seconds``:

- ``daemon``: the process's CPU time (every thread's ``sum_exec_runtime``
  from ``/proc/<pid>/task/*/schedstat``, ns) divided by the sweeps it did
  (its status document) and the VMs it meters; cross-checked against
  utime + stime of ``/proc/<pid>/stat`` (ticks, includes exited threads);
- its threads, heaviest first (Python 3.11 does not name them: the sweep
  thread is the heaviest, the others are the API, control and exit
  watchers);
- ``prober``: ``Prober.sample()`` in this process, once a second at the
  same time (thread CPU): the prober's share of the daemon's cost;
- ``floor``: bench/floor.c at 1 Hz meanwhile (its own process; the cheapest
  reads of the same information, see bench/sweep.py);
- the daemon's RSS (``VmRSS``) at the end.

With ``--libvirt``, once each N's guests are gone, it runs
bench/libvirt_stats.py (Debian's /usr/bin/python3 and python3-libvirt) on
N guests of the same shape that libvirt starts, and ends with a table of
the daemon against libvirt's getAllDomainStats() per VM.

Run as root from the repository:
    sudo .venv/bin/python bench/daemon.py --vms 10 40 --seconds 90
    sudo .venv/bin/python bench/daemon.py --vms 40 50 --seconds 45 --libvirt
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

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

WARMUP_S = 15  # the first discovery, the first WAL segment, imports
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's, where python3-libvirt is
LIBVIRT_TIMEOUT_S = 900
Row = tuple[dict[str, Any], dict[str, Any]]  # the daemon's, libvirt's


class LibvirtRunError(Exception):
    """bench/libvirt_stats.py could not run or measure; one line."""


def threads_ns(pid: int) -> dict[int, int]:
    """sum_exec_runtime of every thread of ``pid``, by tid."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            text = Path(f"/proc/{pid}/task/{tid}/schedstat").read_text()
        except OSError:
            continue  # exited meanwhile
        out[int(tid)] = int(text.split()[0])
    return out


def ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ValueError("no VmRSS")


def measure(n: int, seconds: int, floor_bin: Path,
            workdir: Path) -> dict[str, Any]:
    guests, taps = start_guests(n, workdir)
    agent = AgentProcess(workdir / "agent", interval=1.0)
    try:
        pids = {g.pid for g in guests}
        prober = Prober("bench-host")
        wait_all(prober, pids)
        plan = floor_plan(prober, prober.vms())
        agent.start()
        assert agent.proc is not None
        pid = agent.proc.pid
        time.sleep(WARMUP_S)
        floor_proc = floor_at_cadence(floor_bin, plan, seconds)
        before = query_status(agent.state)
        t0, k0 = threads_ns(pid), ticks(pid)
        sample_us = []
        start = time.monotonic()
        for s in range(seconds):  # the prober alone, half a second apart
            delay = start + s + 0.5 - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            c0 = time.thread_time_ns()
            prober.sample()
            sample_us.append((time.thread_time_ns() - c0) / 1e3)
        t1, k1 = threads_ns(pid), ticks(pid)
        after = query_status(agent.state)
        floor_1hz = result(floor_proc)
        sweeps = after["sweeps"] - before["sweeps"]
        vms = after["vms"]
        per = {tid: t1[tid] - t0.get(tid, 0) for tid in t1}
        total_ns = sum(per.values())
        div = sweeps * vms
        metered = len(prober.vms())
        prober.close()
        return {
            "vms": vms, "sweeps": sweeps,
            "daemon_us": total_ns / 1e3 / div,
            "daemon_ticks_us": (k1 - k0) * 1e6 / os.sysconf("SC_CLK_TCK")
            / div,
            "threads": sorted((v / 1e3 / div for v in per.values()),
                              reverse=True),
            "prober_us": statistics.median(sample_us) / metered,
            "floor_us": floor_1hz,
            "rss_mb": rss_kb(pid) / 1024,
        }
    finally:
        agent.kill()
        stop_guests(guests, taps)


def libvirt_missing() -> str | None:
    """Why bench/libvirt_stats.py cannot run here, or None."""
    try:
        done = subprocess.run([SYSTEM_PYTHON, "-c", "import libvirt"],
                              capture_output=True)
    except OSError as e:
        return f"--libvirt: cannot run {SYSTEM_PYTHON}: {e.strerror}"
    if done.returncode != 0:
        return (f"--libvirt: {SYSTEM_PYTHON} cannot import libvirt "
                "(apt-get install libvirt-daemon-system python3-libvirt)")
    return None


def libvirt_cost(n: int) -> dict[str, Any]:
    """bench/libvirt_stats.py --vms n --json: its µs per VM and call."""
    cmd = [SYSTEM_PYTHON, str(ROOT / "bench/libvirt_stats.py"),
           "--vms", str(n), "--json"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True,
                              timeout=LIBVIRT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise LibvirtRunError(f"libvirt_stats.py --vms {n} took over "
                              f"{LIBVIRT_TIMEOUT_S} s") from None
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        why = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise LibvirtRunError(f"libvirt_stats.py --vms {n} failed "
                              f"({done.returncode}): {why}")
    try:
        return dict(json.loads(lines[-1]))
    except ValueError:
        raise LibvirtRunError(f"libvirt_stats.py --vms {n}: not JSON: "
                              f"{lines[-1][:80]!r}") from None


def print_libvirt(rows: list[Row]) -> None:
    print("\nAgainst libvirt, same run: µs per VM (daemon and floor: CPU per"
          " VM-sweep at 1 Hz; libvirt: per VM and getAllDomainStats() call,"
          " CPU of libvirtd + QEMU + caller, and wall)")
    print("| VMs | daemon | floor | daemon / floor | libvirt CPU | "
          "libvirt wall | libvirt CPU / daemon | libvirt wall / daemon |")
    print("|---|---|---|---|---|---|---|---|")
    for r, lv in rows:
        print(f"| {r['vms']} | {r['daemon_us']:.1f} | {r['floor_us']:.1f} | "
              f"{r['daemon_us'] / r['floor_us']:.2f} | {lv['cpu_us']:.0f} | "
              f"{lv['wall_us']:.0f} | {lv['cpu_us'] / r['daemon_us']:.0f}× | "
              f"{lv['wall_us'] / r['daemon_us']:.0f}× |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vms", type=int, nargs="+", default=[10, 40])
    ap.add_argument("--seconds", type=int, default=90)
    ap.add_argument("--libvirt", action="store_true",
                    help="also bench/libvirt_stats.py on as many guests")
    args = ap.parse_args()
    if not_root():
        return 2
    if args.libvirt and (why := libvirt_missing()):
        print(why, file=sys.stderr)
        return 2
    try:
        rows = run(args)
    except LibvirtRunError as e:
        print(e, file=sys.stderr)
        return 1
    if rows:
        print_libvirt(rows)
    return 0


def run(args: argparse.Namespace) -> list[Row]:
    """The daemon table, row by row; with --libvirt, libvirt's figures."""
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        floor_bin = Path(tmp) / "floor"
        subprocess.run(["cc", "-O2", "-Wall", "-Werror", "-o", str(floor_bin),
                        str(ROOT / "bench/floor.c")], check=True)
        print("CPU µs per VM-sweep at 1 Hz (CPU time, not wall time)")
        print("| VMs | sweeps | daemon | daemon (ticks) | prober | floor | "
              "daemon / floor | RSS MB | threads (heaviest first) |")
        print("|---|---|---|---|---|---|---|---|---|")
        for n in args.vms:
            workdir = Path(tmp) / f"n{n}"
            workdir.mkdir()
            r = measure(n, args.seconds, floor_bin, workdir)
            threads = ", ".join(f"{t:.1f}" for t in r["threads"] if t >= 0.05)
            print(f"| {r['vms']} | {r['sweeps']} | {r['daemon_us']:.1f} | "
                  f"{r['daemon_ticks_us']:.1f} | {r['prober_us']:.1f} | "
                  f"{r['floor_us']:.1f} | "
                  f"{r['daemon_us'] / r['floor_us']:.2f} | "
                  f"{r['rss_mb']:.1f} | {threads} |", flush=True)
            if args.libvirt:  # this N's guests are gone
                rows.append((r, libvirt_cost(n)))
    return rows


if __name__ == "__main__":
    sys.exit(main())
