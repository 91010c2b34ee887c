"""Long-polls wake when a commit lands: the sweep thread calls `notify`
(one of ``Agent.commit_listeners``), the event loop sets an asyncio.Event
that every parked request waits on.  Nothing polls."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Iterator


class Commits:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.waiters = 0  # changed in the loop's thread only
        self._event: asyncio.Event | None = None

    def notify(self) -> None:
        """After a commit attempt, from the sweep thread.  A waiter counts
        itself before it reads the WAL, so one that is not counted yet
        will see this commit when it reads."""
        if self.waiters and not self.loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop just closed
                self.loop.call_soon_threadsafe(self._fire)

    def _fire(self) -> None:
        if self._event is not None:
            self._event.set()
            self._event = None

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        self.waiters += 1
        try:
            yield
        finally:
            self.waiters -= 1

    def next(self) -> asyncio.Event:
        """The event the next commit sets; take it before reading the WAL,
        so that a commit between the read and the wait is not missed."""
        if self._event is None:
            self._event = asyncio.Event()  # made in the loop's thread
        return self._event

    @staticmethod
    async def wait(event: asyncio.Event, timeout: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)
