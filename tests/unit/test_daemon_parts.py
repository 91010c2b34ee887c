"""Pure parts of the daemon: tokens, health, metrics, sd_notify, and the
collector's verification on frames made by a real WAL."""

from __future__ import annotations

import socket

import pytest

from vmagent import tokens
from vmagent.api.metrics import render
from vmagent.collector import (
    ChainState,
    VerifyError,
    unexplained,
    verify_batch,
)
from vmagent.errors import ConfigError
from vmagent.health import assess
from vmagent.keys import HostKey
from vmagent.sdnotify import Notifier
from vmagent.wal import Wal

TOKEN = "t" * 24


def test_tokens_file_lines_and_comments():
    t = tokens.parse(f"# collectors\n\nbilling:{TOKEN}\naudit:{'u' * 20}\n",
                     "f")
    assert t.consumers == ["audit", "billing"]
    assert t.consumer_of(TOKEN) == "billing"
    assert t.consumer_of("u" * 20) == "audit"
    assert t.consumer_of(TOKEN[:-1]) is None
    assert t.consumer_of("") is None


@pytest.mark.parametrize(("text", "words"), [
    ("billing\n", "consumer-name:token"),
    (f"bad name:{TOKEN}\n", "consumer-name:token"),
    ("billing:short\n", "at least 16"),
    (f"a:{TOKEN}\na:{TOKEN}x\n", "appears twice"),
])
def test_bad_tokens_files_name_the_line(text, words):
    with pytest.raises(ConfigError) as e:
        tokens.parse(text, "/etc/vmagent/tokens")
    assert str(e.value).startswith("/etc/vmagent/tokens: line ")
    assert words in str(e.value)


def test_tokens_file_is_created_once_with_mode_0600(tmp_path):
    path = tmp_path / "state/tokens"
    first, created = tokens.load_or_create(path)
    assert created and first.consumers == ["default"]
    assert path.stat().st_mode & 0o777 == 0o600
    again, created = tokens.load_or_create(path)
    assert not created and again.by_consumer == first.by_consumer


def doc(**over):
    base = {"interval_s": 10.0, "last_sweep": {"t": 1_000 * 10**9},
            "errors": [], "wal": {"coalescing": False, "coalesced_sweeps": 0},
            "consumers": {"c": {"lag_s": 5.0}}}
    base.update(over)
    return base


def test_healthy():
    assert assess(doc(), now_ns=1_001 * 10**9) == {"state": "healthy",
                                                    "reasons": []}


@pytest.mark.parametrize(("over", "now", "words"), [
    ({}, 1_100 * 10**9, "last sweep 100 s ago"),
    ({"wal": {"coalescing": True, "coalesced_sweeps": 3}}, 1_001 * 10**9,
     "coalescing"),
    ({"consumers": {"c": {"lag_s": 4000.0}}}, 1_001 * 10**9,
     "consumer c is 4000 s behind"),
    ({"errors": [{"event": "vm_sample_failed", "t": 1_000 * 10**9,
                  "vm": "web"}]}, 1_001 * 10**9, "probes failing for 1"),
])
def test_degraded_reasons(over, now, words):
    h = assess(doc(**over), now_ns=now)
    assert h["state"] == "degraded"
    assert any(words in r for r in h["reasons"])


def test_old_probe_errors_no_longer_degrade():
    errors = [{"event": "vm_sample_failed", "t": 900 * 10**9, "vm": "x"}]
    assert assess(doc(errors=errors), now_ns=1_001 * 10**9)["state"] == \
        "healthy"


def test_metrics_render_labels_and_values():
    d = doc(version="0", host="h", uptime_s=1.5, sweeps=3, vms=2,
            probes={}, health={"state": "healthy", "reasons": []},
            wal={"bytes": 10, "segments": 1, "first_seq": 1, "durable_seq": 9,
                 "coalescing": False, "quarantined": 0},
            consumers={'we"ird': {"acked_seq": 4, "lag_records": 5,
                                  "lag_s": 1.0}},
            errors=[{"event": "x"}, {"event": "x"}])
    text = render(d)
    assert "vmagent_wal_durable_seq 9\n" in text
    assert 'vmagent_consumer_lag_records{consumer="we\\"ird"} 5' in text
    assert 'vmagent_recent_errors{event="x"} 2' in text


