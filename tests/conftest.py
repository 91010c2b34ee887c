"""Shared test setup: the ``realguest`` marker skips with a reason when the
machine cannot start real KVM guests (root, /dev/kvm, qemu); the
``freebsdheaders`` marker when the zig toolchain (FreeBSD's headers) is not
installed."""

from __future__ import annotations

import importlib.util
import os
import shutil

import pytest

QEMU = shutil.which("qemu-system-x86_64")


def real_guest_skip_reason() -> str | None:
    """Why real-guest tests cannot run here, or None if they can."""
    if os.geteuid() != 0:
        return "needs root (taps, other processes' /proc entries)"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "needs /dev/kvm"
    if QEMU is None:
        return "needs qemu-system-x86_64 (apt-get install qemu-system-x86)"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    return None


REAL_MARKERS = ("realguest", "needsroot")
HEADER_MARKERS = ("freebsdheaders",)
ZIG_REASON = None if importlib.util.find_spec("ziglang") else \
    "needs the zig toolchain for FreeBSD's headers (pip install ziglang)"


def pytest_collection_modifyitems(config, items):
    guest_reason = real_guest_skip_reason()
    root_reason = None if os.geteuid() == 0 else "needs root"
    for item in items:
        if "realguest" in item.keywords and guest_reason:
            item.add_marker(pytest.mark.skip(reason=guest_reason))
        elif "needsroot" in item.keywords and root_reason:
            item.add_marker(pytest.mark.skip(reason=root_reason))
        elif "freebsdheaders" in item.keywords and ZIG_REASON:
            item.add_marker(pytest.mark.skip(reason=ZIG_REASON))


def _count(terminalreporter, markers) -> dict[str, int]:
    counts = {"ran": 0, "skipped": 0}
    for status in ("passed", "failed", "error", "skipped"):
        for rep in terminalreporter.stats.get(status, []):
            words = getattr(rep, "keywords", {})
            if not any(m in words for m in markers):
                continue
            if rep.when == "call" or status in ("skipped", "error"):
                counts["skipped" if status == "skipped" else "ran"] += 1
    return counts


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # noqa: ARG001
    """Say how many real-kernel tests (real guests, or root for mounts and
    namespaces) and FreeBSD-header builds ran and skipped; with
    VMAGENT_REALGUEST_REPORT set, also write the counts there (.ci/run)."""
    real = _count(terminalreporter, REAL_MARKERS)
    headers = _count(terminalreporter, HEADER_MARKERS)
    terminalreporter.write_line(
        f"real-kernel tests: {real['ran']} ran, {real['skipped']} skipped"
        + (f" ({real_guest_skip_reason()})" if real["skipped"] else ""))
    terminalreporter.write_line(
        f"FreeBSD-header builds: {headers['ran']} ran, "
        f"{headers['skipped']} skipped"
        + (f" ({ZIG_REASON})" if headers["skipped"] else ""))
    out = os.environ.get("VMAGENT_REALGUEST_REPORT")
    if out:
        with open(out, "w") as f:
            f.write(f"{real['ran']} {real['skipped']}\n"
                    f"{headers['ran']} {headers['skipped']}\n")
