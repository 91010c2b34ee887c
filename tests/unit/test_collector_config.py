"""``vmcollector``'s config (docs/collector.md) and its host commands."""

from __future__ import annotations

import json

import pytest

from vmagent.collector import config
from vmagent.collector.cli import main
from vmagent.errors import ConfigError

KEY = bytes(range(32))


def test_defaults_and_hosts(tmp_path):
    raw = tmp_path / "hv2.pub"
    raw.write_bytes(KEY)
    cfg = config.parse(
        '[collector]\nstate_dir = "/srv/c"\npull_interval = "500ms"\n'
        'listen = "127.0.0.1:9741"\n'  # a later slice's key: accepted
        f'[[hosts]]\nname = "hv1"\nurl = "http://hv1:9740"\n'
        f'token_file = "/t1"\npubkey = "{KEY.hex()}"\n'
        f'[[hosts]]\nname = "hv2"\nurl = "https://hv2:9740"\n'
        f'consumer = "billing"\ntoken_file = "/t2"\npubkey = "{raw}"\n'
        'cacert = "/ca.pem"\n', "c.toml")
    assert cfg.db_path == config.Path("/srv/c/collector.db")
    assert cfg.store == "sqlite" and cfg.pull_interval_s == 0.5
    assert [h.pubkey for h in cfg.hosts] == [KEY, KEY]
    assert cfg.hosts[0].consumer == "default"
    assert cfg.hosts[1].cacert == config.Path("/ca.pem")
    assert config.parse("", "x").pull_interval_s == 10.0


@pytest.mark.parametrize("text,key", [
    ('[collector]\nstore = "postgresql://u@db:5432"\n', "collector.store"),
    ('[collector]\nlease = "0.5s"\n', "collector.lease"),
    ('[collector]\nread_timeout = "0s"\n', "collector.read_timeout"),
    ('[collector]\ninstance = "a b"\n', "collector.instance"),
    ('[collector]\nstore = "mysql"\n', "collector.store"),
    ('[collector]\nbogus = 1\n', "collector.bogus"),
    ('[nope]\n', "nope"),
    ('[[hosts]]\nname = "a"\n', "hosts[0].url"),
    (f'[[hosts]]\nname = "a b"\nurl = "http://x:1"\ntoken_file = "/t"\n'
     f'pubkey = "{KEY.hex()}"\n', "hosts[0].name"),
    (f'[[hosts]]\nname = "a"\nurl = "http://x:1"\ntoken_file = "/t"\n'
     f'pubkey = "{KEY.hex()}"\n' * 2, "hosts[1].name"),
    ('[[hosts]]\nname = "a"\nurl = "http://x:1"\ntoken_file = "/t"\n'
     'pubkey = "abcd"\n', "hosts[0].pubkey"),
])
def test_errors_name_file_and_key(text, key):
    with pytest.raises(ConfigError) as err:
        config.parse(text, "c.toml")
    assert err.value.key == key
    assert str(err.value).startswith(f"c.toml: {key}: ")
    assert "\n" not in str(err.value)


def test_postgresql_instance_and_lease():
    cfg = config.parse('[collector]\nstore = "postgresql://u@db:5432/x"\n'
                       'instance = "c1"\nlease = "2s"\n')
    assert cfg.store == "postgresql://u@db:5432/x"
    assert (cfg.instance_name, cfg.lease_s) == ("c1", 2.0)
    assert config.parse('[collector]\nread_timeout = "5s"\n') \
        .read_timeout_s == 5.0
    cfg = config.parse("")
    assert cfg.read_timeout_s == 30.0
    assert cfg.lease_s == 30.0 and cfg.instance_name == config.socket \
        .gethostname()


def test_hosts_add_list_remove(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[collector]\nstate_dir = "{tmp_path / "s"}"\n')
    token = tmp_path / "tok"
    token.write_text("secret-token\n")
    assert main(["hosts", "add", "hv1", "http://hv1:9740", "--pubkey",
                 KEY.hex(), "--token-file", str(token), "--consumer",
                 "billing", "-c", str(cfg)]) == 0
    capsys.readouterr()
    assert main(["hosts", "list", "--json", "-c", str(cfg)]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["name"] == "hv1" and row["pubkey"] == KEY.hex()
    assert row["consumer"] == "billing" and row["state"] == "lagging"
    from vmagent.collector.store import SqliteStore
    store = SqliteStore(tmp_path / "s" / "collector.db")
    assert store.hosts()[0].token == "secret-token"  # the value is stored
    store.close()
    assert main(["status", "-c", str(cfg)]) == 1  # not current yet
    assert main(["hosts", "remove", "hv1", "-c", str(cfg)]) == 0
    assert main(["hosts", "remove", "hv1", "-c", str(cfg)]) == 1
    assert main(["status", "-c", str(cfg)]) == 0  # no hosts: all current
    assert main(["hosts", "add", "x", "http://x", "--pubkey", "zz",
                 "--token-file", str(token), "-c", str(cfg)]) == 1
    assert main(["migrate", "-c", str(cfg)]) == 0
    assert "up to date" in capsys.readouterr().out
