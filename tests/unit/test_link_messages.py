"""RTM_DELLINK parsing (vmagent.links.parse_dellinks) on literal bytes."""

from __future__ import annotations

import struct

import pytest

from vmagent.links import (
    IFLA_IFNAME,
    IFLA_STATS64,
    RTM_DELLINK,
    STATS64,
    parse_dellinks,
)

RTM_NEWLINK = 16


def rtattr(kind: int, value: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(value), kind) + value
    return raw + b"\0" * (-len(raw) % 4)


def message(kind: int, name: bytes | None, stats: list[int] | None) -> bytes:
    body = struct.pack("=BxHiII", 0, 1, 7, 0, 0)  # ifinfomsg
    if name is not None:
        body += rtattr(IFLA_IFNAME, name + b"\0")
    if stats is not None:
        body += rtattr(IFLA_STATS64, struct.pack(f"={len(stats)}Q", *stats))
    return struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body


def test_dellink_gives_the_name_and_its_stats64():
    stats = list(range(1, len(STATS64) + 1))
    [(name, got)] = parse_dellinks(message(RTM_DELLINK, b"vnet3", stats))
    assert name == "vnet3"
    assert got == dict(zip(STATS64, stats, strict=True))
    assert (got["rx_bytes"], got["tx_bytes"]) == (3, 4)


def test_newlink_and_a_dellink_without_stats_are_skipped():
    data = message(RTM_NEWLINK, b"vnet3", [1] * 24) + \
        message(RTM_DELLINK, b"vnet4", None) + \
        message(RTM_DELLINK, b"vnet5", [5] * 24)
    assert [n for n, _ in parse_dellinks(data)] == ["vnet5"]


def test_longer_stats64_of_a_newer_kernel_keeps_the_known_fields():
    [(_, got)] = parse_dellinks(message(RTM_DELLINK, b"t", [9] * 30))
    assert set(got) == set(STATS64)


def test_truncated_message_is_an_error_naming_the_length():
    data = message(RTM_DELLINK, b"vnet3", [1] * 24)
    with pytest.raises(ValueError, match="length"):
        parse_dellinks(data[:-8])


def test_bad_attribute_length_is_an_error():
    data = bytearray(message(RTM_DELLINK, b"vnet3", [1] * 24))
    struct.pack_into("=H", data, 32, 2)  # the first rtattr's length
    with pytest.raises(ValueError, match="rtattr length 2"):
        parse_dellinks(bytes(data))
