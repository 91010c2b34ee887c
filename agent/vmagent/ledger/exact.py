"""Exact text for the ledger's integers: decimal strings, ratios rounded
half-even to a fixed number of places, and RFC 3339 instants in Unix ns.

No float anywhere: a ratio is computed with integer division and its
remainder, so ``ns_to_hours(2_700_000_001_800)`` is ``0.750000000``
(0.7500000005 h, a tie, rounded to the even digit) on every machine.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from vmagent.errors import VmagentError

NS_PER_S = 10**9
NS_PER_HOUR = 3600 * NS_PER_S
PLACES = 9

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_INT = re.compile(r"-?(?:0|[1-9][0-9]*)")
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))")


class ExactError(VmagentError):
    """A decimal or time text that is not in the form the ledger writes."""


def parse_int(text: object) -> int:
    """A decimal integer string (``-12``, ``0``; no ``+``, spaces or
    leading zeros) as an int."""
    if not isinstance(text, str) or not _INT.fullmatch(text):
        raise ExactError(f"not a decimal integer: {text!r}")
    return int(text)


def ratio(numerator: int, denominator: int, places: int = PLACES) -> str:
    """``numerator / denominator`` rounded half-even to ``places`` decimals,
    always written with exactly ``places`` digits after the point (and a
    ``-`` only when the rounded value is not zero)."""
    if denominator <= 0 or places < 0:
        raise ExactError(f"bad ratio: denominator {denominator}, "
                         f"places {places}")
    q, r = divmod(abs(numerator) * 10**places, denominator)
    if 2 * r > denominator or (2 * r == denominator and q % 2):
        q += 1
    sign = "-" if numerator < 0 and q else ""
    if places == 0:
        return f"{sign}{q}"
    whole, frac = divmod(q, 10**places)
    return f"{sign}{whole}.{frac:0{places}d}"


def ns_to_hours(ns: int) -> str:
    """Nanoseconds as hours, rounded half-even to 9 places."""
    return ratio(ns, NS_PER_HOUR)


def ns_to_seconds(ns: int) -> str:
    """Nanoseconds as seconds with 9 places: always exact."""
    return ratio(ns, NS_PER_S)


def parse_rfc3339_ns(text: object) -> int:
    """An RFC 3339 time with ``Z`` or an offset (fractions to the ns) as
    Unix ns."""
    m = _RFC3339.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        raise ExactError(f"not an RFC 3339 time with Z or an offset: "
                         f"{text!r}")
    y, mo, d, h, mi, s, frac, z, sign, oh, om = m.groups()
    if not z and (int(oh) > 23 or int(om) > 59):
        raise ExactError(f"not a valid offset: {text!r}")
    try:
        offset = timedelta(0) if z else (
            (1 if sign == "+" else -1)
            * timedelta(hours=int(oh), minutes=int(om)))
        when = datetime(int(y), int(mo), int(d), int(h), int(mi), int(s),
                        tzinfo=timezone(offset))
    except ValueError as e:
        raise ExactError(f"not a valid time: {text!r} ({e})") from None
    delta = when - _EPOCH
    seconds = delta.days * 86400 + delta.seconds
    return seconds * NS_PER_S + int((frac or "0").ljust(9, "0"))


def format_rfc3339_ns(ns: int) -> str:
    """Unix ns as RFC 3339 UTC: ``2026-11-30T04:00:00Z``, with a 9-digit
    fraction only when the instant is not a whole second (as the usage
    records write it)."""
    seconds, frac = divmod(ns, NS_PER_S)
    t = _EPOCH + timedelta(seconds=seconds)
    text = (f"{t.year:04d}-{t.month:02d}-{t.day:02d}T"
            f"{t.hour:02d}:{t.minute:02d}:{t.second:02d}")
    if frac:
        text += f".{frac:09d}"
    return text + "Z"
