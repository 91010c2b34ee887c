"""What users run today: libvirt's getAllDomainStats on N paused KVM guests.

Run by hand, as root, with Debian's Python and libvirt (not in CI):
    apt-get install libvirt-daemon-system python3-libvirt
    sudo /usr/bin/python3 bench/libvirt_stats.py --vms 20 50

It backs up /etc/libvirt/qemu.conf, sets what libvirt needs on this host
(root user, no dynamic ownership, cgroups or namespaces, QEMU logs to files),
starts its own libvirtd, creates N paused guests shaped like bench/sweep.py's
(2 vCPUs, 64 MiB, one tap, one raw disk), times getAllDomainStats() and
restores everything.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import libvirt

QEMU_CONF = Path("/etc/libvirt/qemu.conf")
SETTINGS = """
# added by vmagent bench/libvirt_stats.py
user = "root"
group = "root"
dynamic_ownership = 0
cgroup_controllers = [ ]
namespaces = [ ]
stdio_handler = "file"
"""
DOMAIN = """<domain type='kvm'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>2</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw' cache='none'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='ethernet'>
      <target dev='{tap}' managed='yes'/>
      <model type='virtio'/>
    </interface>
  </devices>
</domain>"""


def start_libvirtd() -> subprocess.Popen:
    libvirt.registerErrorHandler(lambda *_: None, None)  # retries are quiet
    proc = subprocess.Popen(["libvirtd"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            libvirt.open("qemu:///system").close()
            return proc
        except libvirt.libvirtError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("libvirtd did not answer")


def measure(conn: libvirt.virConnect, n: int, rounds: int,
            workdir: Path) -> float:
    domains = []
    try:
        for i in range(n):
            disk = workdir / f"lv{i}.img"
            with open(disk, "wb") as f:
                f.truncate(64 << 20)
            xml = DOMAIN.format(name=f"vmagent-bench-{i}", disk=disk,
                                tap=f"vlb{i}")
            domains.append(
                conn.createXML(xml, libvirt.VIR_DOMAIN_START_PAUSED))
        conn.getAllDomainStats()  # warm up
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            stats = conn.getAllDomainStats()
            times.append(time.perf_counter() - t0)
        assert len(stats) >= n
        return statistics.median(times) * 1e6 / len(stats)
    finally:
        for d in domains:
            d.destroy()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vms", type=int, nargs="+", default=[20, 50])
    ap.add_argument("--rounds", type=int, default=50)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root", file=sys.stderr)
        return 2
    backup = QEMU_CONF.read_text()
    QEMU_CONF.write_text(backup + SETTINGS)
    daemon = None
    try:
        daemon = start_libvirtd()
        conn = libvirt.open("qemu:///system")
        print("| VMs | libvirt getAllDomainStats µs/VM |")
        print("|---|---|")
        with tempfile.TemporaryDirectory() as tmp:
            for n in args.vms:
                us = measure(conn, n, args.rounds, Path(tmp))
                print(f"| {n} | {us:.0f} |", flush=True)
        conn.close()
    finally:
        if daemon is not None:
            daemon.terminate()
            daemon.wait(timeout=30)
        QEMU_CONF.write_text(backup)
    return 0


if __name__ == "__main__":
    sys.exit(main())
