"""``clock_step`` records: the wall clock moved against the monotonic one."""

from __future__ import annotations

import time

from vmagent.daemon import Agent
from vmagent.log import get_logger


def bare_agent() -> Agent:
    a = Agent.__new__(Agent)  # only what _clock_step uses
    a._clock_offset = None
    a.log = get_logger()
    return a


def test_steps_of_a_second_or_more_are_recorded(monkeypatch):
    a = bare_agent()
    mono = iter([1_000, 2_000, 3_000]).__next__
    monkeypatch.setattr(time, "monotonic_ns", mono)
    assert a._clock_step(10_000) == []  # the first sweep sets the offset
    assert a._clock_step(11_000 + 500_000_000) == []  # 0.5 s: NTP slewing
    [rec] = a._clock_step(12_000 - 3_600 * 10**9)  # stepped back an hour
    assert rec["kind"] == "clock_step"
    assert rec["step_ns"] == -3_600 * 10**9 - 500_000_000
    assert rec["mono_ns"] == 3_000 and rec["wall_ns"] == rec["t"]
