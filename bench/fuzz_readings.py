"""Fuzzing the sample-readings scanner (native/common/msgpack_reading.c):
the seed records for the C driver (bench/fuzz_readings.c), and a loop that
compares ``FromBytes`` with decoding on mutated records.

    .venv/bin/python bench/fuzz_readings.py seeds DIR
    .venv/bin/python bench/fuzz_readings.py compare [--inputs 1000000]
"""

from __future__ import annotations

import argparse
import copy
import random
import sys
import time
from pathlib import Path
from typing import Any

import msgpack

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"
                       / "unit"))
from test_ledger_readings import SAMPLE  # noqa: E402

from vmagent.ledger.readings import FromBytes, of_record  # noqa: E402

NIC = SAMPLE["nics"][0]
DISK = SAMPLE["disks"][0]


def nics(n: int, name: str = "52:54:00:00:00:{:02x}") -> list[Any]:
    return [dict(NIC, mac=name.format(k)) for k in range(n)]


def disks(n: int, name: str = "/var/lib/vm/d{}.raw") -> list[Any]:
    return [dict(DISK, path=name.format(k)) for k in range(n)]


def seeds() -> list[Any]:
    """Sample-like records: the usual one, and at and past every limit
    (16 devices, 64 counters, the 8192-byte signature buffer)."""
    base = SAMPLE
    out: list[Any] = [base, {"kind": "sample", "t": 0,
                             "vm": {"uuid": "u", "gen": "g"}}]
    for n in (8, 15, 16, 17, 20):
        out.append(dict(base, nics=nics(n), disks=[]))
        out.append(dict(base, disks=disks(n), nics=[]))
    out.append(dict(base, nics=nics(8), disks=disks(8)))  # 16 devs, 67
    plain = {k: v for k, v in base.items() if k not in ("cpu", "io")}
    plain["disks"] = []
    out.append(dict(plain, nics=nics(8), disks=disks(8)))  # exactly 64
    out.append(dict(plain, nics=nics(16)))
    for n in (2000, 2045, 2046, 2047, 4096, 8190):  # 4 * (3 + n) vs 8192
        out.append(dict(plain, nics=nics(1, "n" * (n - 2) + "{:02x}")))
    out.append(dict(base, nics=nics(2, "é€😀" * 50 + "{}")))
    out.append(dict(base, disks=disks(1, "x" * 0xFFFF + "{}")))
    out.append(dict(base, nics=[dict(NIC, mac=None), dict(NIC, mac="")]))
    out.append(dict(base, vm=dict(base["vm"], name=None, started_ns=None),
                    cpu=None, mem=None, io=None, nics=None, disks=None))
    for total, vhost in ((2**63 - 1, 1), (-2**63, -1), (2**63 - 71, 70)):
        out.append(dict(base, cpu=dict(base["cpu"], total_ns=total,
                                       vhost_ns=vhost)))
    out.append(dict(base, kind="vm_start"))
    out.append(dict(base, samples=[base]))
    deep: Any = 1
    for _ in range(70):
        deep = [deep]
    out.append(dict(base, extra=deep))
    return out


def write_seeds(into: Path) -> None:
    into.mkdir(parents=True, exist_ok=True)
    for k, rec in enumerate(seeds()):
        (into / f"seed-{k:02d}.mp").write_bytes(
            msgpack.packb(rec, use_bin_type=True))
    print(f"{len(seeds())} seeds in {into}")


INTERESTING = [None, True, False, 0, -1, 1, 2**63 - 1, -2**63, 2**63,
               2**64 - 1, 1.5, "", "x", "é", b"", b"\x00", [], [1], {},
               {"a": 1}, "sample", msgpack.ExtType(5, b"ab")]


