"""The accounting follower (rotation, truncation, partial records, garbage,
persisted position) and matching records to VM gens (never a guess)."""

from __future__ import annotations

import os

from unit.test_acct_parsers import freebsd_record, linux_record
from vmagent.acct.follower import AcctFollower
from vmagent.acct.matching import acct_fields, candidates, match
from vmagent.acct.records import parse
from vmagent.probes.types import VM, VMRef


def follower(tmp_path, name="pacct"):
    return AcctFollower(tmp_path / name, tmp_path / "position")


def append(path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def pids(records):
    return [r.pid for r in records]


def test_reads_only_what_is_new(tmp_path):
    f = follower(tmp_path)
    assert f.poll() == []  # no file yet: accounting off
    append(tmp_path / "pacct", linux_record(pid=1) + linux_record(pid=2))
    assert pids(f.poll()) == [1, 2]
    assert f.poll() == []
    append(tmp_path / "pacct", linux_record(pid=3))
    assert pids(f.poll()) == [3]


def test_partial_last_record_waits_for_the_rest(tmp_path):
    f = follower(tmp_path)
    rec = linux_record(pid=9)
    append(tmp_path / "pacct", linux_record(pid=8) + rec[:20])
    assert pids(f.poll()) == [8]
    append(tmp_path / "pacct", rec[20:])
    assert pids(f.poll()) == [9]


def test_rotation_reads_the_rest_of_the_old_file_first(tmp_path):
    path = tmp_path / "pacct"
    f = follower(tmp_path)
    append(path, linux_record(pid=1))
    assert pids(f.poll()) == [1]
    append(path, linux_record(pid=2))  # written after our last read...
    os.rename(path, tmp_path / "pacct.0")  # ...then savelog rotates
    append(path, linux_record(pid=3))
    assert pids(f.poll()) == [2, 3]


def test_truncation_starts_again_at_zero(tmp_path):
    path = tmp_path / "pacct"
    f = follower(tmp_path)
    append(path, linux_record(pid=1) * 3)
    f.poll()
    with open(path, "r+b") as fh:
        fh.truncate(0)
    append(path, linux_record(pid=4))
    assert pids(f.poll()) == [4]


def test_position_survives_a_restart(tmp_path):
    path = tmp_path / "pacct"
    f = follower(tmp_path)
    append(path, linux_record(pid=1))
    f.poll()
    f.save()
    append(path, linux_record(pid=2))  # exits while the agent is down
    assert pids(follower(tmp_path).poll()) == [2]


def test_garbage_is_counted_and_skipped(tmp_path):
    f = follower(tmp_path)
    append(tmp_path / "pacct", linux_record(pid=1) + bytes(range(64))
           + linux_record(pid=2))
    assert pids(f.poll()) == [1, 2]
    assert f.skipped == 1


def test_a_file_of_garbage_is_never_read_as_records(tmp_path):
    f = follower(tmp_path)
    append(tmp_path / "pacct", b"\xff" * 640)
    assert f.poll() == [] and f.poll() == []


def vm(pid, start_s, comm="qemu-system-x86", uid=0, name="v"):
    return VM(ref=VMRef(f"u-{name}", name, f"g-{name}", "kvm"), pid=pid,
              start_mark=0, start_ns=int(start_s * 1e9), comm=comm, uid=uid,
              vcpus=None, alloc_bytes=None)


def test_linux_matches_pid_and_start_time():
    [rec] = parse(linux_record(pid=100, btime=1000), "linux").records
    gens = [vm(100, 999.4, name="a"), vm(100, 5000, name="old"),
            vm(101, 1000, name="b")]
    assert match(rec, gens).ref.name == "a"
    fields = acct_fields(rec)
    assert fields["match"] == "pid+start" and fields["start_ns"] == 10**12
    assert fields["exit"] == {"code": 0}


def test_freebsd_matches_comm_btime_and_uid_only_when_unique():
    [rec] = parse(freebsd_record(comm=b"bhyve", btime=2000, uid=0),
                  "freebsd-v3").records
    one = vm(1, 2000.3, comm="bhyve", name="one")
    assert match(rec, [one, vm(2, 2000, comm="bhyve", uid=5)]) is one
    twin = vm(3, 2000.9, comm="bhyve", name="twin")  # same second: ambiguous
    assert len(candidates(rec, [one, twin])) == 2
    assert match(rec, [one, twin]) is None
    assert "exit" not in acct_fields(rec)  # FreeBSD records have none
    assert acct_fields(rec)["match"] == "comm+btime+uid"
