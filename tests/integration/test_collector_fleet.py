"""A fleet of ``vmcollector run`` processes on one real PostgreSQL with real
agents: hosts added on one instance are pulled by the fleet, each host by
one instance at a time (lease rows), a SIGKILLed instance's hosts move
within a couple of lease periods, a new instance gets its share, SIGTERM
gives leases back at once, a stalled instance stores nothing after its
lease ran out (fencing), and every record is stored exactly once."""

from __future__ import annotations

import signal
import time

import pytest

from integration.conftest import wait_until
from integration.test_collector import (
    CollectorProcess,
    acked,
    assert_exactly_once,
)
from vmagent.collector.store import PostgresStore, StoreError

LEASE = 2.0  # seconds; instances tick every LEASE / 5


@pytest.fixture
def fleet(tmp_path, pg_url):
    """``fleet(name)``: a started ``vmcollector run`` named ``name`` on the
    test's database, with a 2 s lease; all killed after the test."""
    made: list[CollectorProcess] = []

    def make(name: str) -> CollectorProcess:
        c = CollectorProcess(tmp_path / name, [], interval="1s",
                             store=pg_url,
                             extra=f'instance = "{name}"\n'
                                   f'lease = "{LEASE:g}s"\n')
        made.append(c)
        return c.start()

    yield make
    for c in made:
        c.kill()


def owners(store: PostgresStore) -> dict[str, str | None]:
    """host -> the instance holding an unexpired lease on it."""
    now = time.time()
    return {h: (o if o and e > now else None)
            for h, (o, e) in store.leases().items()}


def counts(store: PostgresStore, hosts) -> dict[str, int] | None:
    """Records stored per host; None while the database is away."""
    try:
        return {h: len(store.records(h)) for h in hosts}
    except StoreError:
        return None


def grows(store: PostgresStore, hosts, by: int = 5, timeout: float = 20):
    before = wait_until(lambda: counts(store, hosts), timeout)
    wait_until(lambda: (now := counts(store, hosts)) is not None and
               all(now[h] > before[h] + by for h in hosts), timeout)


def test_fleet_shares_hosts_takes_over_and_stores_exactly_once(
        agent, fleet, pg_url):
    agents = {f"hv{i}": agent(interval=0.2, fake_vms=1) for i in range(3)}
    c0, c1 = fleet("c0"), fleet("c1")
    for name, a in agents.items():  # added on c1: seen by the whole fleet
        token = c1.workdir / f"{name}.token"
        token.write_text(a.token())
        out = c1.cli("hosts", "add", name, a.url, "--pubkey",
                     a.public_key().hex(), "--token-file", str(token))
        assert out.returncode == 0, out.stderr
    store = PostgresStore(pg_url)
    try:
        # both instances share the three hosts, 2 + 1, within a few leases
        shared = wait_until(lambda: sorted(
            (o := owners(store)).values(), key=str) in
            (["c0", "c0", "c1"], ["c0", "c1", "c1"]) and o, 6 * LEASE)
        grows(store, agents)
        time.sleep(LEASE)  # stable: no lease moved meanwhile
        assert owners(store) == shared
        code, doc = c0.status()
        assert {h["name"]: h["lease"]["owner"] for h in doc["hosts"]} == \
            shared and doc["instances"] == ["c0", "c1"]
        # c1 stalls (SIGSTOP) past its lease: c0 takes its hosts; woken,
        # c1 stores nothing more of them (fencing) and gives them up
        moved = [h for h, o in shared.items() if o == "c1"]
        assert c1.proc is not None
        c1.proc.send_signal(signal.SIGSTOP)
        began = time.monotonic()
        wait_until(lambda: all(o == "c0" for o in owners(store).values()),
                   4 * LEASE)
        took = time.monotonic() - began
        print(f"stalled instance's hosts taken over in {took:.1f} s")
        assert took < 2 * LEASE + 2, took
        grows(store, moved)
        c1.proc.send_signal(signal.SIGCONT)
        time.sleep(LEASE)
        # back: a share again, fairly (c1's heartbeat is live once more)
        wait_until(lambda: "c1" in owners(store).values(), 4 * LEASE)
        # SIGKILL c1: its hosts move to c0 within about two lease periods
        moved = [h for h, o in owners(store).items() if o == "c1"]
        c1.kill()
        began = time.monotonic()
        wait_until(lambda: all(o == "c0" for o in owners(store).values()),
                   4 * LEASE)
        took = time.monotonic() - began
        print(f"killed instance's hosts taken over in {took:.1f} s")
        assert took < 2 * LEASE + 2, took
        grows(store, moved)
        # a new instance gets its share within about a lease period
        c2 = fleet("c2")
        began = time.monotonic()
        wait_until(lambda: "c2" in owners(store).values(), 4 * LEASE + 5)
        took = time.monotonic() - began
        print(f"new instance got its share in {took:.1f} s (with start-up)")
        assert took < 3 * LEASE + 5, took  # + its start-up
        # SIGTERM c0: its leases are given back at once, c2 takes them all
        assert c0.stop() == 0, c0.log_text()[-2000:]
        assert "c0" not in owners(store).values()
        began = time.monotonic()
        wait_until(lambda: all(o == "c2" for o in owners(store).values()),
                   3 * LEASE)
        took = time.monotonic() - began
        print(f"SIGTERMed instance's hosts taken over in {took:.1f} s")
        assert took < 2 * LEASE + 2, took  # at once, however loaded
        grows(store, agents)
        assert c2.stop() == 0, c2.log_text()[-2000:]
        assert all(o is None for o in owners(store).values())
    finally:
        store.close()
    for name, a in agents.items():  # nothing lost, nothing twice
        last = assert_exactly_once(c2, name, a)
        assert acked(a) == last, name  # acked exactly what was committed


def test_database_outage_collectors_survive_and_resume(
        agent, fleet, pg_url, pg_cluster):
    agents = {f"hv{i}": agent(interval=0.2, fake_vms=1) for i in range(2)}
    c0, c1 = fleet("c0"), fleet("c1")
    for name, a in agents.items():
        token = c0.workdir / f"{name}.token"
        token.write_text(a.token())
        assert c0.cli("hosts", "add", name, a.url, "--pubkey",
                      a.public_key().hex(), "--token-file",
                      str(token)).returncode == 0
    store = PostgresStore(pg_url)
    try:
        wait_until(lambda: set(owners(store).values()) == {"c0", "c1"},
                   6 * LEASE)
        grows(store, agents)
        pg_cluster.stop()  # the database is gone for longer than a lease
        code, _ = c0.status()
        assert code == 3  # store unreachable
        time.sleep(2 * LEASE)
        pg_cluster.start()
        grows(store, agents, timeout=30)  # both resumed, the leases renewed
        assert c0.proc is not None and c0.proc.poll() is None
        assert c1.proc is not None and c1.proc.poll() is None
        # every host held again (a lease the outage let lapse is taken
        # back within a few rounds, by its old holder or the other)
        wait_until(lambda: all(owners(store).values()), 6 * LEASE)
        assert c0.stop() == 0 and c1.stop() == 0
    finally:
        store.close()
    for name, a in agents.items():
        last = assert_exactly_once(c0, name, a)
        assert acked(a) == last, name
