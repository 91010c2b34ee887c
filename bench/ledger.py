"""Usage-report benchmark: ``vmcollector usage --period hour --group-by
account --json`` over a month of synthetic base slices, on SQLite and on
PostgreSQL (COLLECTOR.md section 7; target under 2 s on each store).

The ledger's tables are filled directly in the shape ``ledger/book.py``
writes them: per VM one gen running the whole month on one of ``--hosts``
hosts, one 15-minute base slice per quarter hour (2,880 per VM-month), each
with the eleven meters of a VM with one NIC and no per-disk counters
(running, vCPU and byte-ns time, RSS maximum, CPU, four NIC counters, two
process I/O counters), and owners over ``--accounts`` accounts (a VM
without one every tenth, so account ``-`` is reported too); then the
roll-up is computed from them as for a store migrated with slices in it
(``book.roll_up_pending``, timed apart).  Then, per store, timed
``--repeat`` times: the library call (``close.grouped``,
``report.as_json``: what the command runs) and the command end to end (a
fresh ``vmcollector`` process).  ``--compare`` also times the records'
path (``close.usage``, ``report.group``) and checks it gives the same
bytes.  ``--profile`` prints the library call's top functions by
cumulative time.

PostgreSQL is a throwaway cluster made as the tests make it
(tests/integration/postgres.py).

    .venv/bin/python bench/ledger.py [--vms 1000] [--days 30]
        [--stores sqlite,postgresql] [--repeat 3] [--compare] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid as uuid_mod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from vmagent.collector.store import PostgresStore, SqliteStore, SqlStore  # noqa: E402,I001
from vmagent.ledger import book, close, report  # noqa: E402
from vmagent.ledger.facts import GenState  # noqa: E402

NS = 10**9
BASE_NS = 900 * NS
START = report.parse_time("2026-11-01")
GIB = 2**30
METERS = ("running_ns", "vcpu_ns", "mem_alloc_byte_ns", "mem_rss_max_bytes",
          "cpu_ns", "net_rx_bytes", "net_tx_bytes", "net_rx_packets",
          "net_tx_packets", "io_rd_bytes", "io_wr_bytes")
NIC = "52:54:00:12:34:56"


def vm_uuid(i: int) -> str:
    return str(uuid_mod.UUID(int=0x5EED << 96 | i))


def gen_rows(vms: int, hosts: int, days: int) -> Iterator[tuple[Any, ...]]:
    end = START + days * 86400 * NS
    for i in range(vms):
        u, host = vm_uuid(i), f"hv{i % hosts:03d}"
        vcpus, mem = 1 + i % 8, (1 + i % 16) * GIB
        g = GenState(u, "g1", f"vm-{i}", START - 3600 * NS, START - 3600 * NS,
                     end, True, [[START - 3600 * NS, vcpus, mem]])
        g.last_t = end
        yield (host, u, "g1", g.start_ns, end, json.dumps(g.to_json()))


def slice_rows(vms: int, hosts: int, days: int,
               wal: str) -> Iterator[tuple[tuple[Any, ...],
                                           list[tuple[Any, ...]]]]:
    """Per base slice, its ``ledger_slices`` row and its quantities."""
    n = days * 96
    seqs = json.dumps([[wal, [1, 1]]])
    for i in range(vms):
        u, host = vm_uuid(i), f"hv{i % hosts:03d}"
        vcpus, mem = 1 + i % 8, (1 + i % 16) * GIB
        for k in range(n):
            a = START + k * BASE_NS
            seq = 1 + k * vms + i
            q = {"running_ns": BASE_NS, "vcpu_ns": vcpus * BASE_NS,
                 "mem_alloc_byte_ns": mem * BASE_NS,
                 "mem_rss_max_bytes": mem // 2 + (k * 4099 + i) % 2**24,
                 "cpu_ns": (k * 7919 + i * 104729) % BASE_NS,
                 "net_rx_bytes": (k * 65537 + i) % 10**9,
                 "net_tx_bytes": (k * 33331 + i) % 10**9,
                 "net_rx_packets": (k * 131 + i) % 10**6,
                 "net_tx_packets": (k * 127 + i) % 10**6,
                 "io_rd_bytes": (k * 4096 + i) % 10**8,
                 "io_wr_bytes": (k * 8192 + i) % 10**8}
            srow = (host, u, "g1", a, a + BASE_NS, vcpus, mem,
                    seqs.replace("[1, 1]", f"[{seq}, {seq}]"), 90, 0, 0)
            qrows = [(host, u, "g1", a, m, NIC if m.startswith("net_")
                      else "", str(q[m])) for m in METERS]
            yield srow, qrows


def owner_rows(vms: int, accounts: int) -> list[tuple[Any, ...]]:
    return [(vm_uuid(i), 0, f"acct-{i % accounts:02d}", f"proj-{i % 3}")
            for i in range(vms) if i % 10 != 9]


def fill(store: SqlStore, vms: int, hosts: int, days: int,
         accounts: int) -> None:
    wal = "ab" * 16
    slices = slice_rows(vms, hosts, days, wal)
    if isinstance(store, SqliteStore):
        _fill_sqlite(store, vms, hosts, days, accounts, slices)
    elif isinstance(store, PostgresStore):
        _fill_postgresql(store, vms, hosts, days, accounts, slices)
    else:
        raise TypeError(f"no bulk fill for {type(store).__name__}")
    with store.transaction() as q:  # as migration 8 finds a ledger
        q("INSERT INTO ledger_rollup_pending SELECT DISTINCT host FROM "
          "ledger_slices")


def _fill_sqlite(store: SqliteStore, vms: int, hosts: int, days: int,
                 accounts: int, slices: Iterator[Any]) -> None:
    db = sqlite3.connect(store.path, isolation_level=None)
    db.execute("BEGIN")
    db.executemany("INSERT INTO ledger_gens VALUES (?, ?, ?, ?, ?, ?)",
                   gen_rows(vms, hosts, days))
    db.executemany("INSERT INTO owners VALUES (?, ?, ?, ?)",
                   owner_rows(vms, accounts))
    batch_s: list[Any] = []
    batch_q: list[Any] = []
    for srow, qrows in slices:
        batch_s.append(srow)
        batch_q.extend(qrows)
        if len(batch_s) >= 20000:
            _sqlite_put(db, batch_s, batch_q)
    _sqlite_put(db, batch_s, batch_q)
    db.execute("COMMIT")
    db.execute("ANALYZE")
    db.close()


def _sqlite_put(db: Any, batch_s: list[Any], batch_q: list[Any]) -> None:
    db.executemany("INSERT INTO ledger_slices VALUES "
                   "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", batch_s)
    db.executemany("INSERT INTO ledger_quantities VALUES "
                   "(?, ?, ?, ?, ?, ?, ?)", batch_q)
    batch_s.clear()
    batch_q.clear()


def _fill_postgresql(store: PostgresStore, vms: int, hosts: int, days: int,
                     accounts: int, slices: Iterator[Any]) -> None:
    import psycopg
    with psycopg.connect(store.url, autocommit=False) as db:
        with db.cursor() as cur:
            for table, rows in (("ledger_gens", gen_rows(vms, hosts, days)),
                                ("owners", iter(owner_rows(vms, accounts)))):
                with cur.copy(f"COPY {table} FROM STDIN") as cp:
                    for row in rows:
                        cp.write_row(row)
            with cur.copy("COPY ledger_slices FROM STDIN") as cs:
                pending: list[Any] = []
                for srow, qrows in slices:
                    cs.write_row(srow)
                    pending.extend(qrows)
            with cur.copy("COPY ledger_quantities FROM STDIN") as cq:
                for row in pending:
                    cq.write_row(row)
        db.commit()
        db.autocommit = True
        db.execute("VACUUM ANALYZE")


def library(store: SqlStore, period: str = "hour") -> str:
    """What ``vmcollector usage ... --group-by account --json`` runs."""
    end = report.parse_time("2026-12-01")
    return report.as_json(close.grouped(store, START, end, "account",
                                        period, "UTC"))


def records_path(store: SqlStore, period: str = "hour") -> str:
    """The same from every VM's records (what the command ran before)."""
    end = report.parse_time("2026-12-01")
    rows = close.usage(store, START, end, period, "UTC")
    return report.as_json(report.group(rows, "account"))


