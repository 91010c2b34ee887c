"""Accounting parsers against byte-exact records made here by an
independent encoder (Python ``struct``), with the kernels' own encodings."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmagent.acct.records import AcctError, detect, parse, read_file

# --- independent encoders -------------------------------------------------

LINUX_V3 = struct.Struct("<BBHIIIIIIfHHHHHHHH16s")  # include/uapi/linux/acct.h
FREEBSD_V3 = struct.Struct("<BBH16sfffqIIffQIH2xB7x")  # sys/sys/acct.h
FREEBSD_V2 = struct.Struct("<BBH16sfffqIIffIH2xB7x")


def encode_comp_t(value: int) -> int:
    """kernel/acct.c encode_comp_t: 13-bit mantissa, base-8 exponent,
    rounding up on the last dropped bit."""
    exp, rnd = 0, 0
    while value > 0x1FFF:
        rnd = value & 4
        value >>= 3
        exp += 1
    if rnd and value + 1 > 0x1FFF:
        value >>= 3
        exp += 1
    elif rnd:
        value += 1
    return (exp << 13) + value


def linux_record(comm=b"qemu-system-x86", flags=0, exitcode=0, uid=0, gid=0,
                 pid=100, ppid=1, btime=1_795_000_000, etime_ticks=250.0,
                 utime=120, stime=30, mem_kb=4096) -> bytes:
    return LINUX_V3.pack(flags, 3, 0, exitcode, uid, gid, pid, ppid, btime,
                         etime_ticks, encode_comp_t(utime),
                         encode_comp_t(stime), encode_comp_t(mem_kb), 0, 0,
                         0, 0, 0, comm)


def freebsd_record(v=3, comm=b"bhyve", ut=1.5e6, st=2.5e5, et=3.0e7,
                   btime=1_795_000_000, uid=0, gid=0, mem=1024.0, io=77.0,
                   flags=0x20) -> bytes:
    if v == 3:
        return FREEBSD_V3.pack(0, 3, 80, comm, ut, st, et, btime, uid, gid,
                               mem, io, 2**64 - 1, 0, 80, flags)
    return FREEBSD_V2.pack(0, 2, 72, comm, ut, st, et, btime, uid, gid, mem,
                           io, 2**32 - 1, 72, flags)


# --- Linux acct_v3 ----------------------------------------------------------

def test_linux_v3_fields_and_units():
    [r] = parse(linux_record(flags=0x02, exitcode=3 << 8), "linux").records
    assert (r.command, r.pid, r.ppid, r.uid) == ("qemu-system-x86", 100, 1, 0)
    assert r.start_s == 1_795_000_000
    assert r.elapsed_us == 2_500_000  # 250 ticks at AHZ = 100
    assert (r.cpu_user_us, r.cpu_system_us) == (1_200_000, 300_000)
    assert r.mem_kb == 4096
    assert r.io_blocks is None  # Linux writes 0: not reported
    assert r.flags == ("ASU",)
    assert r.exit == {"code": 3}


@pytest.mark.parametrize(("exitcode", "flags", "want_exit", "want_flags"), [
    (9, 0x10, {"signal": 9}, ("AXSIG",)),
    (0x80 | 11, 0x18, {"signal": 11}, ("ACORE", "AXSIG")),
    (0, 0x01, {"code": 0}, ("AFORK",)),
    (255 << 8, 0x20, {"code": 255}, ("AGROUP",)),
])
def test_linux_exit_codes_signals_and_flags(exitcode, flags, want_exit,
                                            want_flags):
    [r] = parse(linux_record(exitcode=exitcode, flags=flags), "linux").records
    assert r.exit == want_exit and r.flags == want_flags


@pytest.mark.parametrize("ticks", [0, 1, 8191, 8192, 65535, 10**6, 10**9])
def test_linux_comp_t_decodes_to_the_encoded_value(ticks):
    [r] = parse(linux_record(utime=ticks), "linux").records
    c = encode_comp_t(ticks)
    stored_ticks = (c & 0x1FFF) << (3 * (c >> 13))
    assert r.cpu_user_us == stored_ticks * 10_000  # 1 tick = 10 ms
    assert abs(stored_ticks - ticks) <= ticks / 1000  # 13 of 16 bits kept


def test_linux_detected_and_many_records_parsed():
    data = b"".join(linux_record(pid=i) for i in range(10_000))
    assert detect(data) == "linux"
    parsed = parse(data, "linux")
    assert [r.pid for r in parsed.records] == list(range(10_000))
    assert parsed.consumed == len(data) and parsed.skipped == 0


# --- FreeBSD acctv3 / acctv2 ------------------------------------------------

@pytest.mark.parametrize("version", [3, 2])
def test_freebsd_fields_in_microseconds(version):
    data = freebsd_record(v=version, uid=1001, flags=0x20 | 0x01 | 0x10)
    assert detect(data) == f"freebsd-v{version}"
    [r] = parse(data, f"freebsd-v{version}").records
    assert (r.command, r.pid, r.uid) == ("bhyve", None, 1001)
    assert (r.cpu_user_us, r.cpu_system_us, r.elapsed_us) == \
        (1_500_000, 250_000, 30_000_000)
    assert (r.mem_kb, r.io_blocks, r.exit) == (1024, 77, None)
    assert r.flags == ("AFORK", "AXSIG", "ANVER")


@pytest.mark.parametrize("us", [0.0, 1.0, 2.0**24, 2.0**24 + 2, 2.0**30,
                                3.1536e13, 1.0e-3])
def test_freebsd_float_times(us):
    [r] = parse(freebsd_record(ut=us), "freebsd-v3").records
    assert r.cpu_user_us == int(struct.unpack("<f", struct.pack("<f", us))[0])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0])
def test_freebsd_impossible_times_are_skipped(bad):
    parsed = parse(freebsd_record(et=bad) + freebsd_record(), "freebsd-v3")
    assert parsed.skipped == 1 and len(parsed.records) == 1


def test_linux_v3_and_freebsd_v3_are_told_apart():
    # both carry version 3 in byte 1; only FreeBSD has 80 at offsets 2, 68
    assert detect(linux_record(flags=0)) == "linux"
    assert detect(freebsd_record()) == "freebsd-v3"


def test_unknown_versions_are_refused():
    with pytest.raises(AcctError):
        detect(bytes([0, 1]) + bytes(78))  # v1, no marker we accept
    with pytest.raises(AcctError):
        detect(linux_record()[:1] + b"\x02" + linux_record()[2:])  # Linux v2


# --- damage ----------------------------------------------------------------

def test_truncated_last_record_is_left_for_later(tmp_path):
    data = freebsd_record() * 3
    parsed = parse(data[:-5], "freebsd-v3")
    assert len(parsed.records) == 2 and parsed.consumed == 160


def test_garbage_records_are_skipped_never_misread():
    good = linux_record(pid=7)
    junk = bytes(range(256))[:64]
    parsed = parse(good + junk + good, "linux")
    assert [r.pid for r in parsed.records] == [7, 7]
    assert parsed.skipped == 1


@settings(max_examples=300, deadline=None)
@given(blob=st.binary(min_size=0, max_size=2000),
       fmt=st.sampled_from(["linux", "freebsd-v3", "freebsd-v2"]))
def test_random_bytes_never_crash_and_yield_only_sane_records(blob, fmt):
    parsed = parse(blob, fmt)
    for r in parsed.records:
        assert r.command and r.command.isprintable()
        assert r.elapsed_us >= 0 and r.cpu_user_us >= 0
        assert not math.isnan(r.elapsed_us)


def test_read_file_names_the_file_when_it_is_no_accounting_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello, this is not an accounting file at all " * 3)
    with pytest.raises(AcctError, match="notes.txt: not a Linux"):
        read_file(path)


def test_format_override(tmp_path):
    path = tmp_path / "acct"
    path.write_bytes(freebsd_record(v=2) * 2)
    assert len(read_file(path, "freebsd").records) == 2
