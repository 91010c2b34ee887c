"""Evidence bundles: one VM's signed frames, the host keys and the period
certificates in one tar file, and the offline check of such a file
(docs/usage.md "Evidence bundles").

``write`` puts into a gzip-compressed tar: ``manifest.json`` (the VM,
range, calendar, hosts with their public keys and WALs, the VM's records
as the collector derives them, the records it billed, the certificates of
the closed periods the range touches) and, per host and WAL,
``frames/<host>/<n>-<wal>.msgpack``: every frame held of that WAL, as the
agent signed it (the hash chain needs them all, so other VMs' records of
the same host are in it too).  ``verify`` needs nothing but the file: it
checks every frame with the project's one frame verifier (``frames.py``),
folds the records into a scratch ledger with the collector's own code and
compares the VM's records, and checks each certificate's signature.
"""

from __future__ import annotations

import io
import json
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import msgpack

from vmagent.collector.store import HostRow, SqliteStore, StoredFrame
from vmagent.errors import VmagentError
from vmagent.frames import ChainState, VerifyError, unexplained, verify_batch
from vmagent.fsutil import write_atomically
from vmagent.keys import key_id
from vmagent.ledger import book, certificate, close, report
from vmagent.ledger.exact import parse_rfc3339_ns
from vmagent.ledger.owners import OwnerRow
from vmagent.ledger.records import canonical, rfc3339

FORMAT = "vmcollector-evidence-v1"
VERIFY_COMMAND = "vmcollector evidence --verify FILE"


class EvidenceError(VmagentError):
    """A bundle that cannot be written, read or does not verify."""


# --- writing ----------------------------------------------------------------

