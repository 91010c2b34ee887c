"""The daemon with real KVM guests: a collector pulls continuously while
VMs start and stop and the agent is SIGKILLed and restarted 5 times."""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time

import pytest

from integration.conftest import wait_until
from integration.guests import new_uuid
from vmagent.collector import ChainState, PullError, verify_batch

pytestmark = pytest.mark.realguest


class Collector(threading.Thread):
    """Pulls, verifies, stores by seq (dedup), then acks -- like a real
    collector; rides through agent restarts."""

    def __init__(self, agent) -> None:
        super().__init__(daemon=True)
        self.agent = agent
        self.state = ChainState()
        self.store: dict[int, dict] = {}
        self.failure: BaseException | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self._once()
        except BaseException as err:  # noqa: BLE001 - reported by the test
            self.failure = err

    def _once(self) -> None:
        client = self.agent.client()
        try:
            batch = client.batch(self.state.last_seq, self.state.wal, wait=1)
        except (OSError, PullError) as err:
            if isinstance(err, PullError) and err.status != 503:
                raise
            time.sleep(0.05)  # the agent is restarting
            return
        for rec in verify_batch(batch, self.state, self.agent.public_key()):
            self.store.setdefault(rec["seq"], rec)
        if self.state.wal and self.state.last_seq:
            with contextlib.suppress(OSError):
                client.ack(self.state.wal, self.state.last_seq)


def names_seen(store: dict[int, dict]) -> set[str]:
    return {r["vm"]["name"] for r in store.values() if r["kind"] == "sample"}




def test_collector_holds_everything_across_vm_churn_and_agent_kills(
        agent, guests):
    a = agent()
    collector = Collector(a)
    collector.start()
    running = [guests(name="churn-0", uuid=new_uuid())]
    for i in range(1, 6):
        running.append(guests(name=f"churn-{i}", uuid=new_uuid()))
        wait_until(lambda i=i: f"churn-{i}" in names_seen(collector.store))
        running.pop(0).kill()
        a.stop(signal.SIGKILL)
        a.start()
        assert collector.failure is None, collector.failure
    assert a.stop(signal.SIGTERM) == 0
    dump = a.cli("wal", "dump", str(a.state / "wal"), "--json").stdout
    final_seq = json.loads(dump.splitlines()[-1])["seq"]
    a.start()  # serve the rest after the clean stop (its own agent_start)
    wait_until(lambda: max(collector.store, default=0) > final_seq and
               [r["kind"] for r in collector.store.values()]
               .count("agent_start") >= 7)
    collector.stop.set()
    collector.join(timeout=30)
    assert collector.failure is None, collector.failure
    store = collector.store
    gaps = [(r["from_seq"], r["to_seq"]) for r in store.values()
            if r["kind"] == "gap"]
    holes = [s for s in range(1, max(store) + 1) if s not in store
             and not any(a_ <= s <= b for a_, b in gaps)]
    assert holes == []
    kinds = [store[s]["kind"] for s in sorted(store)]
    assert kinds.count("agent_start") == 7  # the first start and 6 restarts
    assert {f"churn-{i}" for i in range(6)} <= names_seen(store)
    starts = {r["vm"]["name"] for r in store.values()
              if r["kind"] == "vm_start"}
    assert {f"churn-{i}" for i in range(6)} <= starts
    assert a.cli("wal", "verify", str(a.state / "wal")).returncode == 0
