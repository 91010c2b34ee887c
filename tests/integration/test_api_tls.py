"""The pull API over TLS and mutual TLS, with certificates from a throwaway
CA made by the test."""

from __future__ import annotations

import ssl
import urllib.error

import pytest

from integration.agent_process import AgentProcess
from integration.certs import CA
from vmagent.api.tls import client_context
from vmagent.collector import ChainState, Client, PullError, verify_batch


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca, rogue = CA("vmagent test CA"), CA("someone else")
    return {
        "dir": d, "ca": ca.write(d / "ca.crt"),
        "server": ca.issue("127.0.0.1", d, server=True),
        "billing": ca.issue("billing", d),
        "stranger": ca.issue("stranger", d),
        "rogue": rogue.issue("billing", d / "..")}


@pytest.fixture(scope="module")
def tls_agent(pki, tmp_path_factory):
    cert, key = pki["server"]
    a = AgentProcess(tmp_path_factory.mktemp("tlsagent"), extra_config=(
        f'tls_cert = "{cert}"\ntls_key = "{key}"\n'
        f'tls_client_ca = "{pki["ca"]}"\nconsumers = ["billing"]\n'),
        fake_vms=1)
    a.url = a.url.replace("http:", "https:")
    yield a.start()
    a.kill()


def client(agent, pki, who: str | None) -> Client:
    cert, key = pki[who] if who else (None, None)
    return Client(agent.url, "billing", None, timeout=10,
                  ssl_context=client_context(pki["ca"], cert, key))


def test_the_right_certificate_pulls_verifies_and_acks(tls_agent, pki):
    c = client(tls_agent, pki, "billing")
    state = ChainState()
    recs = list(verify_batch(c.batch(0), state, tls_agent.public_key()))
    assert recs[0]["kind"] == "agent_start"
    assert c.ack(state.wal, state.last_seq) == state.last_seq


def test_no_client_certificate_is_refused(tls_agent, pki):
    with pytest.raises((ssl.SSLError, OSError, urllib.error.URLError)):
        client(tls_agent, pki, None).batch(0)


def test_certificate_from_another_ca_is_refused(tls_agent, pki):
    with pytest.raises((ssl.SSLError, OSError, urllib.error.URLError)):
        client(tls_agent, pki, "rogue").batch(0)


def test_certificate_whose_cn_is_not_a_consumer_is_refused(tls_agent, pki):
    c = client(tls_agent, pki, "stranger")
    c.consumer = "stranger"
    with pytest.raises(PullError) as e:
        c.batch(0)
    assert e.value.status == 403 and "not a consumer" in e.value.body["error"]


def test_a_certificate_cannot_speak_for_another_consumer(tls_agent, pki):
    c = client(tls_agent, pki, "billing")
    c.consumer = "default"
    with pytest.raises(PullError) as e:
        c.batch(0)
    assert e.value.status == 403


def test_agent_must_be_verified_by_the_client(tls_agent, pki):
    cert, key = pki["billing"]
    c = Client(tls_agent.url, "billing", None, timeout=10,
               ssl_context=client_context(None, cert, key))  # system CAs
    with pytest.raises((ssl.SSLError, urllib.error.URLError)):
        c.batch(0)


def test_connections_that_never_handshake_lock_nobody_out(tls_agent, pki):
    """Silent TCP connections to the TLS port are pending like any other:
    past the pool's size the oldest are closed, a collector gets in."""
    import socket

    from integration.hostile_clients import raise_fd_limit
    from vmagent.api.guard import PENDING_LIMIT

    raise_fd_limit()
    held = []
    try:
        for _ in range(PENDING_LIMIT + 50):
            held.append(socket.create_connection(("127.0.0.1",
                                                  tls_agent.port)))
        state = ChainState()
        c = client(tls_agent, pki, "billing")
        assert list(verify_batch(c.batch(0), state, tls_agent.public_key()))
        held[0].settimeout(5)
        assert held[0].recv(100) == b""  # closed to make room
    finally:
        for s in held:
            s.close()


def test_pull_command_with_certificates(tls_agent, pki):
    cert, key = pki["billing"]
    r = tls_agent.cli("pull", tls_agent.url, "--consumer", "billing",
                      "--cert", str(cert), "--key", str(key), "--cacert",
                      str(pki["ca"]), "--pubkey",
                      str(tls_agent.state / "host.pub"), "--after", "0")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("1 agent_start ")


def test_tls_with_tokens_and_a_non_loopback_listen(pki, tmp_path):
    cert, key = pki["server"]
    a = AgentProcess(tmp_path, extra_config=(
        f'tls_cert = "{cert}"\ntls_key = "{key}"\n'))
    text = a.config.read_text().replace("127.0.0.1:", "0.0.0.0:")
    a.config.write_text(text)
    a.url = a.url.replace("http:", "https:")
    a.start()
    try:
        c = Client(a.url, "default", a.token(), timeout=10,
                   ssl_context=client_context(pki["ca"], None, None))
        assert c.batch(0)["frames"]
    finally:
        a.kill()


@pytest.mark.parametrize(("extra", "key"), [
    ('tls_cert = "/nonexistent.crt"\ntls_key = "/nonexistent.key"\n',
     "api.tls_cert"),
    ('tls_cert = "/x.crt"\n', "api.tls_key"),
    ('tls_client_ca = "/x.pem"\n', "api.tls_client_ca"),
])
def test_tls_config_mistakes_exit_78(tmp_path, extra, key):
    a = AgentProcess(tmp_path, extra_config=extra)
    r = a.cli("run", "-c", str(a.config))
    assert r.returncode == 78
    assert f"{a.config}: {key}: " in r.stderr
