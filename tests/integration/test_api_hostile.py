"""Hostile clients: random requests, a client sending a byte a second, a
flood of connections; and a dead consumer dropped.  The agent answers,
keeps sampling, and serves a normal pull afterwards."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from integration.agent_process import AgentProcess
from integration.conftest import wait_until
from vmagent.collector import ChainState, verify_batch




@pytest.fixture(scope="module")
def hostile_agent(tmp_path_factory):
    a = AgentProcess(tmp_path_factory.mktemp("hostile"),
                     extra_config='client_timeout = "1s"\n', fake_vms=2,
                     interval=0.3)
    yield a.start()
    a.kill()


def sweeps(a) -> int:
    return a.request("/v1/status")[1]["sweeps"]


def normal_pull_works(a) -> None:
    state = ChainState()
    recs = list(verify_batch(a.client().batch(0), state, a.public_key()))
    assert recs[0]["seq"] == 1 and recs[0]["kind"] == "agent_start"


def send_raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


TOKEN_CHARS = st.characters(min_codepoint=33, max_codepoint=126,
                            exclude_characters="\r\n")
METHODS = st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS",
                           "PATCH", "BREW", "get", ""])
PATHS = st.one_of(st.sampled_from(["/v1/batches", "/v1/ack", "/v1/status",
                                   "/metrics", "/", "/v1/batches/../ack",
                                   "//v1//batches", "*"]),
                  st.text(TOKEN_CHARS, max_size=40).map(lambda t: "/" + t))
QUERIES = st.dictionaries(st.sampled_from(["consumer", "after", "max", "wait",
                                           "wal", "x"]),
                          st.one_of(st.sampled_from(["default", "-1", "0",
                                                     "1e9", "nan", "99999999999"
                                                     "99999999999", ""]),
                                    st.text(TOKEN_CHARS, max_size=20)),
                          max_size=5)
HEADERS = st.lists(st.tuples(
    st.sampled_from(["Authorization", "Content-Length", "Content-Type",
                     "Transfer-Encoding", "Connection", "X-Junk"]),
    st.text(TOKEN_CHARS, max_size=60)), max_size=5)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=METHODS, path=PATHS, query=QUERIES, headers=HEADERS,
       body=st.binary(max_size=300), auth=st.booleans())
def test_random_requests_are_answered_with_a_status(hostile_agent, method,
                                                    path, query, headers,
                                                    body, auth):
    a = hostile_agent
    qs = "&".join(f"{k}={v}" for k, v in query.items())
    lines = [f"{method} {path}{'?' + qs if qs else ''} HTTP/1.1",
             "Host: 127.0.0.1"]
    if auth:
        lines.append(f"Authorization: Bearer {a.token()}")
    lines += [f"{k}: {v}" for k, v in headers]
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    reply = send_raw(a.port, raw)
    assert reply.startswith(b"HTTP/1."), reply[:100]
    status = int(reply.split(b" ", 2)[1])
    assert 200 <= status < 600


def test_after_the_random_requests_the_agent_still_works(hostile_agent):
    a = hostile_agent
    time.sleep(2.5)  # let the per-client rate limit refill
    n = sweeps(a)
    wait_until(lambda: sweeps(a) >= n + 3)
    normal_pull_works(a)


def test_a_byte_a_second_client_is_cut_off_others_are_served(hostile_agent):
    a = hostile_agent
    slow = socket.create_connection(("127.0.0.1", a.port))
    cut = threading.Event()

    def dribble() -> None:
        try:
            for ch in b"GET /v1/status HTTP/1.1\r\nHost: x\r\n":
                slow.send(bytes([ch]))
                time.sleep(0.5)
        except OSError:
            cut.set()
        try:
            if slow.recv(100) == b"":
                cut.set()
        except OSError:
            cut.set()

    t = threading.Thread(target=dribble, daemon=True)
    t.start()
    n = sweeps(a)
    normal_pull_works(a)  # served meanwhile
    assert wait_until(cut.is_set, timeout=15)  # client_timeout is 1 s
    assert sweeps(a) > n
    slow.close()


def test_a_flood_of_connections_is_refused_beyond_the_cap(hostile_agent):
    a = hostile_agent
    time.sleep(1.5)
    held = []
    try:
        for _ in range(100):  # more than the 64 allowed at once
            held.append(socket.create_connection(("127.0.0.1", a.port)))
        time.sleep(0.3)
        busy = 0
        for s in held[64:]:
            s.settimeout(5)
            try:
                busy += s.recv(200).startswith(b"HTTP/1.1 503")
            except OSError:
                pass
        assert busy > 0
        n = sweeps_via_control(a)
        wait_until(lambda: sweeps_via_control(a) >= n + 3)
    finally:
        for s in held:
            s.close()
    wait_until(lambda: a.request("/v1/status")[0] == 200)
    normal_pull_works(a)


def sweeps_via_control(a) -> int:
    import json

    r = a.cli("status", "-c", str(a.config), "--json")
    return json.loads(r.stdout)["sweeps"]


def test_a_dead_consumer_is_dropped_and_stops_holding_data(tmp_path):
    a = AgentProcess(tmp_path, extra_config=(
        'consumers = ["dead"]\n[wal]\nsegment_bytes = "4KiB"\n'),
        fake_vms=3, interval=0.2)
    a.start()
    try:
        wait_until(lambda: len(list((a.state / "wal").glob("*.seg"))) >= 3,
                   timeout=60)
        state = ChainState()
        list(verify_batch(a.client().batch(0, max_records=10000), state,
                          a.public_key()))
        a.client().ack(state.wal, state.last_seq)
        first = sorted((a.state / "wal").glob("*.seg"))[0]
        assert first.name.startswith("0" * 19 + "1")  # "dead" holds it all
        r = a.cli("consumer", "drop", "dead", "-c", str(a.config))
        assert r.returncode == 0, r.stderr
        assert not first.exists()  # below the remaining consumer's ack
        doc = a.request("/v1/status")[1]
        assert doc["dropped_consumers"] == ["dead"]
        assert "dead" not in doc["consumers"]
        a.stop()
        a.start()  # still dropped after a restart
        assert a.request("/v1/status")[1]["dropped_consumers"] == ["dead"]
        r = a.cli("consumer", "drop", "nobody", "-c", str(a.config))
        assert r.returncode == 1 and "no consumer" in r.stderr
    finally:
        a.kill()
