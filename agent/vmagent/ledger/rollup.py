"""The ledger's roll-up: per host, base-slice start, account and meter, the
sum of the slices' quantities (their maximum for ``mem_rss_max_bytes``),
so that ``usage --group-by account|host`` reads a few rows per base slice
instead of every VM's (docs/usage.md, "Grouped reports").

The book keeps it (ledger/book.py): a host's rows at a start are computed
again from all of the host's slices there whenever one of them is written,
re-derived or rebuilt, and when an owners import changes who owns them.
A row's account is the owner's at the slice's start, ``UNOWNED`` for none.
Quantities are exact: the decimal ``quantity`` and three limbs (``limbs``)
that both databases sum as 64-bit integers without overflowing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from vmagent.ledger.facts import RSS
from vmagent.ledger.owners import UNOWNED, OwnerIndex

COLUMNS = ("host", "start_ns", "account", "meter", "quantity", "q2", "q1",
           "q0")
KEY = COLUMNS[:4]
MAX_METER = RSS[0]  # a maximum under every merge and group-by
_MASK = 2**32 - 1
#: Limbs only below this: a sum of 2**33 rows of them stays in 64 bits.
_LIMBS_BELOW = 2**94
_NO_LIMBS: tuple[None, None, None] = (None, None, None)

#: (host, start_ns, account, meter) -> quantity
Sums = dict[tuple[str, int, str, str], int]


def limbs(v: int) -> tuple[int, int, int] | tuple[None, None, None]:
    """``v`` as (q2, q1, q0) with v = q2 * 2**64 + q1 * 2**32 + q0 and
    q1, q0 in [0, 2**32); none for values too large to sum safely."""
    if not -_LIMBS_BELOW < v < _LIMBS_BELOW:
        return _NO_LIMBS
    return v >> 64, (v >> 32) & _MASK, v & _MASK


def unlimb(q2: Any, q1: Any, q0: Any) -> int:
    """The inverse of ``limbs`` for sums of limbs (PostgreSQL's are
    numeric)."""
    return (int(q2) << 64) + (int(q1) << 32) + int(q0)


class Accumulator:
    """Roll-up rows from (host, uuid, start, meter, quantity) readings of
    slices; the owner at the slice's start from ``index``."""

    def __init__(self, index: OwnerIndex) -> None:
        self.index = index
        self.sums: Sums = {}
        self._owner: dict[tuple[str, int], str] = {}

    def account(self, uuid: str, start_ns: int) -> str:
        key = (uuid, start_ns)
        found = self._owner.get(key)
        if found is None:
            row = self.index.at(uuid, start_ns)
            found = self._owner[key] = (row.account if row else None) \
                or UNOWNED
        return found

    def add(self, host: str, uuid: str, start_ns: int, meter: str,
            v: int) -> None:
        k = (host, start_ns, self.account(uuid, start_ns), meter)
        old = self.sums.get(k)
        self.sums[k] = v if old is None else max(old, v) \
            if meter == MAX_METER else old + v

    def add_all(self, rows: Iterable[tuple[str, str, int, str, Any]]) \
            -> None:
        for host, uuid, start_ns, meter, v in rows:
            self.add(host, uuid, start_ns, meter, int(v))

    def rows(self) -> list[tuple[Any, ...]]:
        """The rows to store, in key order."""
        return [(h, a, acc, m, str(v), *limbs(v))
                for (h, a, acc, m), v in sorted(self.sums.items())]


# --- reading ---------------------------------------------------------------

_PERIODS = 500  # periods per statement (three parameters each)
#: A row whose limbs give q1 * 2**32 + q0 < 2**63: the database takes its
#: maximum; others' are taken here.
_SMALL = "r.q2 = 0 AND r.q1 < 2147483648"
#: PostgreSQL's plan for the read: a hash aggregate in memory, no JIT (it
#: estimates the range join forty times too large, and compiles for it).
_PG_SETTINGS = ("SET LOCAL jit = off", "SET LOCAL work_mem = '64MB'")


def sums(q: Any, periods: Sequence[tuple[int, int]], by: str,
         host: str | None = None,
         account: str | None = None,
         postgresql: bool = False) -> dict[tuple[int, str, str], int]:
    """(index into ``periods``, ``by`` key, meter) -> the sum (maximum for
    ``MAX_METER``) over the rows starting in that period's ``[start,
    end)``; ``by`` is ``account`` or ``host``.  The database adds the
    limbs per period, in one pass; rows it cannot take exactly (no limbs,
    or a maximum past 63 bits) are added here."""
    if by not in ("account", "host"):
        raise ValueError(f"no roll-up by {by!r}")
    out: dict[tuple[int, str, str], int] = {}
    for setting in _PG_SETTINGS if postgresql else ():
        q(setting)
    for i in range(0, len(periods), _PERIODS):
        part = periods[i:i + _PERIODS]
        values = ", ".join(["(?, CAST(? AS BIGINT), CAST(? AS BIGINT))"]
                           * len(part))
        args: list[Any] = [x for k, (a, b) in enumerate(part, start=i)
                           for x in (k, a, b)]
        join = "FROM p JOIN ledger_rollup r ON r.start_ns >= p.a AND " \
            "r.start_ns < p.b WHERE 1 = 1"
        for column, value in (("host", host), ("account", account)):
            if value is not None:
                join, args = join + f" AND r.{column} = ?", [*args, value]
        head = f"WITH p (k, a, b) AS (VALUES {values}) SELECT p.k, r.{by}, " \
            "r.meter, "
        if _add_sums(q, out, head, join, args):
            _add_odd(q, out, head, join, args)
    return out


def _add_sums(q: Any, out: dict[tuple[int, str, str], int], head: str,
              join: str, args: list[Any]) -> bool:
    """The database's part; whether rows are left for ``_add_odd``."""
    odd = False
    for k, key, meter, q2, q1, q0, top, unlimbed, large in q(
            head + "sum(r.q2), sum(r.q1), sum(r.q0), max(CASE WHEN "
            f"{_SMALL} THEN r.q1 * 4294967296 + r.q0 END), count(*) - "
            f"count(r.q0), count(*) - count(CASE WHEN {_SMALL} THEN 1 END) "
            f"{join} GROUP BY 1, 2, 3", args).fetchall():
        if meter == MAX_METER:
            if top is not None:
                out[(k, key, meter)] = int(top)
            odd = odd or large > 0
        else:
            out[(k, key, meter)] = unlimb(q2 or 0, q1 or 0, q0 or 0)
            odd = odd or unlimbed > 0
    return odd


def _add_odd(q: Any, out: dict[tuple[int, str, str], int], head: str,
             join: str, args: list[Any]) -> None:
    """Values too large for limbs (summed) or for the database's maximum,
    from their exact decimals."""
    for k, key, meter, v in q(
            f"{head}r.quantity {join} AND (r.q0 IS NULL OR (r.meter = ? AND "
            f"NOT ({_SMALL})))", (*args, MAX_METER)).fetchall():
        old = out.get((k, key, meter))
        if meter == MAX_METER:
            out[(k, key, meter)] = int(v) if old is None else max(old, int(v))
        else:
            out[(k, key, meter)] = (old or 0) + int(v)
