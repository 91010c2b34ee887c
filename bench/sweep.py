"""Sweep benchmark: vmagent's cost per VM against the kernel's floor.

Starts N paused KVM guests (``qemu -S``; 2 vCPUs, one tap, one raw disk
each), then measures the CPU time of the measuring thread, per VM-sweep:

- ``vmagent``: a full ``Prober.sample()`` (native reads + the records);
- ``native``: the native reads alone (``vmprobe_vm_read`` per VM, and the
  one ``/proc/net/dev`` read of the sweep);
- ``floor``: bench/floor.c reading the same information the cheapest way
  the kernel allows (issue 16): per VM ``/proc/<pid>/{stat,status,io}``,
  every vCPU (and vhost) thread's ``schedstat``, ``fstat`` of each disk
  through an ``O_PATH`` fd, block devices' ``stat``; one ``/proc/net/dev``
  read per sweep for all taps.  No parsing;
- ``debugfs`` (at 1 Hz only): what opening the debugfs KVM counters every
  sweep would cost (the prober did until issue 16; now it reads them once
  per rescan where the VMM keeps no binary stats fd, in neither column);
- discovery: a first ``discover()`` (every process new) and a steady one.

Twice: back-to-back (each the median over ``--rounds`` sweeps, the three
interleaved five times, the best median of each reported), and at the
daemon's cadence, one sweep a second for ``--cadence`` seconds (the median;
the floor runs in its own process at the same cadence meanwhile).

Run as root from the repository:
    sudo .venv/bin/python bench/sweep.py --vms 20 50
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from integration.guests import Guest, delete_tap, make_tap, raw_image  # noqa: E402
from vmagent.probes import VM, Prober  # noqa: E402
from vmagent.probes._native import lib  # noqa: E402

REPEATS = 5
TEXT, SMALL = 8191, 127  # the native code's read sizes (native/linux/vm.c)


def floor_plan(prober: Prober, vms: list[VM]) -> str:
    """The same information by the cheapest kernel path (issue 16), in
    bench/floor.c's plan format."""
    lines = [f"readall {prober.procfs}/net/dev"] \
        if any(vm.nics for vm in vms) else []
    for vm in vms:
        pdir = f"{prober.procfs}/{vm.pid}"
        lines.append("vm")
        lines += [f"pread {TEXT} {pdir}/{f}" for f in ("stat", "status", "io")]
        lines += [f"pread {SMALL} {pdir}/task/{t.tid}/schedstat"
                  for t in vm.vcpu_threads]
        lines += [f"pread {SMALL} {prober.procfs}/{k}/schedstat"
                  for k in vm.vhost_pids]
        lines += [f"fstat {pdir}/fd/{d.fd}" for d in vm.disks]
        lines += [f"pread {SMALL} {prober.sysfs}/dev/block/"
                  f"{d.block_device}/stat" for d in vm.disks
                  if d.block_device]
    return "\n".join(lines) + "\n"


def debugfs_plan(vms: list[VM]) -> str:
    """The debugfs KVM counters opened, read and closed (they cannot
    pread), for what reading them every sweep would cost."""
    lines = []
    for vm in vms:
        lines.append("vm")
        lines += [f"reopen {p}" for _, p in vm.kvm_stats]
    return "\n".join(lines) + "\n"


