"""The usage ledger's worker (docs/collector.md, "The ledger worker"):
``vmcollector run`` stores evidence in its ingest threads and folds it
into the ledger in this child process, so that storing and folding each
get a core.

The parent (``LedgerWorker``) writes JSON lines to the worker's stdin: the
store to open first, then ``stored`` (a host's WAL got records: fold
it), ``hosts`` (the hosts to look after, in lines under PIPE_BUF: on
start and for a host newly held, anything stored past ``ledger_pos`` is
folded) and ``stop`` (fold what is left for at most so many seconds, then
exit).  The worker (``Follower``) folds each (host, WAL) at most
``FOLD_LIMIT`` records per transaction (``ledger/book.py`` ``update``),
round-robin, until it is caught up (one whose fold failed after a
backoff).  stdin closing (the parent gone) ends it after the fold in
hand; on Linux it also dies with its parent (PR_SET_PDEATHSIG).  The
parent restarts a worker that died, with a backoff: nothing is lost, the
ledger continues from ``ledger_pos``.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Collection
from contextlib import suppress
from pathlib import Path
from typing import IO, Any

from vmagent import log
from vmagent.collector.ingest import backoff
from vmagent.collector.metrics import Metrics
from vmagent.collector.store import (
    PostgresStore,
    SqliteStore,
    SqlStore,
    StoreError,
    is_postgresql,
)
from vmagent.ledger import book as ledger_book

# records per fold transaction: SQLite's write lock (which the ingest's
# stores wait for) is held for a fraction of a second, what the fold
# writes growing with the slices it touches rather than with the records
# (docs/benchmarks.md); PostgreSQL's fold holds only its host's rows
FOLD_LIMIT = 32_000
FOLD_LIMIT_POSTGRESQL = 64_000
# a (host, WAL) folded short of the limit is folded again this long after,
# not sooner: a backlog arriving in many small batches is folded in few
# large ones (a fold's writes grow with the slices it touches, not with
# its records), a live host's once-a-sweep batch at once
GATHER_S = 0.5
STOP_FOLD_S = 10.0  # at a stop, the worker folds what is left this long
RESCAN_S = 30.0  # the held hosts' current WALs checked (a lost notice)
TICK_S = 0.5  # the worker's longest sleep: signals, its parent
LIVED_S = 60.0  # a worker that ran this long restarts without backoff
_PR_SET_PDEATHSIG = 1
_HOSTS_LINE = 3500  # bytes of host names per line: under PIPE_BUF (4096)


def store_spec(store: SqlStore) -> str:
    """What the worker opens: ``sqlite:<path>`` or the PostgreSQL URL."""
    if isinstance(store, PostgresStore):
        return store.url
    if isinstance(store, SqliteStore):
        return f"sqlite:{store.path}"
    raise StoreError(f"no ledger worker for {store.describe()}")


def open_spec(spec: str) -> SqlStore:
    if is_postgresql(spec):
        return PostgresStore(spec)
    if spec.startswith("sqlite:"):
        return SqliteStore(Path(spec[len("sqlite:"):]))
    raise StoreError(f"unknown store {spec!r}")


def unfolded(store: Any, hosts: Collection[str] | None = None) \
        -> dict[tuple[str, bytes], int]:
    """(host, WAL) -> records stored past the ledger's position, for the
    WALs with any (of ``hosts``, or of every host).  Read without a
    write transaction (SQLite's write lock: a status during a long write
    elsewhere answers); a fold committing meanwhile makes a count at most
    that much too high."""
    out: dict[tuple[str, bytes], int] = {}
    read = store.read  # a statement each, no write lock
    pos = {(h, bytes(w)): s for h, w, s in read(
        "SELECT host, wal, seq FROM ledger_pos")}
    pairs = [(h, bytes(w)) for h, w in read(
        "SELECT DISTINCT host, wal FROM frames")
        if hosts is None or h in hosts]
    for host, wal in pairs:
        n = read("SELECT count(*) FROM records WHERE host = ? AND wal = ? "
                 "AND seq > ?", (host, wal, pos.get((host, wal), 0)))[0][0]
        if n:
            out[(host, wal)] = int(n)
    return out


def lag_by_host(store: Any) -> dict[str, int]:
    """Records stored and not yet in the ledger, per host."""
    out: dict[str, int] = {}
    for (host, _), n in unfolded(store).items():
        out[host] = out.get(host, 0) + n
    return out


# --- the worker ---------------------------------------------------------

class Follower:
    """The worker's loop: folds the (host, WAL)s it is told of, and the
    held hosts' backlogs, ``limit`` records per transaction."""

    def __init__(self, store: SqlStore, limit: int = FOLD_LIMIT,
                 parent: int | None = None) -> None:
        self.store, self.limit, self.parent = store, max(1, limit), parent
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.dirty: dict[tuple[str, bytes], None] = {}  # an ordered set
        self.hosts: set[str] = set()
        self.scan: set[str] = set()  # hosts to look at in full
        # (host, WAL) whose fold failed: failures in a row, not before
        self.failed: dict[tuple[str, bytes], tuple[int, float]] = {}
        self.rested: dict[tuple[str, bytes], float] = {}  # GATHER_S
        self.scan_failed, self.scan_at = 0, 0.0  # likewise, the scan
        self.stop_by: float | None = None  # set by a signal: no lock
        self.gone = False
        self.folded: dict[str, int] = {}
        self.log = log.get_logger()

    def stored(self, host: str, wal: bytes) -> None:
        with self.lock:
            self.dirty[(host, wal)] = None
        self.wake.set()

    def follow(self, hosts: set[str]) -> None:
        with self.lock:
            self.scan |= hosts - self.hosts
            self.hosts = set(hosts)
        self.wake.set()

    def stop(self, seconds: float) -> None:
        self.stop_by = time.monotonic() + max(0.0, seconds)

    def lose_parent(self) -> None:
        self.gone = True
        self.wake.set()

    def run(self) -> str:
        """Folds until stopped; why it stopped."""
        rescan = time.monotonic() + RESCAN_S
        while True:
            why = self._ended()
            if why is not None:
                return why
            if not self.dirty and not self.scan:
                self.wake.wait(TICK_S)
            self.wake.clear()
            if time.monotonic() >= rescan:
                rescan = time.monotonic() + RESCAN_S
                self._rescan()
            self._scan()
            if not self._round():
                self.wake.wait(TICK_S)  # a failure, or only ones waiting

    def _ended(self) -> str | None:
        why = self._quit()
        if why is None and self.stop_by is not None and \
                not (self.dirty or self.scan):
            return "stopped"
        return why

    def _quit(self) -> str | None:
        """Why to stop even with folds waiting (None: go on)."""
        if self.gone or (self.parent is not None and
                         os.getppid() != self.parent):
            return "parent gone"
        if self.stop_by is not None and time.monotonic() >= self.stop_by:
            return "stopped, the rest left for the next start"
        return None

    def _round(self) -> bool:
        """One fold of each (host, WAL) waiting and due (one that failed
        waits a backoff); False if one failed or none was due."""
        with self.lock:
            pairs, self.dirty = list(self.dirty), {}
        now = time.monotonic()
        self.rested = {p: t for p, t in self.rested.items() if t > now}
        due: list[tuple[str, bytes]] = []
        for p in pairs:
            if self.failed.get(p, (0, now))[1] <= now and (
                    self.stop_by is not None or
                    self.rested.get(p, now) <= now):
                due.append(p)
            else:
                self._again([p])
        ok = bool(due)
        for i, (host, wal) in enumerate(due):
            if self._quit() is not None:
                self._again(due[i:])
                break
            n = ledger_book.follow(self.store, host, wal, self.limit)
            if n < 0:
                tries = self.failed.get((host, wal), (0, now))[0] + 1
                self.failed[(host, wal)] = (
                    tries, time.monotonic() + backoff(tries))
                ok = False
            else:
                self.failed.pop((host, wal), None)
            if n > 0:
                self.folded[host] = self.folded.get(host, 0) + n
            if n < 0 or n >= self.limit:  # failed, or more past it
                self._again([(host, wal)])
            if 0 <= n < self.limit:
                self.rested[(host, wal)] = time.monotonic() + GATHER_S
        return ok

    def _again(self, pairs: list[tuple[str, bytes]]) -> None:
        with self.lock:
            for pair in pairs:
                self.dirty[pair] = None

    def _scan(self) -> None:
        """Everything stored past ``ledger_pos`` of hosts newly held."""
        if time.monotonic() < self.scan_at:
            return
        with self.lock:
            hosts, self.scan = self.scan, set()
        if not hosts:
            return
        try:
            found = unfolded(self.store, hosts)
        except StoreError as err:
            self.log.warning("ledger_scan_failed", error=str(err))
            self.scan_failed += 1
            self.scan_at = time.monotonic() + backoff(self.scan_failed)
            with self.lock:
                self.scan |= hosts
            return
        self.scan_failed = 0
        self._again(sorted(found))

    def _rescan(self) -> None:
        """The held hosts' current WALs stored past ``ledger_pos`` (a
        notice the pipe could not take): one cheap query."""
        try:
            with self.store.transaction() as q:
                rows = q("SELECT h.name, h.wal, h.stored_seq, p.seq FROM "
                         "hosts h LEFT JOIN ledger_pos p ON p.host = h.name "
                         "AND p.wal = h.wal WHERE h.wal IS NOT NULL"
                         ).fetchall()
        except StoreError as err:
            self.log.warning("ledger_scan_failed", error=str(err))
            return
        self._again([(h, bytes(w)) for h, w, stored, pos in rows
                     if h in self.hosts and stored > (pos or 0)])


