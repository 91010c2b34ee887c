"""systemd's notify protocol (sd_notify(3)), without libsystemd."""

from __future__ import annotations

import os
import socket


class Notifier:
    """Sends ``READY=1``, ``STATUS=...`` and ``WATCHDOG=1`` when started by
    systemd with ``NOTIFY_SOCKET`` set; does nothing otherwise."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        env = dict(os.environ) if env is None else env
        addr = env.get("NOTIFY_SOCKET", "")
        if addr.startswith("@"):  # abstract namespace
            addr = "\0" + addr[1:]
        self.addr = addr or None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        ours = not pid or pid == str(os.getpid())
        #: how often to ping: half the watchdog timeout, None without one
        self.watchdog_s = int(usec) / 2e6 if usec.isdigit() and ours \
            else None

    def send(self, **fields: str) -> None:
        if self.addr is None:
            return
        msg = "\n".join(f"{k.upper()}={v}" for k, v in fields.items())
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.setblocking(False)  # a reader that does not read never
                s.sendto(msg.encode(), self.addr)  # holds up a sweep
        except OSError:
            pass  # systemd gone or not reading: nothing to tell