def floor_at_cadence(floor_bin: Path, plan: str,
                     seconds: int) -> subprocess.Popen[str]:
    """bench/floor.c sweeping ``plan`` once a second, started now."""
    proc = subprocess.Popen(  # noqa: S603 - our own binary
        [str(floor_bin), str(seconds), "1000"], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None
    proc.stdin.write(plan)
    proc.stdin.close()
    return proc


def result(proc: subprocess.Popen[str]) -> float:
    assert proc.stdout is not None
    out = float(proc.stdout.read())
    proc.wait(timeout=60)
    return out


def per_vm_us(fn: Callable[[], object], n_vms: int, rounds: int) -> float:
    """Median thread CPU time of ``fn`` over ``rounds`` calls, per VM."""
    times = []
    for _ in range(rounds):
        t0 = time.thread_time_ns()
        fn()
        times.append(time.thread_time_ns() - t0)
    return statistics.median(times) / 1e3 / n_vms


def at_cadence(fns: list[Callable[[], object]], n_vms: int,
               seconds: int) -> list[float]:
    """Each of ``fns`` once a second (spread over the second), for
    ``seconds``: the median thread CPU time of each, per VM."""
    times: list[list[int]] = [[] for _ in fns]
    start = time.monotonic()
    for s in range(seconds):
        for i, fn in enumerate(fns):
            delay = start + s + (i + 0.25) / (len(fns) + 1) - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            t0 = time.thread_time_ns()
            fn()
            times[i].append(time.thread_time_ns() - t0)
    return [statistics.median(t) / 1e3 / n_vms for t in times]


def start_guests(n: int, workdir: Path) -> tuple[list[Guest], list[str]]:
    guests, taps = [], []
    for i in range(n):
        tap = make_tap(f"vmb{os.getpid() % 10000}x{i}")
        taps.append(tap)
        g = Guest(name=f"bench-{i}", uuid=None, workdir=workdir, taps=[tap],
                  disks=[raw_image(workdir / f"d{i}.img", 64 << 20)],
                  paused=True)
        guests.append(g.start())
    return guests, taps


def stop_guests(guests: list[Guest], taps: list[str]) -> None:
    for g in guests:
        g.kill()
    for t in taps:
        delete_tap(t)


def not_root() -> bool:
    """True (and says so) where the benchmark cannot run: it needs root
    for guests, taps and other processes' /proc."""
    if os.geteuid() != 0:
        print("run as root (guests, taps, other processes' /proc)",
              file=sys.stderr)
        return True
    return False


def wait_all(prober: Prober, pids: set[int]) -> list[VM]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        prober.discover()
        vms = [v for v in prober.vms() if v.pid in pids and v.complete]
        if len(vms) == len(pids):
            return vms
        time.sleep(0.1)
    raise TimeoutError("guests not all discovered")


def measure(n: int, rounds: int, cadence: int, floor_bin: Path,
            workdir: Path) -> dict:
    guests, taps = start_guests(n, workdir)
    try:
        pids = {g.pid for g in guests}
        with Prober("bench-host") as warmup:
            wait_all(warmup, pids)  # every guest fully up
        t0 = time.perf_counter()
        prober = Prober("bench-host")
        prober.discover()
        cold_ms = (time.perf_counter() - t0) * 1e3
        vms = [v for v in prober.vms() if v.pid in pids]
        assert len(vms) == n, f"found {len(vms)} of {n} guests"
        extra = len(prober.vms()) - n  # other VMs on the host
        steady_us = per_vm_us(prober.discover, 1, rounds)
        metered = list(prober._metered.values())  # noqa: SLF001
        # the sweep's shared /proc/net/dev read, where the prober has one
        net_dev = getattr(prober, "_net_dev", None)

        def native_only() -> None:
            if net_dev is not None:
                net_dev.read()
            for m in metered:
                lib.vmprobe_vm_read(m.handle, m.reading)

        plan = floor_plan(prober, prober.vms())
        sweep_us, native_us, floor_us = [], [], []
        for _ in range(REPEATS):  # interleaved: noise hits all three alike
            sweep_us.append(per_vm_us(prober.sample, n + extra, rounds))
            native_us.append(per_vm_us(native_only, n + extra, rounds))
            floor_us.append(float(subprocess.run(
                [str(floor_bin), str(rounds)], input=plan, text=True,
                stdout=subprocess.PIPE, check=True).stdout))
        # best of the repeats' medians: the cost without interference
        sweep_us, native_us, floor_us = (min(sweep_us), min(native_us),
                                         min(floor_us))
        floor_proc = floor_at_cadence(floor_bin, plan, cadence)
        debugfs_proc = floor_at_cadence(floor_bin,
                                        debugfs_plan(prober.vms()), cadence)
        time.sleep(0.5)  # half a second apart from the floor's sweeps
        sweep_1hz, native_1hz = at_cadence([prober.sample, native_only],
                                           n + extra, cadence)
        floor_1hz, debugfs_1hz = result(floor_proc), result(debugfs_proc)
        prober.close()
        return {"vms": n, "sweep_us": sweep_us, "native_us": native_us,
                "floor_us": floor_us, "ratio": sweep_us / floor_us,
                "sweep_1hz": sweep_1hz, "native_1hz": native_1hz,
                "floor_1hz": floor_1hz, "ratio_1hz": sweep_1hz / floor_1hz,
                "debugfs_1hz": debugfs_1hz,
                "discover_cold_ms": cold_ms, "discover_steady_us": steady_us,
                "processes": len([p for p in os.listdir("/proc")
                                  if p.isdigit()])}
    finally:
        stop_guests(guests, taps)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vms", type=int, nargs="+", default=[20, 50])
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--cadence", type=int, default=60,
                    help="seconds of one sweep a second (0: none)")
    args = ap.parse_args()
    if not_root():
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        floor_bin = Path(tmp) / "floor"
        subprocess.run(["cc", "-O2", "-Wall", "-Werror", "-o", str(floor_bin),
                        str(ROOT / "bench/floor.c")], check=True)
        print("CPU µs per VM-sweep (thread CPU time): back-to-back, "
              "then at 1 Hz")
        print("| VMs | vmagent | native reads | floor | vmagent/floor | "
              "vmagent 1 Hz | native 1 Hz | floor 1 Hz | vmagent/floor "
              "1 Hz | debugfs 1 Hz | first discover ms | "
              "steady discover µs | processes |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for n in args.vms:
            r = measure(n, args.rounds, max(args.cadence, 1), floor_bin,
                        Path(tmp))
            print(f"| {r['vms']} | {r['sweep_us']:.1f} | {r['native_us']:.1f}"
                  f" | {r['floor_us']:.1f} | {r['ratio']:.2f} | "
                  f"{r['sweep_1hz']:.1f} | {r['native_1hz']:.1f} | "
                  f"{r['floor_1hz']:.1f} | {r['ratio_1hz']:.2f} | "
                  f"{r['debugfs_1hz']:.1f} | "
                  f"{r['discover_cold_ms']:.1f} | "
                  f"{r['discover_steady_us']:.0f} | {r['processes']} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
