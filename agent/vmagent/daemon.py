"""``vmagent run``: discovery -> sampler -> WAL -> API, on a schedule.

Sweeps run every ``interval``, aligned to wall-clock boundaries, in the main
thread; each is one WAL commit.  The pull API and the control socket share
one event loop in one thread of their own and only ever take the WAL lock
for short reads, so a slow collector never delays a sweep.  SIGTERM/SIGINT:
a final sweep, made durable, then exit 0.  SIGHUP: reload the config and
tokens, keeping the old ones if the new are invalid.
"""

from __future__ import annotations

import collections
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

from vmagent import config as config_mod
from vmagent import records as rec
from vmagent import tokens as tokens_mod
from vmagent._version import __version__
from vmagent.acct.follower import AcctFollower
from vmagent.acct.matching import AcctMatcher, acct_fields
from vmagent.errors import ConfigError, ConsumerError, StartError, VmagentError
from vmagent.exits import exit_fields, exit_watcher
from vmagent.fsutil import remove_stale_tmp
from vmagent.health import assess
from vmagent.identity import load_or_create_host_id
from vmagent.keys import HostKey
from vmagent.lifecycle import VMS_FILE, Lifecycle, load_vms, save_vms
from vmagent.links import LinkWatcher
from vmagent.log import get_logger
from vmagent.probes import VM, Prober, bhyve
from vmagent.probes.types import config_of
from vmagent.sdnotify import Notifier
from vmagent.statefiles import StateFiles
from vmagent.wal import CursorError, Wal, WalConflict
from vmagent.wal.format import Frame

