"""kill -9 at random moments, 200 times: every commit a child reported
durable is there after recovery, in order, with no gap and no duplicate,
and the WAL verifies."""

from __future__ import annotations

import os
import random
import signal
import time

from vmagent.wal.scan import scan
from wal.helpers import open_wal, sample, verified

ITERATIONS = 200


def child(d, wfd) -> None:
    """Append commits forever, reporting each durable range on the pipe."""
    try:
        w = open_wal(d, segment_bytes=64 << 10)
        i = 0
        while True:
            r = w.commit([sample(i), sample(i, "vm-b")])
            if r is not None:
                os.write(wfd, f"{r[0]} {r[1]}\n".encode())
            i += 1
    finally:
        os._exit(1)


def test_every_reported_commit_survives_kill_9(tmp_path):
    rng = random.Random(1234)
    d = tmp_path / "wal"
    reported: list[tuple[int, int]] = []
    for n in range(ITERATIONS):
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(rfd)
            child(d, wfd)
        os.close(wfd)
        time.sleep(rng.uniform(0, 0.03))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        with os.fdopen(rfd) as pipe:
            for line in pipe.read().splitlines():
                if line.count(" ") == 1:  # a line cut by the kill is not one
                    a, b = map(int, line.split())
                    reported.append((a, b))
        found = scan(d)
        served = [(f.first_seq, f.last_seq) for f in found.served]
        assert set(reported) <= set(served), n
        flat = [s for a, b in served for s in range(a, b + 1)]
        assert flat == list(range(1, len(flat) + 1)), n  # no gap, no dup
        assert not found.holes, n
        if n % 40 == 0 or n == ITERATIONS - 1:
            assert verified(d), n
    assert len(reported) > ITERATIONS  # the children got work done
    last = scan(d).served[-1].last_seq
    assert open_wal(d).commit([sample(0)])[0] == last + 1
