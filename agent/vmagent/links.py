"""A tap's last counters after its VM exits.

A tap that QEMU created goes with its process; the kernel's RTM_DELLINK
notification still carries the link's last IFLA_STATS64, which a netlink
listener keeps: a plain ``AF_NETLINK`` socket in the ``RTNLGRP_LINK`` group
(rtnetlink(7)), parsed with ``struct``.  A tap that outlives QEMU (created
beforehand) keeps its final counters in sysfs.  Either way: the host's
view, swapped to the guest's like every NIC counter (guest rx = tap tx).
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import struct
import sys
import threading
from pathlib import Path

from vmagent.log import get_logger
from vmagent.probes.types import TAP_GUEST_VIEW as HOST_TO_GUEST
from vmagent.probes.types import tap_guest_view as guest_view

KEEP = 4096  # deleted links remembered (names are reused)
RCVBUF = 1 << 20  # a burst of link events (a host stopping many VMs)
__all__ = ["HOST_TO_GUEST", "LinkWatcher", "guest_view", "parse_dellinks"]

# linux/netlink.h, linux/rtnetlink.h, linux/if_link.h
NETLINK_ROUTE = 0
RTMGRP_LINK = 1
RTM_DELLINK = 17
IFLA_IFNAME = 3
IFLA_STATS64 = 23
_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_IFINFOMSG_LEN = 16  # family, pad, type, index, flags, change
_RTATTR = struct.Struct("=HH")  # len, type
#: struct rtnl_link_stats64, in order; newer kernels append fields
STATS64 = (
    "rx_packets", "tx_packets", "rx_bytes", "tx_bytes", "rx_errors",
    "tx_errors", "rx_dropped", "tx_dropped", "multicast", "collisions",
    "rx_length_errors", "rx_over_errors", "rx_crc_errors",
    "rx_frame_errors", "rx_fifo_errors", "rx_missed_errors",
    "tx_aborted_errors", "tx_carrier_errors", "tx_fifo_errors",
    "tx_heartbeat_errors", "tx_window_errors", "rx_compressed",
    "tx_compressed", "rx_nohandler",
)


def _align(n: int) -> int:
    return (n + 3) & ~3


def parse_dellinks(data: bytes) -> list[tuple[str, dict[str, int]]]:
    """(name, host-view IFLA_STATS64) of each RTM_DELLINK in one netlink
    datagram that carries both; other messages are skipped.  Raises
    ValueError naming the problem for a truncated or malformed message."""
    out = []
    off = 0
    while off + _NLMSGHDR.size <= len(data):
        length, kind = _NLMSGHDR.unpack_from(data, off)[:2]
        if length < _NLMSGHDR.size or off + length > len(data):
            raise ValueError(f"netlink message length {length} at {off} "
                             f"outside the {len(data)}-byte datagram")
        if kind == RTM_DELLINK:
            body = data[off + _NLMSGHDR.size:off + length]
            found = _dellink(body)
            if found is not None:
                out.append(found)
        off += _align(length)
    return out


def _dellink(body: bytes) -> tuple[str, dict[str, int]] | None:
    if len(body) < _IFINFOMSG_LEN:
        raise ValueError(f"RTM_DELLINK of {len(body)} bytes, shorter than "
                         f"its ifinfomsg")
    name, stats = None, None
    off = _IFINFOMSG_LEN
    while off + _RTATTR.size <= len(body):
        length, kind = _RTATTR.unpack_from(body, off)
        if length < _RTATTR.size or off + length > len(body):
            raise ValueError(f"rtattr length {length} at {off} outside "
                             f"the {len(body)}-byte RTM_DELLINK")
        value = body[off + _RTATTR.size:off + length]
        if kind == IFLA_IFNAME:
            name = value.split(b"\0", 1)[0].decode("utf-8", "replace")
        elif kind == IFLA_STATS64 and len(value) >= 8 * 8:
            count = min(len(value) // 8, len(STATS64))
            stats = dict(zip(STATS64[:count],
                             struct.unpack_from(f"={count}Q", value),
                             strict=True))
        off += _align(length)
    return (name, stats) if name and stats else None


class LinkWatcher:
    """Keeps the last counters of deleted links, from RTM_DELLINK."""

    def __init__(self, sysfs: str = "/sys") -> None:
        self.sysfs = sysfs
        self.log = get_logger()
        self._cond = threading.Condition()
        self._deleted: dict[str, dict[str, int]] = {}
        self._sock: socket.socket | None = None
        self._wake_r, self._wake_w = os.pipe()
        self._thread: threading.Thread | None = None
        # RTM_DELLINK is Linux's; FreeBSD's taps outlive bhyve
        # (probes/freebsd.py)
        if sys.platform.startswith("linux"):
            self._sock = self._open()
        if self._sock is not None:
            self._thread = threading.Thread(
                target=self._run, args=(self._sock,), name="links",
                daemon=True)
            self._thread.start()

    @property
    def available(self) -> bool:
        return self._sock is not None

    def _open(self) -> socket.socket | None:
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW,
                                 NETLINK_ROUTE)
        except OSError as err:
            self.log.warning("link_events_unavailable", error=str(err))
            return None
        try:
            with contextlib.suppress(OSError):  # a bigger buffer if allowed
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            sock.bind((0, RTMGRP_LINK))
        except OSError as err:
            sock.close()
            self.log.warning("link_events_unavailable", error=str(err))
            return None
        return sock

    def _run(self, sock: socket.socket) -> None:
        """Sleeps in poll() until the kernel sends a link event or
        close() wakes it."""
        poll = select.poll()
        poll.register(sock, select.POLLIN)
        poll.register(self._wake_r, select.POLLIN)
        while True:
            ready = {fd for fd, _ in poll.poll()}
            if self._wake_r in ready:
                return
            try:
                data, (sender, _) = sock.recvfrom(65536)
            except OSError as err:
                if err.errno == errno.ENOBUFS:  # events lost: say so
                    self.log.warning("link_events_overrun")
                    continue
                return  # closed at shutdown
            if sender != 0:
                continue  # only the kernel's word counts
            try:
                for name, stats in parse_dellinks(data):
                    self._note(name, stats)
            except ValueError as err:
                self.log.warning("link_event_malformed", error=str(err))

    def _note(self, name: str, stats: dict[str, int]) -> None:
        with self._cond:
            if len(self._deleted) >= KEEP:
                self._deleted.pop(next(iter(self._deleted)))
            self._deleted[name] = stats
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
        """Stop the listener and close its socket (once)."""
        if self._wake_w < 0:
            return
        os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(5)
        os.close(self._wake_w)
        os.close(self._wake_r)
        self._wake_w = -1
        if self._sock is not None:
            self._sock.close()