def paths(rec: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into a decoded record (dict keys, list indexes)."""
    found = [at]
    if isinstance(rec, dict):
        for k, v in rec.items():
            found += paths(v, at + (k,))
    elif isinstance(rec, list):
        for k, v in enumerate(rec):
            found += paths(v, at + (k,))
    return found


def mutate_value(rec: Any, rng: random.Random) -> Any:
    """A copy of rec with one field replaced, deleted or duplicated."""
    rec = copy.deepcopy(rec)
    path = rng.choice(paths(rec)[1:])
    parent = rec
    for k in path[:-1]:
        parent = parent[k]
    choice = rng.random()
    if choice < 0.2 and isinstance(parent, dict):
        del parent[path[-1]]
    elif choice < 0.3:  # another field's value (a subtree) here
        other: Any = rec
        for k in rng.choice(paths(rec)):
            other = other[k]
        parent[path[-1]] = copy.deepcopy(other)
    else:
        parent[path[-1]] = rng.choice(INTERESTING)
    return rec


def pack(rec: Any, rng: random.Random) -> bytes:
    """rec packed; sometimes one of its maps with a key given twice."""
    if isinstance(rec, dict) and rec and rng.random() < 0.1:
        pairs = list(rec.items())
        pairs.append(rng.choice(pairs))
        packer = msgpack.Packer(use_bin_type=True)
        return packer.pack_map_pairs(pairs)
    return msgpack.packb(rec, use_bin_type=True)


def mutate_bytes(body: bytes, rng: random.Random) -> bytes:
    b = bytearray(body)
    for _ in range(rng.randint(1, 3)):
        op, at = rng.randrange(5), rng.randrange(len(b) + 1)
        if op == 0 and at < len(b):
            b[at] ^= 1 << rng.randrange(8)
        elif op == 1 and at < len(b):
            b[at] = rng.choice((0, 0x7F, 0x80, 0x8F, 0x9F, 0xC0, 0xC1, 0xC2,
                                0xCF, 0xD3, 0xD9, 0xDC, 0xDE, 0xFF,
                                rng.randrange(256)))
        elif op == 2:
            del b[at:]
        elif op == 3:
            b[at:at] = rng.randbytes(rng.randint(1, 4))
        else:
            del b[at:at + rng.randint(1, 8)]
    return bytes(b)


def compare(inputs: int, seed: int) -> int:
    """Mutated records through FromBytes and decoding; the number of
    disagreements (each printed)."""
    rng = random.Random(seed)
    bases = [msgpack.unpackb(msgpack.packb(r, use_bin_type=True), raw=False)
             for r in seeds() if len(msgpack.packb(r)) < 20000]
    reader, stats, bad = FromBytes(), {"read": 0, "decoded": 0}, 0
    start = time.monotonic()
    for k in range(inputs):
        rec = rng.choice(bases)
        for _ in range(rng.randint(0, 2)):
            rec = mutate_value(rec, rng)
        body = pack(rec, rng)
        if rng.random() < 0.3:
            body = mutate_bytes(body, rng)
        got = reader(body, k)
        try:
            dec = msgpack.unpackb(body, raw=False)
        except Exception:  # noqa: BLE001 - any decoding error
            dec = None
        if not isinstance(dec, dict) or not isinstance(dec.get("t"), int):
            if got is not None:
                bad += 1
                print("read, but does not decode:", body.hex())
            continue
        stats["read" if got is not None else "decoded"] += 1
        if got is not None and got != of_record(dec, dec["t"], k):
            bad += 1
            print("disagrees:", body.hex())
    print(f"{inputs} inputs in {time.monotonic() - start:.0f} s: "
          f"{stats['read']} read by the scanner and equal to decoding, "
          f"{stats['decoded']} left to decoding, {bad} disagreements")
    return bad


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("seeds").add_argument("dir", type=Path)
    cmp = sub.add_parser("compare")
    cmp.add_argument("--inputs", type=int, default=1_000_000)
    cmp.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.cmd == "seeds":
        write_seeds(args.dir)
        return 0
    return 1 if compare(args.inputs, args.seed) else 0


if __name__ == "__main__":
    sys.exit(main())
