"""The pids allocated between two readings of the last pid, on literal
values: the arithmetic discovery uses to test new pids instead of listing
/proc (docs/probes-linux.md, discovery)."""

import pytest

from vmagent.probes import procfs


def test_a_forward_move_spans_the_pids_after_the_old_value():
    assert procfs.pids_allocated(5000, 5003, 32768, 1024) == [
        5001, 5002, 5003]


def test_no_move_spans_nothing():
    assert procfs.pids_allocated(5000, 5000, 32768, 1024) == []


def test_a_wrap_around_spans_the_top_and_the_low_pids():
    assert procfs.pids_allocated(32765, 3, 32768, 1024) == [
        32766, 32767, 1, 2, 3]


def test_a_wrap_from_the_last_pid_below_pid_max():
    assert procfs.pids_allocated(32767, 301, 32768, 1024) == list(
        range(1, 302))


def test_a_move_of_exactly_the_bound_is_spanned():
    assert len(procfs.pids_allocated(100, 1124, 32768, 1024) or []) == 1024


@pytest.mark.parametrize(("before", "now"), [
    (100, 1125),  # one more than the bound
    (5000, 4999),  # backwards by one: a jump of pid_max - 1
    (5000, 300),  # backwards further, no plausible wrap
    (300, 32000),  # forward, too far
    (32000, 2000),  # a wrap, too far
])
def test_a_move_the_bound_does_not_cover_is_unknown(before, now):
    assert procfs.pids_allocated(before, now, 32768, 1024) is None


@pytest.mark.parametrize(("before", "now"), [
    (32768, 5), (5, 32768), (-1, 5), (40000, 40001),
])
def test_a_value_outside_pid_max_is_unknown(before, now):
    assert procfs.pids_allocated(before, now, 32768, 1024) is None


def test_pid_max_is_read_from_its_file_text():
    assert procfs.parse_pid_max(b"4194304\n") == 4194304


@pytest.mark.parametrize("text", [b"", b"max\n", b"-5\n", b"1\n", b"12 3"])
def test_a_bad_pid_max_is_refused(text):
    with pytest.raises(ValueError, match="not a pid_max"):
        procfs.parse_pid_max(text)
