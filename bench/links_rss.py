"""RSS of the link listener: this process's VmRSS after importing the
daemon, then after starting vmagent.links.LinkWatcher (a plain netlink
socket) or, for comparison, pyroute2's ``IPRoute`` bound to its groups
(what links.py used before).  One listener per run: a fresh process each.

Run from the repository:
    .venv/bin/python bench/links_rss.py socket
    .venv/bin/python bench/links_rss.py pyroute2   # needs pyroute2
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import vmagent.daemon  # noqa: F401 - the agent's own imports first


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise ValueError("no VmRSS")


def main() -> int:
    way = sys.argv[1] if len(sys.argv) > 1 else "socket"
    base = rss_mib()
    if way == "socket":
        from vmagent.links import LinkWatcher

        listener: object = LinkWatcher()
    elif way == "pyroute2":
        from pyroute2 import IPRoute

        listener = IPRoute()
        listener.bind()  # type: ignore[attr-defined]
    else:
        print(f"unknown listener {way!r}: socket or pyroute2",
              file=sys.stderr)
        return 2
    time.sleep(0.5)  # the listener's thread is up
    print(f"{way}: {base:.1f} MiB after the imports, {rss_mib():.1f} MiB "
          f"with the listener")
    return 0


if __name__ == "__main__":
    sys.exit(main())
