"""Issue 13's exactly-once proof on a real host: ``vmagent run`` metering
two KVM guests, ``vmcollector run`` storing into SQLite, the collector
SIGKILLed 5 times and the agent 3 times during ingest, then a clean drain:
every seq stored once (or covered by a gap), equal to the agent's WAL, and
the agent's ack equal to what the store committed."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import time

import pytest

from integration.conftest import wait_until
from integration.guests import new_uuid
from integration.test_collector import CollectorProcess, acked
from vmagent.wal.verify import served_records

pytestmark = pytest.mark.realguest

HOST = "hv-kvm"
# c: SIGKILL the collector, a: SIGKILL the agent (5 and 3, interleaved)
KILLS = "cacacacc"


def last_stored(c: CollectorProcess) -> int:
    stored = c.records(HOST)
    return stored[-1][1] if stored else 0


def durable_seq(agent) -> int:  # noqa: ANN001
    status, doc = agent.request("/v1/status")
    assert status == 200
    return doc["wal"]["durable_seq"] or 0


def kill_during_ingest(c: CollectorProcess, agent, what: str,  # noqa: ANN001
                       rng: random.Random) -> None:
    """Wait until a few more records are stored, then SIGKILL ``what`` at
    a random moment of the next pull/commit/ack, and start it again."""
    floor = last_stored(c) + rng.randint(3, 15)
    wait_until(lambda: last_stored(c) >= floor, 60)
    ack = acked(agent) or 0  # read first: a later commit only adds
    assert ack <= last_stored(c), "acked before the commit"
    time.sleep(rng.uniform(0.0, 0.4))  # somewhere in a pull or a commit
    if what == "c":
        assert c.proc is not None and c.proc.poll() is None, \
            c.log_text()[-2000:]
        os.kill(c.proc.pid, signal.SIGKILL)
        c.proc.wait(timeout=30)
        c.start()
    else:
        agent.stop(signal.SIGKILL)
        agent.start()


def frame_ranges(c: CollectorProcess) -> list[tuple[int, int]]:
    with sqlite3.connect(c.state / "collector.db") as db:
        return db.execute("SELECT first_seq, last_seq FROM frames WHERE "
                          "host = ? ORDER BY first_seq", (HOST,)).fetchall()


def missing_ranges(c: CollectorProcess) -> list[tuple[int, int]]:
    with sqlite3.connect(c.state / "collector.db") as db:
        return db.execute("SELECT from_seq, to_seq FROM missing WHERE "
                          "host = ?", (HOST,)).fetchall()


def test_kvm_agent_and_collector_sigkilled_during_ingest_store_each_seq_once(
        agent, guests, tmp_path):
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    for i in range(2):
        guests(name=f"once-{i}", uuid=new_uuid())
    a = agent(interval=0.25)
    c = CollectorProcess(tmp_path / "collector", [(HOST, a, a.public_key())],
                         interval="1s")
    try:
        c.start()
        wait_until(lambda: last_stored(c) > 0, 60)
        for what in KILLS:
            kill_during_ingest(c, a, what, rng)
        drain = durable_seq(a)  # a clean drain past here: only the
        wait_until(lambda: last_stored(c) > drain, 60)  # running one stores
        assert c.stop() == 0, c.log_text()[-2000:]
        stored = c.records(HOST)
        last = stored[-1][1]
        assert acked(a) == last, f"seed {seed}"  # acks follow commits
        assert a.stop(signal.SIGTERM) == 0, a.log_text()[-2000:]
    finally:
        c.kill()
    check_exactly_once(c, stored, [r for r in served_records(a.state / "wal")
                                   if r["seq"] <= last], seed)


def check_exactly_once(c: CollectorProcess, stored: list, wal: list,
                       seed: int) -> None:
    """One WAL; each seq 1..last once (or in a gap); every stored record
    equal to the agent's own; no seq in two stored frames."""
    why = f"seed {seed}"
    assert len({w for w, _, _ in stored}) == 1, f"one WAL, {why}"
    seqs = [s for _, s, _ in stored]
    assert len(seqs) == len(set(seqs)), f"a seq stored twice, {why}"
    gaps = missing_ranges(c)
    holes = [s for s in range(1, seqs[-1] + 1) if s not in set(seqs)
             and not any(lo <= s <= hi for lo, hi in gaps)]
    assert holes == [], why
    assert wal and wal[0]["seq"] == 1, "the agent's WAL starts at seq 1"
    assert {s: r for _, s, r in stored} == {r["seq"]: r for r in wal}, why
    covered: list[int] = []
    for lo, hi in frame_ranges(c):
        covered.extend(range(lo, hi + 1))
    assert sorted(covered) == sorted(set(covered)), f"frames overlap, {why}"
    kinds = [r["kind"] for _, _, r in stored]
    assert kinds.count("agent_start") == 1 + KILLS.count("a"), why
    names = {r["vm"]["name"] for _, _, r in stored if r["kind"] == "sample"}
    assert {"once-0", "once-1"} <= names, why
