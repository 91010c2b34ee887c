"""What keeps hostile clients from crowding out a collector: a bounded pool
of connections still waiting for a request's headers (the oldest makes room
for a new one, so a connection is never refused), and a budget of failed
unauthenticated requests per client address (token bucket).

Nothing here runs on its own: the event loop calls it, so an idle agent has
no wakeups."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Callable, Generic, TypeVar

T = TypeVar("T")

PENDING_LIMIT = 1024
FAILURE_RATE, FAILURE_BURST = 10.0, 50.0  # per second, at once
FORGET_AFTER = 10_000  # addresses tracked before refilled ones are dropped


class PendingPool(Generic[T]):
    """Connections that have not (yet) sent a whole request's headers, in
    the order they became pending."""

    def __init__(self, limit: int = PENDING_LIMIT) -> None:
        self.limit = limit
        self._items: OrderedDict[T, None] = OrderedDict()

    def add(self, item: T) -> T | None:
        """Make ``item`` the newest; returns the oldest when the pool was
        full (the caller closes it), else None."""
        self._items.pop(item, None)
        oldest = None
        if len(self._items) >= self.limit:
            oldest, _ = self._items.popitem(last=False)
        self._items[item] = None
        return oldest

    def discard(self, item: T) -> None:
        self._items.pop(item, None)

    def __contains__(self, item: object) -> bool:
        return item in self._items

    def __len__(self) -> int:
        return len(self._items)


class FailureLimiter:
    """A token bucket per client address, drawn on only by requests that
    fail without valid credentials."""

    def __init__(self, rate: float = FAILURE_RATE,
                 burst: float = FAILURE_BURST,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self._buckets: dict[str, tuple[float, float]] = {}  # tokens, stamp

    def take(self, address: str) -> bool:
        """Charge one failure to ``address``; False when its budget is
        spent (the request is then held back)."""
        now = self.clock()
        tokens, stamp = self._buckets.get(address, (self.burst, now))
        tokens = min(self.burst, tokens + (now - stamp) * self.rate)
        if len(self._buckets) >= FORGET_AFTER:
            self._forget(now)
        allowed = tokens >= 1
        self._buckets[address] = (tokens - 1 if allowed else tokens, now)
        return allowed

    def _forget(self, now: float) -> None:
        """Drop the addresses whose bucket has refilled since."""
        full = self.burst / self.rate  # from empty to full
        self._buckets = {a: v for a, v in self._buckets.items()
                         if now - v[1] < full}
