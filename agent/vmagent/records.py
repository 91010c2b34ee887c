"""One builder per record kind (docs/records.md): the only place where a
record's shape is written.  ``vm`` arguments are ``VM.record()`` maps;
the WAL adds ``seq`` and ``host`` when it writes a record."""

from __future__ import annotations

from typing import Any

Record = dict[str, Any]
SCHEMA = 1  # the record schema version in agent_start


def agent_start(t: int, version: str, wal: bytes, boot_id: str) -> Record:
    return {"kind": "agent_start", "t": t, "version": version, "wal": wal,
            "boot_id": boot_id, "schema": SCHEMA}


def agent_stop(t: int) -> Record:
    return {"kind": "agent_stop", "t": t}


def sample(t: int, counters: Record) -> Record:
    """``counters``: the prober's sample (``vm``, ``cpu``, ``mem``, ...)."""
    return {"kind": "sample", "t": t, **counters}


def vm_start(t: int, vm: Record, config: Record) -> Record:
    """``config``: ``{vcpus, alloc_bytes, nics, disks}`` the gen started
    with (``probes.types.config_of``)."""
    return {"kind": "vm_start", "t": t, "vm": vm, "config": config}


def vm_stop(t: int, vm: Record, exit: Record,
            last: Record | None = None) -> Record:
    """``exit``: ``{source, code|signal, ...}``; ``last``: the gen's last
    sample, whose counters the record carries."""
    rec: Record = {"kind": "vm_stop", "t": t, "vm": vm, "exit": exit}
    rec.update({k: v for k, v in (last or {}).items()
                if k not in ("vm", "kind", "t")})
    return rec


def vm_acct(t: int, vm: Record, acct: Record) -> Record:
    return {"kind": "vm_acct", "t": t, "vm": vm, "acct": acct}


def vm_config(t: int, vm: Record, changed: dict[str, list[Any]]) -> Record:
    return {"kind": "vm_config", "t": t, "vm": vm, "changed": changed}


def inventory(t: int, vms: list[Record]) -> Record:
    """``vms``: ``[{uuid, gen, name}]``, every VM on the host."""
    return {"kind": "inventory", "t": t, "vms": vms}


def clock_step(t: int, mono_ns: int, step_ns: int) -> Record:
    return {"kind": "clock_step", "t": t, "wall_ns": t, "mono_ns": mono_ns,
            "step_ns": step_ns}


def gap(t: int, host: str, from_seq: int, to_seq: int, reason: str) -> Record:
    return {"kind": "gap", "t": t, "host": host, "from_seq": from_seq,
            "to_seq": to_seq, "reason": reason}


def coalesced(t: int, host: str, sweeps: int, samples: list[Record],
              from_t: int | None, to_t: int | None) -> Record:
    rec: Record = {"kind": "coalesced", "t": t, "host": host,
                   "sweeps": sweeps, "samples": samples}
    if from_t is not None and to_t is not None:
        rec["from_t"], rec["to_t"] = from_t, to_t
    return rec
