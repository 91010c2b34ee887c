"""Shared test setup: the ``realguest`` marker skips with a reason when the
machine cannot start real KVM guests (root, /dev/kvm, qemu); the
``freebsdheaders`` marker when the zig toolchain (FreeBSD's headers) is not
installed.  A test whose command is missing skips naming the Debian package
to install (needs.py).  The summary says how many real-kernel tests ran,
skipped (with every reason) and errored."""

from __future__ import annotations

import importlib.util
import os
from collections import Counter

import pytest

import needs


def real_guest_skip_reason() -> str | None:
    """Why real-guest tests cannot run here, or None if they can."""
    if os.geteuid() != 0:
        return "needs root (taps, other processes' /proc entries)"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "needs /dev/kvm"
    if not needs.found("qemu-system-x86_64"):
        return needs.reason("qemu-system-x86_64")
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    return None


REAL_MARKERS = ("realguest", "needsroot")
PG_MARKERS = ("postgresql",)  # tests on a throwaway cluster (pg_cluster)
HEADER_MARKERS = ("freebsdheaders",)
ZIG_REASON = None if importlib.util.find_spec("ziglang") else \
    "needs the zig toolchain for FreeBSD's headers (pip install ziglang)"


def pytest_collection_modifyitems(config, items):
    guest_reason = real_guest_skip_reason()
    root_reason = None if os.geteuid() == 0 else "needs root"
    for item in items:
        if "pg_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgresql)
        if "realguest" in item.keywords and guest_reason:
            item.add_marker(pytest.mark.skip(reason=guest_reason))
        elif "needsroot" in item.keywords and root_reason:
            item.add_marker(pytest.mark.skip(reason=root_reason))
        elif "freebsdheaders" in item.keywords and ZIG_REASON:
            item.add_marker(pytest.mark.skip(reason=ZIG_REASON))


def _count(terminalreporter, markers) -> tuple[dict[str, int], Counter]:
    """How many tests with one of ``markers`` ran (passed or failed),
    skipped and errored before they could run (a broken fixture is not a
    run), and each skip reason with its count."""
    counts = {"ran": 0, "skipped": 0, "errored": 0}
    reasons: Counter[str] = Counter()
    ran: set[str] = set()
    errored: set[str] = set()
    for status in ("passed", "failed", "error", "skipped"):
        for rep in terminalreporter.stats.get(status, []):
            words = getattr(rep, "keywords", {})
            if not any(m in words for m in markers):
                continue
            if status == "skipped":
                counts["skipped"] += 1
                reasons[skip_reason(rep)] += 1
            elif status == "error" or rep.when != "call":
                errored.add(rep.nodeid)
            else:
                ran.add(rep.nodeid)
    counts["ran"] = len(ran)
    counts["errored"] = len(errored - ran)  # a teardown error: it did run
    return counts, reasons


def skip_reason(rep) -> str:  # noqa: ANN001
    """The reason a skip report gives, never empty or "None"."""
    longrepr = rep.longrepr
    text = longrepr[2] if isinstance(longrepr, tuple) and \
        len(longrepr) == 3 else str(longrepr or "")
    text = str(text).strip().removeprefix("Skipped").removeprefix(":")
    text = text.strip()
    return text if text and text != "None" else "no reason given"


def _line(what: str, counts: dict[str, int], reasons: Counter) -> str:
    line = f"{what}: {counts['ran']} ran, {counts['skipped']} skipped"
    if counts["errored"]:
        line += f", {counts['errored']} errored (not counted as ran)"
    if reasons:
        line += " (" + "; ".join(f"{n} x {r}" if n > 1 else r
                                 for r, n in reasons.most_common()) + ")"
    return line


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # noqa: ARG001
    """Say how many real-kernel tests (real guests, or root for mounts and
    namespaces) and FreeBSD-header builds ran, skipped (and why) and
    errored; with VMAGENT_REALGUEST_REPORT set, also write the counts there
    for .ci/run: "ran skipped errored", real-kernel, FreeBSD-header, then
    PostgreSQL (tests on a throwaway cluster) on a third line."""
    real, real_reasons = _count(terminalreporter, REAL_MARKERS)
    headers, header_reasons = _count(terminalreporter, HEADER_MARKERS)
    pg, pg_reasons = _count(terminalreporter, PG_MARKERS)
    terminalreporter.write_line(_line("real-kernel tests", real,
                                      real_reasons))
    terminalreporter.write_line(_line("FreeBSD-header builds", headers,
                                      header_reasons))
    if any(pg.values()):
        terminalreporter.write_line(_line("PostgreSQL tests", pg,
                                          pg_reasons))
    out = os.environ.get("VMAGENT_REALGUEST_REPORT")
    if out:
        with open(out, "w") as f:
            for c in (real, headers, pg):
                f.write(f"{c['ran']} {c['skipped']} {c['errored']}\n")
