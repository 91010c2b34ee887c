"""Cutting time and integer quantities into slices, exactly.

Slices are stored in UTC at a base grain of 15 minutes (every IANA offset is
a multiple of 15 minutes, so every local hour, day and month is a union of
base slices) and also cut wherever an attribute changes (gen, config, host,
owner).  A counter delta measured between two samples is split across the
slices its interval straddles in proportion to time; the integer remainder
goes by largest remainder, ties to the earlier slice, so the parts always
sum to the delta exactly and the same inputs always give the same parts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

BASE_NS = 15 * 60 * 10**9


def base_cuts(start_ns: int, end_ns: int) -> list[int]:
    """The base-grain boundaries strictly inside ``(start_ns, end_ns)``."""
    first = (start_ns // BASE_NS + 1) * BASE_NS
    return list(range(first, end_ns, BASE_NS))


def pieces(start_ns: int, end_ns: int,
           cuts: Iterable[int] = ()) -> list[tuple[int, int]]:
    """``[start, end)`` cut at the base grain and at ``cuts`` (those inside
    it), as consecutive half-open intervals."""
    if end_ns <= start_ns:
        return []
    points = sorted({start_ns, end_ns, *base_cuts(start_ns, end_ns),
                     *(c for c in cuts if start_ns < c < end_ns)})
    return list(zip(points, points[1:]))


def split(quantity: int, start_ns: int, end_ns: int,
          parts: Sequence[tuple[int, int]]) -> list[int]:
    """``quantity`` measured over ``[start_ns, end_ns)``, shared among
    ``parts`` (intervals) in proportion to their overlap with it.

    Largest remainder, ties to the earlier part: the shares sum exactly to
    ``quantity`` when the parts cover the interval (a negative quantity is
    split as its opposite, mirrored).  A zero-length interval gives the
    whole quantity to the part holding ``start_ns``."""
    if quantity < 0:
        return [-x for x in split(-quantity, start_ns, end_ns, parts)]
    if end_ns <= start_ns:
        return [quantity if a <= start_ns < b else 0 for a, b in parts]
    span = end_ns - start_ns
    weights = [max(0, min(b, end_ns) - max(a, start_ns)) for a, b in parts]
    shares = [quantity * w // span for w in weights]
    rests = [quantity * w % span for w in weights]
    left = quantity * sum(weights) // span - sum(shares)
    for i in sorted(range(len(parts)), key=lambda i: (-rests[i], i))[:left]:
        shares[i] += 1
    return shares


def overlap(a_start: int, a_end: int, b_start: int, b_end: int) -> int:
    """How much of ``[a_start, a_end)`` lies in ``[b_start, b_end)``, ns."""
    return max(0, min(a_end, b_end) - max(a_start, b_start))
