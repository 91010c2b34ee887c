"""How things are printed for a person: records by ``vmagent wal dump``
and ``vmagent pull`` (JSON lines, or ``seq kind {rest}``; bytes as hex),
and the tables of ``vmagent vms`` and ``vmagent acct``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any


def record_line(rec: dict[str, Any], as_json: bool) -> str:
    if as_json:
        return json.dumps(rec, default=_hex)
    rest = {k: v for k, v in rec.items() if k not in ("seq", "kind")}
    text = json.dumps(rest, default=_hex)
    return f"{rec.get('seq')} {rec.get('kind')} {text}"


def _hex(value: object) -> str:
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"cannot show {type(value).__name__}")


def columns(rows: Sequence[Sequence[str]]) -> str:
    """Rows of cells (the first the heading) as left-aligned columns two
    spaces apart, trailing blanks trimmed."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths))
                     .rstrip() for row in rows)
