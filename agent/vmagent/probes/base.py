"""What the platform probers share (psutil style: the per-platform modules
keep only what differs): the pids already examined, the VMs being metered,
the configuration changes a rescan found, and when the next rescan is due."""

from __future__ import annotations

import time
from typing import Generic, Protocol, TypeVar

from vmagent.config import ProbesConfig
from vmagent.probes.types import VM


class Metered(Protocol):
    vm: VM


M = TypeVar("M", bound=Metered)


class ProberBase(Generic[M]):
    def __init__(self, host_id: str, options: ProbesConfig) -> None:
        self.host_id = host_id
        self.rescan_s = options.rescan_s  # every VM's layout looked again
        self._rescanned = time.monotonic()
        self._changes: list[tuple[VM, VM]] = []
        self._seen: set[int] = set()  # pids examined (VM or not)
        self._metered: dict[int, M] = {}  # pid -> what meters its VM

    def vms(self) -> list[VM]:
        """The VMs being metered now."""
        return [m.vm for m in self._metered.values()]

    def changes(self) -> list[tuple[VM, VM]]:
        """(before, after) of VMs whose vCPUs, memory, NICs or disks
        changed since the last call (hotplug)."""
        out, self._changes = self._changes, []
        return out

    def close(self) -> None:
        """Forget every VM (subclasses close what they hold first)."""
        self._metered.clear()
        self._seen.clear()

    def __enter__(self: P) -> P:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _rescan_due(self) -> bool:
        """True once every ``rescan_s``: look at every VM's layout again."""
        if time.monotonic() - self._rescanned < self.rescan_s:
            return False
        self._rescanned = time.monotonic()
        return True


P = TypeVar("P", bound="ProberBase")  # type: ignore[type-arg]
