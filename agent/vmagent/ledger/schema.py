"""The ledger's tables: migrations 5 and 8 of the collector's store
(docs/usage.md).  ``{num}`` is an exact decimal: TEXT on SQLite (its
numbers are 64-bit), ``numeric`` on PostgreSQL; the book reads and writes
it as a decimal string."""

LEDGER_SCHEMA = """
    CREATE TABLE ledger_hosts (
        host TEXT PRIMARY KEY, state TEXT NOT NULL);
    CREATE TABLE ledger_pos (
        host TEXT NOT NULL, wal {blob} NOT NULL, seq {int} NOT NULL,
        PRIMARY KEY (host, wal));
    CREATE TABLE ledger_gens (
        host TEXT NOT NULL, uuid TEXT NOT NULL, gen TEXT NOT NULL,
        start_ns {int} NOT NULL, end_ns {int} NOT NULL, state TEXT NOT NULL,
        PRIMARY KEY (host, uuid, gen));
    CREATE TABLE ledger_slices (
        host TEXT NOT NULL, uuid TEXT NOT NULL, gen TEXT NOT NULL,
        start_ns {int} NOT NULL, end_ns {int} NOT NULL, vcpus {int},
        mem {int}, seqs TEXT NOT NULL, samples {int} NOT NULL,
        interpolated_ns {int} NOT NULL, clock_step_ns {int} NOT NULL,
        PRIMARY KEY (host, uuid, gen, start_ns));
    CREATE INDEX ledger_slices_start ON ledger_slices (start_ns);
    CREATE TABLE ledger_quantities (
        host TEXT NOT NULL, uuid TEXT NOT NULL, gen TEXT NOT NULL,
        start_ns {int} NOT NULL, meter TEXT NOT NULL, device TEXT NOT NULL,
        quantity {num} NOT NULL,
        PRIMARY KEY (host, uuid, gen, start_ns, meter, device));
    CREATE INDEX ledger_quantities_start ON ledger_quantities (start_ns);
    CREATE TABLE ledger_rebuilds (
        at {real} NOT NULL, start_ns {int} NOT NULL, end_ns {int} NOT NULL,
        reason TEXT NOT NULL, changed {int} NOT NULL)
"""

#: Migration 8: the roll-up (ledger/rollup.py).  Hosts with slices stored
#: before it are pending: the first grouped report computes their rows
#: (``book.roll_up_pending``).
ROLLUP_SCHEMA = """
    CREATE TABLE ledger_rollup (
        host TEXT NOT NULL, start_ns {int} NOT NULL, account TEXT NOT NULL,
        meter TEXT NOT NULL, quantity {num} NOT NULL, q2 {int}, q1 {int},
        q0 {int}, PRIMARY KEY (host, start_ns, account, meter));
    CREATE INDEX ledger_rollup_start ON ledger_rollup (start_ns);
    CREATE TABLE ledger_rollup_pending (host TEXT PRIMARY KEY);
    INSERT INTO ledger_rollup_pending SELECT DISTINCT host FROM ledger_slices
"""
