"""Record heads (wal/heads.py, native/common/msgpack_heads.c): each
record's seq, kind and t read without decoding the rest must be what
decoding every record (``iter_records``, as the verifier did) gives."""

from __future__ import annotations

import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmagent import frames
from vmagent.frames import VerifyError, check_frame
from vmagent.wal import format as fmt
from vmagent.wal import heads as heads_mod
from vmagent.wal.heads import head_of, record_heads
from vmagent.wal.scan import iter_records


def pack(rec: object) -> bytes:
    return msgpack.packb(rec, use_bin_type=True)


def s(text: str) -> bytes:
    """A msgpack fixstr."""
    raw = text.encode()
    assert len(raw) < 32
    return bytes([0xA0 | len(raw)]) + raw


def record(seq: bytes, t: bytes, kind: str = "sample") -> bytes:
    """A map {seq, kind, t} with the given encodings of seq and t."""
    return b"\x83" + s("seq") + seq + s("kind") + s(kind) + s("t") + t


def decoding(raw: bytes) -> tuple[list[tuple[object, str, object]], list]:
    """What decoding every record gives: the heads and the records."""
    recs = list(iter_records(raw))
    return [head_of(r) for r in recs], recs


def heads_of(raw: bytes, most: int = 10_000) -> tuple[list, list]:
    h = record_heads(raw, most)
    return list(zip(h.seqs, h.kinds, h.ts)), h.decoded()


@pytest.fixture(params=["native", "python"])
def scanner(request, monkeypatch):
    """Both paths: the C scanner and the decoding it falls back to."""
    if request.param == "python":
        monkeypatch.setattr(heads_mod, "lib", None)
    elif heads_mod.lib is None:
        pytest.skip("needs the native extension (pip install .)")
    return request.param


INT_WIDTHS = [  # (encoding, value): every msgpack integer form
    (b"\x05", 5), (b"\xcc\xc8", 200), (b"\xcd\x01\x2c", 300),
    (b"\xce\x00\x01\x86\xa0", 100_000),
    (b"\xcf" + struct.pack(">Q", 2**40), 2**40),
    (b"\xd0\x07", 7), (b"\xd1\x01\x00", 256),
    (b"\xd2" + struct.pack(">i", 70_000), 70_000),
    (b"\xd3" + struct.pack(">q", 2**50), 2**50),
    (b"\xff", -1), (b"\xe0", -32), (b"\xd0\x80", -128),
    (b"\xd1\x80\x00", -32768), (b"\xd2" + struct.pack(">i", -2**31), -2**31),
    (b"\xd3" + struct.pack(">q", -2**63), -2**63),
    (b"\xcf" + struct.pack(">Q", 2**64 - 1), 2**64 - 1),
]


@pytest.mark.parametrize("encoded,value", INT_WIDTHS)
def test_every_msgpack_int_width_is_read_as_seq_and_t(scanner, encoded,
                                                      value):
    raw = record(encoded, encoded)
    assert heads_of(raw) == decoding(raw)
    assert heads_of(raw)[0] == [(value, "sample", value)]


def test_agent_records_give_seq_kind_t_and_their_exact_bytes(scanner):
    recs = [{"kind": "sample", "t": 10**18 + i, "vm": {"uuid": "u", "seq": 0},
             "nics": [{"name": "vnet0", "rx_bytes": 2**63 - 1}],
             "seq": i + 1, "host": "hv"} for i in range(50)]
    raw = b"".join(pack(r) for r in recs)
    h = record_heads(raw, 50)
    assert h.seqs == list(range(1, 51))  # the head is the last key here
    assert h.kinds == ["sample"] * 50
    assert h.ts == [10**18 + i for i in range(50)]
    assert h.bodies() == [pack(r) for r in recs]
    assert h.decoded() == recs


def test_keys_in_any_order_and_the_last_of_equal_keys_counts(scanner):
    raw = (b"\x84" + s("t") + b"\x01" + s("seq") + b"\x02" + s("seq")
           + b"\x03" + s("kind") + s("acct"))
    assert heads_of(raw)[0] == [(3, "acct", 1)] == decoding(raw)[0]


def test_records_after_a_seq_keep_their_bytes_and_decode_alone(scanner):
    recs = [{"seq": i, "kind": "sample", "t": i} for i in range(1, 6)]
    raw = b"".join(pack(r) for r in recs)
    later = record_heads(raw, 5).after(3)
    assert later.seqs == [4, 5]
    assert later.bodies() == [pack(recs[3]), pack(recs[4])]
    assert later.decoded() == recs[3:]


