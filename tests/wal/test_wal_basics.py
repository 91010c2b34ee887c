"""The WAL's everyday contract: seqs, durability, readers, acks, deletion."""

from __future__ import annotations

import json

import pytest

from vmagent.wal import CursorError
from vmagent.wal import format as fmt
from wal.helpers import (
    open_wal,
    records,
    sample,
    segment_files,
    seqs,
    verified,
)


def test_seqs_are_contiguous_from_one_and_survive_restarts(tmp_path):
    w = open_wal(tmp_path)
    assert w.commit([sample(1), sample(2)]) == (1, 2)
    assert w.commit([sample(3)]) == (3, 3)
    w.close()
    w = open_wal(tmp_path)
    assert w.commit([sample(4)]) == (4, 4)
    assert seqs(tmp_path) == [1, 2, 3, 4]
    assert verified(tmp_path)


def test_records_are_stored_as_given_plus_their_seq(tmp_path):
    w = open_wal(tmp_path)
    w.commit([sample(7)])
    assert records(tmp_path) == [{**sample(7), "seq": 1}]


def test_empty_commit_writes_nothing(tmp_path):
    w = open_wal(tmp_path)
    assert w.commit([]) is None
    assert w.durable_seq == 0


def test_wal_id_is_random_and_kept(tmp_path):
    a = open_wal(tmp_path / "a")
    b = open_wal(tmp_path / "b")
    assert len(a.wal_id) == 16 and a.wal_id != b.wal_id
    a.close()
    assert open_wal(tmp_path / "a").wal_id == a.wal_id


def test_segments_rotate_by_size_with_fixed_width_names(tmp_path):
    w = open_wal(tmp_path, segment_bytes=2048)
    for i in range(40):
        w.commit([sample(i)])
    names = [p.name for p in segment_files(tmp_path)]
    assert len(names) > 3
    assert all(len(n) == len("00000000000000000001.seg") for n in names)
    assert names == sorted(names, key=lambda n: int(n[:20]))
    assert seqs(tmp_path) == list(range(1, 41))
    assert verified(tmp_path)


def test_reader_starts_with_the_frame_holding_after_plus_one(tmp_path):
    w = open_wal(tmp_path)
    w.commit([sample(1), sample(2), sample(3)])  # 1-3
    w.commit([sample(4), sample(5)])  # 4-5
    w.commit([sample(6)])  # 6
    assert [(f.first_seq, f.last_seq) for f in w.frames(0)] == \
        [(1, 3), (4, 5), (6, 6)]
    assert [f.first_seq for f in w.frames(1)] == [1, 4, 6]
    assert [f.first_seq for f in w.frames(3)] == [4, 6]
    assert [f.first_seq for f in w.frames(5)] == [6]
    assert w.frames(6) == []


def test_reader_limits_end_at_frame_boundaries_but_give_one_frame(tmp_path):
    w = open_wal(tmp_path)
    w.commit([sample(i) for i in range(5)])  # 1-5
    w.commit([sample(i) for i in range(5)])  # 6-10
    assert [f.last_seq for f in w.frames(0, max_records=1)] == [5]
    assert [f.last_seq for f in w.frames(0, max_records=6)] == [5, 10]
    assert [f.last_seq for f in w.frames(0, max_bytes=1)] == [5]


def test_served_frames_verify_against_the_architecture_signature(tmp_path):
    from vmagent import keys
    from wal.helpers import HOST, KEY

    w = open_wal(tmp_path)
    w.commit([sample(1)])
    w.commit([sample(2)])
    f1, f2 = w.frames(0)
    assert f1.prev_hash == fmt.ZERO_HASH
    assert f2.prev_hash == f1.hash
    assert f1.hash == fmt.chain_hash(f1.prev_hash, f1.records)
    data = (b"vmagent-wal-v1\0" + HOST.encode() + b"\0" + w.wal_id
            + (1).to_bytes(8, "big") + (1).to_bytes(8, "big") + f1.hash)
    assert keys.verify_signature(KEY.public, f1.sig, data)
    assert f1.key_id == keys.key_id(KEY.public)


def test_ack_is_durable_and_monotonic(tmp_path):
    w = open_wal(tmp_path, consumers=["billing", "audit"])
    w.commit([sample(1), sample(2)])
    assert w.ack("billing", 2) == 2
    assert w.ack("billing", 1) == 2  # an older ack changes nothing
    cursor = json.loads((tmp_path / "cursors/billing").read_text())
    assert cursor == {"wal": w.wal_id.hex(), "seq": 2}
    w.close()
    assert open_wal(tmp_path, consumers=["billing", "audit"]).cursors.acked \
        == {"billing": 2, "audit": 0}


@pytest.mark.parametrize(("consumer", "seq", "words"), [
    ("nobody", 1, "unknown consumer"), ("c1", 99, "beyond the last durable"),
])
def test_bad_acks_are_refused(tmp_path, consumer, seq, words):
    w = open_wal(tmp_path)
    w.commit([sample(1)])
    with pytest.raises(CursorError, match=words):
        w.ack(consumer, seq)


def test_cursor_of_another_wal_or_unreadable_counts_as_zero(tmp_path):
    w = open_wal(tmp_path)
    w.commit([sample(1)])
    w.ack("c1", 1)
    w.close()
    (tmp_path / "cursors/c1").write_text('{"wal": "00", "seq": 1}')
    assert open_wal(tmp_path).cursors.acked["c1"] == 0
    (tmp_path / "cursors/c1").write_bytes(b"\xff garbage")
    assert open_wal(tmp_path).cursors.acked["c1"] == 0


def test_segments_deleted_only_wholly_below_every_ack(tmp_path):
    w = open_wal(tmp_path, consumers=["fast", "slow"], segment_bytes=1024)
    for i in range(30):
        w.commit([sample(i)])
    before = segment_files(tmp_path)
    w.ack("fast", 30)
    assert segment_files(tmp_path) == before  # slow holds everything
    w.ack("slow", 10)
    left = segment_files(tmp_path)
    assert len(left) < len(before)
    assert w.first_seq <= 11  # nothing unacked is gone
    assert seqs(tmp_path)[0] <= 11 and seqs(tmp_path)[-1] == 30
    w.ack("slow", 30)
    assert segment_files(tmp_path) == [before[-1]]  # never the active one
    assert w.commit([sample(31)]) == (31, 31)


def test_no_consumers_means_nothing_is_deleted(tmp_path):
    w = open_wal(tmp_path, consumers=[], segment_bytes=1024)
    for i in range(20):
        w.commit([sample(i)])
    assert seqs(tmp_path) == list(range(1, 21))


def test_crash_between_cursor_write_and_delete_is_harmless(tmp_path):
    from wal.helpers import FailingOps, crash

    ops = FailingOps()
    w = open_wal(tmp_path, segment_bytes=1024, ops=ops)
    for i in range(20):
        w.commit([sample(i)])
    ops.fail("unlink", times=None)
    assert w.ack("c1", 20) == 20  # cursor durable; the unlink fails: kept
    assert json.loads((tmp_path / "cursors/c1").read_text())["seq"] == 20
    assert len(segment_files(tmp_path)) > 1
    crash(w)
    w = open_wal(tmp_path, segment_bytes=1024)
    assert len(segment_files(tmp_path)) == 1  # the next start deleted them
    assert w.commit([sample(21)]) == (21, 21)
    assert verified(tmp_path)


def test_invalid_consumer_names_are_refused(tmp_path):
    with pytest.raises(CursorError, match="invalid consumer"):
        open_wal(tmp_path, consumers=["../etc"])
