"""vmagent.links on this host's kernel: a deleted link's last counters
from RTM_DELLINK over a plain netlink socket."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from integration.guests import send_frames
from needs import require
from vmagent.links import HOST_TO_GUEST, LinkWatcher, guest_view

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="needs root (ip link add)")


def test_deleted_links_counters_come_from_rtm_dellink(tmp_path):
    require("ip")
    name = f"vmk{os.getpid() % 100000}"
    watcher = LinkWatcher(str(tmp_path))  # no sysfs: the netlink path only
    try:
        assert watcher.available
        subprocess.run(["ip", "link", "add", name, "type", "veth", "peer",
                        "name", f"{name}p"], check=True)
        try:
            for end in (name, f"{name}p"):  # no traffic but ours
                Path(f"/proc/sys/net/ipv6/conf/{end}/disable_ipv6"
                     ).write_text("1")
                subprocess.run(["ip", "link", "set", end, "up"], check=True)
            send_frames(name, 7, 100)
            time.sleep(0.2)
            base = Path("/sys/class/net", name, "statistics")
            host = {h: int((base / h).read_text())
                    for h in HOST_TO_GUEST.values()}
        finally:
            subprocess.run(["ip", "link", "del", name], check=True)
        assert host["tx_packets"] == 7
        assert watcher.final(name, wait_s=10) == guest_view(host)
        assert watcher.final(name) is None  # handed out once
    finally:
        watcher.close()


def test_closed_watcher_stops_its_thread():
    watcher = LinkWatcher()
    watcher.close()
    watcher.close()  # twice is harmless
    assert watcher._thread is None or not watcher._thread.is_alive()
