"""Model-based test: random appends, acks, restarts, I/O errors and
corruptions against a reference model of what must be served."""

from __future__ import annotations

import errno
import shutil
import tempfile
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from vmagent.wal import format as fmt
from vmagent.wal.scan import iter_records
from wal.helpers import (
    FailingOps,
    crash,
    flip_byte,
    open_wal,
    sample,
    verified,
)


class WalMachine(RuleBasedStateMachine):
    """The model: seq -> (kind, counter) of every record that must be
    served, the consumers' acks, and the next seq."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="walmodel"))
        self.ops = FailingOps()
        self.wal = open_wal(self.dir, consumers=["a", "b"], ops=self.ops,
                            segment_bytes=1500)
        self.model: dict[int, tuple[str, int | None]] = {}
        self.acked = {"a": 0, "b": 0}
        self.next_seq = 1
        self.counter = 0
        self.carrying = False  # unwritten records the next commit carries

    def teardown(self) -> None:
        self.wal.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _served(self) -> dict[int, tuple[str, int | None]]:
        out = {}
        for f in self.wal.frames(0, max_records=10**9, max_bytes=1 << 40):
            for r in iter_records(f.records):
                total = r.get("cpu", {}).get("total_ns")
                out[r["seq"]] = (r["kind"], total)
        return out

    @rule(n=st.integers(1, 4))
    def append(self, n: int) -> None:
        recs = []
        for _ in range(n):
            self.counter += 1
            recs.append(sample(self.counter, vm=f"vm{self.counter % 2}"))
        got = self.wal.commit(recs)
        assert got is not None
        first, last = got
        assert first == self.next_seq
        carried = last - first + 1 - n
        assert carried >= 0 and (carried == 0 or self.carrying)
        for seq in range(first, first + carried):  # gap/coalesced records
            self.model[seq] = self._served()[seq]
        for i, rec in enumerate(recs):
            self.model[first + carried + i] = ("sample",
                                               rec["cpu"]["total_ns"])
        self.next_seq = last + 1
        self.carrying = False

    @rule(n=st.integers(1, 3))
    def append_fails_on_fsync(self, n: int) -> None:
        self.ops.fail("fdatasync", errno.EIO)
        before = self.wal.next_seq
        assert self.wal.commit([sample(self.counter + 1)] * n) is None
        self.counter += 1
        self.next_seq = self.wal.next_seq  # the uncertain seqs are burnt
        assert self.next_seq >= before  # burnt, unless nothing was written
        self.ops.plan.clear()
        self.carrying = True

    @rule(consumer=st.sampled_from(["a", "b"]), data=st.data())
    def ack(self, consumer: str, data: st.DataObject) -> None:
        durable = self.wal.durable_seq
        seq = data.draw(st.integers(0, durable))
        assert self.wal.ack(consumer, seq) == max(seq, self.acked[consumer])
        self.acked[consumer] = max(seq, self.acked[consumer])

    def _reopen(self, clean: bool = False) -> None:
        """Restart.  A clean stop writes what was kept in memory (gap and
        coalesced records); after a crash it is gone, and recovery writes a
        gap record for every loss (the high-water mark knows them)."""
        if clean:
            self.wal.close()
        else:
            crash(self.wal)
        self.wal = open_wal(self.dir, consumers=["a", "b"], ops=self.ops,
                            segment_bytes=1500)
        assert self.wal.cursors.acked == self.acked
        served = self._served()
        for seq in range(self.next_seq, self.wal.next_seq):
            assert served[seq][0] in (("gap", "coalesced") if clean
                                      else ("gap",))
            self.model[seq] = served[seq]
        self.next_seq = self.wal.next_seq
        self.carrying = False

    @rule()
    def restart(self) -> None:
        self._reopen(clean=True)

    @rule()
    def crash_and_restart(self) -> None:
        self._reopen()

    @rule(data=st.data())
    def corrupt_a_frame_then_restart(self, data: st.DataObject) -> None:
        frames = self.wal.frames(0, max_records=10**9, max_bytes=1 << 40)
        entries = list(self.wal._index)  # noqa: SLF001
        if len(entries) < 2:
            return
        i = data.draw(st.integers(0, len(entries) - 2))  # not the last
        e = entries[i]
        flip_byte(e.segment, e.offset + fmt.FRAME_HEADER_SIZE + 1)
        for seq in range(frames[i].first_seq, frames[i].last_seq + 1):
            self.model.pop(seq, None)
        before = self.next_seq
        self._reopen()
        assert self.next_seq > before  # at least this loss's gap record

    @invariant()
    def served_equals_model(self) -> None:
        served = self._served()
        floor = min(self.acked.values())
        expect = {s: v for s, v in self.model.items()}
        # deleted segments only ever hold seqs every consumer acked
        assert {s: v for s, v in served.items()} == \
            {s: v for s, v in expect.items() if s in served or s > floor}
        assert all(s <= floor for s in set(expect) - set(served))

    @invariant()
    def verifies(self) -> None:
        assert verified(self.dir)


WalMachine.TestCase.settings = settings(max_examples=100,
                                        stateful_step_count=25,
                                        deadline=None)
test_wal_model = WalMachine.TestCase
