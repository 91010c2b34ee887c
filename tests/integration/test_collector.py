"""``vmcollector run`` against real ``vmagent run`` processes, into a real
SQLite file: exactly once, ack after commit, agent restarts, pinned keys."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from integration.agent_process import free_port
from integration.conftest import wait_until, wait_until_still
from vmagent.collector import ChainState, verify_batch
from vmagent.collector.store import connect


class CollectorProcess:
    """``vmcollector run`` in its own state dir, stopped after the test."""

    def __init__(self, workdir: Path, hosts: list[tuple[str, Any, bytes]],
                 interval: str = "2s", store: str = "sqlite",
                 extra: str = "") -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir, self.state = workdir, workdir / "cstate"
        self.config = workdir / "collector.toml"
        self.store = store
        self.listen = free_port()  # GET /metrics, GET /v1/status
        if "listen =" not in extra:
            extra += f'listen = "127.0.0.1:{self.listen}"\n'
        text = (f'[collector]\nstate_dir = "{self.state}"\n'
                f'store = "{store}"\npull_interval = "{interval}"\n{extra}')
        for name, agent, key in hosts:
            token = workdir / f"{name}.token"
            token.write_text(agent.token() + "\n")
            text += (f'[[hosts]]\nname = "{name}"\nurl = "{agent.url}"\n'
                     f'token_file = "{token}"\npubkey = "{key.hex()}"\n')
        self.config.write_text(text)
        self.proc: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "vmagent.collector.cli",
                               *args, "-c", str(self.config)],
                              capture_output=True, text=True, timeout=60)

    def start(self) -> CollectorProcess:
        log = open(self.workdir / "collector.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vmagent.collector.cli", "run", "-c",
             str(self.config)], stdout=log, stderr=log)
        log.close()
        return self

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=30)
        self.proc = None
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def records(self, host: str) -> list[tuple[bytes, int, dict[str, Any]]]:
        db = self.state / "collector.db"
        if self.store == "sqlite" and not db.exists():
            return []
        store = connect(self.state, self.store)
        try:
            return store.records(host)
        except Exception:  # noqa: BLE001 - not migrated yet
            return []
        finally:
            store.close()

    def status(self) -> tuple[int, dict[str, Any]]:
        out = self.cli("status", "--json")
        return out.returncode, json.loads(out.stdout) if out.stdout else {}

    def log_text(self) -> str:
        return (self.workdir / "collector.log").read_text(errors="replace")


@pytest.fixture
def collector(tmp_path):
    made: list[CollectorProcess] = []

    def make(hosts: list[tuple[str, Any, bytes]],
             interval: str = "2s") -> CollectorProcess:
        c = CollectorProcess(tmp_path / f"collector{len(made)}", hosts,
                             interval)
        made.append(c)
        return c

    yield make
    for c in made:
        c.kill()


def fresh_pull(agent, upto: int) -> list[dict[str, Any]]:
    """The agent's verified records 1..upto, pulled again from 0."""
    client, state, after, out = agent.client(), ChainState(), 0, []
    while after < upto:
        batch = client.batch(after, wait=0)
        new = list(verify_batch(batch, state, agent.public_key()))
        if not new:
            break
        out += new
        after = state.last_seq
    return [r for r in out if r["seq"] <= upto]


def acked(agent, consumer: str = "default") -> int | None:
    status, doc = agent.request("/v1/status")
    assert status == 200
    lag = doc["consumers"].get(consumer)
    return None if lag is None else lag["acked_seq"]


def assert_exactly_once(c: CollectorProcess, name: str, agent) -> int:
    stored = c.records(name)
    seqs = [s for _, s, _ in stored]
    assert len({w for w, _, _ in stored}) == 1, "one WAL"
    assert seqs == list(range(1, len(seqs) + 1)), "contiguous, no duplicate"
    assert [r for _, _, r in stored] == fresh_pull(agent, seqs[-1])
    return seqs[-1]


def test_two_agents_exactly_once_acks_after_commit_and_agent_killed(
        agent, collector):
    a, b = agent(interval=0.2, fake_vms=2), agent(interval=0.2, fake_vms=2)
    c = collector([("hv-a", a, a.public_key())]).start()
    assert c.cli("migrate").returncode == 0  # concurrent with run: harmless
    token = c.workdir / "b.token"
    token.write_text(b.token())
    pub = c.workdir / "b.pub"
    pub.write_bytes(b.public_key())  # raw
    added = c.cli("hosts", "add", "hv-b", b.url, "--pubkey", str(pub),
                  "--token-file", str(token))
    assert added.returncode == 0, added.stderr
    c.stop()  # hv-b from the store is pulled from the next start on
    c.start()
    wait_until(lambda: len(c.records("hv-a")) > 20 and
               len(c.records("hv-b")) > 20, 30)
    b.kill()  # SIGKILL mid-ingest, while hv-a keeps flowing
    n_a = len(c.records("hv-a"))
    wait_until(lambda: len(c.records("hv-a")) > n_a + 5, 15)
    b.start()
    n_b = len(c.records("hv-b"))
    wait_until(lambda: len(c.records("hv-b")) > n_b + 10, 30)
    code, doc = wait_until(lambda: (s := c.status())[0] == 0 and s, 20)
    assert {h["name"]: h["state"] for h in doc["hosts"]} == \
        {"hv-a": "current", "hv-b": "current"}
    assert c.stop() == 0, c.log_text()[-2000:]
    for name, ag in (("hv-a", a), ("hv-b", b)):
        last = assert_exactly_once(c, name, ag)
        assert acked(ag) == last, name  # acked exactly what was committed
    kinds = [r["kind"] for _, _, r in c.records("hv-b")]
    assert kinds.count("agent_start") == 2  # both runs of hv-b, one WAL
    code, doc = c.status()
    wals = {h["name"]: h["wals"] for h in doc["hosts"]}
    assert wals["hv-b"][0]["held"] == [[1, len(c.records("hv-b"))]]
    assert wals["hv-b"][0]["gaps"] == []


