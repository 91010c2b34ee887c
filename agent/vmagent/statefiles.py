"""The daemon's small state files (running VMs, the accounting position),
written best-effort: a full or failing disk never ends a sweep.

A write that fails stays pending and is tried again at every sweep with the
newest contents; ``status`` shows what is pending and how many writes
failed.  What a pending file would have said is only needed after a
restart, and each file's reader copes with an older version (a VM
reported stopped while the agent was down, accounting records read twice).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vmagent.log import get_logger


class StateFiles:
    def __init__(self, **context: Any) -> None:
        self.log = get_logger(**context)
        self.pending: dict[str, Callable[[], None]] = {}
        self.errors: dict[str, str] = {}  # name -> the last error
        self.failures = 0

    def save(self, name: str, write: Callable[[], None]) -> None:
        """Write ``name`` now with ``write`` (or later, if that fails)."""
        self.pending[name] = write
        self.flush()

    def flush(self) -> None:
        """Try every pending write again (each sweep)."""
        for name, write in list(self.pending.items()):
            try:
                write()
            except OSError as err:
                self.failures += 1
                if name not in self.errors:  # once per failing spell
                    self.log.error("state_write_failed", file=name,
                                   error=err.strerror)
                self.errors[name] = err.strerror or str(err)
                continue
            del self.pending[name]
            if self.errors.pop(name, None) is not None:
                self.log.info("state_write_recovered", file=name)

    def status(self) -> dict[str, Any]:
        return {"pending": dict(sorted(self.errors.items())),
                "write_failures": self.failures}
