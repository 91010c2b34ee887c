"""Runs the Linux test guest under TCG with one tap and one raw disk, and
drives its steps over the serial console (see init.sh)."""

from __future__ import annotations

import queue
import subprocess
import threading
import time
from pathlib import Path

from testguest.builder import GuestImage

BOOT_TIMEOUT_S = 120.0  # software emulation on a loaded 2-core machine


class GuestError(RuntimeError):
    """The guest reported an error, exited, or did not answer in time."""


class LinuxTestGuest:
    """One test guest process; use as a context manager."""

    def __init__(self, image: GuestImage, workdir: Path, *, name: str,
                 uuid: str, tap: str, mac: str, disk: Path,
                 steps: list[str]) -> None:
        self.image, self.workdir = image, workdir
        self.name, self.uuid, self.tap, self.mac = name, uuid, tap, mac
        self.disk, self.steps = disk, steps
        self.proc: subprocess.Popen[bytes] | None = None
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.console: list[str] = []

    def argv(self) -> list[str]:
        append = ("console=ttyS0 quiet loglevel=1 ipv6.disable=1 panic=-1 "
                  f"vmtest.steps={','.join(self.steps)}")
        return [
            "qemu-system-x86_64", "-accel", "tcg", "-m", "256", "-smp", "1",
            "-nodefaults", "-display", "none", "-no-reboot",
            "-name", f"guest={self.name},debug-threads=on",
            "-uuid", self.uuid, "-serial", "stdio", "-monitor", "none",
            "-kernel", str(self.image.kernel),
            "-initrd", str(self.image.initrd), "-append", append,
            "-netdev", f"tap,id=n0,ifname={self.tap},script=no,downscript=no",
            "-device", f"virtio-net-pci,netdev=n0,mac={self.mac}",
            "-drive", f"file={self.disk},format=raw,if=virtio,cache=none",
        ]

    def __enter__(self) -> LinuxTestGuest:
        log = open(self.workdir / f"{self.name}.qemu.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=log)
        log.close()
        threading.Thread(target=self._read_console, daemon=True).start()
        self.expect("VMTEST READY", BOOT_TIMEOUT_S)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(timeout=30)
            self.proc = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _read_console(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            self.console.append(line)
            if line.startswith("VMTEST"):
                self.lines.put(line)
        self.lines.put(None)  # the guest exited

    def expect(self, wanted: str, timeout: float = 60.0) -> str:
        """Wait for the next VMTEST line and check it is ``wanted``."""
        deadline = time.monotonic() + timeout
        try:
            line = self.lines.get(
                timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise GuestError(f"no {wanted!r} in {timeout}s; console: "
                             f"{self.console[-20:]}") from None
        if line != wanted:
            raise GuestError(f"expected {wanted!r}, got {line!r}; console: "
                             f"{self.console[-20:]}")
        return line

    def run_step(self, n: int, timeout: float = 120.0) -> None:
        """Let step ``n`` (1-based) run and wait until the guest says done."""
        self.expect(f"VMTEST STEP {n} {self.steps[n - 1]}", timeout)
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.flush()
        self.expect(f"VMTEST DONE {n}", timeout)