def test_wrong_pinned_key_makes_only_that_host_untrusted(agent, collector):
    a, b = agent(interval=0.2, fake_vms=1), agent(interval=0.2, fake_vms=1)
    c = collector([("hv-a", a, b.public_key()),  # the wrong key
                   ("hv-b", b, b.public_key())], interval="30s").start()
    wait_until(lambda: len(c.records("hv-b")) > 10, 30)
    code, doc = wait_until(lambda: (s := c.status())[1].get("hosts") and
                           s[1]["hosts"][0]["state"] == "untrusted" and s, 20)
    host_a = doc["hosts"][0]
    assert code == 1
    assert "another key" in host_a["error"]
    assert c.records("hv-a") == [] and host_a["wals"] == []
    assert acked(a) in (None, 0)  # nothing acked on the wrong key
    n_b = len(c.records("hv-b"))
    wait_until(lambda: len(c.records("hv-b")) > n_b + 5, 15)  # still flowing
    began = time.monotonic()
    assert c.stop() == 0  # not held up by a 30 s long-poll in progress
    assert time.monotonic() - began < 5
    assert_exactly_once(c, "hv-b", b)
    listed = json.loads(c.cli("hosts", "list", "--json").stdout)
    assert [h["state"] for h in listed] == ["untrusted", "current"]


def test_status_without_a_store_exits_3(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[collector]\nstate_dir = "{tmp_path / "nothing"}"\n')
    out = subprocess.run([sys.executable, "-m", "vmagent.collector.cli",
                          "status", "-c", str(cfg)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 3 and "store unreachable" in out.stderr


def test_config_errors_name_file_and_key_exit_78(tmp_path):
    cfg = tmp_path / "c.toml"
    for text, key in (
            ('[collector]\nstore = "postgresql://u@db"\n',
             "collector.store"),
            ('[collector]\npull_interval = "soon"\n',
             "collector.pull_interval"),
            ('[[hosts]]\nname = "a"\nurl = "http://x:1"\n'
             'token_file = "/t"\npubkey = "/nonexistent.pub"\n',
             "hosts[0].pubkey"),
            ('[[hosts]]\nname = "a"\nurl = "ftp://x"\ntoken_file = "/t"\n'
             f'pubkey = "{"ab" * 32}"\n', "hosts[0].url"),
            ('[[hosts]]\nname = "a"\nurl = "http://x:1"\n',
             "hosts[0].pubkey")):
        cfg.write_text(text)
        out = subprocess.run([sys.executable, "-m", "vmagent.collector.cli",
                              "check-config", "-c", str(cfg)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 78, (text, out.stderr)
        line = out.stderr.strip()
        assert "\n" not in line and f"{cfg}: {key}:" in line, line
        if key == "collector.store":
            assert "postgresql://user@host:port/db" in line


def test_sqlite_run_picks_up_hosts_added_and_removed_in_the_store(
        agent, tmp_path):
    a = agent(interval=0.2, fake_vms=1)
    c = CollectorProcess(tmp_path / "c", [], interval="1s",
                         extra='instance = "solo"\nlease = "2s"\n').start()
    try:
        wait_until(lambda: c.cli("hosts", "list").returncode == 0, 20)
        token = c.workdir / "a.token"
        token.write_text(a.token())
        assert c.cli("hosts", "add", "hv-a", a.url, "--pubkey",
                     a.public_key().hex(), "--token-file",
                     str(token)).returncode == 0
        began = time.monotonic()  # in the store: the CLI's start not counted
        wait_until(lambda: c.records("hv-a"), 10)  # no restart
        assert time.monotonic() - began < 2 + 5  # a lease, and a pull
        code, doc = c.status()
        assert doc["hosts"][0]["lease"]["owner"] == "solo"
        assert c.cli("hosts", "remove", "hv-a").returncode == 0
        # no longer pulled (within a lease period, however loaded): the
        # agent still writes every 0.2 s, so a pulled host would grow
        wait_until_still(lambda: len(c.records("hv-a")), 1.5, 20)
        assert c.stop() == 0, c.log_text()[-2000:]
    finally:
        c.kill()
