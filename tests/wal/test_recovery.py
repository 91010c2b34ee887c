"""Recovery at open: torn tails, damaged frames and segments, interrupted
repairs.  Never a crash, never a manual step, every loss a gap record."""

from __future__ import annotations

import errno
import shutil

from vmagent.wal import format as fmt
from wal.helpers import (
    FailingOps,
    flip_byte,
    frame_offsets,
    open_wal,
    records,
    sample,
    segment_files,
    seqs,
    truncate_to,
    verified,
)


def three_commits(d):
    w = open_wal(d)
    w.commit([sample(1), sample(2)])  # seqs 1-2
    w.commit([sample(3), sample(4), sample(5)])  # 3-5
    shutil.copy(d / "high_water", d / "high_water.before_last")
    w.commit([sample(6)])  # 6
    w.close()
    [seg] = segment_files(d)
    return seg


def died_writing_the_last_commit(d):
    """The high-water mark as it was when the last commit's write began:
    what a process killed in the middle of that write leaves."""
    shutil.copy(d / "high_water.before_last", d / "high_water")


def gaps(d):
    return [(r["from_seq"], r["to_seq"], r["reason"]) for r in records(d)
            if r["kind"] == "gap"]


def test_truncated_trailing_commit_is_ignored_at_every_byte_offset(tmp_path):
    seg = three_commits(tmp_path / "orig")
    last = frame_offsets(seg)[-1]
    full = seg.read_bytes()
    for cut in range(last, len(full)):
        d = tmp_path / f"cut{cut}"
        d.mkdir()
        (d / seg.name).write_bytes(full[:cut])
        w = open_wal(d)
        assert seqs(d) == [1, 2, 3, 4, 5], cut
        assert gaps(d) == []
        assert w.commit([sample(9)]) == (6, 6)  # never durable: seq reused
        assert (d / seg.name).stat().st_size == len(full)
        assert verified(d)
        assert not (d / "quarantine").exists()


def test_flipped_bit_in_a_middle_commit_becomes_an_exact_gap(tmp_path):
    seg = three_commits(tmp_path)
    middle = frame_offsets(seg)[1]
    flip_byte(seg, middle + fmt.FRAME_HEADER_SIZE + 5)  # inside its records
    w = open_wal(tmp_path)
    assert [r["seq"] for r in records(tmp_path) if r["kind"] == "sample"] \
        == [1, 2, 6]
    [(first, last, reason)] = gaps(tmp_path)
    assert (first, last) == (3, 5)
    assert "checksum" in reason
    assert len(list((tmp_path / "quarantine").iterdir())) == 1
    assert w.commit([sample(7)]) == (8, 8)  # 7 was the gap record
    assert verified(tmp_path)


def test_damaged_frame_header_still_gives_the_exact_range(tmp_path):
    seg = three_commits(tmp_path)
    middle = frame_offsets(seg)[1]
    flip_byte(seg, middle + 5)  # its length field
    open_wal(tmp_path)
    assert [(a, b) for a, b, _ in gaps(tmp_path)] == [(3, 5)]
    assert verified(tmp_path)


def test_damaged_complete_last_frame_is_a_gap_not_reused(tmp_path):
    seg = three_commits(tmp_path)
    flip_byte(seg, frame_offsets(seg)[-1] + fmt.FRAME_HEADER_SIZE + 2)
    w = open_wal(tmp_path)
    assert [(a, b) for a, b, _ in gaps(tmp_path)] == [(6, 6)]
    assert w.commit([sample(9)])[0] == 8  # 6 lost, 7 the gap record
    assert verified(tmp_path)


def test_gap_is_written_once_and_covered_frames_are_never_served(tmp_path):
    seg = three_commits(tmp_path)
    flip_byte(seg, frame_offsets(seg)[1] + fmt.FRAME_HEADER_SIZE + 5)
    open_wal(tmp_path).close()
    open_wal(tmp_path).close()
    assert len(gaps(tmp_path)) == 1


def test_garbage_segment_header_is_quarantined_and_its_seqs_never_reused(
        tmp_path):
    w = open_wal(tmp_path, segment_bytes=600)
    for i in range(6):
        w.commit([sample(i)])
    w.close()
    segs = segment_files(tmp_path)
    assert len(segs) >= 3
    flip_byte(segs[1], 3)
    w = open_wal(tmp_path)
    lost = [(a, b) for a, b, _ in gaps(tmp_path)]
    assert len(lost) == 1
    kept = [r["seq"] for r in records(tmp_path) if r["kind"] == "sample"]
    assert sorted(set(kept) | set(range(lost[0][0], lost[0][1] + 1))) == \
        list(range(1, 7))
    assert not segs[1].exists()
    assert (tmp_path / "quarantine").exists()
    assert verified(tmp_path)


def test_missing_middle_segment_is_a_gap(tmp_path):
    w = open_wal(tmp_path, segment_bytes=600)
    for i in range(6):
        w.commit([sample(i)])
    w.close()
    segs = segment_files(tmp_path)
    segs[1].unlink()
    open_wal(tmp_path)
    [(a, b, reason)] = gaps(tmp_path)
    assert "missing" in reason
    assert a == int(segs[1].name[:20])
    assert verified(tmp_path)


def test_interrupted_truncation_converges_on_the_next_start(tmp_path):
    seg = three_commits(tmp_path)
    truncate_to(seg, seg.stat().st_size - 3)  # a torn last commit
    died_writing_the_last_commit(tmp_path)
    ops = FailingOps()
    ops.fail("truncate", errno.EIO)
    w = open_wal(tmp_path, ops=ops)  # the repair fails: no crash, and
    assert w.commit([sample(6)]) == (6, 6)  # writes go to a new segment
    assert len(segment_files(tmp_path)) == 2
    w.close()
    w = open_wal(tmp_path)  # the next start repairs what is left
    assert seqs(tmp_path) == [1, 2, 3, 4, 5, 6]
    assert w.commit([sample(7)]) == (7, 7)
    assert verified(tmp_path)


def test_zero_filled_tail_is_a_torn_write(tmp_path):
    seg = three_commits(tmp_path)
    with open(seg, "ab") as f:
        f.write(bytes(4096))  # ext4 delayed allocation after a power cut
    w = open_wal(tmp_path)
    assert gaps(tmp_path) == []
    assert w.commit([sample(7)]) == (7, 7)
    assert verified(tmp_path)


def test_chain_break_without_a_hole_is_refused(tmp_path):
    seg = three_commits(tmp_path)
    data = bytearray(seg.read_bytes())
    last = frame_offsets(seg)[-1]
    f = fmt.decode_frame(bytes(data), last)
    forged = fmt.encode_frame(fmt.Frame(f.first_seq, f.last_seq, f.records,
                                        b"\x01" * 32, f.hash, f.key_id, f.sig))
    seg.write_bytes(bytes(data[:last]) + forged)
    open_wal(tmp_path)
    assert [(a, b) for a, b, _ in gaps(tmp_path)] == [(6, 6)]
    assert 6 not in seqs(tmp_path)
