"""Host id, boot id and derived VM UUIDs (docs/architecture.md, "Identity")."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from vmagent.errors import StateError
from vmagent.fsutil import write_atomically

#: Namespace of derived VM UUIDs: uuid5(VM_UUID_NAMESPACE, "<host>/<name>").
VM_UUID_NAMESPACE = uuid.UUID("c5308b77-054b-404b-8e6c-19c56cfd0bd0")
HOST_ID_FILE = "host_id"


def derived_vm_uuid(host_id: str, vm_name: str) -> str:
    """A stable UUID for a VM that has none: same host and name, same UUID."""
    return str(uuid.uuid5(VM_UUID_NAMESPACE, f"{host_id}/{vm_name}"))


def load_or_create_host_id(state_dir: Path) -> str:
    """The host id kept in the state dir, generated (once) if missing."""
    path = state_dir / HOST_ID_FILE
    try:
        text = path.read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        text = ""
    except OSError as err:
        raise StateError(
            f"cannot read host id {path}: {err.strerror}") from err
    if text:
        return text
    host_id = str(uuid.uuid4())
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        write_atomically(path, host_id + "\n")
    except OSError as err:
        raise StateError(
            f"cannot keep a host id in {state_dir}: {err.strerror}; "
            "set [agent] host_id or make the state dir writable") from err
    return host_id


def read_boot_id(procfs: str = "/proc") -> str:
    """This boot's id (``/proc/sys/kernel/random/boot_id``)."""
    path = os.path.join(procfs, "sys/kernel/random/boot_id")
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError as err:
        raise StateError(
            f"cannot read boot id {path}: {err.strerror}") from err
