"""The ledger's ``vmcollector`` sub-commands: ``usage``, ``history`` and
``rebuild`` (docs/usage.md).  ``register(subparsers)`` adds them."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from vmagent.cli import with_config
from vmagent.collector import config as config_mod
from vmagent.ledger import book, report
from vmagent.ledger.periods import GRAINS, PeriodError, zone

EXIT_USAGE = 2
USAGE_COLUMNS = ("period", "vm_name", "host", "meter", "nic", "disk",
                 "quantity")
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
    u.add_argument("--group-by", choices=report.GROUPS)
    _forms(u)
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


def _cmd(sub: Any, name: str, text: str, func: Any) -> Any:
    sp = with_config(sub.add_parser(name, help=text, description=text),
                     config_mod.DEFAULT_PATH)
    sp.set_defaults(func=func)
    return sp


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
    try:
        s, e = _times(args)
    except (report.ReportError, PeriodError) as err:
        return _usage_error(err)
    assert s is not None and e is not None
    store = _store(args)
    try:
        rows = report.usage(store, s, e, args.period, args.tz, args.vm,
                            args.host)
    finally:
        store.close()
    columns: tuple[str, ...] = USAGE_COLUMNS
    if args.group_by:
        rows = report.group(rows, args.group_by)
        columns = (args.group_by, "period", "meter", "quantity")
    _print(rows, args, columns, "usage")
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    try:
        s, e = _times(args)
    except (report.ReportError, PeriodError) as err:
        return _usage_error(err)
    store = _store(args)
    try:
        rows = report.history(store, s, e, args.vm)
    finally:
        store.close()
    _print(rows, args, HISTORY_COLUMNS, "history")
    return 0


def cmd_rebuild(args: argparse.Namespace) -> int:
    try:
        s, e = _times(args)
    except (report.ReportError, PeriodError) as err:
        return _usage_error(err)
    if not args.reason.strip():
        return _usage_error(ValueError("--reason must not be empty"))
    assert s is not None and e is not None
    store = _store(args)
    try:
        hosts, changed = book.rebuild(store, s, e, args.reason)
    finally:
        store.close()
    print(f"rebuilt {len(hosts)} host(s) from their frames: "
          f"{changed} slice(s) in the range changed")
    return 0
