"""Ingest with the collector's trust and completeness rules against agents
on real sockets: frames verify with the pinned key their key id names (a
host re-added with a new key keeps the old one), seqs skipped without a
gap record or a 410 are recorded missing (a hostile agent), and mutual
TLS to a real ``vmagent run`` that requires client certificates."""

from __future__ import annotations

import threading

import pytest

from integration.certs import CA
from integration.conftest import wait_until
from integration.hostile_agent import HostileAgent
from integration.test_collector import CollectorProcess
from integration.test_collector_ingest import drain
from vmagent.collector.ingest import HostIngest
from vmagent.collector.store import SKIPPED, HostRow, SqliteStore, open_store
from vmagent.frames import check_frame
from vmagent.wal import format as fmt


@pytest.fixture
def hostile(tmp_path):
    made: list[HostileAgent] = []

    def make(name: str, mode: str = "other_key") -> HostileAgent:
        h = HostileAgent(tmp_path / name, name, mode)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


def pin(store: SqliteStore, agent: HostileAgent, key: bytes) -> HostIngest:
    store.put_host(HostRow(agent.name, agent.url, "default", agent.token(),
                           key))
    row = next(h for h in store.hosts() if h.name == agent.name)
    return HostIngest(store, row, threading.Event(), wait_s=0)


def seqs(store: SqliteStore, name: str) -> list[int]:
    return [s for _, s, _ in store.records(name)]


def stored_frames_verify(store: SqliteStore, name: str) -> int:
    """Every stored frame checked again, with the pinned key its key id
    names (what a rebuild or an evidence export does); how many."""
    pinned = {k: p for _, k, p, _ in store.host_keys(name)}
    rows = store._read(  # noqa: SLF001
        "SELECT wal, first_seq, last_seq, records, prev_hash, hash, key_id, "
        "sig FROM frames WHERE host = ?", (name,))
    for wal, first, last, records, prev, h, kid, sig in rows:
        check_frame(fmt.Frame(first, last, bytes(records), bytes(prev),
                              bytes(h), bytes.fromhex(kid), bytes(sig)),
                    name, bytes(wal), pinned[kid])
    return len(rows)


def test_readded_host_keeps_the_old_key_for_old_frames(hostile, tmp_path):
    """Frames 1-3 are signed by the pinned key, 4-8 by the agent's new
    key: untrusted at frame 4; re-added with the new key, the rest flows
    and every stored frame verifies with the key its key id names."""
    a = hostile("hv-rotated")
    old, new = a.public_key(), a.wal.key.public
    store = open_store(tmp_path)
    try:
        assert pin(store, a, old).cycle() is False
        row = store.hosts()[0]
        assert row.state == "untrusted" and "another key" in row.error
        assert seqs(store, a.name) == a.good_seqs()
        ing = pin(store, a, new)  # the operator re-adds it
        assert store.hosts()[0].state == "lagging"
        drain(ing)
        assert seqs(store, a.name) == a.seqs() and max(a.acks) == 16
        assert stored_frames_verify(store, a.name) == 8
    finally:
        store.close()


def test_old_frames_still_unread_verify_with_the_old_key(hostile, tmp_path):
    """Re-added with the new key before the old frames were read: they
    verify with the old key, still pinned."""
    a = hostile("hv-early")
    store = open_store(tmp_path)
    try:
        pin(store, a, a.public_key())
        drain(pin(store, a, a.wal.key.public))
        assert seqs(store, a.name) == a.seqs()
        assert store.hosts()[0].state == "current"
    finally:
        store.close()


def test_a_key_id_never_pinned_is_untrusted(hostile, tmp_path):
    a = hostile("hv-unknown")
    store = open_store(tmp_path)
    try:  # only the new key pinned: frame 1 is signed by an unknown key
        assert pin(store, a, a.wal.key.public).cycle() is False
        row = store.hosts()[0]
        assert row.state == "untrusted" and "another key" in row.error
        assert seqs(store, a.name) == [] and a.acks == []
    finally:
        store.close()


class SkippingAgent(HostileAgent):
    """Never serves the frames that start at ``drop`` (no gap record, no
    410, the chain otherwise fine); its first reply ends after frame 3, so
    the second batch starts past the stored seq + 1."""

    def __init__(self, workdir, name: str, drop: set[int]) -> None:
        super().__init__(workdir, name, "ok")
        frames = self.wal.frames

        def served(after: int, n: int) -> list[fmt.Frame]:
            out = [f for f in frames(after, n) if f.first_seq not in drop]
            return out[:3] if self.requests == 1 else out

        self.wal.frames = served  # type: ignore[method-assign]