def _die_with_parent() -> None:
    """Linux: SIGKILL when the parent dies (its transaction rolls back)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        pass  # stdin's EOF and the parent check remain


def _read_inbox(stream: IO[bytes], follower: Follower) -> None:
    """The parent's lines, until EOF (the parent closed it or is gone)."""
    hosts: set[str] = set()  # a list's lines so far (``_send_hosts``)
    for line in stream:
        try:
            msg = json.loads(line)
            if "stored" in msg:
                host, wal = msg["stored"]
                follower.stored(str(host), bytes.fromhex(wal))
            elif "hosts" in msg:
                if not msg.get("part"):
                    hosts = set()
                hosts |= {str(h) for h in msg["hosts"]}
                if not msg.get("more"):
                    follower.follow(hosts)
            elif "stop" in msg:
                follower.stop(float(msg["stop"]))
        except (ValueError, TypeError, KeyError) as err:
            follower.log.warning("ledger_worker_bad_message",
                                 error=str(err), line=line[:200].decode(
                                     "utf-8", "replace"))
    if follower.stop_by is None:
        follower.lose_parent()


def main() -> int:
    """``python -m vmagent.collector.folder``: run by ``LedgerWorker``."""
    log.configure()
    for sig in (signal.SIGINT, signal.SIGHUP):  # the parent's to handle
        signal.signal(sig, signal.SIG_IGN)
    _die_with_parent()
    logger = log.get_logger()
    try:
        setup = json.loads(sys.stdin.buffer.readline())
        spec, lease_s = str(setup["store"]), float(setup["lease_s"])
        limit, parent = int(setup["limit"]), int(setup["parent"])
    except (ValueError, TypeError, KeyError) as err:
        logger.error("ledger_worker_bad_setup", error=str(err))
        return 2
    try:
        store = open_spec(spec)
        store.bound_waits(lease_s)
    except StoreError as err:
        logger.error("ledger_worker_store_failed", error=str(err))
        return 1
    follower = Follower(store, limit, parent)
    signal.signal(signal.SIGTERM, lambda *_: follower.stop(STOP_FOLD_S))
    threading.Thread(target=_read_inbox, args=(sys.stdin.buffer, follower),
                     name="inbox", daemon=True).start()
    logger.info("ledger_worker_started", pid=os.getpid(),
                store=store.describe(), limit=limit)
    try:
        why = follower.run()
    finally:
        store.close()
    logger.info("ledger_worker_stopped", reason=why, folded=follower.folded)
    return 0


