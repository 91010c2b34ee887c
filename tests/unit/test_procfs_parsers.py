"""The procfs parsers (C, through cffi) and fdinfo/cmdline helpers, on
literal text copied from real kernels and edited for edge cases."""

import pytest

from vmagent.probes import procfs

QEMU_STAT = (
    "4080 (qemu-system-x86) S 1 4078 4078 0 -1 138412480 3112 0 0 0 1 2 0 0 "
    "20 0 5 0 10069 443641856 5383 18446744073709551615 94413443342336 "
    "94413449202773 140731232863152 0 0 0 268444224 3674112 16963 0 0 0 17 1 "
    "0 0 0 7 0 94413452314872 94413457519024 94414439104512 140731232864606 "
    "140731232864979 140731232864979 140731232866268 0\n"
)


def test_stat_fields_by_proc5_number():
    s = procfs.parse_stat(QEMU_STAT)
    assert s.comm == "qemu-system-x86"
    assert s.state == "S"
    assert s.flags == 138412480
    assert (s.utime, s.stime) == (1, 2)
    assert s.num_threads == 5
    assert s.starttime == 10069
    assert s.rss_pages == 5383
    assert s.guest_time == 7


@pytest.mark.parametrize("comm", [
    "a b", "x) S 1 2 3 (y", ")", "((", "CPU 0/KVM", "",
])
def test_stat_comm_with_spaces_and_parentheses(comm):
    text = QEMU_STAT.replace("(qemu-system-x86)", f"({comm})")
    s = procfs.parse_stat(text)
    assert s.comm == comm
    assert s.starttime == 10069
    assert s.rss_pages == 5383


def test_stat_without_guest_time_field_reports_it_absent():
    fields = QEMU_STAT.split()
    old_kernel = " ".join(fields[:42]) + "\n"  # fields 1..42 only
    s = procfs.parse_stat(old_kernel)
    assert s.guest_time is None
    assert s.rss_pages == 5383


@pytest.mark.parametrize("bad", [
    "", "4080 qemu S 1", "4080 (qemu) S 1 2 3", "4080 (qemu) S " + "x " * 30,
])
def test_stat_garbage_is_refused(bad):
    with pytest.raises(ValueError):
        procfs.parse_stat(bad)


def test_stat_number_overflowing_u64_is_refused():
    text = QEMU_STAT.replace(" 10069 ", " 99999999999999999999 ")
    with pytest.raises(ValueError):
        procfs.parse_stat(text)


STATUS = """Name:\tqemu-system-x86
Umask:\t0022
State:\tS (sleeping)
VmPeak:\t  433248 kB
VmSize:\t  433244 kB
VmHWM:\t   21596 kB
VmRSS:\t   21596 kB
RssAnon:\t    9180 kB
HugetlbPages:\t    2048 kB
Threads:\t5
"""


def test_status_rss_and_hugetlb_in_kb():
    assert procfs.parse_status(STATUS) == {"VmRSS": 21596,
                                           "HugetlbPages": 2048}


def test_status_of_old_kernel_has_no_hugetlb():
    old = STATUS.replace("HugetlbPages:\t    2048 kB\n", "")
    assert procfs.parse_status(old) == {"VmRSS": 21596}


def test_status_of_kernel_thread_has_no_rss():
    assert procfs.parse_status("Name:\tkthreadd\nState:\tS\n") == {}


IO = """rchar: 533316
wchar: 252
syscr: 17
syscw: 19
read_bytes: 4096
write_bytes: 20480
cancelled_write_bytes: 512
"""


def test_io_storage_and_syscall_counters():
    assert procfs.parse_io(IO) == {
        "rchar": 533316, "wchar": 252, "syscr": 17, "syscw": 19,
        "read_bytes": 4096, "write_bytes": 20480,
        "cancelled_write_bytes": 512,
    }


def test_io_without_task_io_accounting_has_no_storage_bytes():
    io = "rchar: 1\nwchar: 2\nsyscr: 3\nsyscw: 4\n"
    out = procfs.parse_io(io)
    assert "read_bytes" not in out
    assert out["wchar"] == 2


def test_io_that_is_not_an_io_file_is_refused():
    with pytest.raises(ValueError):
        procfs.parse_io("read_bytes: 1\n")


