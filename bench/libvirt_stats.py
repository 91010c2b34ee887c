"""What users run today: libvirt's getAllDomainStats on N paused KVM guests.

Run by hand, as root, with Debian's Python and libvirt (not in CI):
    apt-get install libvirt-daemon-system python3-libvirt
    sudo /usr/bin/python3 bench/libvirt_stats.py --vms 20 50

It backs up /etc/libvirt/qemu.conf, sets what libvirt needs on this host
(root user, no dynamic ownership, cgroups or namespaces, QEMU logs to files),
starts its own libvirtd, creates N paused guests shaped like bench/sweep.py's
(2 vCPUs, 64 MiB, one tap, one raw disk; libvirt adds its default balloon
and USB controller), times getAllDomainStats() and restores everything: its
guests destroyed, their taps, disks and logs removed, libvirtd stopped,
qemu.conf as it was.

Per VM and call it reports the wall time (median of ``--rounds`` calls) and
the CPU time the calls cost: this process, libvirtd and the guests' QEMU
processes, less what the same processes spend over as long a pause without
calls.  ``--json`` prints one JSON object per N instead of the table
(bench/daemon.py --libvirt reads it).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

try:
    import libvirt
except ImportError:  # checked in main(), with a one-line error
    libvirt = None

QEMU_CONF = Path("/etc/libvirt/qemu.conf")
MARK = "# added by vmagent bench/libvirt_stats.py"
SETTINGS = f"""
{MARK}
user = "root"
group = "root"
dynamic_ownership = 0
cgroup_controllers = [ ]
namespaces = [ ]
stdio_handler = "file"
"""
PREFIX = "vmagent-bench-"
RUN_DIR = Path("/run/libvirt/qemu")  # <name>.pid of each running guest
LOG_DIR = Path("/var/log/libvirt/qemu")  # <name>.log (stdio_handler=file)
LIBVIRTD_PID = Path("/run/libvirtd.pid")
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


class BenchError(Exception):
    """A condition the benchmark cannot run under; its message is one line."""


def tap_name(i: int) -> str:
    return f"vlb{i}"


def delete_tap(name: str) -> None:
    if Path(f"/sys/class/net/{name}").exists():
        subprocess.run(["ip", "link", "del", name], capture_output=True)


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process, every thread's (exited ones too)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def tick_ns() -> float:
    return 1e9 / os.sysconf("SC_CLK_TCK")


def guest_pid(name: str) -> int:
    try:
        return int((RUN_DIR / f"{name}.pid").read_text().strip())
    except (OSError, ValueError) as e:
        raise BenchError(f"no pid for guest {name}: {e}") from None


def running_libvirtd() -> int | None:
    try:
        pid = int(LIBVIRTD_PID.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if Path(f"/proc/{pid}").exists() else None


def start_libvirtd() -> subprocess.Popen[bytes]:
    other = running_libvirtd()
    if other is not None:
        raise BenchError(f"a libvirtd is already running (pid {other}); "
                         "stop it first")
    libvirt.registerErrorHandler(lambda *_: None, None)  # retries are quiet
    try:
        proc = subprocess.Popen(["libvirtd"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    except FileNotFoundError:
        raise BenchError("no libvirtd: apt-get install "
                         "libvirt-daemon-system") from None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"libvirtd exited at start ({proc.returncode})")
        try:
            libvirt.open("qemu:///system").close()
            return proc
        except libvirt.libvirtError:
            time.sleep(0.2)
    stop_libvirtd(proc)
    raise BenchError("libvirtd did not answer within 30 s")


def stop_libvirtd(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


def destroy_stale(conn: Any) -> None:
    """Guests a killed earlier run left behind (QEMU outlives libvirtd)."""
    for d in conn.listAllDomains():
        if d.name().startswith(PREFIX) and d.isActive():
            d.destroy()


def ticks_of(pids: list[int]) -> int:
    return sum(cpu_ticks(p) for p in pids)


def timed_calls(conn: Any, n: int, rounds: int, daemon: int,
                guests: list[int]) -> dict[str, Any]:
    """Times ``rounds`` calls back to back, then as long a pause without
    calls: what libvirtd and the guests spend anyway."""
    conn.getAllDomainStats()  # warm up
    walls = []
    d0, g0 = cpu_ticks(daemon), ticks_of(guests)
    c0 = time.process_time()
    for _ in range(rounds):
        w0 = time.perf_counter()
        stats = conn.getAllDomainStats()
        walls.append(time.perf_counter() - w0)
    client_ns = (time.process_time() - c0) * 1e9
    d1, g1 = cpu_ticks(daemon), ticks_of(guests)
    time.sleep(sum(walls))
    d2, g2 = cpu_ticks(daemon), ticks_of(guests)
    if len(stats) < n:
        raise BenchError(f"getAllDomainStats returned {len(stats)} of {n}")
    per = rounds * len(stats)
    libvirtd_ns = max(0, (d1 - d0) - (d2 - d1)) * tick_ns()
    qemu_ns = max(0, (g1 - g0) - (g2 - g1)) * tick_ns()
    return {
        "vms": len(stats), "rounds": rounds,
        "wall_us": statistics.median(walls) * 1e6 / len(stats),
        "cpu_us": (libvirtd_ns + qemu_ns + client_ns) / 1e3 / per,
        "libvirtd_us": libvirtd_ns / 1e3 / per,
        "qemu_us": qemu_ns / 1e3 / per,
        "client_us": client_ns / 1e3 / per,
        "idle_ticks": (d2 - d1) + (g2 - g1),
    }


def destroy(domain: Any, pid: int | None) -> None:
    try:
        domain.destroy()
    except libvirt.libvirtError:
        if pid is not None and Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)  # libvirtd gone: its QEMU is not


def measure(conn: Any, daemon_pid: int, n: int, rounds: int,
            workdir: Path) -> dict[str, Any]:
    domains: list[tuple[Any, int | None]] = []
    names = [f"{PREFIX}{i}" for i in range(n)]
    try:
        for i, name in enumerate(names):
            delete_tap(tap_name(i))  # a killed run's
            disk = workdir / f"lv{i}.img"
            with open(disk, "wb") as f:
                f.truncate(64 << 20)
            xml = DOMAIN.format(name=name, disk=disk, tap=tap_name(i))
            d = conn.createXML(xml, libvirt.VIR_DOMAIN_START_PAUSED)
            domains.append((d, None))
            domains[-1] = (d, guest_pid(name))
        guests = [pid for _, pid in domains if pid is not None]
        return timed_calls(conn, n, rounds, daemon_pid, guests)
    finally:
        for d, pid in domains:
            destroy(d, pid)
        for i, name in enumerate(names):
            delete_tap(tap_name(i))  # libvirt deletes managed taps itself
            (LOG_DIR / f"{name}.log").unlink(missing_ok=True)
            (workdir / f"lv{i}.img").unlink(missing_ok=True)


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


def write_settings() -> str:
    """Append SETTINGS to qemu.conf; return the text to restore (without
    the block a killed earlier run may have left)."""
    try:
        text = QEMU_CONF.read_text()
    except OSError as e:
        raise BenchError(f"cannot read {QEMU_CONF}: {e.strerror} (apt-get "
                         "install libvirt-daemon-system)") from None
    backup = text.split("\n" + MARK, 1)[0]
    QEMU_CONF.write_text(backup + SETTINGS)
    return backup


def run(args: argparse.Namespace) -> None:
    backup = write_settings()
    daemon = None
    try:
        daemon = start_libvirtd()
        conn = libvirt.open("qemu:///system")
        destroy_stale(conn)
        if not args.json:
            print("| VMs | getAllDomainStats µs/VM (wall) | CPU µs/VM | "
                  "libvirtd | QEMU | caller |")
            print("|---|---|---|---|---|---|")
        with tempfile.TemporaryDirectory() as tmp:
            for n in args.vms:
                r = measure(conn, daemon.pid, n, args.rounds, Path(tmp))
                if args.json:
                    print(json.dumps(r), flush=True)
                else:
                    print(f"| {n} | {r['wall_us']:.0f} | {r['cpu_us']:.0f} | "
                          f"{r['libvirtd_us']:.0f} | {r['qemu_us']:.0f} | "
                          f"{r['client_us']:.0f} |", flush=True)
        conn.close()
    except libvirt.libvirtError as e:
        raise BenchError(f"libvirt: {e.get_error_message()}") from None
    finally:
        if daemon is not None:
            stop_libvirtd(daemon)
        QEMU_CONF.write_text(backup)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vms", type=positive, nargs="+", default=[20, 50])
    ap.add_argument("--rounds", type=positive, default=50)
    ap.add_argument("--json", action="store_true",
                    help="one JSON object per N on stdout")
    args = ap.parse_args()
    me = "libvirt_stats.py"
    if libvirt is None:
        print(f"{me}: cannot import libvirt: run with Debian's "
              "/usr/bin/python3 and apt-get install python3-libvirt",
              file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print(f"{me}: run as root", file=sys.stderr)
        return 2
    # a SIGTERM (a parent's timeout) still restores qemu.conf, stops libvirtd
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        run(args)
    except BenchError as e:
        print(f"{me}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