def test_gap_records_are_decoded_in_full(scanner):
    gap = {"seq": 2, "kind": "gap", "t": 9, "from_seq": 1, "to_seq": 1,
           "reason": "write failed"}
    raw = pack({"seq": 1, "kind": "sample", "t": 8}) + pack(gap)
    h = record_heads(raw, 2)
    assert h.gap_records() == [gap]
    assert h.kinds == ["sample", "gap"]


UNUSUAL = {
    "bool t counts as an int": pack({"seq": 1, "kind": "x", "t": True}),
    "float t is no t": pack({"seq": 1, "kind": "x", "t": 1.5}),
    "no t": pack({"seq": 1, "kind": "x"}),
    "no kind": pack({"seq": 1, "t": 1}),
    "kind not text": pack({"seq": 1, "kind": 7, "t": 1}),
    "seq as bin key": pack({b"seq": 1, "kind": "x", "t": 1}),
    "seq a float": pack({"seq": 1.0, "kind": "x", "t": 1}),
    "ext value": pack({"seq": 1, "kind": "x", "e": msgpack.ExtType(5, b"ab")}),
    "timestamp": b"\x83" + s("seq") + b"\x01" + s("kind") + s("x") + s("t")
    + b"\xd6\xff" + struct.pack(">I", 7),
    "not a map": pack([1, 2, 3]),
    "nil record": b"\xc0",
    "int map key (strict)": b"\x82" + s("seq") + b"\x01" + b"\x01\x02",
    "nested int map key": pack({"seq": 1, "kind": "x", "m": {1: 2}}),
    "bad utf-8 value": b"\x82" + s("seq") + b"\x01" + s("kind")
    + b"\xa1\xff",
    "overlong utf-8": b"\x82" + s("seq") + b"\x01" + s("kind")
    + b"\xa2\xc0\x80",
    "utf-8 text of every width": pack({"seq": 1, "kind": "é€😀", "t": 2}),
    "surrogate in text": b"\x82" + s("seq") + b"\x01" + s("kind")
    + b"\xa3\xed\xa0\x80",
    "too deep": pack({"seq": 1, "kind": "x", "d": [[[[[[[[[[[]]]]]]]]]]]})
    .replace(b"\x91" * 10, b"\x91" * 100),
    "reserved byte": pack({"seq": 1, "kind": "x"}) + b"\xc1",
}


@pytest.mark.parametrize("name", sorted(UNUSUAL))
def test_unusual_records_give_what_decoding_gives(scanner, name):
    raw = UNUSUAL[name] + pack({"seq": 2, "kind": "sample", "t": 3})
    assert repr(heads_of(raw)) == repr(decoding(raw))


def test_truncated_trailing_record_is_ignored(scanner):
    raw = pack({"seq": 1, "kind": "x", "t": 1}) + pack(
        {"seq": 2, "kind": "x", "t": 2})[:-3]
    assert heads_of(raw) == decoding(raw)
    assert heads_of(raw)[0] == [(1, "x", 1)]


def test_truncated_records_fail_the_frame_as_before(scanner):
    records = pack({"seq": 1, "kind": "x"}) + pack({"seq": 2, "kind": "x"})
    for cut in (records[:-1], records[:5], records[:1]):
        frame = fmt.Frame(1, 2, cut, fmt.ZERO_HASH,
                          fmt.chain_hash(fmt.ZERO_HASH, cut), b"k" * 8,
                          b"s" * 64)
        with pytest.raises(VerifyError,
                           match="records do not hold exactly its seqs"):
            check_frame(frame, "hv", b"w" * 16, None)


@pytest.mark.parametrize("last", [2, 2**62])
def test_other_record_counts_than_the_frame_names_fail_it(scanner, last):
    records = b"".join(pack({"seq": i, "kind": "x"}) for i in (1, 2, 3))
    frame = fmt.Frame(1, last, records, fmt.ZERO_HASH,
                      fmt.chain_hash(fmt.ZERO_HASH, records), b"k" * 8,
                      b"s" * 64)
    with pytest.raises(VerifyError, match="exactly its seqs"):
        check_frame(frame, "hv", b"w" * 16, None)


def test_a_frame_naming_more_records_than_its_bytes_hold_is_not_scanned(
        scanner, monkeypatch):
    """One-byte "records" claimed by the million: refused before the
    scanner sets aside 48 bytes per claimed record."""
    records = b"\x00" * 600_000
    frame = fmt.Frame(1, 600_000, records, fmt.ZERO_HASH,
                      fmt.chain_hash(fmt.ZERO_HASH, records), b"k" * 8,
                      b"s" * 64)
    scanned = []
    monkeypatch.setattr(frames, "record_heads",
                        lambda *a: scanned.append(a) or [])
    with pytest.raises(VerifyError, match="exactly its seqs"):
        frames.check_frame_heads(frame, "hv", b"w" * 16, None)
    assert scanned == []
    smallest = pack({"seq": 1})
    assert len(smallest) == frames.SMALLEST_RECORD


