"""The ``vmagent`` command line: exit codes, messages, output shapes."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from unit.fake_procfs import FakeHost
from vmagent import __version__
from vmagent.cli import format_table, human_bytes, main


def write_config(tmp_path, host: FakeHost | None = None, extra: str = ""):
    cfg = tmp_path / "vmagent.toml"
    probes = ""
    if host is not None:
        probes = (f'[probes]\nprocfs = "{host.proc}"\nsysfs = "{host.sys}"\n'
                  f'debugfs = "{host.debug}"\n')
    cfg.write_text(f'[agent]\nstate_dir = "{tmp_path / "state"}"\n'
                   f'{extra}\n{probes}')
    return cfg


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"vmagent {__version__}"


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["frobnicate"])
    assert e.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_check_config_ok(tmp_path, capsys):
    cfg = write_config(tmp_path)
    assert main(["check-config", "-c", str(cfg)]) == 0
    assert capsys.readouterr().out.strip() == f"{cfg}: OK"


def test_bad_config_exits_78_with_one_line_naming_file_and_key(tmp_path,
                                                                capsys):
    cfg = write_config(tmp_path, extra='interval = "often"')
    assert main(["check-config", "-c", str(cfg)]) == 78
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"{cfg}: agent.interval: expected seconds" in err


def test_vms_json_lists_sample_shaped_objects_with_pid(tmp_path, capsys):
    host = FakeHost(tmp_path / "host")
    host.process(321, "qemu-system-x86",
                 ["qemu", "-name", "guest=db,debug-threads=on", "-m", "1G",
                  "-smp", "1",
                  "-uuid", "AAAAAAAA-0000-0000-0000-000000000001"],
                 exe="/usr/bin/qemu-system-x86_64",
                 fds={4: "anon_inode:kvm-vm"}, utime=150, stime=50,
                 threads={321: "qemu", 322: "CPU 0/KVM"})
    config = str(write_config(tmp_path, host))
    assert main(["vms", "--json", "-c", config]) == 0
    [vm] = json.loads(capsys.readouterr().out)
    assert vm["pid"] == 321
    assert vm["vm"]["name"] == "db"
    assert vm["vm"]["uuid"] == "aaaaaaaa-0000-0000-0000-000000000001"
    assert vm["cpu"]["total_ns"] == 2_000_000_000
    assert vm["mem"]["alloc_bytes"] == 1 << 30
    assert set(vm) == {"vm", "cpu", "mem", "nics", "io", "disks", "pid"}
    assert (tmp_path / "state/host_id").exists()


def test_vms_table_on_a_host_without_vms(tmp_path, capsys):
    host = FakeHost(tmp_path / "host")
    assert main(["vms", "-c", str(write_config(tmp_path, host))]) == 0
    assert capsys.readouterr().out.strip() == "no VMs found"


def test_table_columns():
    row = {"vm": {"name": "web", "uuid": "u-1"}, "pid": 9,
           "cpu": {"total_ns": 1_500_000_000, "vcpus": [{}, {}]},
           "mem": {"rss_bytes": 3 << 20},
           "nics": [{"rx_bytes": 1024, "tx_bytes": 10},
                    {"rx_bytes": 1024, "tx_bytes": 0}],
           "io": {"rd_bytes": 5 << 30, "wr_bytes": 0}}
    head, line = format_table([row]).splitlines()
    assert head.split() == ["NAME", "UUID", "PID", "VCPUS", "CPU_S", "RSS",
                            "NET_RX", "NET_TX", "DISK_RD", "DISK_WR"]
    assert line.split() == ["web", "u-1", "9", "2", "1.50", "3.0", "MiB",
                            "2.0", "KiB", "10", "B", "5.0", "GiB", "0", "B"]


def test_table_marks_absent_values():
    row = {"vm": {"name": "x", "uuid": "u"}, "pid": 1, "cpu": {"total_ns": 0},
           "mem": {"rss_bytes": 0}, "nics": [], "io": {}}
    assert format_table([row]).splitlines()[1].split()[3:] == [
        "-", "0.00", "0", "B", "-", "-", "-", "-"]


@pytest.mark.parametrize(("n", "text"), [
    (0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536 << 20, "1.5 GiB"),
    (5 << 40, "5.0 TiB"), (5 << 50, "5120.0 TiB")])
def test_human_bytes(n, text):
    assert human_bytes(n) == text


def test_an_unusable_state_dir_is_a_clear_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[agent]\nstate_dir = "{blocker / "state"}"\n')
    assert main(["key", "show", "-c", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("vmagent: ") and "Traceback" not in err


# --- first contact: each message says what is wrong in words (issue 15) ---

def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``vmagent ARGS`` as a user runs it: a process, its exit code and
    output."""
    return subprocess.run([sys.executable, "-m", "vmagent.cli", *args],
                          capture_output=True, text=True, timeout=60)


def test_a_missing_config_file_is_one_line_naming_file_and_reason(tmp_path):
    missing = tmp_path / "nope.toml"
    for command in ("check-config", "run", "status"):
        r = cli(command, "-c", str(missing))
        assert r.returncode == 78, (command, r.stderr)
        assert r.stderr == (f"vmagent: config {missing}: cannot read: "
                            "No such file or directory\n"), command


def test_interval_zero_says_more_than_0_and_at_most_24h(tmp_path):
    r = cli("check-config", "-c", str(write_config(tmp_path,
                                                   extra="interval = 0")))
    assert r.returncode == 78
    assert "agent.interval: expected a duration of more than 0 and at most " \
           "24h, got 0" in r.stderr
    assert "between" not in r.stderr


def test_status_json_of_a_stopped_agent_is_a_document(tmp_path):
    cfg = write_config(tmp_path)
    r = cli("status", "--json", "-c", str(cfg))
    assert r.returncode == 3
    doc = json.loads(r.stdout)
    assert doc["running"] is False
    assert doc["control_socket"] == str(tmp_path / "state/control.sock")
    assert "not running" in r.stderr
    r = cli("status", "-c", str(cfg))  # for a person: stderr only, as before
    assert r.returncode == 3 and r.stdout == "" and "not running" in r.stderr


def test_pull_from_a_stopped_agent_says_it_cannot_reach_it(tmp_path):
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    token = tmp_path / "token"
    token.write_text("x" * 32)
    r = cli("pull", url, "--consumer", "default", "--token-file", str(token))
    assert r.returncode == 1
    assert f"vmagent pull: cannot reach {url}: connection refused\n" in \
        r.stderr
    assert "urlopen" not in r.stderr and "Errno" not in r.stderr


@pytest.mark.parametrize("command", ["verify", "dump"])
def test_wal_commands_on_a_directory_without_a_wal_say_so(tmp_path, command):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = cli("wal", command, str(empty))
    assert r.returncode == 1
    assert r.stderr == f"vmagent: {empty}: no WAL here (no segment files " \
                       "<seq>.seg)\n"
    assert "host.pub" not in r.stderr


def test_wal_verify_on_the_state_dir_points_at_its_wal(tmp_path):
    from vmagent.keys import HostKey
    from vmagent.wal import Wal

    state = tmp_path / "state"
    Wal(state / "wal", host="h", key=HostKey.load_or_create(state)).close()
    r = cli("wal", "verify", str(state))
    assert r.returncode == 1
    assert f"no WAL here (no segment files <seq>.seg); there is one in " \
           f"{state / 'wal'}" in r.stderr
    assert cli("wal", "verify", str(state / "wal")).returncode == 0
