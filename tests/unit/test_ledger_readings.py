"""A sample's reading straight from its bytes (ledger/readings.py
``FromBytes``, native/common/msgpack_reading.c) is what decoding the record
and ``of_record`` give, or None (then the record is decoded): on random
records of the usual shape and of every unusual one, and on bytes that are
not a record at all."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmagent.ledger import readings
from vmagent.ledger.readings import FromBytes, of_record

pytestmark = pytest.mark.skipif(readings.lib is None,
                                reason="needs the native extension "
                                       "(pip install .)")

SAMPLE: dict[str, Any] = {
    "kind": "sample", "t": 1_796_032_800 * 10**9, "seq": 7,
    "vm": {"uuid": "6f1c0b9e-0000-4000-8000-000000000001", "gen": "g1",
           "name": "web", "started_ns": 1_796_032_000 * 10**9,
           "hypervisor": "kvm"},
    "cpu": {"total_ns": 5_000, "user_ns": 1, "vhost_ns": 70,
            "vcpus": [{"id": 0, "run_ns": 3}, {"id": 1, "run_ns": 4}]},
    "mem": {"rss_bytes": 1 << 30, "alloc_bytes": 2 << 30},
    "nics": [{"name": "tap0", "mac": "52:54:00:00:00:01", "rx_bytes": 10,
              "tx_bytes": 20, "rx_packets": 1, "tx_packets": 2,
              "rx_errors": 0}],
    "io": {"rd_bytes": 30, "wr_bytes": 40},
    "disks": [{"path": "/var/lib/vm/web.raw", "rd_bytes": 5, "wr_bytes": 6,
               "rd_ops": 1, "wr_ops": 2, "capacity_bytes": 1 << 34}],
    "host": "hv1",
}


def both(body: bytes) -> tuple[Any, Any]:
    """(the reading from the bytes, the one from decoding them)."""
    rec = msgpack.unpackb(body, raw=False)
    return FromBytes()(body, 7), of_record(rec, rec["t"], 7)


def test_a_usual_sample_reads_as_decoding_gives():
    got, want = both(msgpack.packb(SAMPLE))
    assert got == want
    assert got.keys == tuple(sorted(got.keys))  # sorted as the fold needs
    assert dict(zip(got.keys, got.values))[("cpu_ns", "")] == 5_070
    assert got.vcpus == 2 and got.rss == 1 << 30 and got.alloc == 2 << 30


def variant(path: tuple[str, ...], value: Any,
            base: dict[str, Any] = SAMPLE) -> dict[str, Any]:
    """A copy of ``base`` with the field at ``path`` set (or deleted)."""
    rec = msgpack.unpackb(msgpack.packb(base))
    at = rec
    for k in path[:-1]:
        at = at[k] if not isinstance(at, list) else at[int(k)]
    if value is DELETE:
        del at[path[-1]]
    elif isinstance(at, list):
        at[int(path[-1])] = value
    else:
        at[path[-1]] = value
    return rec


DELETE = object()
PATHS = [("t",), ("kind",), ("vm",), ("vm", "uuid"), ("vm", "gen"),
         ("vm", "name"), ("vm", "started_ns"), ("cpu",), ("cpu", "total_ns"),
         ("cpu", "vhost_ns"), ("cpu", "vcpus"), ("mem",),
         ("mem", "rss_bytes"), ("mem", "alloc_bytes"), ("io",),
         ("io", "rd_bytes"), ("nics",), ("nics", "0"), ("nics", "0", "mac"),
         ("nics", "0", "name"), ("nics", "0", "rx_bytes"), ("disks",),
         ("disks", "0", "path"), ("disks", "0", "wr_ops"), ("samples",),
         ("cpu", "user_ns"), ("host",)]
VALUES = st.one_of(
    st.just(DELETE), st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1),
    st.floats(allow_nan=False), st.text(max_size=4), st.binary(max_size=3),
    st.lists(st.integers(0, 3), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(0, 3), max_size=2))


@settings(max_examples=1500, deadline=None)
@given(changes=st.lists(st.tuples(st.sampled_from(PATHS), VALUES),
                        max_size=4))
def test_any_sample_reads_as_decoding_gives_or_is_decoded(changes):
    rec: Any = SAMPLE
    for path, value in changes:
        try:
            rec = variant(path, value, rec)
        except (KeyError, IndexError, TypeError, ValueError):
            continue  # the path is gone: an earlier change removed it
    body = msgpack.packb(rec, use_bin_type=True)
    got = FromBytes()(body, 7)
    if got is None:
        return  # decoded by the caller
    dec = msgpack.unpackb(body, raw=False)
    assert got == of_record(dec, dec["t"], 7)


@pytest.mark.parametrize("path,value", [
    (("t",), True), (("nics", "0", "rx_bytes"), True),
    (("cpu", "total_ns"), 2**64 - 1), (("kind",), "vm_start"),
    (("vm", "uuid"), ""), (("vm", "gen"), None), (("samples",), []),
    (("mem",), 5), (("nics", "0"), "tap0"), (("cpu", "vcpus"), "2"),
    (("io", "rd_bytes"), 1.5)])
def test_what_the_scanner_cannot_vouch_for_is_decoded(path, value):
    assert FromBytes()(msgpack.packb(variant(path, value)), 7) is None


def test_what_a_decoded_record_leaves_out_the_reading_leaves_out():
    got, want = both(msgpack.packb(variant(("nics", "0", "mac"), "")))
    assert got == want  # the NIC named by its name when its MAC is empty
    assert ("net_rx_bytes", "tap0") in got.keys
    got, want = both(msgpack.packb(variant(("cpu",), None)))
    assert got == want and ("cpu_ns", "") not in got.keys
    assert got.vcpus is None


def test_two_devices_of_one_name_are_decoded():
    rec = variant(("nics",), [SAMPLE["nics"][0], SAMPLE["nics"][0]])
    assert FromBytes()(msgpack.packb(rec), 7) is None


def test_a_key_given_twice_is_decoded():
    body = msgpack.packb(SAMPLE)
    # a map of one more pair, the last one "t" again (a dict keeps it)
    assert body[0] & 0xF0 == 0x80
    twice = bytes([body[0] + 1]) + body[1:] + msgpack.packb("t") + b"\x01"
    assert msgpack.unpackb(twice)["t"] == 1
    assert FromBytes()(twice, 7) is None


def test_a_string_that_is_not_utf8_is_decoded():
    body = msgpack.packb(SAMPLE)
    bad = body.replace(b"web", b"w\xffb", 1)
    with pytest.raises(UnicodeDecodeError):
        msgpack.unpackb(bad, raw=False)
    assert FromBytes()(bad, 7) is None


def test_truncated_or_trailing_bytes_are_never_read():
    body = msgpack.packb(SAMPLE)
    reader = FromBytes()
    for end in range(len(body)):
        assert reader(body[:end], 7) is None
    assert reader(body + b"\x00", 7) is None
    assert reader(b"", 7) is None


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_never_reads(junk):
    try:
        rec = msgpack.unpackb(junk, raw=False)
    except Exception:  # noqa: BLE001 - not a record: must not read either
        rec = None
    got = FromBytes()(junk, 7)
    if got is not None:
        assert got == of_record(rec, rec["t"], 7)


# The scanner's limits, exact (the fuzzer's seeds: bench/fuzz_readings.py)

def devices(n: int, key: str, name: str) -> list[dict[str, Any]]:
    one = SAMPLE["nics" if key == "mac" else "disks"][0]
    return [dict(one, **{key: name.format(k)}) for k in range(n)]


NO_CPU_IO = {k: v for k, v in SAMPLE.items() if k not in ("cpu", "io")}


@pytest.mark.parametrize("nics,disks,base,reads", [
    (8, 8, NO_CPU_IO, True),  # 16 devices, 64 counters
    (16, 0, NO_CPU_IO, True),
    (16, 1, NO_CPU_IO, False),  # 17 devices
    (8, 8, SAMPLE, False)])  # 64 counters and 3 more
def test_sixteen_devices_and_sixty_four_counters_read_more_is_decoded(
        nics, disks, base, reads):
    rec = dict(base, nics=devices(nics, "mac", "m{}"),
               disks=devices(disks, "path", "/d{}"))
    got, want = both(msgpack.packb(rec))
    assert (got == want) if reads else got is None
    assert len(want.keys) == 4 * (nics + disks) + (base is SAMPLE) * 3


@pytest.mark.parametrize("extra,reads", [(0, True), (1, False)])
def test_keys_that_fill_the_signature_exactly_read_one_byte_more_is_decoded(
        extra, reads):
    # one NIC, four counters: 4 * (3 + len(name)) bytes of keys
    name = "n" * (readings.lib.VMPROBE_READING_SIG // 4 - 3 + extra)
    got, want = both(msgpack.packb(dict(NO_CPU_IO, disks=[], nics=devices(
        1, "mac", name))))
    assert (got == want) if reads else got is None
    assert ("net_rx_bytes", name) in want.keys


@pytest.mark.parametrize("total,vhost", [(2**63 - 1, 1), (-2**63, -1)])
def test_a_cpu_sum_past_64_bits_is_decoded(total, vhost):
    cpu = dict(SAMPLE["cpu"], total_ns=total, vhost_ns=vhost)
    got, want = both(msgpack.packb(dict(SAMPLE, cpu=cpu)))
    assert got is None
    assert dict(zip(want.keys, want.values))[("cpu_ns", "")] == total + vhost
