"""What the servers need of the agent, and nothing more: the narrow
interface the pull API and the control socket are written against (the
daemon's ``Agent`` provides it; tests may provide another)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from vmagent.config import Config
from vmagent.wal.format import Frame


class EvidenceSource(Protocol):
    cfg: Config
    log: Any
    host_id: str
    #: called after each commit attempt (the API wakes its long-polls)
    commit_listeners: list[Callable[[], None]]

    def consumers(self) -> list[str]:
        """Everyone who may pull."""

    def consumer_of(self, token: str) -> str | None:
        """The consumer a bearer token belongs to."""

    def read_batch(self, consumer: str, after: int | None,
                   wal_hex: str | None, max_records: int,
                   max_bytes: int) -> tuple[bytes, int, list[Frame]]:
        """(WAL id, the ``after`` used, frames): the WAL's read rules
        (``Wal.read``), raising its ReadError subclasses."""

    def ack(self, consumer: str, wal_id: bytes, seq: int) -> int:
        """The consumer's cursor once durable (``Wal.ack``); WalConflict,
        or OSError when it cannot be made durable."""

    def status(self) -> dict[str, Any]:
        """The status document."""

    def vm_samples(self) -> list[dict[str, Any]]:
        """The last sweep's ``sample`` records (per-VM metrics)."""

    def drop_consumer(self, name: str) -> None:
        """A consumer stops holding WAL data, for good."""
