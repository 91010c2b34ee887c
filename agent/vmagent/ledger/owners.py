"""VM owners: the CSV that ``vmcollector owners import`` reads, and the
time-versioned lookup (docs/usage.md, "Owners").

A row says: from this instant on, this VM belongs to this account (and
project).  The owner of a VM at instant t is its row with the greatest
``from`` ≤ t; before its first row a VM has no owner.  Imports apply to
open periods only: a row dated inside a closed period takes effect when
the first open period starts (``clamp_to_open``), so closed records are
never re-attributed.  Everything here is pure; the store keeps the rows in
the table ``OWNERS_SQL`` creates.
"""

from __future__ import annotations

import bisect
import csv
import io
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from vmagent.errors import VmagentError
from vmagent.ledger.exact import ExactError, parse_rfc3339_ns

COLUMNS = ("vm_uuid", "account", "project", "from")
#: The account of unowned VMs in reports (``--account``, ``--group-by``).
UNOWNED = "-"

# The store's table (migration 6 of collector/store.py), in the migrations'
# dialect: {int} is a 64-bit integer on both stores, parameters are "?".
OWNERS_SQL = """
    CREATE TABLE owners (
        vm_uuid TEXT NOT NULL, from_ns {int} NOT NULL,
        account TEXT NOT NULL, project TEXT,
        PRIMARY KEY (vm_uuid, from_ns))
    """
# A re-import of the same (vm_uuid, from) replaces that row.
OWNERS_UPSERT_SQL = (
    "INSERT INTO owners (vm_uuid, from_ns, account, project) "
    "VALUES (?, ?, ?, ?) ON CONFLICT (vm_uuid, from_ns) DO UPDATE SET "
    "account = excluded.account, project = excluded.project")
OWNERS_SELECT_SQL = ("SELECT vm_uuid, from_ns, account, project FROM owners "
                     "ORDER BY vm_uuid, from_ns")

