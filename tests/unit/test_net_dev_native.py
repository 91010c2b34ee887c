"""``/proc/net/dev`` parsed in C (vmprobe_parse_net_dev) behind
``procfs.parse_net_dev``: the cases the literal-text tests in
test_procfs_parsers.py do not reach."""

from __future__ import annotations

import pytest

from vmagent.probes import procfs

HEAD = (b"Inter-|   Receive                                                |"
        b"  Transmit\n"
        b" face |bytes    packets errs drop fifo frame compressed multicast|"
        b"bytes    packets errs drop fifo colls carrier compressed\n")


def line(name: str, first: int) -> bytes:
    return f"{name:>6}: ".encode() + b" ".join(
        str(first + i).encode() for i in range(16)) + b"\n"


def test_more_interfaces_than_the_first_room_are_all_read():
    text = HEAD + b"".join(line(f"t{i}", i) for i in range(700))
    out = procfs.parse_net_dev(text)
    assert len(out) == 700
    assert out["t699"] == {
        "rx_bytes": 699, "rx_packets": 700, "rx_errors": 701,
        "rx_dropped": 702, "tx_bytes": 707, "tx_packets": 708,
        "tx_errors": 709, "tx_dropped": 710}


def test_tabs_and_carriage_returns_are_whitespace_as_in_python():
    text = HEAD + b"\tvnet0:\t1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\r\n\n"
    assert procfs.parse_net_dev(text)["vnet0"]["tx_dropped"] == 12


def test_a_name_that_is_not_utf8_keeps_its_bytes():
    text = HEAD + b"caf\xe9: " + b" ".join([b"1"] * 16)
    assert list(procfs.parse_net_dev(text)) == ["caf\udce9"]


@pytest.mark.parametrize("text", [
    HEAD + line("sixteen-chars-xx", 1),                 # longer than IFNAMSIZ
    HEAD + line("vnet0", 1).replace(b"\n", b" 17\n"),   # 17 numbers
    HEAD + line("vnet0", 1).replace(b" 3 ", b" 3x "),   # not a number
    HEAD + line("vnet0", 2**64 - 5),                    # above 2**64 - 1
    HEAD + b"garbage\n",                                # a line without ':'
])
def test_what_the_kernel_never_prints_is_refused(text):
    with pytest.raises(ValueError, match="net/dev"):
        procfs.parse_net_dev(text)
