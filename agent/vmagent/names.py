"""What a consumer name is: one rule for the tokens file, ``[api]
consumers`` and the WAL's cursor files (each name is a file name in
``wal/cursors/``, so no path separators and no leading dot)."""

from __future__ import annotations

import re

_CONSUMER = re.compile(r"[A-Za-z0-9_.-]{1,128}")
RULE = "letters, digits, '_', '.', '-', at most 128, not starting with '.'"


def is_consumer_name(name: object) -> bool:
    return isinstance(name, str) and bool(_CONSUMER.fullmatch(name)) \
        and not name.startswith(".")
