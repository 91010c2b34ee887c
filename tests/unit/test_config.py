"""Configuration: defaults, every key of docs/configuration.md, and one-line
errors that name the file, the key and what was expected."""

from pathlib import Path

import pytest
import tomllib

from vmagent import config
from vmagent.errors import ConfigError

FULL = """
[agent]
host_id = "hv-17"
state_dir = "/srv/vmagent"
interval = "30s"

[api]
listen = "[::1]:9741"
tokens_file = "/etc/vmagent/tokens"
consumers = ["billing", "audit.eu-1"]
tls_cert = "/etc/vmagent/cert.pem"
tls_key = "/etc/vmagent/key.pem"
tls_client_ca = "/etc/vmagent/ca.pem"

[wal]
max_bytes = "512MiB"

[probes]
procfs = "/host/proc"
sysfs = "/host/sys"
debugfs = "/host/sys/kernel/debug"
acct_file = "/var/account/pacct"
"""


def test_every_key_is_read():
    c = config.parse(FULL, "vmagent.toml")
    assert c.agent.host_id == "hv-17"
    assert c.agent.state_dir == Path("/srv/vmagent")
    assert c.agent.interval_s == 30.0
    assert c.api.listen == "[::1]:9741"
    assert c.api.consumers == ("billing", "audit.eu-1")
    assert c.tokens_file == Path("/etc/vmagent/tokens")
    assert c.api.tls_client_ca == Path("/etc/vmagent/ca.pem")
    assert c.wal.max_bytes == 512 << 20
    assert c.probes.procfs == "/host/proc"
    assert c.probes.acct_file == "/var/account/pacct"
    assert c.source == "vmagent.toml"


def test_empty_file_gives_the_documented_defaults():
    c = config.parse("")
    assert c.agent.host_id is None
    assert c.agent.state_dir == Path("/var/lib/vmagent")
    assert c.agent.interval_s == 10.0
    assert c.api.listen == "127.0.0.1:9740"
    assert c.tokens_file == Path("/var/lib/vmagent/tokens")
    assert c.wal.max_bytes == 1 << 30
    assert c.probes.debugfs == "/sys/kernel/debug"


def test_no_file_and_no_default_path_gives_built_in_defaults(monkeypatch,
                                                             tmp_path):
    monkeypatch.setattr(config, "DEFAULT_PATH", tmp_path / "absent.toml")
    assert config.load(None).source == config.BUILTIN


def test_default_path_is_used_when_it_exists(monkeypatch, tmp_path):
    path = tmp_path / "vmagent.toml"
    path.write_text('[agent]\ninterval = 5\n')
    monkeypatch.setattr(config, "DEFAULT_PATH", path)
    c = config.load(None)
    assert (c.source, c.agent.interval_s) == (str(path), 5.0)


@pytest.mark.parametrize(("value", "seconds"), [
    ("10", 10.0), ("2.5", 2.5), ('"10s"', 10.0), ('"500ms"', 0.5),
    ('"1m"', 60.0), ('"1h"', 3600.0), ('" 3 s "', 3.0),
])
def test_interval_spellings(value, seconds):
    c = config.parse(f"[agent]\ninterval = {value}\n")
    assert c.agent.interval_s == seconds


@pytest.mark.parametrize(("value", "size"), [
    ("1024", 1024), ('"1GiB"', 1 << 30), ('"10MB"', 10**7),
    ('"64K"', 64 << 10), ('"2G"', 2 << 30), ('"100"', 100),
])
def test_size_spellings(value, size):
    assert config.parse_size(tomllib.loads(f"v = {value}")["v"]) == size


def test_cap_below_two_segments_is_refused_naming_max_bytes():
    with pytest.raises(ConfigError) as err:
        config.parse('[wal]\nmax_bytes = "256KiB"\n')  # 16 MiB segments
    assert "wal.max_bytes" in str(err.value)
    assert "two segments" in str(err.value)
    cfg = config.parse('[wal]\nmax_bytes = "8KiB"\nsegment_bytes = "4KiB"\n')
    assert cfg.wal.max_bytes == 2 * cfg.wal.segment_bytes


@pytest.mark.parametrize(("text", "key", "words"), [
    ("[agent]\ninterval = 0\n", "agent.interval",
     "more than 0 and at most 24h"),
    ('[agent]\ninterval = "25h"\n', "agent.interval",
     "more than 0 and at most 24h"),
    ('[agent]\ninterval = "soon"\n', "agent.interval", "duration"),
    ("[agent]\ninterval = true\n", "agent.interval", "duration"),
    ('[agent]\nhost_id = ""\n', "agent.host_id", "non-empty string"),
    ("[agent]\nstate_dir = 3\n", "agent.state_dir", "string"),
    ('[agent]\nintervall = "10s"\n', "agent.intervall", "unknown key"),
    ('[wal]\nmax_bytes = "1 lot"\n', "wal.max_bytes", "size"),
    ("[wal]\nmax_bytes = -5\n", "wal.max_bytes", "positive"),
    ('[api]\nlisten = "9740"\n', "api.listen", "host:port"),
    ('[api]\nlisten = "h:99999"\n', "api.listen", "host:port"),
    ('[api]\nconsumers = "billing"\n', "api.consumers", "list"),
    ('[api]\nconsumers = ["a b"]\n', "api.consumers", "names"),
    ('[probes]\nprocfs = "proc"\n', "probes.procfs", "absolute"),
    ("[metrics]\nx = 1\n", "metrics", "unknown section"),
    ("agent = 3\n", "agent", "table"),
    ("[agent\n", "-", "TOML"),
])
def test_errors_name_file_key_and_expectation(text, key, words):
    with pytest.raises(ConfigError) as e:
        config.parse(text, "/etc/vmagent/vmagent.toml")
    msg = str(e.value)
    assert msg.startswith(f"/etc/vmagent/vmagent.toml: {key}: ")
    assert words in msg
    assert "\n" not in msg


def test_missing_explicit_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        config.load(tmp_path / "nope.toml")


def test_binary_file_is_an_error(tmp_path):
    path = tmp_path / "bin.toml"
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="UTF-8"):
        config.load(path)


def test_an_unreadable_file_is_named_with_the_reason_and_no_key(tmp_path):
    with pytest.raises(ConfigError) as e:
        config.load(tmp_path / "nope.toml")
    assert str(e.value) == (f"{tmp_path / 'nope.toml'}: cannot read: No such "
                            "file or directory")
    assert e.value.key is None


@pytest.mark.parametrize("name", [".hidden", "a/b", "x" * 129, ""])
def test_consumer_names_follow_the_one_rule_of_tokens_and_cursors(name):
    from vmagent.names import is_consumer_name

    assert not is_consumer_name(name)
    with pytest.raises(ConfigError, match="api.consumers"):
        config.parse(f'[api]\nconsumers = ["{name}"]\n')
