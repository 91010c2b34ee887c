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


def pytest_collection_modifyitems(config, items):  # noqa: ARG001
    reason = real_guest_skip_reason()
    if reason is None:
        return
    for item in items:
        if "realguest" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))
