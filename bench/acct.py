"""Accounting parser benchmark: records/s of the native parsers (one C call
over a buffer of records), and of the whole Python parse for context.

    .venv/bin/python bench/acct.py [--records 1000000]
"""

from __future__ import annotations

import argparse
import struct
import sys
import time

from vmagent.acct.records import FORMATS, parse
from vmagent.probes._native import ffi, lib

LINUX = struct.Struct("<BBHIIIIIIfHHHHHHHH16s")
FREEBSD = struct.Struct("<BBH16sfffqIIffQIH2xB7x")


def records(fmt: str, n: int) -> bytes:
    if fmt == "linux":
        one = [LINUX.pack(0, 3, 0, 0, 0, 0, i, 1, 1_795_000_000, 250.0, 120,
                          30, 4096, 0, 0, 0, 0, 0, b"qemu-system-x86")
               for i in range(1000)]
    else:
        one = [FREEBSD.pack(0, 3, 80, b"bhyve", 1.5e6 + i, 2.5e5, 3e7,
                            1_795_000_000, 0, 0, 1024.0, 77.0, 2**64 - 1, 0,
                            80, 0x20) for i in range(1000)]
    return b"".join(one) * (n // 1000)


def native_rate(fmt: str, data: bytes, n: int) -> float:
    out = ffi.new("struct vmprobe_acct[]", n)
    consumed, skipped = ffi.new("size_t *"), ffi.new("size_t *")
    buf = ffi.from_buffer("unsigned char[]", data)
    best = 0.0
    for _ in range(5):
        t0 = time.perf_counter()
        got = lib.vmprobe_acct_parse(FORMATS[fmt], buf, len(data), out, n,
                                     consumed, skipped)
        best = max(best, got / (time.perf_counter() - t0))
        assert got == n and skipped[0] == 0
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    n = ap.parse_args().records
    print("| format | native parse, records/s | Python records, records/s |")
    print("|---|---|---|")
    for fmt in ("linux", "freebsd-v3"):
        data = records(fmt, n)
        t0 = time.perf_counter()
        assert len(parse(data, fmt).records) == n
        py = n / (time.perf_counter() - t0)
        print(f"| {fmt} | {native_rate(fmt, data, n):,.0f} | {py:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