def write(store: Any, path: Path, vm: str, start_ns: int, end_ns: int,
          grain: str = "month", tz: str = "UTC") -> dict[str, Any]:
    """Write the bundle of ``vm`` for ``[start_ns, end_ns)``; returns its
    manifest."""
    close.catch_up(store)
    with store.transaction() as q:
        names = [r[0] for r in q("SELECT DISTINCT host FROM ledger_gens "
                                 "WHERE uuid = ? ORDER BY host",
                                 (vm,)).fetchall()]
    if not names:
        raise EvidenceError(f"no evidence of VM {vm} in the store")
    members: dict[str, bytes] = {}
    hosts = [_host(store, name, members) for name in names]
    manifest = {
        "format": FORMAT, "verify": VERIFY_COMMAND, "vm": vm,
        "start": rfc3339(start_ns), "end": rfc3339(end_ns), "grain": grain,
        "tz": tz, "created": rfc3339(time.time_ns() // 10**9 * 10**9),
        "hosts": hosts, "owners": _owners(store, vm),
        "records": report.usage(store, start_ns, end_ns, grain, tz, vm),
        "billed": close.usage(store, start_ns, end_ns, grain, tz, vm),
        "certificates": _certificates(store, start_ns, end_ns)}
    members["manifest.json"] = json.dumps(manifest, indent=1,
                                          sort_keys=True).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in ["manifest.json", *sorted(set(members) -
                                              {"manifest.json"})]:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(members[name]), 0, 0o644
            tar.addfile(info, io.BytesIO(members[name]))
    try:
        write_atomically(path, buf.getvalue())
    except OSError as err:
        raise EvidenceError(f"cannot write {path}: "
                            f"{err.strerror or err}") from None
    return manifest


def _host(store: Any, name: str, members: dict[str, bytes]) \
        -> dict[str, Any]:
    keys = sorted({pub.hex() for h, _, pub, _ in store.host_keys(name)
                   if h == name})
    wals = []
    for i, w in enumerate(store.wals(name, exact=True)):
        wal = w["wal"]
        with store.transaction() as q:
            rows = q("SELECT first_seq, last_seq, hash, prev_hash, sig, "
                     "key_id, records FROM frames WHERE host = ? AND wal = ? "
                     "ORDER BY first_seq", (name, wal)).fetchall()
        frames = [{"first_seq": a, "last_seq": b, "hash": bytes(h),
                   "prev_hash": bytes(p), "sig": bytes(s), "key_id": k,
                   "records": bytes(r)} for a, b, h, p, s, k, r in rows]
        member = f"frames/{name}/{i:03d}-{wal.hex()}.msgpack"
        members[member] = msgpack.packb(frames, use_bin_type=True)
        wals.append({"wal": wal.hex(), "file": member,
                     "frames": len(frames),
                     "missing": [[g["from_seq"], g["to_seq"]]
                                 for g in w["gaps"]]})
    return {"name": name, "pubkeys": keys, "wals": wals}


def _owners(store: Any, vm: str) -> list[dict[str, Any]]:
    index = book.owners(store)
    out = []
    for cut in index.cuts(vm):
        row = index.at(vm, cut)
        if row is not None:
            out.append({"from_ns": row.from_ns, "account": row.account,
                        "project": row.project})
    return out


def _certificates(store: Any, start_ns: int,
                  end_ns: int) -> list[dict[str, Any]]:
    keys = {kid: pub for _, pub, kid in store.instance_keys()}
    with store.transaction() as q:
        rows = q("SELECT certificate, sig FROM ledger_periods WHERE end_ns "
                 "> ? AND start_ns < ? ORDER BY start_ns, grain, tz",
                 (start_ns, end_ns)).fetchall()
    out = []
    for text, sig in rows:
        cert = json.loads(text)
        pub = keys.get(cert.get("key_id"), b"")
        out.append({"certificate": cert, "sig": bytes(sig).hex(),
                    "pubkey": pub.hex()})
    return out


# --- verifying ----------------------------------------------------------

def verify(path: Path) -> str:
    """Check the bundle at ``path``; a one-line summary, or
    EvidenceError saying what does not verify."""
    manifest, members = _read(path)
    if manifest.get("format") != FORMAT:
        raise EvidenceError(f"{path}: not a {FORMAT} bundle")
    with tempfile.TemporaryDirectory(prefix="vmevidence-") as tmp:
        scratch = SqliteStore(Path(tmp) / "ledger.db")
        try:
            scratch.migrate()
            frames = sum(_replay(scratch, h, members)
                         for h in manifest["hosts"])
            _import_owners(scratch, manifest)
            start = parse_rfc3339_ns(manifest["start"])
            end = parse_rfc3339_ns(manifest["end"])
            again = report.usage(scratch, start, end, manifest["grain"],
                                 manifest["tz"], manifest["vm"])
        finally:
            scratch.close()
    _compare(manifest["records"], again)
    certs = _check_certificates(manifest["certificates"])
    return (f"OK: {frames} frames of {len(manifest['hosts'])} host(s) "
            f"verified (signatures, hash chains); {len(again)} records of "
            f"VM {manifest['vm']} recomputed and equal; {certs} "
            "certificate(s) verified")


def _read(path: Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(path, mode="r:*") as tar:
            for m in tar.getmembers():
                f = tar.extractfile(m) if m.isfile() else None
                if f is not None:
                    members[m.name] = f.read()
        manifest = json.loads(members["manifest.json"])
    except (OSError, tarfile.TarError) as err:
        raise EvidenceError(f"cannot read {path}: {err}") from None
    except (KeyError, ValueError):
        raise EvidenceError(f"{path}: no readable manifest.json") from None
    if not isinstance(manifest, dict):
        raise EvidenceError(f"{path}: manifest.json is not an object")
    return manifest, members


def _replay(scratch: SqliteStore, host: dict[str, Any],
            members: dict[str, bytes]) -> int:
    """Verify the host's frames WAL by WAL and store them in the scratch
    ledger; returns how many frames there were."""
    name = host["name"]
    pins = {key_id(bytes.fromhex(k)).hex(): bytes.fromhex(k)
            for k in host["pubkeys"]}
    if not pins:
        raise EvidenceError(f"host {name}: no public key in the bundle")
    scratch.put_host(HostRow(name, "bundle:", "default", None,
                             next(iter(pins.values()))))
    count = 0
    for w in host["wals"]:
        wal = bytes.fromhex(w["wal"])
        frames = msgpack.unpackb(members.get(w["file"], b"\x90"), raw=False)
        stored = _verified(name, wal, frames, pins, w.get("missing") or [])
        if stored:
            scratch.save_batch(name, wal, stored, [], stored[-1].last_seq,
                               stored[-1].hash)
            book.update(scratch, name, wal)
        count += len(stored)
    return count


def _verified(name: str, wal: bytes, frames: list[dict[str, Any]],
              pins: dict[str, bytes],
              missing: list[list[int]]) -> list[StoredFrame]:
    """The WAL's frames, each checked by ``frames.py``; seqs skipped
    between them must be ones the collector recorded missing."""
    state, out = ChainState(), []
    state.gaps = [(a, b, "recorded missing") for a, b in missing]
    for f in frames:
        pub = pins.get(str(f.get("key_id")))
        where = f"host {name} WAL {wal.hex()} frame " \
                f"{f.get('first_seq')}-{f.get('last_seq')}"
        if pub is None:
            raise EvidenceError(f"{where}: signed by key {f.get('key_id')}, "
                                "not one of the host's keys in the bundle")
        agent = _agent_host(f)
        try:
            recs = list(verify_batch({"wal": wal, "host": agent,
                                      "frames": [f]}, state, pub))
        except VerifyError as err:
            raise EvidenceError(f"host {name}: {err}") from None
        out.append(StoredFrame(f["first_seq"], f["last_seq"], f["hash"],
                               f["prev_hash"], f["sig"], f["key_id"],
                               f["records"], recs))
    holes = unexplained(state)
    if holes:
        a, b = holes[0]
        raise EvidenceError(f"host {name} WAL {wal.hex()}: seqs {a}-{b} are "
                            "neither in the bundle nor recorded missing")
    return out


def _agent_host(frame: dict[str, Any]) -> str:
    """The agent's host id, which its signature covers: every record
    carries it."""
    try:
        first = next(msgpack.Unpacker(io.BytesIO(frame["records"]),
                                      raw=False))
    except (KeyError, TypeError, StopIteration, ValueError):
        return ""
    return str(first.get("host", "")) if isinstance(first, dict) else ""


def _import_owners(scratch: SqliteStore, manifest: dict[str, Any]) -> None:
    rows = [OwnerRow(manifest["vm"], int(o["from_ns"]), o["account"],
                     o.get("project")) for o in manifest.get("owners") or []]
    if rows:
        book.import_owners(scratch, rows)


def _compare(bundled: list[dict[str, Any]],
             again: list[dict[str, Any]]) -> None:
    if canonical(bundled) == canonical(again):
        return
    mine = {r["id"]: r for r in again}
    for r in bundled:
        other = mine.get(r["id"])
        if other is None:
            raise EvidenceError(f"record {r['id']} ({r['meter']} from "
                                f"{r['start']}) is not what the frames give")
        for k in sorted(set(r) | set(other)):
            if r.get(k) != other.get(k):
                raise EvidenceError(
                    f"record {r['id']} ({r['meter']} from {r['start']}): "
                    f"{k} is {json.dumps(r.get(k))} in the bundle, the "
                    f"frames give {json.dumps(other.get(k))}")
    raise EvidenceError(f"the frames give {len(again)} records, the bundle "
                        f"holds {len(bundled)}")


def _check_certificates(items: list[dict[str, Any]]) -> int:
    for c in items:
        cert = c["certificate"]
        pub = bytes.fromhex(c.get("pubkey") or "")
        try:
            certificate.check_signature(cert, bytes.fromhex(c["sig"]),
                                        {str(cert.get("key_id")): pub})
        except certificate.CertificateError as err:
            raise EvidenceError(f"certificate of {cert.get('period')}: "
                                f"{err}") from None
    return len(items)
