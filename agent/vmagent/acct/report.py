"""``vmagent acct``: an oneacct-like report of accounting records, with
filters, as a table, JSON, CSV or XML (times in UTC)."""

from __future__ import annotations

import csv
import io
import json
import pwd
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from vmagent.acct.records import HYPERVISORS, AcctRecord
from vmagent.errors import VmagentError
from vmagent.show import columns

FIELDS = ("command", "pid", "uid", "gid", "user", "start", "end",
          "elapsed_us", "cpu_user_us", "cpu_system_us", "mem_kb", "io_blocks",
          "flags", "exit", "format")


class UsageError(VmagentError):
    """A bad option value; the message says which and why."""


def parse_time(text: str) -> float:
    """Unix seconds from ISO 8601 (an offset is honoured, none means local
    time) or oneacct's ``month/day/year hour:minute:second`` (local time)."""
    for pattern in ("%m/%d/%Y %H:%M:%S", "%m/%d/%Y"):
        try:
            return datetime.strptime(text, pattern).timestamp()
        except ValueError:
            pass
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise UsageError(f"time {text!r}: expected ISO 8601 (e.g. "
                         "2026-11-22T10:00:00+01:00) or month/day/year "
                         "hour:minute:second") from None


def parse_user(text: str) -> int:
    if text.isdigit():
        return int(text)
    try:
        return pwd.getpwnam(text).pw_uid
    except KeyError:
        raise UsageError(f"user {text!r}: no such user") from None


def select(records: Iterable[AcctRecord], start: float | None,
           end: float | None, uid: int | None,
           vms_only: bool) -> list[AcctRecord]:
    """Records whose run overlaps [start, end], of ``uid``, of hypervisors."""
    return [r for r in records
            if (start is None or r.end_s >= start)
            and (end is None or r.start_s <= end)
            and (uid is None or r.uid == uid)
            and (not vms_only or HYPERVISORS.fullmatch(r.command))]


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(
        timespec="seconds").replace("+00:00", "Z")


def _user(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def as_dict(r: AcctRecord) -> dict[str, Any]:
    return {"command": r.command, "pid": r.pid, "uid": r.uid, "gid": r.gid,
            "user": _user(r.uid), "start": _iso(r.start_s),
            "end": _iso(r.end_s), "elapsed_us": r.elapsed_us,
            "cpu_user_us": r.cpu_user_us, "cpu_system_us": r.cpu_system_us,
            "mem_kb": r.mem_kb, "io_blocks": r.io_blocks,
            "flags": list(r.flags), "exit": r.exit, "format": r.format}


def to_json(records: list[AcctRecord]) -> str:
    return json.dumps([as_dict(r) for r in records], indent=2)


def _flat(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return "|".join(value)
    if isinstance(value, dict):
        return ",".join(f"{k}:{v}" for k, v in value.items())
    return str(value)


def to_csv(records: list[AcctRecord]) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(FIELDS)
    for r in records:
        d = as_dict(r)
        w.writerow([_flat(d[f]) for f in FIELDS])
    return out.getvalue()


def to_xml(records: list[AcctRecord]) -> str:
    root = ET.Element("acct")
    for r in records:
        el = ET.SubElement(root, "record")
        for key, value in as_dict(r).items():
            child = ET.SubElement(el, key)
            if isinstance(value, list):
                for flag in value:
                    ET.SubElement(child, "flag").text = flag
            elif isinstance(value, dict):
                for k, v in value.items():
                    child.set(k, str(v))
            elif value is not None:
                child.text = str(value)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def to_table(records: list[AcctRecord]) -> str:
    head = ("START", "END", "COMMAND", "PID", "USER", "CPU_USER_S",
            "CPU_SYS_S", "ELAPSED_S", "MEM_KB", "IO", "EXIT")
    rows = [head]
    for r in records:
        rows.append((_iso(r.start_s), _iso(r.end_s), r.command,
                     "-" if r.pid is None else str(r.pid),
                     _user(r.uid) or str(r.uid),
                     f"{r.cpu_user_us / 1e6:.2f}",
                     f"{r.cpu_system_us / 1e6:.2f}",
                     f"{r.elapsed_us / 1e6:.2f}", str(r.mem_kb),
                     "-" if r.io_blocks is None else str(r.io_blocks),
                     _flat(r.exit) or "-"))
    return columns(rows)
