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
    at_ns: int | None  # when the watcher reported it (Unix ns)
    seen_ns: int | None  # when it was last seen running (its last sample)


@dataclass(frozen=True)
class Previous:
    """A gen running when the agent last stopped (``vms.json``)."""

    vm: VM
    seen_ns: int | None  # when that agent last saw it running


class Lifecycle:
    def __init__(self, previous: dict[str, Previous],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.running: dict[str, VM] = {}  # gen -> VM
        self._previous = previous  # running when the agent last stopped
        self._started_before = set(previous)  # their vm_start is out
        self._last: dict[str, dict[str, Any]] = {}  # gen -> last sample
        self.seen_ns: dict[str, int] = {}  # gen -> its last sample's t
        self._ended: dict[str, tuple[float, VM]] = {}  # gen -> when, VM
        # pid -> (wait status, when reported)
        self._exited: dict[int, tuple[int | None, int]] = {}
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

    def stopped_while_down(self) -> list[Previous]:
        """Gens running at the last stop that the first sweep did not
        find: they ended while the agent was down (asked once)."""
        gone = [p for gen, p in self._previous.items()
                if gen not in self.running]
        for p in gone:
            self._ended[p.vm.ref.gen] = (self._clock(), p.vm)
        self._previous = {}
        return gone

    def changed(self, vm: VM) -> None:
        """A running gen's configuration changed (hotplug)."""
        self.running[vm.ref.gen] = vm

    def sampled(self, vm: VM, sample: dict[str, Any], t: int) -> None:
        self._last[vm.ref.gen] = sample
        self.seen_ns[vm.ref.gen] = t

    def gone(self, vm: VM) -> Ended:
        """A gen's process is gone: what is known of its end."""
        self.running.pop(vm.ref.gen, None)
        self._ended[vm.ref.gen] = (self._clock(), vm)
        exited = self._exited.pop(vm.pid, None)
        self._rechecks.pop(vm.pid, None)
        return Ended(exited is not None, exited[0] if exited else None,
                     self._last.pop(vm.ref.gen, {}),
                     exited[1] if exited else None,
                     self.seen_ns.pop(vm.ref.gen, None))

    def exit_reported(self, pid: int, status: int | None,
                      at_ns: int) -> None:
        """From the exit watcher's thread."""
        self._exited[pid] = (status, at_ns)

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


def save_vms(state_dir: Path, vms: Iterable[VM],
             seen_ns: dict[str, int]) -> None:
    """The running VM gens and when each was last seen running, so that a
    restart can tell which ended (and after when)."""
    doc = {vm.ref.gen: {"ref": vm.ref.as_record(), "pid": vm.pid,
                        "start_mark": vm.start_mark,
                        "start_ns": vm.start_ns, "comm": vm.comm,
                        "uid": vm.uid, "seen_ns": seen_ns.get(vm.ref.gen)}
           for vm in vms}
    write_atomically(state_dir / VMS_FILE, json.dumps(doc), mode=0o600)


def load_vms(state_dir: Path) -> dict[str, Previous]:
    try:
        doc = json.loads((state_dir / VMS_FILE).read_text())
        return {gen: Previous(VM(
            ref=VMRef(**d["ref"]), pid=d["pid"],
            start_mark=d.get("start_mark", d.get("start_ticks")),
            start_ns=d["start_ns"], comm=d["comm"], uid=d["uid"], vcpus=None,
            alloc_bytes=None), d.get("seen_ns")) for gen, d in doc.items()}
    except (OSError, ValueError, KeyError, TypeError):
        return {}