LINK_WAIT_S = 0.5  # for a deleted tap's RTM_DELLINK after its VM exited
INVENTORY_EVERY_S = 60.0
EXIT_RECHECK_S = 0.05  # an exit reported before the kernel shows it
CLOCK_STEP_NS = 1_000_000_000  # wall clock moved 1 s more than monotonic


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
        self.dropped = tokens_mod.load_dropped(state)
        if created:
            self.log.warning("tokens_file_created", path=str(cfg.tokens_file),
                             consumer=tokens_mod.DEFAULT_CONSUMER)
        self.lock = threading.Lock()
        self.committed = threading.Condition(self.lock)  # after each commit
        # called (in the sweep thread, lock released) after each sweep's
        # commit attempt: the API server wakes its long-polls from here
        self.commit_listeners: list[Callable[[], None]] = []
        self.prober = Prober(self.host_id, cfg.probes)
        self.boot_id = self.prober.boot_id
        self.wal = Wal(state / "wal", host=self.host_id, key=self.key,
                       consumers=self._consumers(),
                       max_bytes=cfg.wal.max_bytes,
                       segment_bytes=cfg.wal.segment_bytes,
                       boot_id=self.boot_id)
        self.started = time.time()
        self.stop_requested = threading.Event()
        self.reload_requested = threading.Event()
        self.wake = threading.Event()  # set by the signal handlers
        self.errors: collections.deque[dict[str, Any]] = \
            collections.deque(maxlen=20)
        self.last_sweep: dict[str, Any] = {}
        #: the last sweep's sample records: per-VM series on GET /metrics
        self.last_samples: list[dict[str, Any]] = []
        self.sweeps = 0
        self.probe_bugs = 0  # unexpected exceptions in per-VM sampling
        self._clock_offset: int | None = None
        self._last_inventory = 0.0
        self.vms = Lifecycle(load_vms(state))
        self.acct = AcctFollower(Path(cfg.probes.acct_file),
                                 state / "acct.position")
        self.matcher = AcctMatcher(self.log)
        self.exit_event = threading.Event()
        self.exits = exit_watcher(self._on_exit)
        self.links = LinkWatcher(cfg.probes.sysfs)

    # --- what the servers use (api/source.py) ------------------------------

    def consumer_of(self, token: str) -> str | None:
        return self.tokens.consumer_of(token)

    def read_batch(self, consumer: str, after: int | None,
                   wal_hex: str | None, max_records: int,
                   max_bytes: int) -> tuple[bytes, int, list[Frame]]:
        with self.lock:
            after, frames = self.wal.read(consumer, after, wal_hex,
                                          max_records, max_bytes)
            return self.wal.wal_id, after, frames

    def ack(self, consumer: str, wal_id: bytes, seq: int) -> int:
        with self.lock:
            try:
                return self.wal.ack(consumer, seq, wal_id)
            except CursorError as err:  # unknown consumer, seq too high
                raise WalConflict(str(err), self.wal.wal_id.hex()) from None

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
            raise ConsumerError(f"no consumer {name!r}")
        with self.lock:
            try:
                tokens_mod.save_dropped(self.cfg.agent.state_dir,
                                        self.dropped | {name})
            except OSError as err:
                raise ConsumerError(f"cannot write {tokens_mod.DROPPED_FILE}: "
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
            records.append(rec.agent_start(t, __version__, self.wal.wal_id,
                                           self.boot_id))
        records += self._clock_step(t)
        records += self._sample(t)
        self.last_samples = [r for r in records if r["kind"] == "sample"]
        if last:
            records.append(rec.agent_stop(t))
            self._save_vms()  # when each running gen was last seen
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
        n = len(self.vms.running)
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
            self.exits.watch(vm.pid)
            if self.vms.found(vm):
                out.append(rec.vm_start(t, vm.record(), config_of(vm)))
        out += [rec.vm_stop(t, p.vm.record(), {
            "source": "restart", **self._bounds(t, p.seen_ns)})
            for p in self.vms.stopped_while_down()]
        out += self._config_changes(t)
        sweep = self.prober.sample()
        for vm, sample in sweep.samples:
            self.vms.sampled(vm, sample, t)
            out.append(rec.sample(t, sample))
        for vm in sweep.gone:
            out.append(self._vm_stop(t, vm))
        for vm, reason in sweep.failed:
            self.error("vm_sample_failed", reason, vm=vm.ref.name)
        self.probe_bugs += sweep.bugs
        out += self._acct_records(t)
        if new or sweep.gone or \
                time.monotonic() - self._last_inventory >= INVENTORY_EVERY_S:
            self._last_inventory = time.monotonic()
            out.append(rec.inventory(t, [
                {"uuid": v.ref.uuid, "gen": v.ref.gen, "name": v.ref.name}
                for v in self.vms.running.values()]))
        if new or sweep.gone:
            self._save_vms()
        return out

    def _save_vms(self) -> None:
        self.state_files.save(VMS_FILE, lambda: save_vms(
            self.cfg.agent.state_dir, list(self.vms.running.values()),
            dict(self.vms.seen_ns)))

    def _config_changes(self, t: int) -> list[dict[str, Any]]:
        """``vm_config`` for hotplugged vCPUs, memory, NICs and disks."""
        out = []
        for before, after in self.prober.changes():
            old, new = config_of(before), config_of(after)
            self.vms.changed(after)
            out.append(rec.vm_config(t, after.record(), {
                k: [old[k], new[k]] for k in old if old[k] != new[k]}))
        return out

    def _vm_stop(self, t: int, vm: VM) -> dict[str, Any]:
        """``vm_stop`` with the last counters read (the process's /proc
        entries are gone by now: docs/records.md says what that means)."""
        ended = self.vms.gone(vm)
        source = (self.exits.mechanism or "poll") if ended.noticed \
            else "poll"
        exit: dict[str, Any] = {"source": source}
        if ended.at_ns is not None:  # noticed at once: when it ended
            exit["at_ns"] = ended.at_ns
        else:  # found gone by a sweep: between two of them
            exit.update(self._bounds(t, ended.seen_ns))
        if ended.status is not None:  # kqueue tells it; a pidfd does not
            exit.update(exit_fields(ended.status))
            if vm.ref.hypervisor == "bhyve" and "code" in exit:
                exit["reason"] = bhyve.exit_reason(exit["code"])
        out = rec.vm_stop(t, vm.record(), exit, ended.last)
        if "nics" in out:  # the taps' own last counters, where there are
            out["nics"] = [self._final_nic(n, source) for n in out["nics"]]
        return out

    @staticmethod
    def _bounds(t: int, seen_ns: int | None) -> dict[str, int]:
        """When a gen found gone (by this sweep, or at a restart) ended:
        after it was last seen running, before ``t``."""
        out = {"before_ns": t}
        if seen_ns is not None:
            out["after_ns"] = seen_ns
        return out

    def _final_nic(self, nic: dict[str, Any], source: str) -> dict[str, Any]:
        # right after a pidfd exit the RTM_DELLINK may still be on its way
        final = self.links.final(nic["name"],
                                 LINK_WAIT_S if source != "poll" else 0)
        return {**nic, **final} if final else nic

    def _acct_records(self, t: int) -> list[dict[str, Any]]:
        """``vm_acct`` for the accounting records that close a VM gen."""
        gens = self.vms.matchable()
        out = []
        for record in self.acct.poll():
            vm = self.matcher.closes(record, gens)
            if vm is not None:
                out.append(rec.vm_acct(t, vm.record(),
                                       acct_fields(record)))
        return out

    def _on_exit(self, pid: int, status: int | None) -> None:
        """From the exit watcher's thread: sweep now, not at the boundary."""
        self.vms.exit_reported(pid, status, time.time_ns())
        self.exit_event.set()
        self.wake.set()

    def _clock_step(self, t: int) -> list[dict[str, Any]]:
        """A ``clock_step`` record when the wall clock moved against the
        monotonic clock since the last sweep (NTP step, manual change)."""
        mono = time.monotonic_ns()
        offset = t - mono
        prev, self._clock_offset = self._clock_offset, offset
        if prev is None or abs(offset - prev) < CLOCK_STEP_NS:
            return []
        self.log.warning("clock_step", step_ns=offset - prev)
        return [rec.clock_step(t, mono, offset - prev)]

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
                raise StartError(f"cannot listen on {self.cfg.api.listen}"
                                   f": {err.strerror}") from err
            try:
                servers.listen_control()
            except OSError as err:
                raise StartError(f"cannot create the control socket in "
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
        if self.vms.exit_pending():
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
            "vms": len(self.vms.running),
            "probes": {"kvm_debugfs": self._debugfs_readable(),
                       "link_events": self.links.available,
                       "acct": self.acct.path.exists(),
                       "exit_watch": self.exits.mechanism or "poll"},
            "wal": {k: v for k, v in wal.items() if k != "acked"},
            "consumers": consumers, "errors": list(self.errors),
            "dropped_consumers": sorted(self.dropped),
            "probe_bugs": self.probe_bugs,
            "state_files": self.state_files.status(),
            "acct": {"file": str(self.acct.path),
                     "readable": self.acct.path.exists(),
                     "format": self.acct.format,
                     "skipped_records": self.acct.skipped,
                     **self.matcher.counts},
        }
        doc["health"] = assess(doc)
        return doc

    def _debugfs_readable(self) -> bool:
        # list() copies in one step: the sweep thread may change it
        return any(vm.kvm_stats for vm in list(self.vms.running.values())) \
            or \
            Path(self.cfg.probes.debugfs, "kvm").is_dir()

    def vm_samples(self) -> list[dict[str, Any]]:
        """The last sweep's sample records (nothing is read again)."""
        return self.last_samples

    def status_line(self) -> str:
        s = self.last_sweep
        return (f"{s.get('vms', 0)} VMs, last sweep "
                f"{s.get('duration_s', 0) * 1000:.1f} ms, WAL seq "
                f"{self.wal.durable_seq}")
