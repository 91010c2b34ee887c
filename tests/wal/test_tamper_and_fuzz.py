"""Tampering is caught by verify with the public key; random and mutated
bytes never crash the reader and never yield a frame that fails
verification."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmagent.keys import HostKey
from vmagent.wal import format as fmt
from vmagent.wal.scan import scan
from vmagent.wal.verify import _check_frame, verify
from wal.helpers import KEY, open_wal, sample, segment_files


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    d = tmp_path_factory.mktemp("pristine")
    w = open_wal(d)
    for i in range(5):
        w.commit([sample(i), sample(i, "vm-b")])
    w.close()
    [seg] = segment_files(d)
    return seg.name, seg.read_bytes()


def frames_of(data: bytes) -> list[tuple[int, fmt.Frame]]:
    off, out = fmt.SEGMENT_HEADER_SIZE, []
    while off < len(data):
        f = fmt.decode_frame(data, off)
        out.append((off, f))
        off += f.size
    return out


def verify_bytes(tmp_path, name: str, data: bytes, key: bytes = KEY.public):
    d = tmp_path / "v"
    d.mkdir(exist_ok=True)
    (d / name).write_bytes(data)
    return verify(d, key)


def test_pristine_wal_verifies(tmp_path, pristine):
    assert verify_bytes(tmp_path, *pristine).ok


def test_changing_any_byte_is_detected(tmp_path, pristine):
    name, data = pristine
    first_frame = fmt.SEGMENT_HEADER_SIZE
    for off in range(first_frame, len(data) - fmt.TRAILER_SIZE):
        changed = bytearray(data)
        changed[off] ^= 0x01
        report = verify_bytes(tmp_path, name, bytes(changed))
        assert not report.ok, off


@pytest.mark.parametrize("part", ["records", "prev_hash", "hash", "sig",
                                  "seqs"])
def test_tampering_with_checksums_recomputed_is_detected(tmp_path, pristine,
                                                         part):
    name, data = pristine
    off, f = frames_of(data)[2]
    changes = {
        "records": {"records": f.records.replace(b"vm-b", b"vm-c")},
        "prev_hash": {"prev_hash": bytes(32)},
        "hash": {"hash": fmt.chain_hash(f.prev_hash, f.records[:-1])},
        "sig": {"sig": HostKey.generate().sign(b"x")},
        "seqs": {"first_seq": f.first_seq + 1, "last_seq": f.last_seq + 1},
    }[part]
    forged = fmt.encode_frame(fmt.Frame(**{**f.__dict__, **changes}))
    tampered = data[:off] + forged + data[off + f.size:]
    assert not verify_bytes(tmp_path, name, tampered).ok


def test_reordered_frames_are_detected(tmp_path, pristine):
    name, data = pristine
    (o1, f1), (o2, f2) = frames_of(data)[1:3]
    swapped = data[:o1] + data[o2:o2 + f2.size] + data[o1:o1 + f1.size] + \
        data[o2 + f2.size:]
    assert not verify_bytes(tmp_path, name, swapped).ok


def test_dropped_middle_frame_is_detected(tmp_path, pristine):
    name, data = pristine
    off, f = frames_of(data)[2]
    report = verify_bytes(tmp_path, name, data[:off] + data[off + f.size:])
    assert not report.ok
    assert any("missing" in p.message and not p.explained
               for p in report.problems)


def test_replayed_frame_is_detected(tmp_path, pristine):
    name, data = pristine
    off, f = frames_of(data)[1]
    report = verify_bytes(tmp_path, name, data + data[off:off + f.size])
    assert not report.ok
    assert any("repeat" in p.message for p in report.problems)


def test_another_hosts_key_fails_every_frame(tmp_path, pristine):
    report = verify_bytes(tmp_path, *pristine,
                          key=HostKey.generate().public)
    assert not report.ok
    assert sum("another key" in p.message for p in report.problems) == 5


def test_problems_name_segment_offset_and_seq(tmp_path, pristine):
    name, data = pristine
    off, f = frames_of(data)[3]
    changed = bytearray(data)
    changed[off + fmt.FRAME_HEADER_SIZE] ^= 1
    report = verify_bytes(tmp_path, name, bytes(changed))
    [p] = [p for p in report.problems if not p.explained]
    assert p.segment == name
    assert p.offset == off
    assert p.seq == f.first_seq
    assert str(p).startswith(f"{name} offset {off} seq {f.first_seq}: ")


def _check_served(d) -> None:
    found = scan(d)
    wal_id = found.wal_id or b""
    for ref in found.served:
        frame = fmt.decode_frame((d / ref.segment.name).read_bytes(),
                                 ref.offset)
        assert _check_frame(frame, wal_id, KEY.public) == ""


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutations=st.lists(st.tuples(st.integers(0, 10**6),
                                    st.integers(0, 255)), max_size=8),
       cut=st.one_of(st.none(), st.integers(0, 10**6)),
       junk=st.binary(max_size=300))
def test_mutated_segments_never_crash_or_serve_bad_frames(tmp_path, pristine,
                                                          mutations, cut,
                                                          junk):
    name, data = pristine
    buf = bytearray(data)
    for pos, value in mutations:
        buf[pos % len(buf)] = value
    if cut is not None:
        del buf[cut % len(buf):]
    d = tmp_path / "m"
    d.mkdir(exist_ok=True)
    (d / name).write_bytes(bytes(buf) + junk)
    _check_served(d)
    verify(d, KEY.public)  # reports, never raises
    w = open_wal(d)  # recovery never crashes, and the WAL still works
    assert w.commit([sample(1)]) is not None
    w.close()
    _check_served(d)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=st.binary(max_size=2000), with_header=st.booleans())
def test_random_bytes_never_crash_the_reader(tmp_path, blob, with_header):
    d = tmp_path / "r"
    d.mkdir(exist_ok=True)
    head = fmt.pack_segment_header(fmt.SegmentHeader(bytes(16), 1, 0,
                                                     fmt.ZERO_HASH))
    (d / fmt.segment_name(1)).write_bytes((head if with_header else b"")
                                          + blob)
    found = scan(d)
    assert found.served == []  # nothing unsigned passes the CRCs here...
    verify(d, KEY.public)
    w = open_wal(d)
    assert w.commit([sample(1)]) is not None
    w.close()


@pytest.mark.parametrize(("key_id", "words"), [
    (bytes(8), "another key"), (KEY.key_id, "signature")])
def test_a_frame_with_valid_crcs_but_no_signature_is_refused(tmp_path,
                                                             key_id, words):
    d = tmp_path / "f"
    d.mkdir()
    head = fmt.pack_segment_header(fmt.SegmentHeader(bytes(16), 1, 0,
                                                     fmt.ZERO_HASH))
    records = msgpack.packb({"seq": 1, "host": "h", "kind": "sample"})
    forged = fmt.encode_frame(fmt.Frame(1, 1, records, fmt.ZERO_HASH,
                                        fmt.chain_hash(fmt.ZERO_HASH, records),
                                        key_id, bytes(64)))
    (d / fmt.segment_name(1)).write_bytes(head + forged)
    assert scan(d).served  # the CRCs, seqs and chain pass...
    report = verify(d, KEY.public)
    assert not report.ok  # ...the key does not
    [problem] = report.problems
    assert words in problem.message
