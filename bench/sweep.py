"""Sweep benchmark: vmagent's cost per VM against the kernel's floor.

Starts N paused KVM guests (``qemu -S``; 2 vCPUs, one tap, one raw disk
each), then measures, per VM:

- ``vmagent``: a full ``Prober.sample()`` (native reads + the records);
- ``native``: the native reads alone (``vmprobe_vm_read`` per VM);
- ``floor``: bench/floor.c pread()ing the very same files with cached fds
  (and stat()ing the same disk links), no parsing: the kernel's own cost;
- discovery: a first ``discover()`` (every process new) and a steady one.

Each of the three is the median over ``--rounds`` sweeps; the three run
interleaved five times and the best median of each is reported.

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
    """The files the native code reads, in bench/floor.c's plan format."""
    lines = []
    for vm in vms:
        pdir = f"{prober.procfs}/{vm.pid}"
        lines.append("vm")
        lines += [f"pread {TEXT} {pdir}/{f}" for f in ("stat", "status", "io")]
        lines += [f"pread {SMALL} {pdir}/task/{t.tid}/schedstat"
                  for t in vm.vcpu_threads]
        lines += [f"pread {SMALL} {prober.procfs}/{k}/schedstat"
                  for k in vm.vhost_pids]
        for nic in vm.nics:
            lines += [f"pread {SMALL} {prober.sysfs}/class/net/{nic.name}/"
                      f"statistics/{d}_{c}" for d in ("rx", "tx")
                      for c in ("bytes", "packets", "errors", "dropped")]
        lines += [f"stat {pdir}/fd/{d.fd}" for d in vm.disks]
        lines += [f"reopen {p}" for _, p in vm.kvm_stats]  # nonseekable
    return "\n".join(lines) + "\n"


def per_vm_us(fn: Callable[[], object], n_vms: int, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6 / n_vms


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


def wait_all(prober: Prober, pids: set[int]) -> list[VM]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        prober.discover()
        vms = [v for v in prober.vms() if v.pid in pids and v.complete]
        if len(vms) == len(pids):
            return vms
        time.sleep(0.1)
    raise TimeoutError("guests not all discovered")


def measure(n: int, rounds: int, floor_bin: Path, workdir: Path) -> dict:
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

        def native_only() -> None:
            for m in metered:
                lib.vmprobe_vm_read(m.handle, m.reading)

        plan = floor_plan(prober, prober.vms())
        sweep_us, native_us, floor_us = [], [], []
        for _ in range(REPEATS):  # interleaved: noise hits all three alike
            sweep_us.append(per_vm_us(prober.sample, n + extra, rounds))
            native_us.append(per_vm_us(native_only, n + extra, rounds))
            floor_us.append(float(subprocess.run(
                [str(floor_bin), str(rounds)], input=plan, text=True,
                capture_output=True, check=True).stdout))
        prober.close()
        # best of the repeats' medians: the cost without interference
        sweep_us, native_us, floor_us = (min(sweep_us), min(native_us),
                                         min(floor_us))
        return {"vms": n, "sweep_us": sweep_us, "native_us": native_us,
                "floor_us": floor_us, "ratio": sweep_us / floor_us,
                "discover_cold_ms": cold_ms, "discover_steady_us": steady_us,
                "processes": len([p for p in os.listdir("/proc")
                                  if p.isdigit()])}
    finally:
        for g in guests:
            g.kill()
        for t in taps:
            delete_tap(t)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vms", type=int, nargs="+", default=[20, 50])
    ap.add_argument("--rounds", type=int, default=300)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root (taps, other processes' /proc)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        floor_bin = Path(tmp) / "floor"
        subprocess.run(["cc", "-O2", "-Wall", "-Werror", "-o", str(floor_bin),
                        str(ROOT / "bench/floor.c")], check=True)
        print("| VMs | vmagent µs/VM | native reads µs/VM | floor µs/VM | "
              "vmagent/floor | first discover ms | steady discover µs | "
              "processes |")
        print("|---|---|---|---|---|---|---|---|")
        for n in args.vms:
            r = measure(n, args.rounds, floor_bin, Path(tmp))
            print(f"| {r['vms']} | {r['sweep_us']:.1f} | {r['native_us']:.1f}"
                  f" | {r['floor_us']:.1f} | {r['ratio']:.2f} | "
                  f"{r['discover_cold_ms']:.1f} | "
                  f"{r['discover_steady_us']:.0f} | {r['processes']} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
