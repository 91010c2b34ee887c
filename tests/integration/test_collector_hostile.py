"""Hostile agents (tests/integration/hostile_agent.py) and a well-behaved
real ``vmagent run`` in the same ``vmcollector run`` on SQLite: forgery
makes its host ``untrusted``, transport trouble makes it ``failing``
(docs/collector.md); nothing from the bad part is stored or acked, the
collector does not crash, and the real agent's evidence keeps flowing."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request

import pytest

from integration.conftest import wait_until
from integration.hostile_agent import FORGERY, TRANSPORT, HostileAgent
from integration.test_collector import CollectorProcess, assert_exactly_once

ERRORS = {
    "altered": "hash does not match",
    "other_key": "signed by another key",
    "rewritten_seq": "bad signature",
    "reused_seqs": "other content",
    "cut_short": "cut off",
    "huge": "2000000000 bytes refused",
    "huge_stream": "larger than",
    "garbage": "not msgpack",
    "hang": "timed out",
}


@pytest.fixture
def hostile(tmp_path):
    made: list[HostileAgent] = []

    def make(mode: str) -> HostileAgent:
        h = HostileAgent(tmp_path / "hostile", f"hv-{mode}", mode)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


def states(c: CollectorProcess) -> dict[str, dict]:
    _, doc = c.status()
    return {h["name"]: h for h in doc.get("hosts", [])}


def test_hostile_agents_get_their_state_and_the_good_host_keeps_flowing(
        agent, hostile, tmp_path):
    good = agent(interval=0.2, fake_vms=1)
    bad = {m: hostile(m) for m in (*FORGERY, "replay", *TRANSPORT)}
    hosts = [("good", good, good.public_key())] + \
        [(h.name, h, h.public_key()) for h in bad.values()]
    c = CollectorProcess(tmp_path / "c", hosts, interval="1s",
                         extra='read_timeout = "2s"\n').start()
    try:
        replay = bad["replay"]
        for _ in range(10):  # new frames while every reply replays old ones
            replay.commit()
            time.sleep(0.1)
        expect = {**dict.fromkeys(FORGERY, "untrusted"),
                  **dict.fromkeys(TRANSPORT, "failing")}
        began = time.monotonic()
        n_good = 0
        seen = wait_until(lambda: (s := states(c)) and all(
            s.get(f"hv-{m}", {}).get("state") == want
            for m, want in expect.items()) and s, 60)
        took = time.monotonic() - began
        print(f"every hostile host in its state after {took:.1f} s")
        for mode in expect:
            h, row = bad[mode], seen[f"hv-{mode}"]
            assert ERRORS[mode] in (row["error"] or ""), (mode, row)
            # the frames before the bad part stored and acked, nothing else
            assert [s for _, s, _ in c.records(h.name)] == h.good_seqs(), \
                mode
            assert max(h.acks) == h.good_seqs()[-1], mode
        # the good host flowed meanwhile, and still does
        n_good = len(c.records("good"))
        assert n_good > 20
        wait_until(lambda: len(c.records("good")) > n_good + 10, 20)
        # replayed old frames: harmless, every seq once, current
        wait_until(lambda: [s for _, s, _ in c.records(replay.name)] ==
                   replay.seqs(), 20)
        assert max(replay.acks) == replay.seqs()[-1]
        assert states(c)[replay.name]["state"] == "current"
        # transport trouble ends: each host resumes where it stopped
        for mode in TRANSPORT:
            bad[mode].commit(3)
            bad[mode].mode = "ok"
        for mode in TRANSPORT:
            h = bad[mode]
            wait_until(lambda h=h: [s for _, s, _ in c.records(h.name)] ==
                       h.seqs(), 60)
            wait_until(lambda h=h: states(c)[h.name]["state"] == "current",
                       20)
            assert max(h.acks) == h.seqs()[-1]
        for mode in FORGERY:  # no longer pulled: still only the good part
            assert [s for _, s, _ in c.records(f"hv-{mode}")] == \
                bad[mode].good_seqs()
            assert states(c)[f"hv-{mode}"]["state"] == "untrusted"
        assert c.proc is not None and c.proc.poll() is None, "no crash"
        check_monitoring(c, bad)
        began = time.monotonic()
        assert c.stop() == 0
        assert time.monotonic() - began < 10
        assert "Traceback" not in c.log_text()
        assert_exactly_once(c, "good", good)
    finally:
        c.kill()


def get(c: CollectorProcess, path: str) -> tuple[int, str, bytes]:
    url = f"http://127.0.0.1:{c.listen}{path}"
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read()


def metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name + (f"{{{want}}}" if want else "")) + \
        r" (\S+)$"
    found = re.search(pattern, text, re.M)
    assert found, (name, labels)
    return float(found.group(1))


def check_monitoring(c: CollectorProcess, bad: dict) -> None:
    """GET /metrics and GET /v1/status on ``listen``, real sockets."""
    code, ctype, body = get(c, "/metrics")
    assert code == 200 and ctype.startswith("text/plain")
    text = body.decode()
    for mode in FORGERY:  # each rejected its bad frame once
        assert metric(text, "vmcollector_frames_rejected_total",
                      host=f"hv-{mode}") == 1
        assert metric(text, "vmcollector_frames_verified_total",
                      host=f"hv-{mode}") == 3
    assert metric(text, "vmcollector_frames_verified_total",
                  host="good") > 10
    assert metric(text, "vmcollector_frames_rejected_total",
                  host="good") == 0
    assert 0 <= metric(text, "vmcollector_host_lag_seconds",
                       host="good") < 10
    assert metric(text, "vmcollector_host_behind_records", host="good") == 0
    n = metric(text, "vmcollector_store_commit_seconds_count")
    assert n > 10 and metric(text, "vmcollector_store_commit_seconds_sum") > 0
    assert metric(text, "vmcollector_store_commit_seconds_bucket",
                  le="+Inf") == n
    assert metric(text, "vmcollector_lease_changes_total",
                  change="claimed") == 1 + len(bad)
    code, ctype, body = get(c, "/v1/status")
    assert code == 200 and ctype == "application/json"
    doc = json.loads(body)
    states = {h["name"]: h["state"] for h in doc["hosts"]}
    assert states["good"] == "current"
    assert {states[f"hv-{m}"] for m in FORGERY} == {"untrusted"}
    assert {p["state"] for p in doc["periods"]} <= {"open", "closable",
                                                     "closed"}
    assert doc["store"].startswith("sqlite:")
    assert get(c, "/nothing")[0] == 404
