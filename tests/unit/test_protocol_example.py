"""The worked example in docs/protocol.md is right: every value recomputed
from its inputs with the code the agent signs with."""

from __future__ import annotations

import re
from pathlib import Path

import msgpack
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
)

from vmagent import keys
from vmagent.wal import format as fmt

DOC = (Path(__file__).parents[2] / "docs/protocol.md").read_text()
EXAMPLE = DOC[DOC.index("## Worked example"):]
HOST = "hv-example-01"
WAL = bytes.fromhex("00112233445566778899aabbccddeeff")


def hex_after(label: str) -> bytes:
    """The hex value labelled ``label`` in the example: on the label's own
    line, or on the indented lines under it (text after a space-separated
    quote or label on those lines is commentary)."""
    all_lines = EXAMPLE.splitlines()
    start = next(i for i, line in enumerate(all_lines)
                 if re.match(re.escape(label) + r"(\s|:|$)", line))
    lines = all_lines[start:]
    own = lines[0][len(label):].lstrip(":")
    if re.search(r"[0-9a-f]{16}", own):
        return bytes.fromhex(own.split()[0])
    digits = []
    for line in lines[1:]:
        if not line.startswith("  "):
            break
        digits += [w for w in line.split() if re.fullmatch(r"[0-9a-f]+", w)
                   and len(w) % 2 == 0]
    return bytes.fromhex("".join(digits))


def test_worked_example_values_are_what_the_agent_computes():
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    public = keys.HostKey(key).public
    assert public.hex() in EXAMPLE
    assert keys.key_id(public).hex() in EXAMPLE
    boot = "b0b0b0b0-1111-2222-3333-444444444444"
    records = msgpack.packb({
        "kind": "agent_start", "t": 1795000000000000000, "version": "0.1.0",
        "wal": WAL, "boot_id": boot, "schema": 1, "seq": 1, "host": HOST,
    }) + msgpack.packb({"kind": "inventory", "t": 1795000000000000000,
                        "vms": [], "seq": 2, "host": HOST})
    assert hex_after("records (199 bytes") == records
    h = fmt.chain_hash(bytes(32), records)
    assert hex_after("hash") == h
    signed = fmt.signed_bytes(HOST, WAL, 1, 2, h)
    assert hex_after("signed bytes (96)") == signed
    sig = key.sign(signed)  # Ed25519 is deterministic
    assert hex_after("sig") == sig
    assert keys.verify_signature(public, sig, signed)
