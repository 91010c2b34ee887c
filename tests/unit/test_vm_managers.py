"""VM UUIDs from vm-bhyve's and CBSD's configuration, read from trees built
here the way those managers write them (a real SQLite file for CBSD)."""

from __future__ import annotations

import sqlite3

import pytest

from vmagent.probes import vm_managers

UUID = "8e0b6b1c-3a5d-4f7e-9c2b-1d2e3f4a5b6c"


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_rc_conf_assignments_quoted_unquoted_and_commented():
    text = ('# comment\nvm_enable="YES"\nvm_dir=\'zfs:zroot/vm\' # vm-bhyve\n'
            'cbsd_workdir=/usr/jails\nnot an assignment\n')
    assert vm_managers.parse_rc_conf(text) == {
        "vm_enable": "YES", "vm_dir": "zfs:zroot/vm",
        "cbsd_workdir": "/usr/jails"}


def test_vm_bhyve_config_uuid():
    conf = f'loader="bhyveload"\ncpu=2\nuuid="{UUID.upper()}"\n'
    assert vm_managers.vm_bhyve_uuid(conf) == UUID
    assert vm_managers.vm_bhyve_uuid("cpu=2\n") is None
    assert vm_managers.vm_bhyve_uuid('uuid="not-a-uuid"\n') is None


def test_vm_bhyve_uuid_from_a_plain_vm_dir(tmp_path):
    write(tmp_path / "etc/rc.conf", 'vm_dir="/vm"\n')
    write(tmp_path / "vm/web01/web01.conf", f'uuid="{UUID}"\n')
    assert vm_managers.manager_uuid("web01", str(tmp_path)) == UUID
    assert vm_managers.manager_uuid("db01", str(tmp_path)) is None


def test_vm_bhyve_uuid_from_a_zfs_vm_dir_at_its_default_mountpoint(tmp_path):
    write(tmp_path / "etc/rc.conf", 'vm_dir="/nowhere"\n')
    write(tmp_path / "etc/rc.conf.local", 'vm_dir="zfs:zroot/vm"\n')
    write(tmp_path / "zroot/vm/web01/web01.conf", f'uuid="{UUID}"\n')
    assert vm_managers.manager_uuid("web01", str(tmp_path)) == UUID


def cbsd_db(path, uuid, older=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as db:  # the columns bhyverun reads, and more
        db.execute("CREATE TABLE settings (vm_cpus integer, vm_ram integer, "
                   "uuid text default '0', created timestamp)")
        if older is not None:
            db.execute("INSERT INTO settings VALUES (1, 1, ?, "
                       "'2025-01-01 00:00:00')", (older,))
        db.execute("INSERT INTO settings VALUES (2, 2, ?, "
                   "'2026-01-01 00:00:00')", (uuid,))
    db.close()


def test_cbsd_uuid_is_the_newest_settings_row(tmp_path):
    write(tmp_path / "etc/rc.conf", 'cbsd_workdir="/usr/jails"\n')
    cbsd_db(tmp_path / "usr/jails/jails-system/web01/local.sqlite", UUID,
            older="11111111-2222-3333-4444-555555555555")
    assert vm_managers.manager_uuid("web01", str(tmp_path)) == UUID


@pytest.mark.parametrize("value", ["0", "", "garbage"])
def test_cbsd_without_a_uuid_gives_none(tmp_path, value):
    write(tmp_path / "etc/rc.conf", 'cbsd_workdir="/usr/jails"\n')
    cbsd_db(tmp_path / "usr/jails/jails-system/web01/local.sqlite", value)
    assert vm_managers.manager_uuid("web01", str(tmp_path)) is None


def test_a_corrupt_cbsd_database_gives_none(tmp_path):
    write(tmp_path / "etc/rc.conf", 'cbsd_workdir="/usr/jails"\n')
    write(tmp_path / "usr/jails/jails-system/web01/local.sqlite",
          "this is not a database")
    assert vm_managers.manager_uuid("web01", str(tmp_path)) is None


def test_vm_bhyve_wins_over_cbsd_and_odd_names_are_refused(tmp_path):
    write(tmp_path / "etc/rc.conf",
          'vm_dir="/vm"\ncbsd_workdir="/usr/jails"\n')
    write(tmp_path / "vm/web01/web01.conf", f'uuid="{UUID}"\n')
    cbsd_db(tmp_path / "usr/jails/jails-system/web01/local.sqlite",
            "11111111-2222-3333-4444-555555555555")
    assert vm_managers.manager_uuid("web01", str(tmp_path)) == UUID
    assert vm_managers.manager_uuid("../web01", str(tmp_path)) is None


def test_no_rc_conf_means_no_manager(tmp_path):
    assert vm_managers.manager_uuid("web01", str(tmp_path)) is None
