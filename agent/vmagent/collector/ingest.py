"""Ingest: one thread per host long-polls its agent, verifies every frame
with ``vmagent.frames`` and the pinned key, stores the batch in one
transaction, commits, then acks (docs/collector.md).

A slow or dead host holds up only its own thread.  Each frame is checked
with the pinned key its key id names (a host keeps every key it had).  A
frame that fails verification turns the host ``untrusted``: the frames
before it are stored and acked, nothing of it.  Seqs skipped without a gap
record or a 410 are stored as missing with the batch.  A store error: no
ack, back off, retry.

``Ingest`` pulls the hosts this instance holds a lease on
(docs/collector.md): every ``tick`` (a fifth of the lease) it heartbeats,
renews, gives back what is above its fair share and claims free or expired
leases; a host added to or removed from the store is picked up at the
next tick.  Every batch is stored only while the lease is held (fencing,
checked in the store's transaction): an instance that lost a lease stores
and acks nothing more of that host.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from vmagent.collector.client import Client, PullError, TlsError, tls_context
from vmagent.collector.metrics import Metrics
from vmagent.collector.store import (
    MISSING_AT_SOURCE,
    NOT_PULLED,
    SKIPPED,
    Claim,
    EvidenceConflict,
    HostRow,
    LeaseLost,
    Store,
    StoredFrame,
    StoreError,
)
from vmagent.frames import ChainState, VerifyError, verify_batch_heads
from vmagent.ledger import book as ledger_book
from vmagent.log import get_logger

if TYPE_CHECKING:
    from vmagent.collector.folder import LedgerWorker

# records per pull: 4000 VM samples (~650 B) are ~2.6 MB, under the
# agent's 4 MiB reply; fewer, larger transactions and acks (bench/collector.py)
MAX_RECORDS = 4000
BACKOFF_START_S, BACKOFF_CAP_S = 0.2, 30.0
FAILING_AFTER = 3  # pulls failed in a row
LAGGING_AFTER_S = 60.0
READ_TIMEOUT_S = 30.0  # a whole reply, beyond the long-poll's wait
REPLY_BYTES = 4 << 20  # an agent's reply ends after this much (or max)
# folding in the ingest thread (no ledger worker: library use, tests), the
# usage ledger folds after the ack when the host is caught up (a batch
# that is not full), else once this many records wait: while a backlog
# drains, each gen and slice is read and written once per fold, not once
# per batch.  ``vmcollector run`` folds in its worker (collector/folder.py)
FOLD_RECORDS = 32_000


def backoff(attempt: int, cap: float = BACKOFF_CAP_S) -> float:
    """Exponential, capped, with full jitter over its upper half."""
    delay = min(cap, BACKOFF_START_S * (2 ** min(attempt, 20)))
    return delay * random.uniform(0.5, 1.0)


class HostIngest(threading.Thread):
    """Pulls one host until ``stop`` is set or the host is untrusted."""

    def __init__(self, store: Store, host: HostRow, stop: threading.Event,
                 wait_s: float = 10.0, owner: str | None = None,
                 read_timeout_s: float = READ_TIMEOUT_S,
                 metrics: Metrics | None = None,
                 stored: Callable[[str, bytes], None] | None = None) -> None:
        super().__init__(name=f"ingest-{host.name}", daemon=True)
        self.store, self.host, self.stop_event = store, host, stop
        self.owner = owner  # the lease holder's name, checked at each store
        self.metrics = metrics
        self.wait_s = min(max(wait_s, 0.0), 60.0)
        self.log = get_logger(host=host.name)
        self.busy = threading.Lock()  # held while a batch is in hand
        self.state = ChainState(wal=host.wal, last_seq=host.stored_seq,
                                last_hash=host.last_hash)
        self.max_records = MAX_RECORDS
        self.pending: list[tuple[int, int, str]] = []  # missing, unsaved
        self.failures = 0
        # (host, wal) after each commit: the ledger worker folds; None:
        # this thread folds (``_fold``) the records stored and not yet
        # folded (``unfolded``) of ``fold_wal``
        self.stored = stored
        self.unfolded = 0
        self.fold_wal: bytes | None = None
        self.full_since: float | None = None
        self.keys = host.pinned()
        self.timeout_s = self.wait_s + read_timeout_s
        self.client: Client | None = None  # None: credentials do not load
        with suppress(TlsError):  # else failing, from the first pull on
            self.client = _client(host, self.timeout_s)

    def run(self) -> None:
        self.log.info("ingest_started", wal=_hex(self.state.wal),
                      after=self.state.last_seq)
        attempt = 0
        try:
            while not self.stop_event.is_set():
                try:
                    done = self.cycle()
                except StoreError as err:  # not acked: the batch comes again
                    self.log.warning("store_error", error=str(err))
                    done = None
                if done is False:
                    return  # untrusted (an operator must act) or lease lost
                attempt = 0 if done else attempt + 1
                if not done:
                    self.stop_event.wait(backoff(attempt))
        finally:
            self.log.info("ingest_stopped", after=self.state.last_seq)

    def halt(self) -> None:
        """Stop pulling: returns once no batch is in hand (one being stored
        is stored and acked first; one arriving later is dropped)."""
        self.stop_event.set()
        with self.busy:
            self._fold()

    def cycle(self) -> bool | None:
        """One pull.  True: progress or nothing new; None: retry after a
        backoff; False: the host is untrusted, stop pulling it."""
        try:
            if self.client is None:
                self.client = _client(self.host, self.timeout_s)
            batch = self.client.batch(self.state.last_seq, self.state.wal,
                                      self.wait_s, self.max_records)
        except TlsError as err:  # stored credentials that do not load
            self._failed(str(err))
            return None
        except PullError as err:
            return self._pull_error(err)
        except VerifyError as err:
            return self._untrusted(str(err))
        except OSError as err:
            self._failed(str(err))
            return None
        with self.busy:
            if self.stop_event.is_set():
                return True  # not stored, not acked: it comes again
            return self._ingest(batch)

    def _ingest(self, batch: dict[str, Any]) -> bool | None:
        before = _snapshot(self.state)
        frames, skipped, failure = self._verify(batch)
        try:
            if self.state.wal and (frames or self.pending or
                                   self.state.wal != self.host.wal):
                self._save(frames, self.pending + skipped)
            else:
                self._mark_ok(frames)
        except StoreError:
            self.state = before
            raise
        except EvidenceConflict as err:
            self.state = before
            self._fold()  # what earlier batches stored
            return self._untrusted(str(err))
        except LeaseLost as err:  # another instance has it: hands off
            self.state = before
            self.log.warning("lease_lost", error=str(err))
            self.stop_event.set()
            return False
        if frames:
            self._ack()
        full = bool(frames) and self.full_since is not None
        if failure is not None or not full or \
                self.unfolded >= FOLD_RECORDS:
            self._fold()
        if failure is not None:
            return self._untrusted(failure)
        return True

    def _fold(self) -> None:
        """Folding here (no worker): the usage ledger follows what is
        stored, in its own transaction (what it cannot fold now, the next
        fold does)."""
        if self.unfolded and self.fold_wal is not None:
            ledger_book.follow(self.store, self.host.name, self.fold_wal)
        self.unfolded = 0

    def _stored_now(self, frames: list[StoredFrame]) -> None:
        """A batch committed: the worker is told, or it waits for
        ``_fold``."""
        assert self.state.wal is not None
        if self.stored is not None:
            if frames:
                self.stored(self.host.name, self.state.wal)
            return
        if self.fold_wal not in (None, self.state.wal):
            self._fold()  # the previous WAL's records first
        self.unfolded += sum(f.last_seq - f.first_seq + 1 for f in frames)
        self.fold_wal = self.state.wal

    def _save(self, frames: list[StoredFrame],
              missing: list[tuple[int, int, str]]) -> None:
        """The batch, the missing ranges and the cursor in one
        transaction (fenced by the lease)."""
        assert self.state.wal is not None
        progress = self._progress(frames)
        if progress["behind_records"] is None and self.client is not None:
            # a full batch: the next one is pulled while this one is stored
            self.client.prefetch(self.state.last_seq, self.state.wal,
                                 self.max_records)
        began = time.monotonic()
        self.store.save_batch(self.host.name, self.state.wal, frames,
                              missing, self.state.last_seq,
                              self.state.last_hash, owner=self.owner,
                              **progress)
        self._count(frames, time.monotonic() - began, progress)
        self.host = replace(self.host, wal=self.state.wal)
        self.pending = []
        self._stored_now(frames)
        for a, b, reason in missing:
            self.log.warning("missing_recorded", from_seq=a, to_seq=b,
                             reason=reason)

    def _verify(self, batch: dict[str, Any]) \
            -> tuple[list[StoredFrame], list[tuple[int, int, str]],
                     str | None]:
        """The frames that verify, up to the first that does not; the seqs
        they skipped that no gap record explains; why the first bad frame
        failed (None: none did).  Each frame is checked with the pinned
        key its key id names (an unknown key id: the current key, which
        fails as "signed by another key")."""
        out: list[StoredFrame] = []
        skips: list[tuple[int, int]] = []
        for f in batch.get("frames") or []:
            known = len(self.state.missing)
            try:
                heads = list(verify_batch_heads({**batch, "frames": [f]},
                                                self.state, self._key_for(f)))
            except VerifyError as err:
                return out, self._skipped(skips), str(err)
            if heads:  # the frame brought records after what is held
                skips += self.state.missing[known:]
                out.append(StoredFrame(
                    int(f["first_seq"]), int(f["last_seq"]), bytes(f["hash"]),
                    bytes(f["prev_hash"]), bytes(f["sig"]), str(f["key_id"]),
                    heads[0].records, heads=heads[0]))
        if batch.get("frames") is not None and not batch.get("frames") \
                and self.state.wal is None:
            wal = batch.get("wal")  # an empty WAL: remember which it is
            if isinstance(wal, bytes) and len(wal) == 16:
                self.state.wal = wal
        return out, self._skipped(skips), None

    def _key_for(self, frame: Any) -> bytes:
        key_id = frame.get("key_id") if isinstance(frame, dict) else None
        return self.keys.get(key_id, self.host.pubkey) \
            if isinstance(key_id, str) else self.host.pubkey

    def _skipped(self, skips: list[tuple[int, int]]) \
            -> list[tuple[int, int, str]]:
        """Seqs the agent skipped (no 410) that no gap record seen so far
        explains: missing, never silently (a gap record that comes later
        replaces the row, docs/collector.md)."""
        return [(a, b, SKIPPED) for a, b in skips
                if not self.state.covered(a, b)]

    def _progress(self, frames: list[StoredFrame]) -> dict[str, Any]:
        now = time.time()
        full = sum(len(f.heads) for f in frames) >= self.max_records or \
            sum(len(f.records) for f in frames) >= REPLY_BYTES
        if not full:
            self.full_since = None
        elif self.full_since is None:
            self.full_since = now
        ts = [t for f in frames for t in f.heads.ts if t is not None]
        lagging = self.full_since is not None and \
            now - self.full_since > LAGGING_AFTER_S
        progress: dict[str, Any] = {
            "last_pull": now, "behind_records": None if full else 0,
            "state": "lagging" if lagging else "current", "error": None}
        if ts:
            progress["clock_offset_s"] = round(max(ts) / 1e9 - now, 3)
        inventory = [t for f in frames
                     for k, t in zip(f.heads.kinds, f.heads.ts)
                     if k == "inventory" and t is not None]
        if inventory:  # the store keeps the newest (``silent``)
            progress["inventory_t"] = max(inventory)
        self.failures = 0
        return progress

    def _count(self, frames: list[StoredFrame], seconds: float,
               progress: dict[str, Any]) -> None:
        if self.metrics is None:
            return
        ts = [t for t in (frames[-1].heads.ts if frames else [])
              if t is not None]
        self.metrics.batch_stored(self.host.name, len(frames), seconds,
                                  progress["behind_records"],
                                  max(ts) / 1e9 if ts else None)

    def _mark_ok(self, frames: list[StoredFrame]) -> None:
        self.store.set_state(self.host.name, **self._progress(frames))

    def _ack(self) -> None:
        wal, seq = self.state.wal, self.state.last_seq
        assert wal is not None and self.client is not None
        try:
            self.client.ack(wal, seq)
        except (PullError, OSError) as err:  # stored: it only comes again
            self.log.warning("ack_failed", seq=seq, error=str(err))
            return
        self.store.set_acked(self.host.name, seq)

    def _pull_error(self, err: PullError) -> bool | None:
        current = self.state.wal.hex() if self.state.wal else None
        body = err.body
        if err.status == 409 and body.get("wal") not in (None, current):
            self.log.warning("new_wal", old=current, new=body["wal"])
            with self.busy:
                self._fold()  # the old WAL's records stored so far
            self.state = ChainState()  # an explicit discontinuity
            return True
        a, b = body.get("missing_from"), body.get("missing_to")
        if err.status == 410 and isinstance(a, int) and isinstance(b, int) \
                and b >= self.state.last_seq:
            # stored with the next batch, in its transaction, with the cursor
            self.log.warning("missing_at_source", from_seq=a, to_seq=b)
            self.pending.append((a, b, MISSING_AT_SOURCE))
            self.state.last_seq, self.state.last_hash = b, None
            return True
        self._failed(str(err))
        return None

    def _failed(self, error: str) -> None:
        self.failures += 1
        self.log.warning("pull_failed", error=error, failures=self.failures)
        state = "failing" if self.failures >= FAILING_AFTER else None
        try:
            if state:
                self.store.set_state(self.host.name, state, error)
        except StoreError as err:
            self.log.warning("store_error", error=str(err))
        return None

    def _untrusted(self, error: str) -> bool:
        self.log.error("host_untrusted", error=error)
        if self.metrics is not None:
            self.metrics.frame_rejected(self.host.name)
        self.store.set_state(self.host.name, "untrusted", error)
        return False


def _client(host: HostRow, timeout_s: float) -> Client:
    """The host's pull client: a bearer token, or mutual TLS with the
    stored certificate and key."""
    context = None
    if host.url.startswith("https:"):
        context = tls_context(host.cacert, host.cert_pem, host.key_pem)
    return Client(host.url, host.consumer, host.token, timeout=timeout_s,
                  ssl_context=context, client_cert=host.cert_pem is not None)


def _snapshot(state: ChainState) -> ChainState:
    """A copy to go back to when a batch is not stored."""
    return replace(state, missing=list(state.missing), gaps=list(state.gaps),
                   recent=dict(state.recent))


def _hex(wal: bytes | None) -> str | None:
    return wal.hex() if wal else None


class Ingest:
    """The pullers of the hosts this instance holds a lease on.  ``tick``
    (called every ``period``) claims and renews leases and starts, stops
    or restarts pullers to match; ``shutdown`` lets each finish its batch
    and gives every lease back.  With a ``ledger`` worker (collector/
    folder.py) the pullers tell it what they stored and each tick tells
    it the hosts held and looks after it; without, they fold."""

    def __init__(self, store: Store, wait_s: float, instance: str = "local",
                 lease_s: float = 30.0,
                 read_timeout_s: float = READ_TIMEOUT_S,
                 metrics: Metrics | None = None,
                 ledger: LedgerWorker | None = None) -> None:
        self.store, self.wait_s = store, wait_s
        self.ledger = ledger
        self.read_timeout_s = read_timeout_s
        self.metrics = metrics or Metrics()
        self.instance, self.lease_s = instance, lease_s
        self.period = max(0.2, min(lease_s / 5, 5.0))
        self.threads: dict[str, HostIngest] = {}
        self.log = get_logger(instance=instance)
        self.noted: dict[str, str] = {}  # host -> state logged as not pulled

    def start(self) -> None:
        self.tick()

    def tick(self) -> None:
        """One lease round; a store error leaves everything as it is (the
        leases run out if it lasts, and fencing stops the stores)."""
        if self.ledger is not None:
            self.ledger.check()
        try:
            claim = self.store.claim(self.instance, self.lease_s)
            rows = {h.name: h for h in self.store.hosts()}
        except StoreError as err:
            self.log.warning("lease_round_failed", error=str(err))
            return
        self._note_claimed(claim)
        self._note_not_pulled(rows)
        keep = set(claim.held) - set(claim.excess)
        self._halt_outdated(keep, rows)
        self._give_back(claim)
        self._start_pullers(keep, rows)
        if self.ledger is not None:
            self.ledger.follow(keep, set(rows))

    def _note_claimed(self, claim: Claim) -> None:
        if claim.taken:
            self.metrics.lease_changed("claimed", len(claim.taken))
        for host, previous in claim.taken.items():
            self.log.info("lease_claimed", host=host, previous=previous,
                          live_instances=claim.live)

    def _note_not_pulled(self, rows: dict[str, HostRow]) -> None:
        """Log once when a host turns untrusted or retired."""
        for name, row in rows.items():
            if row.state in NOT_PULLED and self.noted.get(name) != row.state:
                get_logger(host=name).warning(
                    "host_not_pulled", state=row.state, error=row.error)
            self.noted[name] = row.state

    def _halt_outdated(self, keep: set[str],
                       rows: dict[str, HostRow]) -> None:
        """Stop the pullers of hosts no longer held, gone, stopped, or
        whose settings changed (restarted by ``_start_pullers``)."""
        for name in list(self.threads):
            t = self.threads[name]
            now = rows.get(name)
            if name not in keep or now is None or not t.is_alive() or \
                    now.settings() != t.host.settings():
                t.halt()
                del self.threads[name]

    def _give_back(self, claim: Claim) -> None:
        """Release the leases above this instance's fair share."""
        if not claim.excess:
            return
        try:
            self.store.release(self.instance, claim.excess)
        except StoreError as err:
            self.log.warning("lease_release_failed", error=str(err))
            return
        self.metrics.lease_changed("released", len(claim.excess))
        for host in claim.excess:
            self.log.info("lease_released", host=host, reason="fair share",
                          live_instances=claim.live)

    def _start_pullers(self, keep: set[str],
                       rows: dict[str, HostRow]) -> None:
        for name in sorted(keep):
            new = rows.get(name)
            if name in self.threads or new is None or \
                    new.state in NOT_PULLED:
                continue
            t = HostIngest(self.store, new, threading.Event(), self.wait_s,
                           owner=self.instance,
                           read_timeout_s=self.read_timeout_s,
                           metrics=self.metrics,
                           stored=self.ledger.stored if self.ledger else None)
            self.threads[name] = t
            t.start()

    def run(self, stop: threading.Event,
            between: Callable[[], None] | None = None) -> None:
        """Ticks until ``stop`` is set; ``between`` is called after each
        wait (a reload, a watchdog ping), before the tick."""
        while not stop.wait(self.period):
            if between is not None:
                between()
            self.tick()

    def reconfigure(self, wait_s: float, read_timeout_s: float) -> None:
        """A new pull interval or read timeout: every puller is restarted
        with it at the next tick (each finishes the batch in hand)."""
        if (wait_s, read_timeout_s) == (self.wait_s, self.read_timeout_s):
            return
        self.wait_s, self.read_timeout_s = wait_s, read_timeout_s
        for t in self.threads.values():
            t.stop_event.set()
        for t in self.threads.values():
            t.halt()
        self.threads.clear()

    def shutdown(self) -> None:
        """Stop pulling; wait for every batch in hand to be stored and
        acked (a thread in a long-poll holds nothing); give the leases
        back at once."""
        for t in self.threads.values():
            t.stop_event.set()
        for t in self.threads.values():
            t.halt()
        held = len(self.threads)
        self.threads.clear()
        try:
            self.store.release(self.instance)
        except StoreError as err:  # they run out within a lease period
            self.log.warning("lease_release_failed", error=str(err))
        else:
            self.metrics.lease_changed("released", held)
            self.log.info("leases_released")
