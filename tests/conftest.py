"""Shared test setup: the ``realguest`` marker skips with a reason when the
machine cannot start real KVM guests (root, /dev/kvm, qemu)."""

from __future__ import annotations

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


def pytest_collection_modifyitems(config, items):
    guest_reason = real_guest_skip_reason()
    root_reason = None if os.geteuid() == 0 else "needs root"
    for item in items:
        if "realguest" in item.keywords and guest_reason:
            item.add_marker(pytest.mark.skip(reason=guest_reason))
        elif "needsroot" in item.keywords and root_reason:
            item.add_marker(pytest.mark.skip(reason=root_reason))


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # noqa: ARG001
    """Say how many real-kernel tests (real guests, or root for mounts and
    namespaces) ran and skipped; with VMAGENT_REALGUEST_REPORT set, also
    write the counts there (.ci/run)."""
    counts = {"ran": 0, "skipped": 0}
    for status in ("passed", "failed", "error", "skipped"):
        for rep in terminalreporter.stats.get(status, []):
            words = getattr(rep, "keywords", {})
            if not any(m in words for m in REAL_MARKERS):
                continue
            if rep.when == "call" or status in ("skipped", "error"):
                counts["skipped" if status == "skipped" else "ran"] += 1
    terminalreporter.write_line(
        f"real-kernel tests: {counts['ran']} ran, {counts['skipped']} skipped"
        + (f" ({real_guest_skip_reason()})" if counts["skipped"] else ""))
    out = os.environ.get("VMAGENT_REALGUEST_REPORT")
    if out:
        with open(out, "w") as f:
            f.write(f"{counts['ran']} {counts['skipped']}\n")