@pytest.mark.parametrize("most", [-5, 0, 1, 2**62])
def test_a_frame_naming_any_number_of_records_is_scanned_safely(scanner,
                                                                most):
    raw = b"".join(pack({"seq": i, "kind": "x"}) for i in (1, 2, 3))
    assert heads_of(raw, most) == decoding(raw)
    assert heads_of(raw, most)[0] == [(1, "x", None), (2, "x", None),
                                      (3, "x", None)]


LENGTH_HEADS = [  # every msgpack form with a length or count field
    (b"\xc4", 1), (b"\xc5", 2), (b"\xc6", 4),  # bin
    (b"\xc7", 1), (b"\xc8", 2), (b"\xc9", 4),  # ext
    (b"\xd9", 1), (b"\xda", 2), (b"\xdb", 4),  # str
    (b"\xdc", 2), (b"\xdd", 4), (b"\xde", 2), (b"\xdf", 4),  # array, map
]


@pytest.mark.parametrize("head,width", LENGTH_HEADS)
@pytest.mark.parametrize("length", ["largest", "one past the end"])
def test_lengths_past_the_end_of_the_bytes_end_the_records_there(
        scanner, head, width, length):
    tail = b"abc"  # three bytes, or three fixints
    n = 2 ** (8 * width) - 1 if length == "largest" else len(tail) + 1
    raw = (pack({"seq": 1, "kind": "x", "t": 1}) + b"\x82" + s("seq")
           + b"\x02" + s("kind") + head + n.to_bytes(width, "big") + tail)
    assert heads_of(raw) == decoding(raw)
    assert heads_of(raw)[0] == [(1, "x", 1)]


@pytest.mark.parametrize("depth", [62, 63, 64, 1023, 1024])
def test_nesting_at_each_limit_gives_what_decoding_gives(scanner, depth):
    deep = (b"\x83" + s("seq") + b"\x02" + s("kind") + s("y") + s("d")
            + b"\x91" * depth + b"\x00")  # the scanner's limit is 64,
    raw = pack({"seq": 1, "kind": "x"}) + deep  # msgpack's 1024 with the map
    (heads, recs), (want, decoded) = heads_of(raw), decoding(raw)
    assert heads == want  # (== on the records themselves would recurse)
    assert len(recs) == len(decoded)
    assert [h[0] for h in heads] == ([1, 2] if depth < 1024 else [1])


scalars = (st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1)
           | st.floats(allow_nan=False) | st.text(max_size=12)
           | st.binary(max_size=12))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=6), inner,
                                        max_size=4), max_leaves=12)
keys = st.sampled_from(["seq", "kind", "t", "vm", "gap"]) | st.text(max_size=5)
records = st.dictionaries(keys, values | st.sampled_from(["gap", "sample"]),
                          max_size=8)


@settings(max_examples=400, deadline=None)
@given(st.lists(records | values, max_size=6), st.integers(0, 8))
def test_heads_agree_with_decoding_on_random_records(recs, cut):
    raw = b"".join(pack(r) for r in recs)
    raw = raw[:len(raw) - cut] if cut < len(raw) else raw
    assert repr(heads_of(raw)) == repr(decoding(raw))


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_heads_agree_with_decoding_on_random_bytes(raw):
    assert repr(heads_of(raw)) == repr(decoding(raw))


def test_a_stored_frame_decodes_its_records_only_when_asked(monkeypatch):
    if heads_mod.lib is None:
        pytest.skip("needs the native extension (pip install .)")
    from vmagent.collector.store import StoredFrame

    recs = [{"seq": i, "kind": "sample", "t": i} for i in range(1, 4)]
    raw = b"".join(pack(r) for r in recs)
    decodes: list[int] = []
    real = heads_mod.iter_records
    monkeypatch.setattr(heads_mod, "iter_records",
                        lambda b: decodes.append(len(b)) or real(b))
    f = StoredFrame(1, 3, b"h" * 32, b"p" * 32, b"s" * 64, "00" * 8, raw,
                    heads=record_heads(raw, 3))
    assert len(f.decoded) == 3 and f.heads.ts == [1, 2, 3]
    assert decodes == []  # the store and the ingest loop need no more
    assert list(f.decoded) == recs and f.decoded[1] == recs[1]
    assert decodes == [len(raw)]  # once
