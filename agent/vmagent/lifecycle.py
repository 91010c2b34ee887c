"""Which VM gens run, which ended and how: the daemon's memory of VM
lifecycles between sweeps, and across restarts through ``vms.json``.

The tracker decides nothing about records; it answers the questions the
records need: is this gen new (a ``vm_start``), did it end while the agent
was down, was its exit noticed at once and with what status, what was its
last sample, which gens may an accounting record still close.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmagent.fsutil import write_atomically
from vmagent.probes.types import VM, VMRef

VMS_FILE = "vms.json"
ENDED_KEPT_S = 86400.0  # exited gens stay matchable by accounting a day
EXIT_RECHECKS = 20  # sweeps again after an exit the kernel does not show yet


@dataclass(frozen=True)
class Ended:
    """How a gen's end was seen."""

    noticed: bool  # reported at once by the exit watcher (else by a sweep)
    status: int | None  # the wait status, where the watcher gives it
    last: dict[str, Any]  # its last sample ({} if none was taken)


class Lifecycle:
    def __init__(self, previous: dict[str, VM],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.running: dict[str, VM] = {}  # gen -> VM
        self._previous = previous  # running when the agent last stopped
        self._started_before = set(previous)  # their vm_start is out
        self._last: dict[str, dict[str, Any]] = {}  # gen -> last sample
        self._ended: dict[str, tuple[float, VM]] = {}  # gen -> when, VM
        self._exited: dict[int, int | None] = {}  # pid -> wait status
        self._rechecks: dict[int, int] = {}  # pid -> sweeps since its exit
        self._clock = clock

    def found(self, vm: VM) -> bool:
        """A gen discovery found; True when its ``vm_start`` is due (not
        when it was running across an agent restart)."""
        self.running[vm.ref.gen] = vm
        if vm.ref.gen in self._started_before:
            self._started_before.discard(vm.ref.gen)
            return False
        return True

    def stopped_while_down(self) -> list[VM]:
        """Gens running at the last stop that the first sweep did not
        find: they ended while the agent was down (asked once)."""
        gone = [vm for gen, vm in self._previous.items()
                if gen not in self.running]
        for vm in gone:
            self._ended[vm.ref.gen] = (self._clock(), vm)
        self._previous = {}
        return gone

    def changed(self, vm: VM) -> None:
        """A running gen's configuration changed (hotplug)."""
        self.running[vm.ref.gen] = vm

    def sampled(self, vm: VM, sample: dict[str, Any]) -> None:
        self._last[vm.ref.gen] = sample

    def gone(self, vm: VM) -> Ended:
        """A gen's process is gone: what is known of its end."""
        self.running.pop(vm.ref.gen, None)
        self._ended[vm.ref.gen] = (self._clock(), vm)
        noticed = vm.pid in self._exited
        status = self._exited.pop(vm.pid, None)
        self._rechecks.pop(vm.pid, None)
        return Ended(noticed, status, self._last.pop(vm.ref.gen, {}))

    def exit_reported(self, pid: int, status: int | None) -> None:
        """From the exit watcher's thread."""
        self._exited[pid] = status

    def exit_pending(self) -> bool:
        """An exit was reported for a gen the last sweep still saw running
        (FreeBSD posts NOTE_EXIT before the process is a zombie): sweep
        again shortly, EXIT_RECHECKS times at most."""
        pids = {vm.pid for vm in self.running.values()}
        pending = [pid for pid in list(self._exited) if pid in pids and
                   self._rechecks.get(pid, 0) < EXIT_RECHECKS]
        for pid in pending:
            self._rechecks[pid] = self._rechecks.get(pid, 0) + 1
        return bool(pending)

    def matchable(self) -> list[VM]:
        """The gens an accounting record may close: running, and ended
        within ENDED_KEPT_S."""
        horizon = self._clock() - ENDED_KEPT_S
        for gen in [g for g, (when, _) in self._ended.items()
                    if when < horizon]:
            del self._ended[gen]
        return list(self.running.values()) + \
            [vm for _, vm in self._ended.values()]


def save_vms(state_dir: Path, vms: Iterable[VM]) -> None:
    """The running VM gens, so that a restart can tell which ended."""
    doc = {vm.ref.gen: {"ref": vm.ref.as_record(), "pid": vm.pid,
                        "start_ticks": vm.start_ticks,
                        "start_ns": vm.start_ns, "comm": vm.comm,
                        "uid": vm.uid} for vm in vms}
    write_atomically(state_dir / VMS_FILE, json.dumps(doc), mode=0o600)


def load_vms(state_dir: Path) -> dict[str, VM]:
    try:
        doc = json.loads((state_dir / VMS_FILE).read_text())
        return {gen: VM(ref=VMRef(**d["ref"]), pid=d["pid"],
                        start_ticks=d["start_ticks"], start_ns=d["start_ns"],
                        comm=d["comm"], uid=d["uid"], vcpus=None,
                        alloc_bytes=None) for gen, d in doc.items()}
    except (OSError, ValueError, KeyError, TypeError):
        return {}
