"""``vmcollector run`` as systemd runs it (systemd/vmcollector.service):
READY=1 and watchdog pings over ``NOTIFY_SOCKET``, SIGHUP reloads the
config (a bad one is kept out), and the instance's key is in the store."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from integration.conftest import wait_until, wait_until_still
from integration.test_collector import CollectorProcess
from vmagent.collector.store import connect


class Listener(threading.Thread):
    """A NOTIFY_SOCKET drained as systemd drains it (a full socket would
    block the sender)."""

    def __init__(self, path: str) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.2)
        self.got: list[str] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            with contextlib.suppress(TimeoutError):
                self.got.append(self.sock.recv(4096).decode())

    def seen(self, text: str) -> bool:
        return any(text in m for m in list(self.got))

    def close(self) -> None:
        self.done.set()
        self.join(5)
        self.sock.close()


def test_notify_watchdog_sighup_reload_and_instance_key(agent, tmp_path):
    a = agent(interval=0.2, fake_vms=1)
    b = agent(interval=0.2, fake_vms=1)
    c = CollectorProcess(tmp_path / "c", [("hv-a", a, a.public_key())],
                         interval="1s",
                         extra='instance = "solo"\nlease = "2s"\n')
    sock_path = tmp_path / "notify.sock"
    notify = Listener(str(sock_path))
    notify.start()
    env = {**os.environ, "NOTIFY_SOCKET": str(sock_path),
           "WATCHDOG_USEC": "1000000"}
    log = open(c.workdir / "collector.log", "ab")  # noqa: SIM115
    c.proc = subprocess.Popen(
        [sys.executable, "-m", "vmagent.collector.cli", "run", "-c",
         str(c.config)], stdout=log, stderr=log, env=env)
    log.close()
    try:
        wait_until(lambda: notify.seen("READY=1"), 20)
        wait_until(lambda: notify.seen("WATCHDOG=1"), 10)
        wait_until(lambda: c.records("hv-a"), 20)

        # the instance's key: what `key show` prints is in the store
        shown = c.cli("key", "show")
        assert shown.returncode == 0, shown.stderr
        store = connect(c.state, "sqlite")
        try:
            keys = store.instance_keys()
        finally:
            store.close()
        assert [(i, k.hex()) for i, k, _ in keys] == [
            ("solo", shown.stdout.strip())]

        # a config that does not load: logged, the old one kept
        good = c.config.read_text()
        c.config.write_text(good.replace('pull_interval = "1s"',
                                         'pull_interval = "soon"'))
        c.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "reload_failed" in c.log_text(), 10)
        assert c.proc.poll() is None
        n = len(c.records("hv-a"))
        wait_until(lambda: len(c.records("hv-a")) > n, 10)  # still pulling

        # a valid one: its new host is pulled, without a restart
        token = c.workdir / "hv-b.token"
        token.write_text(b.token())
        c.config.write_text(
            good.replace('pull_interval = "1s"', 'pull_interval = "2s"')
            + f'[[hosts]]\nname = "hv-b"\nurl = "{b.url}"\n'
              f'token_file = "{token}"\n'
              f'pubkey = "{b.public_key().hex()}"\n')
        c.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "config_reloaded" in c.log_text(), 10)
        wait_until(lambda: c.records("hv-b"), 20)
        assert c.proc.poll() is None
        n = len(c.records("hv-a"))
        wait_until(lambda: len(c.records("hv-a")) > n, 10)  # restarted
        assert notify.seen("STATUS=reloaded"), notify.got

        # the agents' inventory records keep both hosts current (not silent)
        code, doc = wait_until(lambda: (lambda r: r if r[0] == 0 else None)(
            c.status()), 15)
        for h in doc["hosts"]:
            assert h["state"] == "current" and h["last_inventory"], h
            assert abs(h["clock_offset_s"]) < 30, h

        # retired: no longer pulled, and `status` still exits 0
        assert c.cli("hosts", "retire", "hv-b").returncode == 0
        # the puller is gone (a lease period, however loaded): the agent
        # still writes, so a pulled host would grow
        wait_until_still(lambda: len(c.records("hv-b")), 1.5, 20)
        code, doc = c.status()
        assert code == 0 and [h["state"] for h in doc["hosts"]] == [
            "current", "retired"], doc
        began = time.monotonic()
        assert c.stop() == 0, c.log_text()[-2000:]
        assert time.monotonic() - began < 15
        wait_until(lambda: notify.seen("STOPPING=1"), 5)
    finally:
        c.kill()
        notify.close()