@pytest.mark.parametrize(("text", "want"), [
    ("894489 1146841 8\n", (894489, 1146841, 8)),
    ("0 0 0\n", (0, 0, 0)),
    ("18446744073709551615 1 2", (2**64 - 1, 1, 2)),
])
def test_schedstat_run_wait_slices(text, want):
    assert procfs.parse_schedstat(text) == want


@pytest.mark.parametrize("bad", ["", "1 2", "a b c", "1 -2 3"])
def test_schedstat_garbage_is_refused(bad):
    with pytest.raises(ValueError):
        procfs.parse_schedstat(bad)


TUN_FDINFO = ("pos:\t100\nflags:\t0104002\nmnt_id:\t24\nino:\t105\n"
              "iff:\tvmtt0\n")
DISK_FDINFO = ("pos:\t0\nflags:\t02140002\nmnt_id:\t27\nino:\t2146581\n"
               "lock:\t1: OFDLCK ADVISORY  READ -1 fe:00:2146581 100 101\n")


def test_fdinfo_iff_names_the_tap():
    assert procfs.fdinfo_iff(TUN_FDINFO) == "vmtt0"


def test_fdinfo_without_iff_has_no_tap():
    assert procfs.fdinfo_iff(DISK_FDINFO) is None


def test_fdinfo_detached_queue_has_empty_iff():
    assert procfs.fdinfo_iff(TUN_FDINFO.replace("vmtt0", "")) is None


@pytest.mark.parametrize(("flags", "write_only"), [
    ("0100001", True), ("02140002", False), ("0100000", False),
    ("02004001", True),
])
def test_fdinfo_write_only(flags, write_only):
    text = DISK_FDINFO.replace("02140002", flags)
    assert procfs.fdinfo_write_only(text) is write_only


def test_cmdline_split_keeps_invalid_bytes_and_display_escapes_them():
    argv = procfs.split_cmdline(b"qemu\0-name\0caf\xe9\0")
    assert argv == ["qemu", "-name", "caf\udce9"]
    assert procfs.display_text(argv[2]) == "caf\\xe9"


def test_cmdline_of_kernel_thread_is_empty():
    assert procfs.split_cmdline(b"") == []


# /proc/net/dev as Linux 6.18 prints it (net/core/net-procfs.c), with a tap
# whose name fills the column (no space before its colon) and a 15-character
# one; counters edited to be distinct.
NET_DEV = (
    b"Inter-|   Receive                                                |"
    b"  Transmit\n"
    b" face |bytes    packets errs drop fifo frame compressed multicast|"
    b"bytes    packets errs drop fifo colls carrier compressed\n"
    b"    lo: 18877273302 5486236    0    0    0     0          0         0"
    b" 18877273302 5486236    0    0    0     0       0          0\n"
    b"vnet12:     1000      10    1    2    3     4          5         6"
    b"     2000      20    7    8    9    10      11         12\n"
    b"vmb1234x10abcde: 18446744073709551615 1 0 0 0 0 0 0 3 4 0 5 0 0 0 0\n"
)


def test_net_dev_counters_by_interface():
    out = procfs.parse_net_dev(NET_DEV)
    assert list(out) == ["lo", "vnet12", "vmb1234x10abcde"]
    assert out["vnet12"] == {
        "rx_bytes": 1000, "rx_packets": 10, "rx_errors": 1, "rx_dropped": 2,
        "tx_bytes": 2000, "tx_packets": 20, "tx_errors": 7, "tx_dropped": 8}
    long = out["vmb1234x10abcde"]
    assert (long["rx_bytes"], long["tx_bytes"], long["tx_dropped"]) == \
        (2**64 - 1, 3, 5)


def test_net_dev_only_the_names_asked_for():
    assert list(procfs.parse_net_dev(NET_DEV, {"vnet12", "gone0"})) == \
        ["vnet12"]
    assert procfs.parse_net_dev(NET_DEV, set()) == {}


def test_net_dev_headers_only_is_no_interface():
    assert procfs.parse_net_dev(b"".join(NET_DEV.splitlines(True)[:2])) == {}


@pytest.mark.parametrize("text", [
    b"",
    NET_DEV.split(b"\n", 2)[2],                           # no header
    NET_DEV.replace(b"vnet12:", b"vnet12 "),              # no colon
    NET_DEV.replace(b" 11         12\n", b" 11\n"),       # 15 numbers
    NET_DEV.replace(b"     2000", b"     -200"),          # not a number
])
def test_net_dev_refuses_anything_else(text):
    with pytest.raises(ValueError, match="net/dev"):
        procfs.parse_net_dev(text)
