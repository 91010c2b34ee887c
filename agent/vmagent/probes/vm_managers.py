"""A bhyve VM's UUID from the VM manager that created it, where there is one.

- vm-bhyve: ``vm_dir`` in rc.conf (a directory, or ``zfs:<dataset>``),
  then ``<vm_dir>/<name>/<name>.conf`` line ``uuid="..."`` (vm-bhyve's
  ``lib/vm-core`` writes it at create time and passes it to bhyve ``-U``).
- CBSD: ``cbsd_workdir`` in rc.conf, then the SQLite database
  ``<workdir>/jails-system/<name>/local.sqlite``, table ``settings``,
  column ``uuid`` (``sudoexec/bcreate`` fills it; ``0`` means none, and
  ``share/bhyverun.sh`` passes it to bhyve ``-U``).

Every path is under ``root`` so the tests build these trees anywhere.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess

from vmagent.probes.argv import canonical_uuid

RC_CONF = ("etc/rc.conf", "etc/rc.conf.local")  # the later one wins
_RC_LINE = re.compile(r"""\s*([A-Za-z_][A-Za-z0-9_]*)="""
                      r"""(?:"([^"]*)"|'([^']*)'|(\S*))\s*(?:#.*)?""")


def parse_rc_conf(text: str) -> dict[str, str]:
    """The ``name=value`` assignments of an rc.conf (the subset sysrc(8)
    writes: one assignment per line, optionally quoted, comments)."""
    out = {}
    for line in text.splitlines():
        m = _RC_LINE.fullmatch(line)
        if m:
            out[m.group(1)] = next(g for g in m.groups()[1:] if g is not None)
    return out


def rc_conf(root: str = "/") -> dict[str, str]:
    values: dict[str, str] = {}
    for rel in RC_CONF:
        try:
            with open(os.path.join(root, rel), encoding="utf-8",
                      errors="replace") as f:
                values.update(parse_rc_conf(f.read()))
        except OSError:
            continue
    return values


def vm_bhyve_uuid(conf: str) -> str | None:
    """``uuid="..."`` of a vm-bhyve guest config
    (<vm_dir>/<name>/<name>.conf)."""
    values = parse_rc_conf(conf)  # the same shell-assignment syntax
    return canonical_uuid(values["uuid"]) if "uuid" in values else None


def _dataset_mountpoint(dataset: str, root: str) -> str:
    """Where a ZFS dataset is mounted: ``/<dataset>`` (the default), else
    what ``zfs get mountpoint`` says."""
    default = os.path.join(root, dataset)
    zfs = shutil.which("zfs")
    if os.path.isdir(default) or zfs is None or root != "/":
        return default
    try:
        out = subprocess.run([zfs, "get", "-H", "-o", "value", "mountpoint",
                              dataset], capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return default
    return out if out.startswith("/") else default


def vm_bhyve_dir(rc: dict[str, str], root: str = "/") -> str | None:
    vm_dir = rc.get("vm_dir")
    if not vm_dir:
        return None
    if vm_dir.startswith("zfs:"):
        return _dataset_mountpoint(vm_dir[4:], root)
    return os.path.join(root, vm_dir.lstrip("/"))


def cbsd_uuid(database: str) -> str | None:
    """The newest ``settings.uuid`` of a CBSD VM's local.sqlite."""
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True,
                             timeout=1) as db:
            row = db.execute("SELECT uuid FROM settings "
                             "ORDER BY created DESC LIMIT 1").fetchone()
    except sqlite3.Error:
        return None
    return canonical_uuid(str(row[0])) if row and row[0] else None


def manager_uuid(name: str, root: str = "/") -> str | None:
    """The UUID vm-bhyve or CBSD gave VM ``name``, None if neither did."""
    if "/" in name or name in (".", ".."):
        return None
    rc = rc_conf(root)
    vm_dir = vm_bhyve_dir(rc, root)
    if vm_dir is not None:
        try:
            with open(os.path.join(vm_dir, name, f"{name}.conf"),
                      encoding="utf-8", errors="replace") as f:
                uuid = vm_bhyve_uuid(f.read())
            if uuid:
                return uuid
        except OSError:
            pass
    workdir = rc.get("cbsd_workdir")
    if workdir:
        database = os.path.join(root, workdir.lstrip("/"), "jails-system",
                                name, "local.sqlite")
        if os.path.isfile(database):
            return cbsd_uuid(database)
    return None