_UUID = re.compile(r"[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class OwnersError(VmagentError):
    """An owners file that cannot be read or has a bad row; the message
    names the file, the line and the field."""


@dataclass(frozen=True, order=True)
class OwnerRow:
    vm_uuid: str  # lowercase, canonical 8-4-4-4-12
    from_ns: int  # Unix ns, UTC
    account: str
    project: str | None  # None: no project

    def params(self) -> tuple[str, int, str, str | None]:
        """The row as ``OWNERS_UPSERT_SQL``'s parameters."""
        return (self.vm_uuid, self.from_ns, self.account, self.project)


def read_owners(path: str | Path) -> list[OwnerRow]:
    """The rows of an owners CSV file (UTF-8, a BOM allowed)."""
    try:
        text = Path(path).read_bytes().decode("utf-8-sig")
    except OSError as e:
        raise OwnersError(f"{path}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise OwnersError(f"{path}: not UTF-8 text (byte {e.start})") \
            from None
    return parse_owners(text, str(path))


def parse_owners(text: str, source: str = "<owners>") -> list[OwnerRow]:
    """Parse an owners CSV: a header naming exactly ``COLUMNS`` (in any
    order), then one row per line; blank lines are skipped.  Errors read
    ``SOURCE:LINE: FIELD: problem``."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = _header(next(reader, None), source)
        rows: list[OwnerRow] = []
        seen: dict[tuple[str, int], int] = {}
        for fields in reader:
            if not any(f.strip() for f in fields):
                continue
            line = reader.line_num
            row = _row(dict(zip(header, fields)), len(fields),
                       f"{source}:{line}")
            first = seen.setdefault((row.vm_uuid, row.from_ns), line)
            if first != line:
                raise OwnersError(f"{source}:{line}: from: duplicate of line "
                                  f"{first} (same vm_uuid and from)")
            rows.append(row)
    except csv.Error as e:
        raise OwnersError(f"{source}:{reader.line_num}: bad CSV: {e}") \
            from None
    return rows


def _header(fields: list[str] | None, source: str) -> list[str]:
    if fields is None:
        raise OwnersError(f"{source}:1: empty file; expected the header "
                          f"{','.join(COLUMNS)}")
    names = [f.strip().lower() for f in fields]
    for name in COLUMNS:
        if name not in names:
            raise OwnersError(f"{source}:1: {name}: missing column")
    for name in names:
        if name not in COLUMNS:
            raise OwnersError(f"{source}:1: {name or '(empty)'}: unknown "
                              f"column; expected {','.join(COLUMNS)}")
        if names.count(name) > 1:
            raise OwnersError(f"{source}:1: {name}: column given twice")
    return names


def _row(fields: dict[str, str], count: int, where: str) -> OwnerRow:
    if count != len(COLUMNS):
        raise OwnersError(f"{where}: expected {len(COLUMNS)} fields, got "
                          f"{count}")
    uuid = fields["vm_uuid"].strip()
    if not _UUID.fullmatch(uuid):
        raise OwnersError(f"{where}: vm_uuid: not a UUID: {uuid!r}")
    account = fields["account"].strip()
    if not account:
        raise OwnersError(f"{where}: account: empty")
    project = fields["project"].strip()
    for name, value in (("account", account), ("project", project)):
        if _CONTROL.search(value):
            raise OwnersError(f"{where}: {name}: control character in "
                              f"{value!r}")
    try:
        from_ns = parse_rfc3339_ns(fields["from"].strip())
    except ExactError as e:
        raise OwnersError(f"{where}: from: {e}") from None
    return OwnerRow(uuid.lower(), from_ns, account, project or None)


def owner_at(rows: Iterable[OwnerRow], vm_uuid: str,
             t_ns: int) -> OwnerRow | None:
    """The row in force for ``vm_uuid`` at ``t_ns``: the greatest ``from``
    ≤ t (None before the VM's first row)."""
    uuid = vm_uuid.lower()
    best: OwnerRow | None = None
    for row in rows:
        if row.vm_uuid == uuid and row.from_ns <= t_ns and (
                best is None or row.from_ns > best.from_ns):
            best = row
    return best


def owner_cuts(rows: Iterable[OwnerRow], vm_uuid: str, start_ns: int,
               end_ns: int) -> list[int]:
    """The instants inside ``(start_ns, end_ns)`` where ``vm_uuid``'s
    owner changes: slices are cut there."""
    uuid = vm_uuid.lower()
    return sorted({r.from_ns for r in rows
                   if r.vm_uuid == uuid and start_ns < r.from_ns < end_ns})


class OwnerIndex:
    """Rows by VM, for many lookups: ``at`` is ``owner_at`` and ``cuts``
    every ``from`` of a VM, in O(log rows) and O(1)."""

    def __init__(self, rows: Iterable[OwnerRow]) -> None:
        self._rows: dict[str, list[OwnerRow]] = {}
        for row in sorted(rows):
            self._rows.setdefault(row.vm_uuid, []).append(row)
        self._froms = {u: [r.from_ns for r in rs]
                       for u, rs in self._rows.items()}

    def at(self, vm_uuid: str, t_ns: int) -> OwnerRow | None:
        uuid = vm_uuid.lower()
        i = bisect.bisect_right(self._froms.get(uuid, []), t_ns)
        return self._rows[uuid][i - 1] if i else None

    def cuts(self, vm_uuid: str) -> list[int]:
        return self._froms.get(vm_uuid.lower(), [])


def clamp_to_open(rows: Sequence[OwnerRow],
                  open_from_ns: int) -> list[OwnerRow]:
    """The rows an import may store when everything before
    ``open_from_ns`` is closed: per VM, rows dated before it collapse into
    the latest of them, moved to ``open_from_ns`` (a row dated exactly
    there wins); rows from it on are kept as they are."""
    kept = {(r.vm_uuid, r.from_ns): r for r in rows
            if r.from_ns >= open_from_ns}
    early: dict[str, OwnerRow] = {}
    for r in rows:
        if r.from_ns < open_from_ns and (
                r.vm_uuid not in early
                or r.from_ns > early[r.vm_uuid].from_ns):
            early[r.vm_uuid] = r
    for uuid, r in early.items():
        kept.setdefault((uuid, open_from_ns),
                        OwnerRow(uuid, open_from_ns, r.account, r.project))
    return sorted(kept.values())
