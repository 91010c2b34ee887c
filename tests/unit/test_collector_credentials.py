"""A host's credentials: exactly one of a bearer token or a client
certificate with its key (mutual TLS), in ``[[hosts]]`` and ``hosts add``
alike; both stored as values (docs/collector.md)."""

from __future__ import annotations

import json

import pytest

from integration.certs import CA
from vmagent.collector import config
from vmagent.collector.cli import main
from vmagent.collector.client import TlsError, tls_context
from vmagent.collector.store import open_store
from vmagent.errors import ConfigError

KEY = bytes(range(32))
HOST = f'[[hosts]]\nname = "hv"\npubkey = "{KEY.hex()}"\n'


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = CA("credentials test CA")
    other = CA("another CA")
    return {"ca": ca.write(d / "ca.crt"), "client": ca.issue("billing", d),
            "other": other.issue("stranger", d)}


def test_a_host_with_cert_and_key_needs_no_token():
    cfg = config.parse(HOST + 'url = "https://hv:9740"\ncert = "/c.pem"\n'
                       'key = "/k.pem"\n', "c.toml")
    h = cfg.hosts[0]
    assert (h.token_file, h.cert, h.key) == \
        (None, config.Path("/c.pem"), config.Path("/k.pem"))


@pytest.mark.parametrize("extra,key,words", [
    ('url = "https://h:1"\ntoken_file = "/t"\ncert = "/c"\nkey = "/k"\n',
     "token_file", "not both"),
    ('url = "https://h:1"\ncert = "/c"\n', "key", "needs both"),
    ('url = "https://h:1"\nkey = "/k"\n', "cert", "needs both"),
    ('url = "https://h:1"\n', "token_file", "missing"),
    ('url = "http://h:1"\ncert = "/c"\nkey = "/k"\n', "url", "https://"),
])
def test_credentials_are_exactly_one_of_token_or_cert_and_key(extra, key,
                                                                words):
    with pytest.raises(ConfigError) as err:
        config.parse(HOST + extra, "c.toml")
    assert err.value.key == f"hosts[0].{key}"
    assert words in str(err.value) and "\n" not in str(err.value)


@pytest.fixture
def cfg(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(f'[collector]\nstate_dir = "{tmp_path / "s"}"\n'
                    'listen = ""\n')
    return path


def add(cfg, *args: str) -> int:
    return main(["hosts", "add", "hv", *args, "--pubkey", KEY.hex(), "-c",
                 str(cfg)])


@pytest.mark.parametrize("args,words", [
    (["https://h:1"], "--token-file: missing"),
    (["https://h:1", "--token-file", "/t", "--cert", "/c", "--key", "/k"],
     "--token-file: give either"),
    (["https://h:1", "--cert", "/c"], "--key: missing"),
    (["http://h:1", "--cert", "/c", "--key", "/k"], "URL: mutual TLS"),
])
def test_hosts_add_usage_errors_are_one_line(cfg, capsys, args, words):
    assert add(cfg, *args) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and "\n" not in err, err


def test_hosts_add_stores_certificate_and_key_as_text(cfg, pki, tmp_path,
                                                      capsys):
    cert, key = pki["client"]
    assert add(cfg, "https://h:1", "--cert", str(cert), "--key", str(key),
               "--cacert", str(pki["ca"])) == 0
    assert "client certificate" in capsys.readouterr().out
    store = open_store(tmp_path / "s")
    try:
        row = store.hosts()[0]
    finally:
        store.close()
    assert row.token is None and row.cert_pem == cert.read_text()
    assert row.key_pem == key.read_text()
    tls_context(row.cacert, row.cert_pem, row.key_pem)  # they load
    assert main(["hosts", "list", "--json", "-c", str(cfg)]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed["auth"] == "certificate"
    assert "PRIVATE" not in json.dumps(listed)  # never printed
    assert [k["pubkey"] for k in listed["keys"]] == [KEY.hex()]


@pytest.mark.parametrize("which,words", [
    ("missing", "--cert: cannot read certificate /nonexistent"),
    ("not_pem", "--cert: certificate"),
    ("mismatch", "--key: client certificate and key do not load"),
])
def test_hosts_add_bad_certificate_files_are_one_line_errors(
        cfg, pki, tmp_path, capsys, which, words):
    cert, key = pki["client"]
    if which == "missing":
        cert = tmp_path / "nonexistent"
        words = words.replace("/nonexistent", str(cert))
    elif which == "not_pem":
        cert = tmp_path / "junk.pem"
        cert.write_text("hello\n")
    else:
        key = pki["other"][1]
    assert add(cfg, "https://h:1", "--cert", str(cert), "--key",
               str(key)) == 1
    err = capsys.readouterr().err.strip()
    assert words in err and "\n" not in err, err


def test_check_config_loads_the_certificate_and_key(pki, tmp_path, capsys):
    cert, _ = pki["client"]
    _, wrong = pki["other"]
    path = tmp_path / "c.toml"
    path.write_text(HOST + f'url = "https://h:1"\ncert = "{cert}"\n'
                    f'key = "{wrong}"\n')
    assert main(["check-config", "-c", str(path)]) == 78
    err = capsys.readouterr().err.strip()
    assert f"{path}: hosts[0].key: client certificate and key" in err


def test_tls_context_needs_both_certificate_and_key():
    with pytest.raises(TlsError, match="both"):
        tls_context(None, "CERT", None)
