"""A tap's last counters after its VM exits.

A tap that QEMU created goes with its process; the kernel's RTM_DELLINK
notification still carries the link's last IFLA_STATS64, which a netlink
listener (pyroute2) keeps.  A tap that outlives QEMU (created beforehand)
keeps its final counters in sysfs.  Either way: the host's view, swapped
to the guest's like every NIC counter (guest rx = tap tx).
"""

from __future__ import annotations

import contextlib
import sys
import threading
from pathlib import Path
from typing import Any

from vmagent.log import get_logger
from vmagent.probes.types import TAP_GUEST_VIEW as HOST_TO_GUEST
from vmagent.probes.types import tap_guest_view as guest_view

KEEP = 4096  # deleted links remembered (names are reused)
__all__ = ["HOST_TO_GUEST", "LinkWatcher", "guest_view"]


class LinkWatcher:
    def __init__(self, sysfs: str = "/sys") -> None:
        self.sysfs = sysfs
        self.log = get_logger()
        self._cond = threading.Condition()
        self._deleted: dict[str, dict[str, int]] = {}
        self._ipr: Any = None
        ready = threading.Event()
        threading.Thread(target=self._run, args=(ready,), name="links",
                         daemon=True).start()
        ready.wait(10)

    @property
    def available(self) -> bool:
        return self._ipr is not None

    def _run(self, ready: threading.Event) -> None:
        # pyroute2's socket belongs to the thread that made it: make it here
        if not sys.platform.startswith("linux"):  # RTM_DELLINK is Linux's;
            ready.set()  # FreeBSD's taps outlive bhyve (probes/freebsd.py)
            return
        try:
            from pyroute2 import IPRoute

            self._ipr = IPRoute()
            self._ipr.bind()
        except Exception as err:  # noqa: BLE001 - pyroute2's own types
            self.log.warning("link_events_unavailable", error=str(err))
            self._ipr = None
            return
        finally:
            ready.set()
        with contextlib.suppress(Exception):  # closed at shutdown
            while True:
                for msg in self._ipr.get():
                    if msg.get("event") == "RTM_DELLINK":
                        self._note(msg)

    def _note(self, msg: Any) -> None:
        name, stats = msg.get_attr("IFLA_IFNAME"), msg.get_attr("IFLA_STATS64")
        if not name or not stats:
            return
        with self._cond:
            if len(self._deleted) >= KEEP:
                self._deleted.pop(next(iter(self._deleted)))
            self._deleted[name] = {k: int(v) for k, v in dict(stats).items()}
            self._cond.notify_all()

    def final(self, name: str, wait_s: float = 0.0) -> dict[str, int] | None:
        """The guest-view final counters of tap ``name``, or None."""
        stats = self._sysfs(name)
        if stats is None:
            with self._cond:
                self._cond.wait_for(lambda: name in self._deleted,
                                    timeout=wait_s if self.available else 0)
                stats = self._deleted.pop(name, None)
        return guest_view(stats) if stats else None

    def _sysfs(self, name: str) -> dict[str, int] | None:
        base = Path(self.sysfs, "class/net", name, "statistics")
        try:
            return {h: int((base / h).read_text())
                    for h in HOST_TO_GUEST.values()}
        except (OSError, ValueError):
            return None

    def close(self) -> None:
        if self._ipr is not None:
            with contextlib.suppress(Exception):
                self._ipr.close()
