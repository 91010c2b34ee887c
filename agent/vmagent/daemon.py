"""``vmagent run``: discovery -> sampler -> WAL -> API, on a schedule.

Sweeps run every ``interval``, aligned to wall-clock boundaries, in the main
thread; each is one WAL commit.  The pull API and the control socket share
one event loop in one thread of their own and only ever take the WAL lock
for short reads, so a slow collector never delays a sweep.  SIGTERM/SIGINT: a final sweep, made
durable, then exit 0.  SIGHUP: reload the config and tokens, keeping the old
ones if the new are invalid.
"""

from __future__ import annotations

import collections
import json
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

from vmagent import config as config_mod
from vmagent import tokens as tokens_mod
from vmagent._version import __version__
from vmagent.errors import ConfigError, VmagentError
from vmagent.fsutil import remove_stale_tmp, write_atomically
from vmagent.acct.follower import AcctFollower
from vmagent.acct.matching import acct_fields, candidates
from vmagent.acct.report import HYPERVISORS
from vmagent.exits import exit_fields, exit_watcher
from vmagent.health import assess
from vmagent.identity import load_or_create_host_id
from vmagent.keys import HostKey
from vmagent.links import LinkWatcher
from vmagent.log import get_logger
from vmagent.probes import VM, Prober, VMRef, bhyve
from vmagent.probes.types import config_of
from vmagent.sdnotify import Notifier
from vmagent.statefiles import StateFiles
from vmagent.wal import Wal

DROPPED_FILE = "dropped_consumers"
VMS_FILE = "vms.json"
ENDED_KEPT_S = 86400.0  # exited gens stay matchable by accounting a day
LINK_WAIT_S = 0.5  # for a deleted tap's RTM_DELLINK after its VM exited
INVENTORY_EVERY_S = 60.0
EXIT_RECHECK_S = 0.05  # an exit reported before the kernel shows it:
EXIT_RECHECKS = 20  # look again this often, this many times
CLOCK_STEP_NS = 1_000_000_000  # wall clock moved 1 s more than monotonic
SCHEMA = 1


