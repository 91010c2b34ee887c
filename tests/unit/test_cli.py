"""The ``vmagent`` command line: exit codes, messages, output shapes."""

from __future__ import annotations

import json

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
                  "-smp", "1", "-uuid", "AAAAAAAA-0000-0000-0000-000000000001"],
                 exe="/usr/bin/qemu-system-x86_64",
                 fds={4: "anon_inode:kvm-vm"}, utime=150, stime=50,
                 threads={321: "qemu", 322: "CPU 0/KVM"})
    assert main(["vms", "--json", "-c", str(write_config(tmp_path, host))]) == 0
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
