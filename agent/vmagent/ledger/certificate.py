"""Period certificates: canonical JSON, the digest of a period's records,
Ed25519 signing by the closing instance's key and verification
(COLLECTOR.md section 5, docs/usage.md "Certificates").

The signed bytes are ``b"vmcollector-period-v1\\0" + SHA-256(canonical
certificate)``; the canonical form is JSON with sorted keys, no spaces and
UTF-8 text.  Pure functions: no store, no files.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from vmagent import keys
from vmagent.errors import VmagentError

CONTEXT = b"vmcollector-period-v1\0"
FIELDS = ("period", "grain", "tz", "start", "end", "closed_at", "instance",
          "key_id", "hosts", "records", "records_sha256")


class CertificateError(VmagentError):
    """A certificate that does not verify, or is not one."""


def canonical(cert: Mapping[str, Any]) -> bytes:
    return json.dumps(cert, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode()


def signed_bytes(cert: Mapping[str, Any]) -> bytes:
    return CONTEXT + hashlib.sha256(canonical(cert)).digest()


def records_digest(records: Iterable[Mapping[str, Any]]) -> str:
    """SHA-256 over ``id SP quantity LF`` of every record, in id order."""
    h = hashlib.sha256()
    for rid, q in sorted((str(r["id"]), str(r["quantity"]))
                         for r in records):
        h.update(f"{rid} {q}\n".encode())
    return h.hexdigest()


def sign(cert: Mapping[str, Any], key: keys.HostKey) -> bytes:
    return key.sign(signed_bytes(cert))


def check_signature(cert: Mapping[str, Any], sig: bytes,
                    pubkeys: Mapping[str, bytes]) -> None:
    """CertificateError unless ``sig`` is the signature of the instance key
    the certificate names (``key_id`` hex -> public key in ``pubkeys``)."""
    missing = [f for f in FIELDS if f not in cert]
    if missing:
        raise CertificateError(f"not a certificate: no {missing[0]!r}")
    kid = str(cert["key_id"])
    public = pubkeys.get(kid)
    if public is None:
        raise CertificateError(f"signed by key {kid}, which is not an "
                               "instance key in the store")
    if keys.key_id(public).hex() != kid:
        raise CertificateError(f"key {kid} does not match its public key")
    if not keys.verify_signature(public, sig, signed_bytes(cert)):
        raise CertificateError("bad signature: the certificate was changed "
                               "after it was signed, or signed by another "
                               "key")


def difference(stored: Mapping[str, Any],
               derived: Mapping[str, Any]) -> str | None:
    """The first field (in ``FIELDS`` order) where the derived certificate
    differs from the stored one, as a one-line text; None when equal."""
    for f in FIELDS:
        if f in derived and stored.get(f) != derived[f]:
            return f"{f} differs: certificate says {_short(stored.get(f))}, " \
                   f"the store gives {_short(derived[f])}"
    return None


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return text if len(text) <= 120 else text[:117] + "..."