def test_seqs_skipped_without_a_gap_record_are_recorded_missing(tmp_path):
    a = SkippingAgent(tmp_path / "skip", "hv-skip", drop={7, 13})
    c = CollectorProcess(tmp_path / "c", [(a.name, a, a.public_key())],
                         interval="1s")
    c.start()
    try:
        kept = [s for s in a.seqs() if s not in (7, 8, 13, 14)]
        wait_until(lambda: seqs_of(c, a.name) == kept, 30)
        code, doc = wait_until(lambda: (s := c.status())[0] == 0 and s, 20)
        (wal,) = doc["hosts"][0]["wals"]
        assert wal["gaps"] == [
            {"from_seq": 7, "to_seq": 8, "reason": SKIPPED},
            {"from_seq": 13, "to_seq": 14, "reason": SKIPPED}]
        assert wal["held"] == [[1, 6], [9, 12], [15, 16]]
        assert max(a.acks) == 16
        # a gap record that comes later replaces the row it explains
        a.wal.commit([{"kind": "gap", "t": 1, "from_seq": 13, "to_seq": 14,
                       "reason": "write failed: EIO"}])
        wait_until(lambda: 17 in seqs_of(c, a.name), 20)
        _, doc = c.status()
        assert [(g["from_seq"], g["reason"]) for g in
                doc["hosts"][0]["wals"][0]["gaps"]] == [
            (7, SKIPPED), (13, "gap record: write failed: EIO")]
        assert '"event": "missing_recorded"' in c.log_text()
        assert c.stop() == 0
    finally:
        c.kill()
        a.close()


def seqs_of(c: CollectorProcess, name: str) -> list[int]:
    return [s for _, s, _ in c.records(name)]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = CA("vmcollector test CA")
    return {"dir": d, "ca": ca.write(d / "ca.crt"),
            "server": ca.issue("127.0.0.1", d, server=True),
            "billing": ca.issue("billing", d)}


def test_mutual_tls_ingests_with_a_certificate_and_fails_without(
        agent, pki, tmp_path):
    cert, key = pki["server"]
    a = agent(interval=0.2, fake_vms=1, extra_config=(
        f'tls_cert = "{cert}"\ntls_key = "{key}"\n'
        f'tls_client_ca = "{pki["ca"]}"\nconsumers = ["billing"]\n'))
    url = a.url.replace("http:", "https:")
    c = CollectorProcess(tmp_path / "c", [], interval="1s")
    client_cert, client_key = pki["billing"]
    with c.config.open("a") as f:
        f.write(f'[[hosts]]\nname = "hv-tls"\nurl = "{url}"\n'
                f'consumer = "billing"\ncert = "{client_cert}"\n'
                f'key = "{client_key}"\ncacert = "{pki["ca"]}"\n'
                f'pubkey = "{a.public_key().hex()}"\n')
    assert c.cli("check-config").returncode == 0
    token = tmp_path / "billing.token"
    token.write_text(a.token())  # a token, but no client certificate
    c.start()
    try:
        wait_until(lambda: c.cli("hosts", "list").returncode == 0, 20)
        added = c.cli("hosts", "add", "hv-nocert", url, "--pubkey",
                      a.public_key().hex(), "--token-file", str(token),
                      "--consumer", "billing", "--cacert", str(pki["ca"]))
        assert added.returncode == 0, added.stderr
        wait_until(lambda: len(seqs_of(c, "hv-tls")) > 10, 30)
        hosts = wait_until(lambda: (h := {x["name"]: x for x in
                                          c.status()[1]["hosts"]}) and
                           h["hv-nocert"]["state"] == "failing" and h, 60)
        assert hosts["hv-tls"]["state"] == "current"
        assert "certificate" in hosts["hv-nocert"]["error"].lower()
        assert seqs_of(c, "hv-nocert") == []
        listed = {h["name"]: h for h in __import__("json").loads(
            c.cli("hosts", "list", "--json").stdout)}
        assert listed["hv-tls"]["auth"] == "certificate"
        assert listed["hv-nocert"]["auth"] == "token"
        assert "PRIVATE" not in c.cli("hosts", "list", "--json").stdout
        assert c.stop() == 0
    finally:
        c.kill()
