"""Collector benchmark: verified VM-sample records stored per second by one
collector process, into SQLite and into PostgreSQL, and the time from an
agent's commit to the store's at a 1 s pull interval.

1. Drain: a live ``vmagent run`` whose WAL holds a backlog of VM-sample
   records (about 650 B each, 1000 per commit, built beforehand as in
   bench/api.py) is pulled by the collector's own ingest loop
   (``HostIngest.cycle``: long-poll, verify, one transaction per batch,
   commit, ack) in this process, one host, until the backlog is stored.
   Where the time goes is measured by timing the functions each phase
   calls: the pull (HTTP and the batch's msgpack; only the wait for it
   when it was pulled ahead), the frame hash, the Ed25519 signature, the
   records' heads (seq, kind, t) and their full decoding where something
   needs it, splitting the frame's
   records bytes into each record's for the store, the store's
   transaction (inserts and commit), the ack, the usage ledger's fold
   (its arithmetic, ``Fold.feed``, apart from the rest of its
   transaction); "other" is the rest of the ingest loop.
2. Latency: a live agent with 50 fake VMs at ``interval = 1`` and the
   ingest loop with a 1 s long-poll: per stored batch, the store's commit
   time minus the newest record's ``t`` (the sweep's time, taken before
   the agent's commit: an upper bound of commit-to-store).

3. ``--fold-only``: the ledger's arithmetic alone, in memory: the same
   records (1000 VMs, 10 s apart) folded by ``Fold.feed`` in batches of
   ``FOLD_RECORDS``, no store, no decoding.

PostgreSQL is a throwaway cluster made as the tests make it
(tests/integration/postgres.py: initdb, fsync off, loopback).

    .venv/bin/python bench/collector.py [--records 1000000]
        [--stores sqlite,postgresql] [--latency-s 60] [--fold-only]
        [--no-ledger] [--inline-fold]

With the ledger on, drains fold as ``vmcollector run`` does: in the
ledger worker process (collector/folder.py), told of each stored batch;
the rate is of storing, and the worker's lag when storing ended and the
time it then took to catch up are reported (``--inline-fold``: the fold
in the ingest thread instead, timed as a phase).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

import vmagent.frames as frames_mod  # noqa: E402
from integration.agent_process import AgentProcess  # noqa: E402
from vmagent import keys  # noqa: E402
from vmagent.collector import client as client_mod  # noqa: E402
from vmagent.collector.folder import LedgerWorker, store_spec  # noqa: E402
from vmagent.collector.ingest import HostIngest  # noqa: E402
from vmagent.collector.store import (  # noqa: E402
    HostRow,
    PostgresStore,
    SqliteStore,
    SqlStore,
)
from vmagent.keys import HostKey  # noqa: E402
from vmagent.ledger import book as ledger_book  # noqa: E402
from vmagent.ledger import facts as ledger_facts  # noqa: E402
from vmagent.wal import Wal  # noqa: E402
from vmagent.wal import format as fmt  # noqa: E402
from vmagent.wal import heads as heads_mod  # noqa: E402
from wal import NoSync, vm_sample  # noqa: E402

HOST = "bench-host"


class Timers:
    """Seconds spent per phase, by wrapping the functions each calls."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = {}
        self.undo: list[Callable[[], None]] = []

    def wrap(self, owner: Any, attr: str, phase: str,
             materialise: bool = False) -> None:
        real = getattr(owner, attr)

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                out = real(*args, **kwargs)
                return list(out) if materialise else out
            finally:
                self.spent[phase] = self.spent.get(phase, 0.0) + \
                    time.perf_counter() - t0

        setattr(owner, attr, timed)
        self.undo.append(lambda: setattr(owner, attr, real))

    def restore(self) -> None:
        for undo in reversed(self.undo):
            undo()
        self.undo.clear()


