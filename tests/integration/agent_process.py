"""A real ``vmagent run`` process for the daemon tests, in its own state
dir, on a free loopback port; always stopped after the test."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from vmagent.collector import Client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AgentProcess:
    def __init__(self, workdir: Path, extra_config: str = "",
                 interval: float = 0.5, fake_vms: int = 0,
                 state: Path | None = None) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.state = state or workdir / "state"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = workdir / "vmagent.toml"
        self.config.write_text(
            f'[agent]\nstate_dir = "{self.state}"\ninterval = {interval}\n'
            f'[api]\nlisten = "127.0.0.1:{self.port}"\n{extra_config}\n'
            + self._fake_host(fake_vms))
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def _fake_host(self, n: int) -> str:
        """A procfs/sysfs fixture tree with n QEMU processes, so that every
        sweep has samples to write without real guests."""
        if not n:
            return ""
        from unit.fake_procfs import FakeHost

        host = FakeHost(self.workdir / "host")
        for i in range(n):
            host.process(1000 + i, "qemu-system-x86",
                         ["qemu", "-name", f"fake{i}", "-m", "1G"],
                         exe="/usr/bin/qemu-system-x86_64",
                         fds={4: "anon_inode:kvm-vm"}, utime=10 * i)
        return (f'[probes]\nprocfs = "{host.proc}"\nsysfs = "{host.sys}"\n'
                f'debugfs = "{host.debug}"\n')

    def cli(self, *args: str,
            timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "vmagent.cli", *args],
                              capture_output=True, text=True, timeout=timeout)

    def start(self, env: dict[str, str] | None = None,
              prefix: list[str] | None = None) -> AgentProcess:
        """Start ``vmagent run`` (behind ``prefix``, e.g. nsenter)."""
        log = open(self.workdir / f"agent{self.starts}.log", "wb")  # noqa: SIM115
        self.starts += 1
        self.proc = subprocess.Popen(
            [*(prefix or []), sys.executable, "-m", "vmagent.cli", "run",
             "-c", str(self.config)], stdout=log, stderr=log,
            env={**os.environ, **(env or {})})
        log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited with {self.proc.returncode}"
                                   f": {self.log_text()[-2000:]}")
            if self.cli("status", "-c", str(self.config)).returncode in (0, 1):
                return self
            time.sleep(0.1)
        raise TimeoutError("agent did not answer on its control socket")

    def log_text(self) -> str:
        return "".join(p.read_text(errors="replace")
                       for p in sorted(self.workdir.glob("agent*.log")))

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=60)
        self.proc = None
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=60)
        self.proc = None

    def token(self, consumer: str = "default") -> str:
        for line in (self.state / "tokens").read_text().splitlines():
            name, _, tok = line.partition(":")
            if name == consumer:
                return tok
        raise KeyError(consumer)

    def client(self, consumer: str = "default") -> Client:
        return Client(self.url, consumer, self.token(consumer), timeout=30)

    def public_key(self) -> bytes:
        return (self.state / "host.pub").read_bytes()

    def request(self, path: str, method: str = "GET", token: str | None = "",
                body: bytes | None = None, ctype: str = "") \
            -> tuple[int, dict[str, Any] | bytes]:
        """A raw request: (status, JSON body or raw bytes)."""
        req = urllib.request.Request(self.url + path, data=body,
                                     method=method)
        if token is not None:
            req.add_header("Authorization",
                           f"Bearer {token or self.token()}")
        if ctype:
            req.add_header("Content-Type", ctype)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                status, raw, kind = resp.status, resp.read(), \
                    resp.headers.get("Content-Type", "")
        except urllib.error.HTTPError as err:
            status, raw, kind = err.code, err.read(), \
                err.headers.get("Content-Type", "")
        if kind.startswith("application/json"):
            return status, json.loads(raw)
        return status, raw

    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def hup(self) -> None:
        os.kill(self.pid(), signal.SIGHUP)