def test_sd_notify_datagrams(tmp_path):
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(str(path))
        n = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "4000000"})
        n.send(ready="1", status="3 VMs")
        assert s.recv(100) == b"READY=1\nSTATUS=3 VMs"
    assert n.watchdog_s == 2.0
    quiet = Notifier({})
    quiet.send(ready="1")  # no socket: nothing happens
    assert quiet.watchdog_s is None


def batch_from(wal: Wal, after: int = 0) -> dict:
    frames = wal.frames(after)
    return {"v": 1, "host": wal.host, "wal": wal.wal_id, "frames": [
        {"records": f.records, "first_seq": f.first_seq,
         "last_seq": f.last_seq, "prev_hash": f.prev_hash, "hash": f.hash,
         "sig": f.sig, "key_id": f.key_id.hex()} for f in frames]}


@pytest.fixture
def wal(tmp_path):
    w = Wal(tmp_path, host="h1", key=HostKey.generate())
    for i in range(4):
        w.commit([{"kind": "sample", "t": i}, {"kind": "sample", "t": i}])
    return w


def test_collector_accepts_a_real_wals_frames(wal):
    state = ChainState()
    recs = list(verify_batch(batch_from(wal), state, wal.key.public))
    assert [r["seq"] for r in recs] == list(range(1, 9))
    assert state.last_seq == 8 and unexplained(state) == []


def test_collector_drops_seqs_it_holds(wal):
    state = ChainState()
    list(verify_batch(batch_from(wal), state, wal.key.public))
    wal.commit([{"kind": "x", "t": 9}])
    recs = list(verify_batch(batch_from(wal, 3), state, wal.key.public))
    assert [r["seq"] for r in recs] == [9]


@pytest.mark.parametrize("field", ["records", "prev_hash", "sig", "key_id",
                                   "last_seq"])
def test_collector_rejects_tampered_frames(wal, field):
    batch = batch_from(wal)
    f = batch["frames"][2]
    if field == "records":
        f["records"] = f["records"][:-1] + b"\x00"
    elif field == "prev_hash":
        f["prev_hash"] = bytes(32)
    elif field == "sig":
        f["sig"] = bytes(64)
    elif field == "key_id":
        f["key_id"] = "00" * 8
    else:
        f["last_seq"] += 1
    with pytest.raises(VerifyError):
        list(verify_batch(batch, ChainState(), wal.key.public))


def test_collector_reports_missing_seqs_without_a_gap(wal):
    batch = batch_from(wal)
    del batch["frames"][1]
    state = ChainState()
    list(verify_batch(batch, state, wal.key.public))
    assert unexplained(state) == [(3, 4)]


def test_collector_refuses_a_frame_whose_seqs_came_back_different(
        tmp_path, wal):
    state = ChainState()
    list(verify_batch(batch_from(wal), state, wal.key.public))
    other = Wal(tmp_path / "other", host="h1", key=wal.key)
    other.wal_id = wal.wal_id  # the same WAL id, its seqs given out again
    for i in range(4):
        other.commit([{"kind": "sample", "t": 100 + i},
                      {"kind": "sample", "t": 100 + i}])
    with pytest.raises(VerifyError, match="other content"):
        list(verify_batch(batch_from(other, 2), state, wal.key.public))


def test_sd_notify_never_blocks_when_nobody_reads(tmp_path):
    import socket as socket_mod
    import time as time_mod

    from vmagent.sdnotify import Notifier

    path = tmp_path / "notify"
    with socket_mod.socket(socket_mod.AF_UNIX, socket_mod.SOCK_DGRAM) as r:
        r.bind(str(path))  # bound, never read: its queue fills up
        n = Notifier({"NOTIFY_SOCKET": str(path)})
        started = time_mod.monotonic()
        for _ in range(2000):
            n.send(status="x" * 200)
        assert time_mod.monotonic() - started < 30  # returned, not blocked