def build_backlog(state: Path, records: int) -> None:
    key = HostKey.load_or_create(state)
    w = Wal(state / "wal", host=HOST, key=key, max_bytes=8 << 30,
            ops=NoSync())
    for i in range(records // 1000):
        w.commit([vm_sample(i, v) for v in range(1000)])
    w.close()
    os.sync()


def backlog_agent(work: Path, records: int) -> AgentProcess:
    a = AgentProcess(work / "agent", interval=3600)
    a.config.write_text(a.config.read_text().replace(
        "[agent]\n", f'[agent]\nhost_id = "{HOST}"\n')
        + '[wal]\nmax_bytes = "8GiB"\n')
    t0 = time.perf_counter()
    build_backlog(a.state, records)
    size = sum(p.stat().st_size for p in (a.state / "wal").iterdir())
    print(f"backlog of {records:,} VM-sample records built in "
          f"{time.perf_counter() - t0:.0f} s ({size / records:.0f} B per "
          "record in the WAL)", flush=True)
    return a.start()


def make_store(kind: str, work: Path, pg: Any) -> SqlStore:
    if kind == "sqlite":
        store: SqlStore = SqliteStore(work / f"collector-{time.time_ns()}.db")
    else:
        store = PostgresStore(pg.create_database())
    store.migrate()
    return store


def ingest_for(store: SqlStore, a: AgentProcess, name: str,
               wait_s: float) -> HostIngest:
    store.put_host(HostRow(name, a.url, "default", a.token(),
                           a.public_key()))
    host = next(h for h in store.hosts() if h.name == name)
    return HostIngest(store, host, threading.Event(), wait_s=wait_s)


def drain(kind: str, a: AgentProcess, records: int, work: Path,
          pg: Any, ledger: bool = True,
          inline: bool = False) -> dict[str, Any]:
    """Stores the whole backlog: records/s and the phases' seconds
    (``ledger`` False: storing alone, the ledger's fold a no-op)."""
    store = make_store(kind, work, pg)
    ing = ingest_for(store, a, f"hv-{kind}", wait_s=0)
    worker = None
    if ledger and not inline:  # as `vmcollector run`: the worker folds
        worker = LedgerWorker(store_spec(store), 30.0).start()
        worker.follow(set(), {f"hv-{kind}"})
        ing.stored = worker.stored
    t = Timers()
    if not ledger:
        real_follow = ledger_book.follow
        ledger_book.follow = lambda *_a, **_k: None  # type: ignore
        t.undo.append(lambda: setattr(ledger_book, "follow", real_follow))
    t.wrap(client_mod.Client, "batch", "pull (HTTP + batch msgpack)")
    t.wrap(client_mod.Client, "ack", "ack")
    t.wrap(fmt, "chain_hash", "verify: SHA-256 hash")
    t.wrap(keys, "verify_signature", "verify: Ed25519 signature")
    t.wrap(frames_mod, "record_heads", "record heads (seq, kind, t)")
    t.wrap(heads_mod.Heads, "decoded", "decode records in full")
    t.wrap(store, "save_batch", "store transaction (insert + commit)")
    t.wrap(heads_mod.Heads, "bodies", "split records for the store")
    t.wrap(ledger_book, "update", "ledger fold (own transaction)")
    t.wrap(ledger_facts.Fold, "feed", "ledger: Fold.feed (in the fold)")
    cpu0, t0 = time.process_time(), time.perf_counter()
    try:
        while ing.state.last_seq < records:
            assert ing.cycle() is True
        ing.halt()  # folds what the ledger has not folded yet
    finally:
        t.restore()
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    caught = catch_up(store, worker, records, wall) if worker else {}
    held = store.wals(f"hv-{kind}")[0]["held"]
    with store.transaction() as q:  # the ledger followed every record
        folded = q("SELECT seq FROM ledger_pos").fetchall()
    assert folded == ([(records,)] if ledger else []), folded
    store.close()
    assert held == [[1, records]], held  # every seq, once
    spent = dict(t.spent)
    # the splitting happens inside the store's transaction
    store_key = "store transaction (insert + commit)"
    spent[store_key] -= spent.get("split records for the store", 0)
    if "ledger fold (own transaction)" in spent:
        spent["ledger fold (own transaction)"] -= spent.get(
            "ledger: Fold.feed (in the fold)", 0)
    spent["other (ingest loop)"] = wall - sum(spent.values())
    return {"rate": records / wall, "wall": wall, "cpu": cpu,
            "spent": spent, **caught}


def folded_seq(store: SqlStore) -> int:
    with store.transaction() as q:
        row = q("SELECT max(seq) FROM ledger_pos").fetchone()
    return int(row[0] or 0)


def catch_up(store: SqlStore, worker: LedgerWorker, records: int,
             wall: float) -> dict[str, Any]:
    """Storing has ended: the ledger worker's lag then, the time until it
    has folded every record, its CPU; then it is stopped."""
    t0 = time.perf_counter()
    lag = records - folded_seq(store)
    while folded_seq(store) < records:
        time.sleep(0.05)
    done = time.perf_counter() - t0
    with open(f"/proc/{worker.pid}/stat") as f:
        ticks = sum(int(x) for x in f.read().rsplit(")", 1)[1].split()[11:13])
    worker.stop()
    return {"lag_at_end": lag, "catch_up_s": done,
            "worker_cpu": ticks / os.sysconf("SC_CLK_TCK"),
            "both_rate": records / (wall + done)}


def latency(kind: str, work: Path, pg: Any, seconds: float,
            vms: int = 50, folds: list[float] | None = None) -> list[float]:
    """Per stored batch: store commit time - newest record's t; and in
    ``folds``, the time from its commit until the ledger worker folded it
    (``ledger_pos`` polled every 20 ms)."""
    a = AgentProcess(work / f"live-{kind}", interval=1, fake_vms=vms).start()
    store = make_store(kind, work, pg)
    ing = ingest_for(store, a, f"live-{kind}", wait_s=1.0)
    worker = LedgerWorker(store_spec(store), 30.0).start()
    worker.follow(set(), {f"live-{kind}"})
    ing.stored = worker.stored
    watch = FoldWatch(store, folds if folds is not None else [])
    out: list[float] = []
    real = store.save_batch

    def save(*args: Any, **kwargs: Any) -> None:
        real(*args, **kwargs)
        watch.stored(args[4])
        now = time.time_ns()
        ts = [r["t"] for f in args[2] for r in f.decoded
              if isinstance(r.get("t"), int)]
        if ts:
            out.append((now - max(ts)) / 1e9)

    store.save_batch = save  # type: ignore[method-assign]
    try:
        ing.cycle()  # the first pull catches up with what is there
        out.clear()
        watch.start()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            ing.cycle()
        watch.finish()
    finally:
        worker.stop()
        store.close()
        a.kill()
    return out


class FoldWatch(threading.Thread):
    """When each stored batch's last seq reached ``ledger_pos``."""

    def __init__(self, store: SqlStore, out: list[float]) -> None:
        super().__init__(daemon=True)
        self.store, self.out = store, out
        self.waiting: dict[int, float] = {}  # last seq -> when stored
        self.lock, self.done = threading.Lock(), threading.Event()

    def stored(self, seq: int) -> None:
        if self.is_alive():
            with self.lock:
                self.waiting[seq] = time.monotonic()

    def run(self) -> None:
        while not self.done.is_set():
            seq, now = folded_seq(self.store), time.monotonic()
            with self.lock:
                for s in [s for s in self.waiting if s <= seq]:
                    self.out.append(now - self.waiting.pop(s))
            time.sleep(0.02)

    def finish(self, timeout: float = 10.0) -> None:
        end = time.monotonic() + timeout
        while self.waiting and time.monotonic() < end:
            time.sleep(0.05)
        self.done.set()
        self.join()


def fold_only(records: int) -> float:
    """Records/s of ``Fold.feed`` alone over the drain's records."""
    from vmagent.collector.ingest import FOLD_RECORDS

    recs = []
    for i in range(1, records // 1000 + 1):
        for v in range(1000):
            recs.append({**vm_sample(i, v), "seq": len(recs) + 1})
    fold = ledger_facts.Fold(ledger_facts.HostState(), lambda *_: None)
    t0 = time.perf_counter()
    for at in range(0, len(recs), FOLD_RECORDS):
        fold.feed("00", recs[at:at + FOLD_RECORDS])
    return len(recs) / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--stores", default="sqlite,postgresql")
    ap.add_argument("--latency-s", type=float, default=60.0)
    ap.add_argument("--fold-only", action="store_true",
                    help="only the ledger's fold, in memory")
    ap.add_argument("--no-ledger", action="store_true",
                    help="storing alone: the ledger's fold is not run")
    ap.add_argument("--inline-fold", action="store_true",
                    help="fold in the ingest thread, not in the ledger "
                         "worker process")
    args = ap.parse_args()
    if args.fold_only:
        print(f"Fold.feed alone: {args.records:,} records, "
              f"{fold_only(args.records):,.0f} records/s")
        return 0
    kinds = args.stores.split(",")
    pg = None
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        work = Path(tmp)
        try:
            if "postgresql" in kinds:
                from integration.postgres import Cluster, skip_reason

                why = skip_reason()
                if why:
                    print(f"PostgreSQL skipped: {why}")
                    kinds.remove("postgresql")
                else:
                    pg = Cluster().init()
            for kind in kinds:  # an agent each: the drain acks and deletes
                a = backlog_agent(work / kind, args.records)
                try:
                    r = drain(kind, a, args.records, work, pg,
                              ledger=not args.no_ledger,
                              inline=args.inline_fold)
                finally:
                    a.kill()
                print(f"\n{kind}: {args.records:,} records in "
                      f"{r['wall']:.1f} s = {r['rate']:,.0f} records/s "
                      f"(this process's CPU {r['cpu']:.1f} s)")
                if "catch_up_s" in r:
                    print(f"ledger worker: {r['lag_at_end']:,} records "
                          "behind when storing ended, caught up "
                          f"{r['catch_up_s']:.1f} s later (stored and "
                          f"folded: {r['both_rate']:,.0f} records/s; the "
                          f"worker's CPU {r['worker_cpu']:.1f} s)")
                print("| phase | seconds | share |\n|---|---|---|")
                for phase, s in sorted(r["spent"].items(),
                                       key=lambda kv: -kv[1]):
                    print(f"| {phase} | {s:.1f} | "
                          f"{100 * s / r['wall']:.0f} % |")
                sys.stdout.flush()
            for kind in kinds if args.latency_s > 0 else []:
                folds: list[float] = []
                lat = sorted(latency(kind, work, pg, args.latency_s,
                                     folds=folds))
                p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
                print(f"\n{kind}: commit-to-store at a 1 s pull interval, "
                      f"{len(lat)} batches over {args.latency_s:.0f} s: "
                      f"median {statistics.median(lat):.3f} s, p99 "
                      f"{p99:.3f} s, max {lat[-1]:.3f} s", flush=True)
                folds.sort()
                print(f"{kind}: store-to-ledger (the worker), {len(folds)} "
                      f"batches: median {statistics.median(folds):.3f} s, "
                      f"max {folds[-1]:.3f} s", flush=True)
        finally:
            if pg is not None:
                pg.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
