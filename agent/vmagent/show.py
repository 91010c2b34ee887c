"""How records are printed by ``vmagent wal dump`` and ``vmagent pull``:
JSON lines, or ``seq kind {rest}`` for a person; bytes as hex."""

from __future__ import annotations

import json
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
