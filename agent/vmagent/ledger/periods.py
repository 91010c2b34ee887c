"""Calendar periods: hour, day and month in any IANA zone (zoneinfo), UTC
by default.

A period's key names it in the zone's own calendar: ``2026-11`` (month),
``2026-11-30`` (day), ``2026-11-30T04+01:00`` (hour: the offset keeps the
repeated hour of a DST change distinct).  Its bounds are UTC instants, so a
day is 23, 24 or 25 hours long where the zone changes its offset; a day
whose midnight does not exist (a change at midnight) starts when the clock
jumps.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from vmagent.errors import VmagentError

GRAINS = ("hour", "day", "month")
NS = 10**9


class PeriodError(VmagentError):
    """An unknown grain, zone or period key."""


@dataclass(frozen=True)
class Period:
    grain: str
    tz: str
    key: str
    start_ns: int  # UTC, inclusive
    end_ns: int  # UTC, exclusive


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ValueError, KeyError, OSError):  # ZoneInfoNotFoundError is a
        raise PeriodError(f"unknown time zone {name!r}") from None  # KeyError


def period_of(t_ns: int, grain: str, tz: str = "UTC") -> Period:
    """The period of ``grain`` in zone ``tz`` that holds the instant."""
    z = zone(tz)
    local = datetime.fromtimestamp(t_ns // NS, z)
    if grain == "hour":
        start = local.replace(minute=0, second=0)
        offset = start.utcoffset() or timedelta(0)
        key = start.strftime("%Y-%m-%dT%H") + _offset(offset)
        begin = _ns(start)
        return Period(grain, tz, key, begin, begin + 3600 * NS)
    if grain == "day":
        day = datetime(local.year, local.month, local.day)
        nxt = day + timedelta(days=1)
        return Period(grain, tz, day.strftime("%Y-%m-%d"),
                      _local_ns(day, z), _local_ns(nxt, z))
    if grain == "month":
        month = datetime(local.year, local.month, 1)
        nxt = datetime(local.year + local.month // 12, local.month % 12 + 1,
                       1)
        return Period(grain, tz, month.strftime("%Y-%m"),
                      _local_ns(month, z), _local_ns(nxt, z))
    raise PeriodError(f"unknown grain {grain!r}; expected one of "
                      f"{', '.join(GRAINS)}")


def periods_between(start_ns: int, end_ns: int, grain: str,
                    tz: str = "UTC") -> list[Period]:
    """The periods that ``[start_ns, end_ns)`` touches, in order."""
    out: list[Period] = []
    t = start_ns
    while t < end_ns:
        p = period_of(t, grain, tz)
        out.append(p)
        t = p.end_ns
    return out


def _offset(offset: timedelta) -> str:
    minutes = int(offset.total_seconds()) // 60
    sign = "+" if minutes >= 0 else "-"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def _ns(aware: datetime) -> int:
    return int(aware.astimezone(timezone.utc).timestamp()) * NS


def _local_ns(naive: datetime, z: ZoneInfo) -> int:
    """A local wall time in ``z`` as a UTC instant (PEP 495 ``fold=0``: a
    repeated wall time is its first occurrence; a skipped one reads with
    the offset before the jump, which is the instant of the jump)."""
    return _ns(naive.replace(tzinfo=z, fold=0))
