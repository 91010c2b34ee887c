"""The ledger's ``vmcollector`` sub-commands: ``usage``, ``history``,
``rebuild``, ``owners import``, ``export``, ``close`` and ``evidence``
(docs/usage.md).
``register(subparsers)`` adds them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from vmagent.cli import with_config
from vmagent.collector import config as config_mod
from vmagent.errors import VmagentError
from vmagent.fsutil import write_atomically
from vmagent.ledger import book, close, exports, owners, report
from vmagent.ledger.periods import GRAINS, PeriodError, zone

EXIT_USAGE = 2
EXIT_FAILED = 1
EXPORT_FORMATS = ("cloudstack", "focus")
USAGE_COLUMNS = ("period", "vm_name", "host", "account", "meter", "nic",
                 "disk", "quantity")
HISTORY_COLUMNS = ("host", "vm_name", "start", "end", "end_reason", "vcpus",
                   "memory_bytes", "cpu_ns", "net_rx_bytes", "net_tx_bytes",
                   "io_rd_bytes", "io_wr_bytes")


def register(sub: Any) -> None:
    """Add ``usage``, ``history`` and ``rebuild`` to ``vmcollector``."""
    u = _cmd(sub, "usage", "usage records per VM and period", cmd_usage)
    _range(u, required=True)
    u.add_argument("--period", choices=GRAINS, default="month")
    u.add_argument("--tz", default="UTC", metavar="ZONE",
                   help="IANA zone of the periods and of dates (UTC)")
    u.add_argument("--vm", metavar="UUID")
    u.add_argument("--host", metavar="NAME")
    u.add_argument("--account", metavar="A",
                   help=f"one account's records ({report.UNOWNED}: unowned)")
    u.add_argument("--group-by", choices=report.GROUPS)
    _forms(u)
    _register_owners_and_exports(sub)
    h = _cmd(sub, "history", "one row per VM gen (oneacct-style)",
             cmd_history)
    _range(h, required=False)
    h.add_argument("--tz", default="UTC", metavar="ZONE")
    h.add_argument("--vm", metavar="UUID")
    _forms(h)
    r = _cmd(sub, "rebuild", "re-derive the usage records from the stored "
             "frames", cmd_rebuild)
    _range(r, required=True)
    r.add_argument("--tz", default="UTC", metavar="ZONE")
    r.add_argument("--reason", required=True, metavar="TEXT")
    _register_periods(sub)


def _register_owners_and_exports(sub: Any) -> None:
    o = sub.add_parser("owners", help="who owns each VM, from when",
                       description="who owns each VM, from when")
    osub = o.add_subparsers(dest="owners_command", metavar="COMMAND",
                            required=True)
    oi = _cmd(osub, "import", "import a CSV of vm_uuid,account,project,from",
              cmd_owners_import)
    oi.add_argument("file", metavar="FILE.csv")
    x = _cmd(sub, "export", "usage records as CloudStack usage records or "
             "FOCUS rows", cmd_export)
    x.add_argument("format", choices=EXPORT_FORMATS)
    _range(x, required=True)
    x.add_argument("--period", choices=GRAINS, default="month")
    x.add_argument("--tz", default="UTC", metavar="ZONE")
    x.add_argument("--json", action="store_true",
                   help="cloudstack: a listUsageRecords response body")
    x.add_argument("-o", "--output", metavar="FILE",
                   help="write here (default: standard output)")


def _cmd(sub: Any, name: str, text: str, func: Any) -> Any:
    sp = with_config(sub.add_parser(name, help=text, description=text),
                     config_mod.DEFAULT_PATH)
    sp.set_defaults(func=_usage_errors(func))
    return sp


def _usage_errors(func: Any) -> Any:
    """A bad time, zone, period or range (ReportError, PeriodError) that
    escapes a command is a usage error: one line, exit 2."""
    def run(args: argparse.Namespace) -> int:
        try:
            return int(func(args))
        except (report.ReportError, PeriodError) as err:
            return _usage_error(err)
    return run


def _range(sp: Any, required: bool) -> None:
    sp.add_argument("-s", "--start", required=required, metavar="START",
                    help="RFC 3339, or YYYY-MM[-DD[THH]] in --tz")
    sp.add_argument("-e", "--end", required=required, metavar="END")


def _forms(sp: Any) -> None:
    g = sp.add_mutually_exclusive_group()
    for form in ("json", "csv", "xml"):
        g.add_argument(f"--{form}", action="store_true")


def _times(args: argparse.Namespace) -> tuple[int | None, int | None]:
    zone(args.tz)
    s = report.parse_time(args.start, args.tz) if args.start else None
    e = report.parse_time(args.end, args.tz) if args.end else None
    if s is not None and e is not None and e <= s:
        raise report.ReportError("the end must be after the start")
    return s, e


def _span(args: argparse.Namespace) -> tuple[int, int]:
    """``-s`` and ``-e`` where a command requires both."""
    s, e = _times(args)
    assert s is not None and e is not None  # required by argparse
    return s, e


def _store(args: argparse.Namespace) -> Any:
    # imported here: collector/cli.py imports this module's register
    from vmagent.collector.cli import _existing_store
    return _existing_store(config_mod.load(args.config))


def _usage_error(err: Exception) -> int:
    print(f"vmcollector: {err}", file=sys.stderr)
    return EXIT_USAGE


def _print(rows: list[dict[str, Any]], args: argparse.Namespace,
           columns: tuple[str, ...], root: str) -> None:
    if args.json:
        text = report.as_json(rows)
    elif args.csv:
        text = report.as_csv(rows)
    elif args.xml:
        text = report.as_xml(rows, root)
    else:
        text = report.as_table(rows, columns)
    sys.stdout.write(text)


def cmd_usage(args: argparse.Namespace) -> int:
    s, e = _span(args)
    store = _store(args)
    columns: tuple[str, ...] = USAGE_COLUMNS
    try:
        if args.group_by:  # the sums of what _records gives, read grouped
            rows = close.grouped(store, s, e, args.group_by, args.period,
                                 args.tz, args.vm, args.host, args.account)
            columns = (args.group_by, "period", "meter", "quantity")
        else:
            rows = _records(store, s, e, args, args.vm, args.host,
                            args.account)
    finally:
        store.close()
    _print(rows, args, columns, "usage")
    return 0


def _records(store: Any, s: int, e: int, args: argparse.Namespace,
             vm: str | None = None, host: str | None = None,
             account: str | None = None) -> list[dict[str, Any]]:
    """What ``usage`` and ``export`` read: closed periods as they were
    billed (``close.usage``), then one account's records if asked."""
    rows = close.usage(store, s, e, args.period, args.tz, vm, host)
    return report.of_account(rows, account)


