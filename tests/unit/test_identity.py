"""Host id (config or generated once), boot id and derived VM UUIDs."""

import uuid

import pytest

from vmagent.errors import StateError
from vmagent.identity import (
    derived_vm_uuid,
    load_or_create_host_id,
    read_boot_id,
)


def test_derived_uuid_is_stable_per_host_and_name():
    a = derived_vm_uuid("host-1", "web")
    assert a == derived_vm_uuid("host-1", "web")
    assert a != derived_vm_uuid("host-2", "web")
    assert a != derived_vm_uuid("host-1", "web2")
    assert uuid.UUID(a).version == 5
    assert a == a.lower()


def test_host_id_generated_once_and_kept(tmp_path):
    state = tmp_path / "state"
    first = load_or_create_host_id(state)
    assert uuid.UUID(first)
    assert load_or_create_host_id(state) == first
    assert (state / "host_id").read_text() == first + "\n"
    assert not list(state.glob(".*tmp"))


def test_host_id_written_by_an_operator_is_used(tmp_path):
    (tmp_path / "host_id").write_text("hv-rack4-07\n")
    assert load_or_create_host_id(tmp_path) == "hv-rack4-07"


def test_unwritable_state_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StateError, match="set \\[agent\\] host_id"):
        load_or_create_host_id(blocker / "state")


def test_boot_id_from_procfs_root(tmp_path):
    d = tmp_path / "sys/kernel/random"
    d.mkdir(parents=True)
    (d / "boot_id").write_text("abc-123\n")
    assert read_boot_id(str(tmp_path)) == "abc-123"


def test_missing_boot_id_is_a_clear_error(tmp_path):
    with pytest.raises(StateError, match="boot id"):
        read_boot_id(str(tmp_path))
