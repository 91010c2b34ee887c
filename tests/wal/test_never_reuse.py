"""A (wal, seq) names one record forever, whatever happened to the disk.

A collector pulled and acked every frame; then the end of the last segment
is cut away (at every byte of its last three frames) or a bit of the last
frame's header flips, and the agent starts again, on the same boot (the
high-water mark is exact) or after a reboot (the mark is a lower bound with
a durable reservation).  Whatever the agent serves afterwards, no seq comes
back with other content, and every seq the collector held that is not
served again is inside a gap record -- or the WAL id changed.
"""

from __future__ import annotations

import shutil

import pytest

from vmagent.wal import format as fmt
from vmagent.wal.highwater import FILE_NAME
from wal.helpers import (
    crash,
    frame_offsets,
    open_wal,
    records,
    sample,
    segment_files,
    verified,
)

N_COMMITS = 8


def history_dir(d, close):
    """A WAL whose every record a consumer pulled and acked."""
    w = open_wal(d)
    for i in range(N_COMMITS):
        w.commit([sample(10 * i + j) for j in range(1 + i % 3)])
    w.ack("c1", w.durable_seq)
    if close:
        w.close()
    else:  # killed: no clean stop, the mark as the page cache holds it
        crash(w)
    return {r["seq"]: r for r in records(d)}


def reopen_and_write(d, boot_id):
    w = open_wal(d, boot_id=boot_id)
    wal_id = w.wal_id
    w.commit([sample(1000 + i) for i in range(3)])
    w.commit([sample(2000)])
    w.close()
    return wal_id


def assert_no_seq_reused(d, before, old_wal_id, new_wal_id, where):
    after = records(d)
    if new_wal_id != old_wal_id:
        return  # an explicit discontinuity: collectors start the new WAL
    served = {r["seq"]: r for r in after}
    gaps = [(r["from_seq"], r["to_seq"]) for r in after
            if r["kind"] == "gap"]
    for seq, rec in before.items():
        if seq in served:
            assert served[seq] == rec, f"{where}: seq {seq} changed"
        else:
            assert any(a <= seq <= b for a, b in gaps), \
                f"{where}: seq {seq} lost without a gap"
    assert verified(d), where


@pytest.mark.parametrize("boot_id", ["", "rebooted"])
@pytest.mark.parametrize("close", [True, False])
def test_truncation_anywhere_in_the_last_frames_never_reuses_a_seq(
        tmp_path, boot_id, close):
    orig = tmp_path / "orig"
    before = history_dir(orig, close)
    [seg] = segment_files(orig)
    old_wal_id = fmt.parse_segment_header(seg.read_bytes()).wal_id
    full = seg.stat().st_size
    for cut in range(frame_offsets(seg)[-3], full):
        d = tmp_path / f"cut{cut}"
        shutil.copytree(orig, d)
        with open(d / seg.name, "r+b") as f:
            f.truncate(cut)
        new_wal_id = reopen_and_write(d, boot_id)
        assert_no_seq_reused(d, before, old_wal_id, new_wal_id, f"cut {cut}")
        shutil.rmtree(d)


HEADER_FIELDS = {"magic": 0, "length": 4, "first_seq": 8, "last_seq": 16,
                 "flags": 24, "crc": 28}


@pytest.mark.parametrize("boot_id", ["", "rebooted"])
@pytest.mark.parametrize("field", sorted(HEADER_FIELDS))
def test_bit_flip_in_the_last_frame_header_never_reuses_a_seq(
        tmp_path, field, boot_id):
    orig = tmp_path / "orig"
    before = history_dir(orig, close=False)
    [seg] = segment_files(orig)
    old_wal_id = fmt.parse_segment_header(seg.read_bytes()).wal_id
    last = frame_offsets(seg)[-1]
    start = HEADER_FIELDS[field]
    for byte in range(start, start + (4 if field not in
                                      ("first_seq", "last_seq") else 8)):
        for bit in (0x01, 0x80):
            d = tmp_path / f"{byte}-{bit}"
            shutil.copytree(orig, d)
            data = bytearray((d / seg.name).read_bytes())
            data[last + byte] ^= bit
            (d / seg.name).write_bytes(bytes(data))
            new_wal_id = reopen_and_write(d, boot_id)
            assert_no_seq_reused(d, before, old_wal_id, new_wal_id,
                                 f"{field} byte {byte} bit {bit}")
            shutil.rmtree(d)


