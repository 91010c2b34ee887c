"""The collector's self-monitoring: the Prometheus text of ``Metrics`` and
the ``listen`` key."""

from __future__ import annotations

import pytest

from vmagent.collector import config
from vmagent.collector.metrics import Metrics
from vmagent.errors import ConfigError


def test_render_counts_per_host_and_the_commit_histogram():
    m = Metrics()
    m.batch_stored("hv1", 3, 0.004, 0, 1000.0)
    m.batch_stored("hv1", 2, 0.3, None, 1010.0)
    m.batch_stored('we"ird', 1, 0.02, 5, None)
    m.frame_rejected("hv2")
    m.lease_changed("claimed", 3)
    m.lease_changed("released")
    lines = set(m.render(now=1012.5).splitlines())
    assert {'vmcollector_frames_verified_total{host="hv1"} 5',
            'vmcollector_frames_verified_total{host="hv2"} 0',
            'vmcollector_frames_rejected_total{host="hv2"} 1',
            'vmcollector_host_lag_seconds{host="hv1"} 2.500',
            'vmcollector_host_behind_records{host="we\\"ird"} 5',
            'vmcollector_store_commit_seconds_bucket{le="0.005"} 1',
            'vmcollector_store_commit_seconds_bucket{le="0.025"} 2',
            'vmcollector_store_commit_seconds_bucket{le="0.5"} 3',
            'vmcollector_store_commit_seconds_bucket{le="+Inf"} 3',
            "vmcollector_store_commit_seconds_count 3",
            'vmcollector_lease_changes_total{change="claimed"} 3',
            'vmcollector_lease_changes_total{change="released"} 1'} <= lines
    # behind unknown after the last batch: no sample rather than a guess
    assert not any(x.startswith('vmcollector_host_behind_records{host="hv1"')
                   for x in lines)
    assert "# TYPE vmcollector_store_commit_seconds histogram" in lines


def test_listen_key():
    assert config.parse("").listen == ("127.0.0.1", 9741)
    assert config.parse('[collector]\nlisten = "0.0.0.0:9999"\n').listen \
        == ("0.0.0.0", 9999)
    assert config.parse('[collector]\nlisten = "[::1]:9741"\n').listen \
        == ("::1", 9741)
    assert config.parse('[collector]\nlisten = ""\n').listen is None
    for bad in ("9741", "host:", "h:70000", "h:x"):
        with pytest.raises(ConfigError) as err:
            config.parse(f'[collector]\nlisten = "{bad}"\n', "c.toml")
        assert err.value.key == "collector.listen"


STATUS = {
    "hosts": [
        {"name": "hv1", "state": "current", "clock_offset_s": -0.25,
         "wals": [{"wal": "aa", "gaps": [{"from_seq": 7, "to_seq": 8,
                                          "reason": "gap record"}]},
                  {"wal": "bb", "gaps": [{"from_seq": 1, "to_seq": 1,
                                          "reason": "410"}]}]},
        {"name": 'h"2', "state": "untrusted", "clock_offset_s": None,
         "wals": []}],
    "periods": [{"period": "2026-11", "grain": "month", "tz": "UTC",
                 "state": "closable", "blocking": []}],
}


def test_status_families_give_states_gaps_and_periods():
    from vmagent.collector.metrics import render_status

    lines = render_status(STATUS).splitlines()
    assert 'vmcollector_host_state{host="hv1",state="current"} 1' in lines
    assert 'vmcollector_host_state{host="hv1",state="lagging"} 0' in lines
    assert 'vmcollector_host_state{host="h\\"2",state="untrusted"} 1' \
        in lines
    assert 'vmcollector_host_missing_seqs{host="hv1"} 3' in lines
    assert 'vmcollector_host_clock_offset_seconds{host="hv1"} -0.25' in lines
    assert not any(line.startswith(
        'vmcollector_host_clock_offset_seconds{host="h') and "h\\\"2" in line
        for line in lines)
    assert ('vmcollector_period_state{period="2026-11",grain="month",'
            'tz="UTC",state="closable"} 1') in lines


def test_the_whole_collector_exposition_passes_promtool():
    import subprocess

    from needs import missing
    from vmagent.collector.metrics import Metrics, render_status

    why = missing("promtool")
    if why:
        pytest.skip(why)
    m = Metrics()
    m.batch_stored("hv1", 3, 0.01, 0, 1.0)
    text = m.render(now=2.0) + render_status(STATUS)
    out = subprocess.run(["promtool", "check", "metrics"], input=text,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