# --- the parent's side ----------------------------------------------------

class LedgerWorker:
    """``vmcollector run``'s ledger worker: started, told what is stored
    (from the ingest threads) and which hosts are held, restarted with a
    backoff when it dies (``check``, from the lease round), stopped with
    a bounded drain."""

    def __init__(self, spec: str, lease_s: float,
                 metrics: Metrics | None = None,
                 limit: int | None = None) -> None:
        self.spec, self.lease_s = spec, lease_s
        self.limit = limit if limit is not None else \
            FOLD_LIMIT_POSTGRESQL if is_postgresql(spec) else FOLD_LIMIT
        self.metrics = metrics
        self.sqlite = not is_postgresql(spec)  # one process owns the store
        self.lock = threading.Lock()  # the pipe, from the ingest threads
        self.proc: subprocess.Popen[bytes] | None = None
        self.hosts: set[str] = set()
        self.attempt, self.restart_at, self.started_at = 0, 0.0, 0.0
        self.stopping = False
        self.unsent: list[dict[str, Any]] = []  # the host list's lines left
        self.dropped = 0  # notices the full pipe could not take
        self.log = log.get_logger()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> LedgerWorker:
        """Spawns the worker (from a thread that lives as long as the
        process: Linux's parent-death signal follows the spawning
        thread); one that cannot be is logged and ``check`` tries again
        after a backoff."""
        self._spawn()
        return self

    def _spawn(self) -> bool:
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "vmagent.collector.folder"],
                stdin=subprocess.PIPE, close_fds=True)
        except OSError as err:  # no process now: a later round
            self.attempt += 1
            self.restart_at = time.monotonic() + backoff(self.attempt)
            self.log.error("ledger_worker_start_failed", error=str(err))
            return False
        assert proc.stdin is not None
        os.set_blocking(proc.stdin.fileno(), False)
        with self.lock:
            self.proc, self.started_at = proc, time.monotonic()
        self._send({"store": self.spec, "lease_s": self.lease_s,
                    "limit": self.limit, "parent": os.getpid()})
        self._send_hosts()
        return True

    def stored(self, host: str, wal: bytes) -> None:
        """An ingest thread committed records of ``host``'s ``wal``."""
        self._send({"stored": [host, wal.hex()]})

    def follow(self, held: set[str], every: set[str]) -> None:
        """The hosts to look after: on SQLite every host (this process
        owns the store), on PostgreSQL those whose lease it holds."""
        hosts = set(every if self.sqlite else held)
        if hosts != self.hosts:
            self.hosts = hosts
            self._send_hosts()
        else:
            self._send_unsent()

    def _send_hosts(self) -> None:
        """The hosts in lines under PIPE_BUF (a fleet's list is more than
        a pipe holds): ``part`` 0 begins the list, ``more`` says a line
        follows.  What the pipe cannot take now is sent by the next
        ``follow`` from where it stopped, so a long list gets through
        however slowly the worker reads."""
        parts: list[list[str]] = [[]]
        size = 0
        for host in sorted(self.hosts):
            size += len(json.dumps(host)) + 2
            if size > _HOSTS_LINE and parts[-1]:
                parts.append([])
                size = len(json.dumps(host)) + 2
            parts[-1].append(host)
        self.unsent = [{"hosts": part, "part": i} | (
            {"more": True} if i < len(parts) - 1 else {})
            for i, part in enumerate(parts)]
        self._send_unsent()

    def _send_unsent(self) -> None:
        while self.unsent and self._send(self.unsent[0]):
            self.unsent.pop(0)

    def _send(self, msg: dict[str, Any]) -> bool:
        """One line, never blocking (a line under PIPE_BUF is written
        whole or not at all); whether it was.  A worker that is gone is
        ``check``'s."""
        line = (json.dumps(msg) + "\n").encode()
        with self.lock:
            if self.proc is None or self.proc.stdin is None:
                return False
            try:
                return os.write(self.proc.stdin.fileno(), line) == len(line)
            except BlockingIOError:
                self.dropped += 1  # the worker's rescan finds it
            except OSError:
                pass  # exited: check() restarts it
            return False

    def check(self) -> None:
        """A worker that died is logged, and started again after a
        backoff (none if it had run ``LIVED_S``)."""
        if self.stopping:
            return
        with self.lock:
            dropped, self.dropped = self.dropped, 0
        if dropped:  # the worker's own check finds what they named
            self.log.warning("ledger_worker_notices_dropped", count=dropped)
        proc = self.proc
        code = proc.poll() if proc is not None else None
        if proc is not None and code is not None:
            lived = time.monotonic() - self.started_at
            self.attempt = 0 if lived >= LIVED_S else self.attempt + 1
            delay = backoff(self.attempt) if self.attempt else 0.0
            self.log.error("ledger_worker_died", pid=proc.pid, exit_code=code,
                           signal=_signal_name(code), lived_s=round(lived, 1),
                           restart_in_s=round(delay, 1))
            self._close(proc)
            self.restart_at = time.monotonic() + delay
        if self.proc is None and time.monotonic() >= self.restart_at and \
                self._spawn() and self.metrics is not None:
            self.metrics.ledger_worker_restarted()

    def _close(self, proc: subprocess.Popen[bytes]) -> None:
        with self.lock:
            if proc.stdin is not None:
                with suppress(OSError):
                    proc.stdin.close()
            if self.proc is proc:
                self.proc = None

    def stop(self, seconds: float = STOP_FOLD_S) -> None:
        """After the ingest halted: the worker folds what is left for at
        most ``seconds`` and exits (killed if it has not a little later)."""
        self.stopping = True
        proc = self.proc
        if proc is None:
            return
        self._send({"stop": seconds})
        self._close(proc)
        try:
            proc.wait(timeout=seconds + 5.0)
        except subprocess.TimeoutExpired:
            self.log.error("ledger_worker_killed", pid=proc.pid,
                           waited_s=seconds + 5.0)
            proc.kill()
            proc.wait()


def _signal_name(code: int) -> str | None:
    if code >= 0:
        return None
    try:
        return signal.Signals(-code).name
    except ValueError:
        return str(-code)


if __name__ == "__main__":
    sys.exit(main())
