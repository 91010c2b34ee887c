"""A procfs/sysfs tree in a temp dir, for the edge cases real guests on this
host cannot show (vhost kernel threads, hugepages, Firecracker, ...).

Symlinks stand in for /proc/<pid>/fd and exe: their targets are just text,
so ``anon_inode:kvm-vm`` can be written as it is.
"""

from __future__ import annotations

import os
from pathlib import Path

BOOT_ID = "0b0b0b0b-1111-2222-3333-444444444444"
PF_KTHREAD = 0x00200000


def stat_line(pid: int, comm: str, *, state: str = "S", flags: int = 0,
              utime: int = 0, stime: int = 0, starttime: int = 100,
              rss: int = 0, guest: int = 0) -> str:
    f = ["0"] * 52
    f[3], f[9], f[14], f[15] = state, str(flags), str(utime), str(stime)
    f[20], f[22], f[24], f[43] = "1", str(starttime), str(rss), str(guest)
    return f"{pid} ({comm}) " + " ".join(f[3:]) + "\n"


class FakeHost:
    """Builds ``proc/`` and ``sys/`` under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.proc = root / "proc"
        self.sys = root / "sys"
        self.debug = root / "debug"
        (self.proc / "sys/kernel/random").mkdir(parents=True)
        (self.proc / "sys/kernel/random/boot_id").write_text(BOOT_ID + "\n")
        self.debug.mkdir()
        self.net_devs: dict[str, dict[str, int]] = {}

    def process(self, pid: int, comm: str, argv: list[str], *,
                exe: str | None = None, fds: dict[int, str] | None = None,
                threads: dict[int, str] | None = None, flags: int = 0,
                utime: int = 0, stime: int = 0, starttime: int = 100,
                status: str = "VmRSS:\t  1024 kB\nHugetlbPages:\t 0 kB\n",
                io: str = "rchar: 1\nwchar: 2\nsyscr: 3\nsyscw: 4\n"
                          "read_bytes: 4096\nwrite_bytes: 8192\n"
                          "cancelled_write_bytes: 0\n") -> Path:
        d = self.proc / str(pid)
        (d / "fd").mkdir(parents=True)
        (d / "fdinfo").mkdir()
        (d / "task").mkdir()
        (d / "stat").write_text(stat_line(pid, comm, flags=flags, utime=utime,
                                          stime=stime, starttime=starttime))
        (d / "status").write_text(status)
        (d / "io").write_text(io)
        (d / "schedstat").write_text("5000 6000 7\n")
        (d / "cmdline").write_bytes(b"".join(a.encode() + b"\0"
                                             for a in argv))
        if exe:
            os.symlink(exe, d / "exe")
        for fd, target in (fds or {}).items():
            os.symlink(target, d / "fd" / str(fd))
            (d / "fdinfo" / str(fd)).write_text("pos:\t0\nflags:\t02\n")
        for tid, name in (threads or {pid: comm}).items():
            t = d / "task" / str(tid)
            t.mkdir()
            (t / "comm").write_text(name + "\n")
            (t / "schedstat").write_text(f"{tid * 1000} {tid} 1\n")
        return d

    def kthread(self, pid: int, comm: str, run_ns: int) -> None:
        d = self.proc / str(pid)
        d.mkdir()
        (d / "stat").write_text(stat_line(pid, comm, flags=PF_KTHREAD))
        (d / "schedstat").write_text(f"{run_ns} 0 1\n")
        (d / "cmdline").write_bytes(b"")

    def tap(self, pid: int, fd: int, name: str,
            counters: dict[str, int]) -> None:
        (self.proc / str(pid) / "fdinfo" / str(fd)).write_text(
            f"pos:\t0\nflags:\t0104002\niff:\t{name}\n")
        stats = self.sys / "class/net" / name / "statistics"
        stats.mkdir(parents=True, exist_ok=True)
        for key in ("rx_bytes", "rx_packets", "rx_errors", "rx_dropped",
                    "tx_bytes", "tx_packets", "tx_errors", "tx_dropped"):
            (stats / key).write_text(f"{counters.get(key, 0)}\n")
        self.net_devs[name] = counters
        self.write_net_dev()

    def write_net_dev(self) -> None:
        """``proc/net/dev`` of every tap, laid out as the kernel does."""
        c = [f"{n:>6}: " + " ".join(str(v) for v in (
            d.get("rx_bytes", 0), d.get("rx_packets", 0),
            d.get("rx_errors", 0), d.get("rx_dropped", 0), 0, 0, 0, 0,
            d.get("tx_bytes", 0), d.get("tx_packets", 0),
            d.get("tx_errors", 0), d.get("tx_dropped", 0), 0, 0, 0, 0))
             for n, d in self.net_devs.items()]
        (self.proc / "net").mkdir(exist_ok=True)
        (self.proc / "net/dev").write_text(
            "Inter-|   Receive                                            "
            "    |  Transmit\n face |bytes    packets errs drop fifo frame "
            "compressed multicast|bytes    packets errs drop fifo colls "
            "carrier compressed\n" + "".join(line + "\n" for line in c))
