"""The pull API's defences without sockets: the pending pool, the failure
budget, and the parsing of what a client sends."""

from __future__ import annotations

import json
from typing import Any

import pytest

from vmagent.api.guard import FailureLimiter, PendingPool
from vmagent.api.http import (
    ApiError,
    check_length,
    parse_body,
    parse_query,
    query_int,
    query_wait,
)
from vmagent.api.server import Request
from vmagent.wal import NotKept, WalConflict


def test_a_full_pending_pool_gives_up_its_oldest():
    pool: PendingPool[str] = PendingPool(limit=3)
    assert [pool.add(x) for x in "abc"] == [None, None, None]
    assert pool.add("d") == "a"
    pool.add("b")  # pending again (a kept-alive connection): the newest
    assert pool.add("e") == "c"
    pool.discard("d")
    assert pool.add("f") is None and len(pool) == 3
    assert "b" in pool and "a" not in pool


def test_failures_draw_on_a_budget_that_refills():
    now = [0.0]
    limiter = FailureLimiter(rate=10, burst=5, clock=lambda: now[0])
    assert [limiter.take("10.0.0.1") for _ in range(6)] == [True] * 5 + [False]
    assert limiter.take("10.0.0.2")  # per address
    now[0] += 0.1  # one more
    assert limiter.take("10.0.0.1") and not limiter.take("10.0.0.1")


def test_the_failure_budget_forgets_idle_addresses():
    now = [0.0]
    limiter = FailureLimiter(rate=10, burst=5, clock=lambda: now[0])
    for i in range(10_000):
        limiter.take(f"a{i}")
    now[0] += 1.0  # all refilled
    limiter.take("new")
    assert len(limiter._buckets) == 1


@pytest.mark.parametrize("text", ["\u00b2", "\u0663", "-1", "1e3", " 1", "",
                                  "9" * 20, "9" * 5000])
def test_integers_are_ascii_digits_in_range(text):
    with pytest.raises(ApiError) as e:
        query_int({"after": text}, "after", None, 0, 2**63)
    assert e.value.reply.status == 400


def test_integers_and_waits_that_are_fine():
    assert query_int({"max": "0010"}, "max", 1000, 1, 10_000) == 10
    assert query_int({}, "max", 1000, 1, 10_000) == 1000
    assert query_wait({"wait": "2.5"}) == 2.5
    assert query_wait({"wait": "1e-05"}) == 1e-05
    for bad in ("nan", "inf", "61", "\u0663", "-0"):
        with pytest.raises(ApiError):
            query_wait({"wait": bad})


def test_too_many_query_fields_are_a_400():
    with pytest.raises(ApiError) as e:
        parse_query("&".join(f"x{i}=1" for i in range(20)))
    assert e.value.reply.status == 400


def body(raw: bytes, ctype: str = "application/json") -> Request:
    return Request("POST", "/v1/ack", {"content-type": ctype}, "127.0.0.1",
                   body=raw)


@pytest.mark.parametrize(("raw", "ctype"), [
    (b"[" * 30_000 + b"]" * 30_000, "application/json"),
    (b'{"a":' * 10_000 + b"1" + b"}" * 10_000, "application/json"),
    (b"\x91" * 5000 + b"\x00", "application/msgpack"),
    (b"\xff\xfe", "application/json"),
    (b"[1]", "application/json"),
])
def test_deep_or_broken_bodies_are_a_400(raw, ctype):
    with pytest.raises(ApiError) as e:
        parse_body(body(raw, ctype))
    assert e.value.reply.status == 400


def test_body_length_is_required_and_capped():
    check_length({"content-length": "65536"})
    for headers, status in (({}, 411), ({"content-length": "65537"}, 413),
                            ({"content-length": "9" * 5000}, 413)):
        with pytest.raises(ApiError) as e:
            check_length(headers)
        assert e.value.reply.status == status


class FakeSource:
    """The narrow interface the API is written against (api/source.py)."""

    host_id = "h1"

    def __init__(self, error: Exception) -> None:
        self.error = error

    def ack(self, consumer: str, wal_id: bytes, seq: int) -> int:
        raise self.error

    def read_batch(self, consumer: str, after: int | None,
                   wal_hex: str | None, max_records: int,
                   max_bytes: int) -> Any:
        raise self.error


def test_an_ack_that_cannot_be_made_durable_is_a_503():
    import errno

    from vmagent.api.http import PullApi

    source: Any = FakeSource(OSError(errno.ENOSPC, "No space left on device"))
    api = PullApi(source, commits=None)  # type: ignore[arg-type]
    with pytest.raises(ApiError) as e:
        api._ack_durably("default", b"w" * 16, 5)
    assert e.value.reply.status == 503
    assert e.value.reply.body == (b'{"error": "cannot make the ack durable: '
                                  b'No space left on device"}')


@pytest.mark.parametrize(("error", "status", "fields"), [
    (WalConflict("not the current WAL", "ab" * 16), 409, {"wal": "ab" * 16}),
    (NotKept(1, 4), 410, {"missing_from": 1, "missing_to": 4}),
])
def test_the_wals_refusals_become_409_and_410_with_their_fields(
        error, status, fields):
    from vmagent.api.http import PullApi

    api = PullApi(FakeSource(error), commits=None)  # type: ignore[arg-type]
    with pytest.raises(ApiError) as e:
        api._read("default", {}, 0, 10)
    assert e.value.reply.status == status
    assert json.loads(e.value.reply.body).items() >= fields.items()