class Agent:
    """The daemon's state, shared by the sweep loop and the servers."""

    def __init__(self, cfg: config_mod.Config, config_path: str | None = None,
                 notifier: Notifier | None = None) -> None:
        self.cfg, self.config_path = cfg, config_path
        self.notifier = notifier or Notifier()
        state = cfg.agent.state_dir
        self.host_id = cfg.agent.host_id or load_or_create_host_id(state)
        self.log = get_logger(host=self.host_id)
        for d in (state, state / "wal" / "cursors"):
            for name in remove_stale_tmp(d):  # a write cut short
                self.log.warning("stale_tmp_removed", file=name)
        self.state_files = StateFiles(host=self.host_id)
        self.key = HostKey.load_or_create(state)
        self.tokens, created = tokens_mod.load_or_create(cfg.tokens_file)
        self.dropped = load_dropped(state)
        if created:
            self.log.warning("tokens_file_created", path=str(cfg.tokens_file),
                             consumer=tokens_mod.DEFAULT_CONSUMER)
        self.lock = threading.Lock()
        self.committed = threading.Condition(self.lock)  # after each commit
        # called (in the sweep thread, lock released) after each sweep's
        # commit attempt: the API server wakes its long-polls from here
        self.commit_listeners: list[Callable[[], None]] = []
        self.prober = Prober(self.host_id, procfs_root=cfg.probes.procfs,
                             sysfs_root=cfg.probes.sysfs,
                             debugfs_root=cfg.probes.debugfs,
                             rescan_s=cfg.probes.rescan_s)
        self.boot_id = self.prober.boot_id
        self.wal = Wal(state / "wal", host=self.host_id, key=self.key,
                       consumers=self._consumers(), max_bytes=cfg.wal.max_bytes,
                       segment_bytes=cfg.wal.segment_bytes,
                       boot_id=self.boot_id)
        self.started = time.time()
        self.stop_requested = threading.Event()
        self.reload_requested = threading.Event()
        self.wake = threading.Event()  # set by the signal handlers
        self.errors: collections.deque[dict[str, Any]] = \
            collections.deque(maxlen=20)
        self.last_sweep: dict[str, Any] = {}
        self.sweeps = 0
        self._clock_offset: int | None = None
        self._last_inventory = 0.0
        self._known: dict[str, VM] = {}  # gen -> VM
        self._last_sample: dict[str, dict[str, Any]] = {}  # gen -> sample
        self._ended: dict[str, tuple[float, VM]] = {}  # exited: when, VM
        self._previous = load_vms(state)  # running at the last stop
        self._started_before = set(self._previous)  # their vm_start is out
        self.acct = AcctFollower(Path(cfg.probes.acct_file),
                                 state / "acct.position")
        self.acct_counts = {"matched": 0, "unmatched": 0, "ambiguous": 0}
        self._exited: dict[int, int | None] = {}  # pid -> wait status
        self._rechecks: dict[int, int] = {}  # pid -> sweeps since its exit
        self.exit_event = threading.Event()
        self.exits = exit_watcher(self._on_exit)
        self.links = LinkWatcher(cfg.probes.sysfs)

    def consumers(self) -> list[str]:
        """Everyone who may pull: token holders and ``[api] consumers``."""
        return sorted(set(self.tokens.consumers) | set(self.cfg.api.consumers))

    def _consumers(self) -> list[str]:
        """The consumers whose acks hold WAL data (dropped ones do not)."""
        return [c for c in self.consumers() if c not in self.dropped]

    def drop_consumer(self, name: str) -> None:
        """A dead consumer stops holding WAL data, for good (it is written to
        ``<state_dir>/dropped_consumers``; delete the line to undo)."""
        if name not in self.consumers():
            raise VmagentError(f"no consumer {name!r}")
        with self.lock:
            try:
                save_dropped(self.cfg.agent.state_dir, self.dropped | {name})
            except OSError as err:
                raise VmagentError(f"cannot write {DROPPED_FILE}: "
                                   f"{err.strerror}") from None
            self.dropped.add(name)
            self.wal.set_consumers(self._consumers())
        self.log.warning("consumer_dropped", consumer=name)

    # --- the sweep ----------------------------------------------------------

    def sweep(self, first: bool = False, last: bool = False) -> None:
        """Discover, sample, and commit one sweep's records."""
        t = time.time_ns()
        started = time.perf_counter()
        records: list[dict[str, Any]] = []
        if first:
            records.append({"kind": "agent_start", "t": t,
                            "version": __version__, "wal": self.wal.wal_id,
                            "boot_id": self.boot_id, "schema": SCHEMA})
        records += self._clock_step(t)
        records += self._sample(t)
        if last:
            records.append({"kind": "agent_stop", "t": t})
        done: tuple[int, int] | None = None
        if records:  # no VMs and no heartbeat due: nothing to write
            with self.committed:
                done = self.wal.commit(records)
                self.committed.notify_all()
            for listener in list(self.commit_listeners):
                listener()
        if done is not None or not records:  # what was read is durable
            self.state_files.save("acct.position", self.acct.save)
        self.state_files.flush()
        duration = time.perf_counter() - started
        n = len(self._known)
        self.sweeps += 1
        self.last_sweep = {"t": t, "duration_s": duration, "vms": n,
                           "us_per_vm": duration * 1e6 / n if n else None,
                           "records": len(records)}
        if records and done is None:
            self.error("wal_not_written", "sweep kept in memory (coalescing)")

    def _sample(self, t: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        new = self.prober.discover()
        for vm in new:
            self._known[vm.ref.gen] = vm
            self.exits.watch(vm.pid)
            if vm.ref.gen in self._started_before:  # running across a restart
                self._started_before.discard(vm.ref.gen)
                continue
            out.append({"kind": "vm_start", "t": t, "vm": vm.ref.as_record()})
        out += self._stopped_while_down(t)
        out += self._config_changes(t)
        sweep = self.prober.sample()
        for vm, sample in sweep.samples:
            self._last_sample[vm.ref.gen] = sample
            out.append({"kind": "sample", "t": t, **sample})
        for vm in sweep.gone:
            out.append(self._vm_stop(t, vm))
        for vm, reason in sweep.failed:
            self.error("vm_sample_failed", reason, vm=vm.ref.name)
        out += self._acct_records(t)
        if new or sweep.gone or \
                time.monotonic() - self._last_inventory >= INVENTORY_EVERY_S:
            self._last_inventory = time.monotonic()
            out.append({"kind": "inventory", "t": t, "vms": [
                {"uuid": v.ref.uuid, "gen": v.ref.gen, "name": v.ref.name}
                for v in self._known.values()]})
        if new or sweep.gone:
            self.state_files.save(VMS_FILE, lambda: save_vms(
                self.cfg.agent.state_dir, list(self._known.values())))
        return out

    def _config_changes(self, t: int) -> list[dict[str, Any]]:
        """``vm_config`` for hotplugged vCPUs, memory, NICs and disks."""
        out = []
        for before, after in self.prober.changes():
            old, new = config_of(before), config_of(after)
            self._known[after.ref.gen] = after
            out.append({"kind": "vm_config", "t": t,
                        "vm": after.ref.as_record(),
                        "changed": {k: [old[k], new[k]] for k in old
                                    if old[k] != new[k]}})
        return out

    def _vm_stop(self, t: int, vm: VM) -> dict[str, Any]:
        """``vm_stop`` with the last counters read (the process's /proc
        entries are gone by now: docs/records.md says what that means)."""
        self._known.pop(vm.ref.gen, None)
        self._ended[vm.ref.gen] = (time.monotonic(), vm)
        noticed = vm.pid in self._exited
        status = self._exited.pop(vm.pid, None)
        self._rechecks.pop(vm.pid, None)
        source = (self.exits.mechanism or "poll") if noticed else "poll"
        last = self._last_sample.pop(vm.ref.gen, {})
        rec: dict[str, Any] = {"kind": "vm_stop", "t": t,
                               "vm": vm.ref.as_record(),
                               "exit": {"source": source}}
        if status is not None:  # kqueue tells it; a pidfd does not
            rec["exit"].update(exit_fields(status))
            if vm.ref.hypervisor == "bhyve" and "code" in rec["exit"]:
                rec["exit"]["reason"] = bhyve.exit_reason(rec["exit"]["code"])
        rec.update({k: v for k, v in last.items() if k != "vm"})
        if "nics" in rec:  # the taps' own last counters, where there are
            rec["nics"] = [self._final_nic(n, source) for n in rec["nics"]]
        return rec

    def _final_nic(self, nic: dict[str, Any], source: str) -> dict[str, Any]:
        # right after a pidfd exit the RTM_DELLINK may still be on its way
        final = self.links.final(nic["name"],
                                 LINK_WAIT_S if source != "poll" else 0)
        return {**nic, **final} if final else nic

    def _stopped_while_down(self, t: int) -> list[dict[str, Any]]:
        """VMs running when the agent last ran that are gone now."""
        if not self._previous:
            return []
        out = []
        running = set(self._known)
        for gen, vm in self._previous.items():
            if gen not in running:
                self._ended[gen] = (time.monotonic(), vm)
                out.append({"kind": "vm_stop", "t": t,
                            "vm": vm.ref.as_record(),
                            "exit": {"source": "restart"}})
        self._previous = {}
        return out

    def _acct_records(self, t: int) -> list[dict[str, Any]]:
        """``vm_acct`` for the accounting records that close a VM gen."""
        self._forget_old_ends()
        gens = list(self._known.values()) + [vm for _, vm in
                                             self._ended.values()]
        out = []
        for rec in self.acct.poll():
            found = candidates(rec, gens)
            if len(found) == 1:
                self.acct_counts["matched"] += 1
                out.append({"kind": "vm_acct", "t": t,
                            "vm": found[0].ref.as_record(),
                            "acct": acct_fields(rec)})
            elif HYPERVISORS.fullmatch(rec.command):
                key = "ambiguous" if found else "unmatched"
                self.acct_counts[key] += 1
                self.log.warning("acct_" + key, command=rec.command,
                                 pid=rec.pid, start_s=rec.start_s)
        return out

    def _forget_old_ends(self) -> None:
        horizon = time.monotonic() - ENDED_KEPT_S
        for gen in [g for g, (when, _) in self._ended.items()
                    if when < horizon]:
            del self._ended[gen]

    def _on_exit(self, pid: int, status: int | None) -> None:
        """From the exit watcher's thread: sweep now, not at the boundary."""
        self._exited[pid] = status
        self.exit_event.set()
        self.wake.set()

    def _exit_pending(self) -> bool:
        """An exit was reported for a VM the last sweep still saw running
        (FreeBSD posts NOTE_EXIT before the process is a zombie): sweep
        again shortly, EXIT_RECHECKS times at most."""
        running = {vm.pid for vm in self._known.values()}
        pending = [pid for pid in self._exited if pid in running and
                   self._rechecks.get(pid, 0) < EXIT_RECHECKS]
        for pid in pending:
            self._rechecks[pid] = self._rechecks.get(pid, 0) + 1
        return bool(pending)

    def _clock_step(self, t: int) -> list[dict[str, Any]]:
        """A ``clock_step`` record when the wall clock moved against the
        monotonic clock since the last sweep (NTP step, manual change)."""
        mono = time.monotonic_ns()
        offset = t - mono
        prev, self._clock_offset = self._clock_offset, offset
        if prev is None or abs(offset - prev) < CLOCK_STEP_NS:
            return []
        self.log.warning("clock_step", step_ns=offset - prev)
        return [{"kind": "clock_step", "t": t, "wall_ns": t, "mono_ns": mono,
                 "step_ns": offset - prev}]

    def error(self, event: str, message: str, **context: Any) -> None:
        self.log.error(event, message=message, **context)
        self.errors.append({"t": time.time_ns(), "event": event,
                            "message": message, **context})

    # --- the loop -----------------------------------------------------------

    def run(self) -> int:
        """Serve and sweep until asked to stop; returns the exit code."""
        from vmagent.api.service import ApiService

        self._install_signals()
        servers = ApiService(self)  # its own thread and event loop
        try:
            try:
                servers.listen_api()
            except OSError as err:
                raise VmagentError(f"cannot listen on {self.cfg.api.listen}"
                                   f": {err.strerror}") from err
            try:
                servers.listen_control()
            except OSError as err:
                raise VmagentError(f"cannot create the control socket in "
                                   f"{self.cfg.agent.state_dir}: "
                                   f"{err.strerror}") from err
            return self._loop()
        finally:
            servers.stop()

    def _loop(self) -> int:
        self.sweep(first=True)
        self.notifier.send(ready="1", status=self.status_line())
        self.log.info("agent_started", version=__version__,
                      wal_id=self.wal.wal_id.hex(),
                      interval_s=self.cfg.agent.interval_s)
        while self._sleep_until_next_sweep():
            self.sweep()
            self.notifier.send(status=self.status_line())
        self.notifier.send(stopping="1")
        self.sweep(last=True)
        self.wal.close()
        self.exits.close()
        self.links.close()
        self.log.info("agent_stopped")
        return 0

    def _sleep_until_next_sweep(self) -> bool:
        """Wait for the next interval boundary of the wall clock, pinging
        the watchdog meanwhile; False when a stop was requested.  The wait
        itself runs on the monotonic clock: a wall-clock step only moves
        the alignment of the sweep after."""
        interval = self.cfg.agent.interval_s
        now = time.time()
        deadline = time.monotonic() + (now // interval + 1) * interval - now
        if self._exit_pending():
            deadline = min(deadline, time.monotonic() + EXIT_RECHECK_S)
        while not self.stop_requested.is_set():
            if self.reload_requested.is_set():
                self.reload()
            left = deadline - time.monotonic()
            if left <= 0 or self.exit_event.is_set():
                self.exit_event.clear()
                return True
            ping = self.notifier.watchdog_s
            if ping is not None:
                self.notifier.send(watchdog="1")
                left = min(left, ping)
            self.wake.wait(left)
            self.wake.clear()
        return False

    def _install_signals(self) -> None:
        def stop(*_: object) -> None:
            self.stop_requested.set()
            self.wake.set()

        def reload(*_: object) -> None:
            self.reload_requested.set()
            self.wake.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, reload)

    def reload(self) -> None:
        """SIGHUP: new config and tokens, or the old ones if invalid."""
        self.reload_requested.clear()
        try:
            cfg = config_mod.load(self.config_path) if self.config_path \
                else config_mod.load(None)
            tokens = tokens_mod.load(cfg.tokens_file)
        except (ConfigError, VmagentError) as err:
            self.error("reload_failed", f"{err}; keeping the running config")
            return
        with self.lock:
            self.cfg, self.tokens = cfg, tokens
            self.wal.set_consumers(self._consumers())
        self.log.info("reloaded", consumers=self._consumers())

    # --- status -------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The document behind ``vmagent status`` and ``GET /v1/status``."""
        with self.lock:
            wal = self.wal.status()
            consumers = {name: self.wal.lag(name) for name in wal["acked"]}
        doc: dict[str, Any] = {
            "version": __version__, "host": self.host_id,
            "uptime_s": round(time.time() - self.started, 3),
            "interval_s": self.cfg.agent.interval_s,
            "sweeps": self.sweeps, "last_sweep": self.last_sweep,
            "vms": len(self._known),
            "probes": {"kvm_debugfs": self._debugfs_readable(),
                       "link_events": self.links.available,
                       "acct": self.acct.path.exists(),
                       "exit_watch": self.exits.mechanism or "poll"},
            "wal": {k: v for k, v in wal.items() if k != "acked"},
            "consumers": consumers, "errors": list(self.errors),
            "dropped_consumers": sorted(self.dropped),
            "state_files": self.state_files.status(),
            "acct": {"file": str(self.acct.path),
                     "readable": self.acct.path.exists(),
                     "format": self.acct.format,
                     "skipped_records": self.acct.skipped,
                     **self.acct_counts},
        }
        doc["health"] = assess(doc)
        return doc

    def _debugfs_readable(self) -> bool:
        # list() copies in one step: the sweep thread may change _known
        return any(vm.kvm_stats for vm in list(self._known.values())) or \
            Path(self.cfg.probes.debugfs, "kvm").is_dir()

    def status_line(self) -> str:
        s = self.last_sweep
        return (f"{s.get('vms', 0)} VMs, last sweep "
                f"{s.get('duration_s', 0) * 1000:.1f} ms, WAL seq "
                f"{self.wal.durable_seq}")


def load_dropped(state_dir: Path) -> set[str]:
    try:
        text = (state_dir / DROPPED_FILE).read_text()
    except FileNotFoundError:
        return set()
    return {line.strip() for line in text.splitlines() if line.strip()}


def save_dropped(state_dir: Path, names: set[str]) -> None:
    write_atomically(state_dir / DROPPED_FILE,
                     "".join(f"{n}\n" for n in sorted(names)), mode=0o600)


def save_vms(state_dir: Path, vms: Any) -> None:
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