def cmd_history(args: argparse.Namespace) -> int:
    s, e = _times(args)
    store = _store(args)
    try:
        rows = report.history(store, s, e, args.vm)
    finally:
        store.close()
    _print(rows, args, HISTORY_COLUMNS, "history")
    return 0


def cmd_rebuild(args: argparse.Namespace) -> int:
    s, e = _span(args)
    if not args.reason.strip():
        return _usage_error(ValueError("--reason must not be empty"))
    store = _store(args)
    try:
        hosts, changed = book.rebuild(store, s, e, args.reason)
        fixes = close.after_rebuild(store, s, e)
    finally:
        store.close()
    print(f"rebuilt {len(hosts)} host(s) from their frames: "
          f"{changed} slice(s) in the range changed"
          + (f"; {fixes} correction record(s) for closed periods"
             if fixes else ""))
    return 0


def cmd_owners_import(args: argparse.Namespace) -> int:
    try:
        rows = owners.read_owners(args.file)
    except owners.OwnersError as err:
        return _usage_error(err)
    store = _store(args)
    try:
        done = book.import_owners(store, rows)
    finally:
        store.close()
    print(f"imported {done.rows} owner row(s) for "
          f"{len({r.vm_uuid for r in rows})} VM(s); re-derived "
          f"{done.rederived} VM(s) on {len(done.hosts)} host(s)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    s, e = _span(args)
    if args.json and args.format != "cloudstack":
        return _usage_error(ValueError("--json is for the cloudstack "
                                       "export"))
    store = _store(args)
    try:
        records = _records(store, s, e, args)
    finally:
        store.close()
    try:
        text = (exports.focus_csv(records) if args.format == "focus" else
                exports.cloudstack_json(records) if args.json else
                exports.cloudstack_csv(records))
        _write(text, args.output)
    except VmagentError as err:
        print(f"vmcollector: {err}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _write(text: str, path: str | None) -> None:
    """To ``path`` (replaced whole, never half-written), else stdout."""
    if path is None:
        sys.stdout.write(text)
        return
    try:
        write_atomically(Path(path), text)
    except OSError as e:
        raise VmagentError(f"cannot write {path}: {e.strerror or e}") \
            from None


# --- periods and evidence (ledger/close.py, ledger/evidence.py) -----------

def _register_periods(sub: Any) -> None:
    c = _cmd(sub, "close", "close a period: reconcile, freeze its records, "
             "sign its certificate (or check one with --verify)", cmd_close)
    c.add_argument("period", metavar="PERIOD",
                   help="2026-11 | 2026-11-30 | 2026-11-30T04")
    c.add_argument("--tz", default="UTC", metavar="ZONE")
    c.add_argument("--verify", action="store_true",
                   help="check the period's certificate instead")
    v = _cmd(sub, "evidence", "write a VM's evidence bundle (or check one "
             "offline with --verify FILE)", cmd_evidence)
    v.add_argument("--vm", metavar="UUID")
    _range(v, required=False)
    v.add_argument("-o", "--output", metavar="FILE")
    v.add_argument("--period", choices=GRAINS, default="month")
    v.add_argument("--tz", default="UTC", metavar="ZONE")
    v.add_argument("--verify", metavar="FILE",
                   help="check a bundle: needs nothing but the file")


def _instance_key(args: argparse.Namespace) -> tuple[Any, str]:
    from vmagent.keys import HostKey
    cfg = config_mod.load(args.config)
    return HostKey.load_or_create(cfg.state_dir), cfg.instance_name


def cmd_close(args: argparse.Namespace) -> int:
    try:
        p = close.parse_period(args.period, args.tz)
    except (close.CloseError, PeriodError) as err:
        return _usage_error(err)
    store = _store(args)
    try:
        if args.verify:
            return _verify_period(store, p)
        key, instance = _instance_key(args)
        store.put_instance_key(instance, key.public, key.key_id.hex())
        try:
            closed, cert, rec = close.close(store, p, key, instance)
        except close.CloseError as err:
            print(f"vmcollector: {err}", file=sys.stderr)
            return EXIT_FAILED
        if not closed:
            fixes = close.correct(store, p)
            print(f"period {p.key} ({p.grain}, {p.tz}) was closed at "
                  f"{cert['closed_at']} by {cert['instance']}"
                  + (f"; {fixes} correction record(s) for late evidence"
                     if fixes else ""))
            return 0
    finally:
        store.close()
    for flag in rec.flags:
        print(f"flag: {flag}", file=sys.stderr)
    print(f"closed {p.key} ({p.grain}, {p.tz}): {cert['records']} final "
          f"records, certificate signed by {instance} (key {cert['key_id']})"
          f"; reconciled {rec.checked} counter(s), {rec.skipped} without a "
          f"known baseline, {len(rec.flags)} flagged")
    return 0


def _verify_period(store: Any, p: Any) -> int:
    try:
        cert = close.verify(store, p)
    except close.CloseError as err:
        print(f"vmcollector: {err}", file=sys.stderr)
        return EXIT_FAILED
    print(f"certificate of {p.key} ({p.grain}, {p.tz}) verified: "
          f"{cert['records']} records, closed at {cert['closed_at']} by "
          f"{cert['instance']} (key {cert['key_id']})")
    return 0


def cmd_evidence(args: argparse.Namespace) -> int:
    from vmagent.ledger import evidence
    if args.verify is not None:
        if args.vm or args.start or args.end or args.output:
            return _usage_error(ValueError("--verify FILE takes no other "
                                           "option"))
        try:
            print(evidence.verify(Path(args.verify)))
        except evidence.EvidenceError as err:
            print(f"vmcollector: evidence does not verify: {err}",
                  file=sys.stderr)
            return EXIT_FAILED
        return 0
    missing = [f for f, v in (("--vm", args.vm), ("-s", args.start),
                              ("-e", args.end), ("-o", args.output)) if not v]
    if missing:
        return _usage_error(ValueError(f"evidence needs {', '.join(missing)}"
                                       " (or --verify FILE)"))
    s, e = _span(args)
    store = _store(args)
    try:
        m = evidence.write(store, Path(args.output), args.vm, s, e,
                           args.period, args.tz)
    finally:
        store.close()
    frames = sum(w["frames"] for h in m["hosts"] for w in h["wals"])
    print(f"wrote {args.output}: {frames} frames of {len(m['hosts'])} "
          f"host(s), {len(m['records'])} records, {len(m['certificates'])} "
          f"certificate(s); check it with `{evidence.VERIFY_COMMAND}`")
    return 0