def test_lost_durable_frames_become_an_exact_gap_on_the_same_boot(tmp_path):
    before = history_dir(tmp_path, close=False)
    [seg] = segment_files(tmp_path)
    cut = frame_offsets(seg)[-2]  # the last two commits were durable
    with open(seg, "r+b") as f:
        f.truncate(cut)
    w = open_wal(tmp_path)
    lost = [s for s in before if s not in {r["seq"] for r in records(
        tmp_path)}]
    [gap] = [r for r in records(tmp_path) if r["kind"] == "gap"]
    assert (gap["from_seq"], gap["to_seq"]) == (min(lost), max(before))
    assert w.commit([sample(5000)])[0] == max(before) + 2  # after the gap


def test_after_a_reboot_the_gap_reaches_the_durable_reservation(tmp_path):
    before = history_dir(tmp_path, close=False)
    [seg] = segment_files(tmp_path)
    with open(seg, "r+b") as f:
        f.truncate(frame_offsets(seg)[-1])
    open_wal(tmp_path, boot_id="another boot").close()
    [gap] = [r for r in records(tmp_path) if r["kind"] == "gap"]
    assert gap["from_seq"] <= max(before) < gap["to_seq"]
    assert "reservation" in gap["reason"]


def test_acked_seqs_missing_without_a_mark_start_a_new_wal(tmp_path):
    history_dir(tmp_path, close=True)
    [seg] = segment_files(tmp_path)
    old = fmt.parse_segment_header(seg.read_bytes()).wal_id
    with open(seg, "r+b") as f:
        f.truncate(frame_offsets(seg)[-2])
    (tmp_path / FILE_NAME).unlink()  # e.g. a WAL from before the mark
    w = open_wal(tmp_path)
    assert w.wal_id != old
    assert w.cursors.acked == {"c1": 0}
    assert records(tmp_path) == []
    assert w.commit([sample(1)]) == (1, 1)  # a fresh WAL from seq 1
    assert list((tmp_path / "quarantine").glob(f"wal-{old.hex()}/*.seg"))


def test_torn_write_the_mark_never_saw_is_truncated_silently(tmp_path):
    w = open_wal(tmp_path)
    w.commit([sample(1)])
    w.commit([sample(2)])
    crash(w)
    [seg] = segment_files(tmp_path)
    with open(seg, "ab") as f:  # a third commit's write, cut short
        f.write(fmt.encode_frame(fmt.Frame(3, 3, b"\x90" * 40, bytes(32),
                                           bytes(32), bytes(8),
                                           bytes(64)))[:50])
    w = open_wal(tmp_path)
    assert [r["kind"] for r in records(tmp_path)] == ["sample", "sample"]
    assert w.commit([sample(3)]) == (3, 3)


def test_failed_write_seqs_are_never_reused_after_a_crash(tmp_path):
    from wal.helpers import FailingOps
    ops = FailingOps()
    w = open_wal(tmp_path, ops=ops)
    w.commit([sample(1)])
    ops.fail("fdatasync", times=None)
    ops.fail("write", times=None)
    assert w.commit([sample(2), sample(3)]) is None  # seqs 2-3 uncertain
    crash(w)  # the gap record was only in memory
    w = open_wal(tmp_path)
    [gap] = [r for r in records(tmp_path) if r["kind"] == "gap"]
    assert (gap["from_seq"], gap["to_seq"]) == (2, 3)


def test_quarantine_copies_a_damaged_range_once(tmp_path):
    history_dir(tmp_path, close=True)
    [seg] = segment_files(tmp_path)
    data = bytearray(seg.read_bytes())
    data[frame_offsets(seg)[2] + fmt.FRAME_HEADER_SIZE + 1] ^= 1
    seg.write_bytes(bytes(data))
    for _ in range(5):
        open_wal(tmp_path).close()
    copies = list((tmp_path / "quarantine").iterdir())
    assert len(copies) == 1
    assert copies[0].stat().st_size < seg.stat().st_size  # the range only