def command(config: Path, period: str = "hour") -> str:
    out = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "vmcollector"), "usage", "-s",
         "2026-11-01", "-e", "2026-12-01", "--period", period, "--group-by",
         "account", "--json", "-c", str(config)],
        capture_output=True, text=True, check=True, timeout=3600)
    return out.stdout


def timed(fn: Any, repeat: int) -> tuple[list[float], Any]:
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return times, result


def bench_store(kind: str, store: SqlStore, config: Path,
                args: argparse.Namespace) -> str:
    t0 = time.perf_counter()
    fill(store, args.vms, args.hosts, args.days, args.accounts)
    print(f"{kind}: filled {args.vms} VMs x {args.days * 96} base slices x "
          f"{len(METERS)} meters in {time.perf_counter() - t0:.0f} s",
          flush=True)
    t0 = time.perf_counter()
    book.roll_up_pending(store)
    with store.transaction() as q:
        n = q("SELECT count(*) FROM ledger_rollup").fetchone()[0]
    print(f"{kind}: roll-up of {n} rows computed from the slices in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    lib, out = timed(lambda: library(store), args.repeat)
    cli, out2 = timed(lambda: command(config), args.repeat)
    assert out == out2, "the command and the library call differ"
    if args.compare:
        old, out3 = timed(lambda: records_path(store), 1)
        assert out == out3, "the roll-up and the records' path differ"
        print(f"{kind}: the records' path gives the same bytes in "
              f"{old[0]:.2f} s", flush=True)
    rows = len(json.loads(out)["records"])
    print(f"{kind}: library median {statistics.median(lib):.2f} s "
          f"(runs {', '.join(f'{t:.2f}' for t in lib)}); command median "
          f"{statistics.median(cli):.2f} s (runs "
          f"{', '.join(f'{t:.2f}' for t in cli)}); {rows} grouped rows",
          flush=True)
    if args.profile:
        prof = cProfile.Profile()
        prof.runcall(library, store)
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("cumulative") \
            .print_stats(18)
        print(buf.getvalue(), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vms", type=int, default=1000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--hosts", type=int, default=10)
    ap.add_argument("--accounts", type=int, default=5)
    ap.add_argument("--stores", default="sqlite,postgresql")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--compare", action="store_true",
                    help="check against the records' path (slow)")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    outputs = {}
    with tempfile.TemporaryDirectory(prefix="bench-ledger-") as tmp:
        work = Path(tmp)
        for kind in args.stores.split(","):
            outputs[kind] = run_store(kind, work, args)
    if len(set(outputs.values())) > 1:
        print("stores differ: the grouped JSON is not byte-identical")
        sys.exit(1)
    if len(outputs) > 1:
        print("stores agree: byte-identical grouped JSON")


def run_store(kind: str, work: Path, args: argparse.Namespace) -> str:
    config = work / f"{kind}.toml"
    if kind == "sqlite":
        state = work / "sqlite"
        state.mkdir()
        config.write_text(f'[collector]\nstate_dir = "{state}"\n'
                          'listen = ""\n')
        store: SqlStore = SqliteStore(state / "collector.db")
        store.migrate()
        try:
            return bench_store(kind, store, config, args)
        finally:
            store.close()
    if kind != "postgresql":
        raise SystemExit(f"unknown store {kind!r}; expected sqlite or "
                         "postgresql")
    from integration.postgres import (  # type: ignore[import-not-found]
        Cluster,
        skip_reason,
    )
    why = skip_reason()
    if why:
        raise SystemExit(f"postgresql: {why}")
    pg = Cluster().init()
    try:
        url = pg.create_database()
        config.write_text(f'[collector]\nstate_dir = "{work}"\n'
                          f'store = "{url}"\nlisten = ""\n')
        store = PostgresStore(url)
        store.migrate()
        try:
            return bench_store(kind, store, config, args)
        finally:
            store.close()
    finally:
        pg.destroy()


if __name__ == "__main__":
    main()
