"""FreeBSD bhyve probes: the names of ``probes/linux.py``, not yet filled.

A later issue implements them (``/dev/vmm``, kinfo, VM_STATS, if_data).
Until then a ``Prober`` here refuses to start, with a message that says so.
"""

from __future__ import annotations

from vmagent.errors import ProbeUnsupported
from vmagent.probes.types import VM, Sweep


class Prober:
    """Finds and meters the bhyve VMs of one FreeBSD host (not yet)."""

    def __init__(self, host_id: str, *, procfs_root: str = "/proc",
                 sysfs_root: str = "/sys",
                 debugfs_root: str = "/sys/kernel/debug",
                 rescan_s: float = 60.0) -> None:
        raise ProbeUnsupported(
            "the FreeBSD bhyve probes are not implemented in this version")

    def discover(self) -> list[VM]:
        raise ProbeUnsupported("FreeBSD bhyve probes")

    def sample(self) -> Sweep:
        raise ProbeUnsupported("FreeBSD bhyve probes")

    def vms(self) -> list[VM]:
        raise ProbeUnsupported("FreeBSD bhyve probes")

    def changes(self) -> list[tuple[VM, VM]]:
        raise ProbeUnsupported("FreeBSD bhyve probes")

    def close(self) -> None:
        """Nothing to close."""

    def __enter__(self) -> Prober:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
