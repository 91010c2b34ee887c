"""Write and fsync errors, the size cap and a full disk: nothing served that
is not durable, no seq reused, totals kept exact by coalescing."""

from __future__ import annotations

import errno

import pytest

import fullfs
from wal.helpers import (
    FailingOps,
    open_wal,
    records,
    sample,
    segment_files,
    verified,
)


def kinds(d):
    return [(r["seq"], r["kind"]) for r in records(d)]


def test_eio_on_fdatasync_gaps_the_frame_and_never_serves_it(tmp_path):
    ops = FailingOps()
    w = open_wal(tmp_path, ops=ops)
    assert w.commit([sample(1)]) == (1, 1)
    ops.fail("fdatasync", errno.EIO)
    assert w.commit([sample(2), sample(3)]) is None  # seqs 2-3 uncertain
    assert [f.last_seq for f in w.frames(0)] == [1]
    assert w.commit([sample(4)]) == (4, 6)  # gap, coalesced, the sweep
    assert kinds(tmp_path) == [(1, "sample"), (4, "gap"), (5, "coalesced"),
                               (6, "sample")]
    gap = records(tmp_path)[1]
    assert (gap["from_seq"], gap["to_seq"]) == (2, 3)
    assert "Input/output error" in gap["reason"]
    assert len(segment_files(tmp_path)) == 2  # a new segment after the error
    assert verified(tmp_path)
    w.close()
    w = open_wal(tmp_path)  # the failed frame's bytes stay refused
    assert [r["seq"] for r in records(tmp_path)] == [1, 4, 5, 6]
    assert w.commit([sample(7)]) == (7, 7)


def test_coalesced_record_keeps_the_latest_sample_per_vm_gen(tmp_path):
    ops = FailingOps()
    w = open_wal(tmp_path, ops=ops)
    ops.fail("write", errno.ENOSPC, times=None)
    for i in range(1, 4):
        assert w.commit([sample(i, "a"), sample(10 * i, "b"),
                         {"kind": "vm_stop", "t": 1_000_000 + i, "host": "h",
                          "vm": {"uuid": "c"}}]) is None
    assert w.status()["coalescing"]
    ops.plan.clear()
    first, last = w.commit([sample(4, "a")])
    recs = {r["seq"]: r for r in records(tmp_path)}
    [coalesced] = [r for r in recs.values() if r["kind"] == "coalesced"]
    assert coalesced["sweeps"] == 3
    assert coalesced["from_t"] == 1_000_001
    assert coalesced["to_t"] == 1_000_031  # half-open: last t + 1
    totals = {s["vm"]["uuid"]: s["cpu"]["total_ns"]
              for s in coalesced["samples"]}
    assert totals == {"a": 3000, "b": 30000}  # the latest: totals exact
    assert [r["kind"] for r in recs.values()].count("vm_stop") == 3
    assert [r["kind"] for r in recs.values()].count("gap") == 1
    assert not w.status()["coalescing"]
    assert verified(tmp_path)


def test_cap_coalesces_without_taking_seqs_and_resumes_after_acks(tmp_path):
    w = open_wal(tmp_path, max_bytes=3000, segment_bytes=1200)
    done = [w.commit([sample(i)]) for i in range(40)]
    written = [d for d in done if d is not None]
    assert len(written) < 40
    assert [d[0] for d in written] == list(range(1, len(written) + 1))
    assert w.status()["coalesced_sweeps"] == 40 - len(written)
    w.ack("c1", w.durable_seq)  # the consumer catches up: space returns
    first, last = w.commit([sample(99)])
    assert first == len(written) + 1  # unwritten sweeps took no seqs
    tail = records(tmp_path)[-2:]
    assert [r["kind"] for r in tail] == ["coalesced", "sample"]
    assert tail[0]["samples"][0]["cpu"]["total_ns"] == 39_000
    assert verified(tmp_path)


def test_unacked_data_is_never_deleted_for_space(tmp_path):
    w = open_wal(tmp_path, max_bytes=3000, segment_bytes=1200)
    for i in range(40):
        w.commit([sample(i)])
    kept = [r["seq"] for r in records(tmp_path)]
    assert kept == list(range(1, len(kept) + 1))


def test_segment_that_cannot_be_created_is_retried(tmp_path):
    ops = FailingOps()
    w = open_wal(tmp_path, ops=ops, segment_bytes=600)
    w.commit([sample(1)])
    ops.fail("write", errno.ENOSPC, times=None)  # frames and new segments
    assert w.commit([sample(2)]) is None
    assert w.commit([sample(3)]) is None
    ops.plan.clear()
    assert w.commit([sample(4)]) is not None
    assert verified(tmp_path)
    assert records(tmp_path)[-1]["cpu"]["total_ns"] == 4000


@pytest.fixture
def small_tmpfs(tmp_path):
    with fullfs.small_tmpfs(tmp_path / "mnt", "256k") as mnt:
        yield mnt


@pytest.mark.needsroot
def test_stop_on_a_full_disk_writes_the_kept_sweeps_into_the_reserve(
        small_tmpfs):
    d = small_tmpfs / "wal"
    w = open_wal(d, segment_bytes=64 << 10)
    w.commit([sample(0, "a")])
    fullfs.fill(small_tmpfs)
    kept = [w.commit([sample(i, "a"), sample(i, "b")]) is None
            for i in range(1, 30)]
    assert all(kept[-10:])  # the disk is full: sweeps kept in memory
    w.close()  # SIGTERM while full
    w = open_wal(d)
    [coalesced] = [r for r in records(d) if r["kind"] == "coalesced"]
    assert coalesced["sweeps"] == sum(kept)
    assert {s["vm"]["uuid"]: s["cpu"]["total_ns"]
            for s in coalesced["samples"]} == {"a": 29_000, "b": 29_000}
    assert verified(d)


@pytest.mark.needsroot
def test_full_disk_coalesces_and_resumes_when_space_returns(small_tmpfs):
    d = small_tmpfs / "wal"
    w = open_wal(d, segment_bytes=64 << 10)
    filler = fullfs.fill(small_tmpfs)
    results = [w.commit([sample(i, "a"), sample(i, "b")]) for i in range(50)]
    assert all(r is None for r in results[-10:])  # full: nothing written
    filler.unlink()
    first, last = w.commit([sample(50, "a")])
    recs = records(d)
    [coalesced] = [r for r in recs if r["kind"] == "coalesced"]
    totals = {s["vm"]["uuid"]: s["cpu"]["total_ns"]
              for s in coalesced["samples"]}
    assert totals == {"a": 49_000, "b": 49_000}
    assert recs[-1]["cpu"]["total_ns"] == 50_000
    seqs_seen = [r["seq"] for r in recs]
    assert seqs_seen == sorted(set(seqs_seen))
    assert verified(d)
    w.close()
    w = open_wal(d)
    assert w.commit([sample(51)]) is not None
    w.close()
    assert verified(d)


@pytest.mark.needsroot
def test_segments_are_not_preallocated_so_a_tiny_filesystem_works(
        small_tmpfs):
    d = small_tmpfs / "wal"
    w = open_wal(d, segment_bytes=16 << 20, max_bytes=1 << 30)  # > the fs
    for i in range(20):
        assert w.commit([sample(i)]) is not None
    w.close()
    assert verified(d)
