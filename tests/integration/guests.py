"""Real KVM guests, taps and disk images for the integration tests.

Every guest is a child of the test process (no -daemonize), so the tests
can observe it as a zombie and always reap it; taps get IPv6 disabled before
they come up, so nothing moves on them that a test did not send.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid as uuid_mod
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from needs import require

ETH_P_EXPERIMENTAL = 0x88B5  # IEEE 802 local experimental EtherType


def run(*cmd: str) -> None:
    """Run a command; the test skips naming its package if it is missing."""
    require(cmd[0])
    subprocess.run(cmd, check=True, capture_output=True)


def make_tap(name: str) -> str:
    run("ip", "tuntap", "add", "dev", name, "mode", "tap")
    Path(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6").write_text("1")
    run("ip", "link", "set", name, "up")
    return name


def delete_tap(name: str) -> None:
    subprocess.run(["ip", "link", "del", name], capture_output=True)


def tap_counters(name: str) -> dict[str, int]:
    base = Path(f"/sys/class/net/{name}/statistics")
    return {f: int((base / f).read_text()) for f in (
        "rx_bytes", "rx_packets", "rx_errors", "rx_dropped",
        "tx_bytes", "tx_packets", "tx_errors", "tx_dropped")}


def send_frames(ifname: str, count: int, size: int) -> None:
    """Write ``count`` raw Ethernet frames of ``size`` bytes into a tap."""
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((ifname, 0))
        header = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + \
            ETH_P_EXPERIMENTAL.to_bytes(2, "big")
        frame = header + b"\x00" * (size - len(header))
        for _ in range(count):
            s.send(frame)


@dataclass
class Guest:
    """One QEMU process started by a test."""

    name: str
    uuid: str | None
    workdir: Path
    vcpus: int = 2
    mem_mib: int = 64
    taps: list[str] = field(default_factory=list)
    disks: list[Path] = field(default_factory=list)
    accel: str = "kvm"
    named_threads: bool = True
    paused: bool = False
    proc: subprocess.Popen | None = None

    def argv(self) -> list[str]:
        name = f"guest={self.name}" + (",debug-threads=on"
                                       if self.named_threads else "")
        args = ["qemu-system-x86_64", "-accel", self.accel,
                "-m", str(self.mem_mib), "-smp", str(self.vcpus),
                "-nodefaults", "-nographic", "-serial", "none",
                "-monitor", "none", "-name", name]
        if self.uuid:
            args += ["-uuid", self.uuid]
        for i, tap in enumerate(self.taps):
            args += ["-netdev", f"tap,id=n{i},ifname={tap},script=no,"
                                f"downscript=no",
                     "-device", f"virtio-net-pci,netdev=n{i},"
                                f"mac={self.mac(i)}"]
        for i, disk in enumerate(self.disks):
            fmt = "qcow2" if disk.suffix == ".qcow2" else "raw"
            args += ["-drive", f"file={disk},format={fmt},if=virtio,"
                               f"cache=none,id=d{i}"]
        if self.paused:
            args.append("-S")
        return args

    def mac(self, i: int) -> str:
        tag = zlib.crc32(self.name.encode()) & 0xff
        return f"52:54:00:{tag:02x}:00:{i:02x}"

    def start(self) -> Guest:
        log = open(self.workdir / f"{self.name}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=log)
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self, reap: bool = True) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        if reap:
            self.proc.wait(timeout=30)
            self.proc = None
            return
        deadline = time.monotonic() + 30  # SIGKILL lands asynchronously
        while _state(self.pid) not in ("Z", "X", None):
            if time.monotonic() > deadline:
                raise TimeoutError(f"pid {self.pid} survived SIGKILL")
            time.sleep(0.01)

    def frozen(self) -> _Frozen:
        """Context: the whole process stopped (SIGSTOP), so /proc is still."""
        return _Frozen(self.pid)


def _state(pid: int | str) -> str | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return text.rsplit(")", 1)[1].split()[0]


def stop_process(pid: int) -> None:
    """SIGSTOP ``pid`` and wait until every thread of it is stopped, so
    its CPU counters no longer move."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # wait until every thread stopped
        states = {_state(f"{pid}/task/{t}")
                  for t in os.listdir(f"/proc/{pid}/task")}
        if states <= {"T", "t"}:
            return
        time.sleep(0.01)
    raise TimeoutError(f"pid {pid} did not stop")


class _Frozen:
    def __init__(self, pid: int) -> None:
        self.pid = pid

    def __enter__(self) -> None:
        stop_process(self.pid)

    def __exit__(self, *exc: object) -> None:
        os.kill(self.pid, signal.SIGCONT)


def raw_image(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def qcow2_image(path: Path, size: int) -> Path:
    run("qemu-img", "create", "-q", "-f", "qcow2", str(path), str(size))
    return path


def new_uuid() -> str:
    return str(uuid_mod.uuid4())
