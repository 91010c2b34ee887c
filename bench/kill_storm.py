"""Kill storm: SIGKILL the agent at random moments while a collector pulls.

A ``vmagent run`` with ``--vms`` fake QEMU processes (every sweep writes
samples) sweeps every ``--interval`` seconds.  A collector thread long-polls
throughout (``wait=1``), verifies every frame (signature with the host key,
hash chain, seqs), keeps every record by seq and every frame's hash and raw
records by (first_seq, last_seq), and acks after storing.  ``--kills``
times: sleep uniform 0-``--max-delay`` s (seeded), SIGKILL, restart at once.
Then a clean stop (SIGTERM), one more start, the collector catches up, and a
fresh pull of the whole WAL is compared with what the collector held.

Checks (exit 1 if any fails): one WAL id throughout; seqs contiguous from 1
except ranges covered by ``gap`` records; no seq delivered twice with other
content; ``vmagent wal verify`` passes; no verification error in the
collector; one ``agent_start`` per start that lived to its first commit.

    .venv/bin/python bench/kill_storm.py [--kills 200] [--interval 0.2] \\
        [--vms 4] [--seed N]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import signal
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from integration.agent_process import AgentProcess  # noqa: E402
from vmagent.collector import (  # noqa: E402
    ChainState,
    PullError,
    VerifyError,
    unexplained,
    verify_batch,
)
from vmagent.wal.scan import iter_records  # noqa: E402


def error_kind(err: BaseException) -> str:
    """A short name for a failed pull: what refused or cut it."""
    if isinstance(err, urllib.error.URLError) and \
            not isinstance(err, urllib.error.HTTPError):
        inner = err.reason
        return type(inner).__name__ if isinstance(inner, BaseException) \
            else str(inner)
    if type(err) is ConnectionError and "cut off" in str(err):
        return "response cut off"
    return type(err).__name__


class Collector(threading.Thread):
    """Pulls, compares re-deliveries with what it holds, verifies, stores by
    seq, then acks; rides through agent restarts."""

    def __init__(self, a: AgentProcess) -> None:
        super().__init__(daemon=True)
        self.client, self.key = a.client(), a.public_key()
        self.state = ChainState()
        self.store: dict[int, dict[str, Any]] = {}
        self.frames: dict[tuple[int, int], tuple[bytes, bytes]] = {}
        self.wal_ids: set[bytes] = set()
        self.errors: Counter[str] = Counter()
        self.failures: list[str] = []  # fatal: verification, HTTP, crash
        self.mismatches: list[str] = []
        self.dup_records = self.dup_frames = self.pulls = 0
        self.last_ok = time.monotonic()
        self.longest = 0.0  # the longest time without a successful pull
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            while not self.stop.is_set() and not self.failures:
                self._once()
        except BaseException:  # noqa: BLE001 - reported by the bench
            self.failures.append("collector crashed:\n"
                                 + traceback.format_exc())

    def _once(self) -> None:
        try:
            batch = self.client.batch(self.state.last_seq, self.state.wal,
                                      wait=1)
        except PullError as err:
            self.errors[f"HTTP {err.status}"] += 1
            if err.status != 503:
                self.failures.append(
                    f"pull after seq {self.state.last_seq} answered "
                    f"HTTP {err.status}: {err.body}")
            time.sleep(0.05)
            return
        except OSError as err:  # refused, reset, cut off: a restart
            self.errors[error_kind(err)] += 1
            time.sleep(0.05)
            return
        now = time.monotonic()
        self.longest = max(self.longest, now - self.last_ok)
        self.last_ok = now
        self.pulls += 1
        if isinstance(batch.get("wal"), bytes):
            self.wal_ids.add(batch["wal"])
        self._compare(batch.get("frames") or [])
        held = self.state.last_seq
        try:
            new = list(verify_batch(batch, self.state, self.key))
        except VerifyError as err:
            self.failures.append(f"verification failed (held up to seq "
                                 f"{held}): {err}")
            return
        for rec in new:
            self.store.setdefault(rec["seq"], rec)
        for f in batch.get("frames") or []:
            if f["last_seq"] > held:
                self.frames.setdefault((f["first_seq"], f["last_seq"]),
                                       (bytes(f["hash"]), bytes(f["records"])))
        if self.state.wal and self.state.last_seq:
            try:
                self.client.ack(self.state.wal, self.state.last_seq)
            except (OSError, PullError) as err:
                self.errors["ack: " + (f"HTTP {err.status}" if isinstance(
                    err, PullError) else error_kind(err))] += 1

    def _compare(self, frames: list[dict[str, Any]]) -> None:
        """Frames and records delivered before must come back unchanged."""
        for f in frames:
            key = (f["first_seq"], f["last_seq"])
            known = self.frames.get(key)
            if known is not None:
                if known != (bytes(f["hash"]), bytes(f["records"])):
                    self.mismatches.append(
                        f"frame {key[0]}-{key[1]} came back with other "
                        f"content: hash {known[0].hex()[:16]} then "
                        f"{bytes(f['hash']).hex()[:16]}")
                else:
                    self.dup_frames += 1
            for rec in iter_records(bytes(f["records"])):
                seq = rec.get("seq") if isinstance(rec, dict) else None
                if seq in self.store:
                    if self.store[seq] == rec:
                        self.dup_records += 1
                    else:
                        self.mismatches.append(
                            f"seq {seq} came back with other content:\n"
                            f"  held {self.store[seq]}\n  got  {rec}")


def repull(a: AgentProcess, store: dict[int, dict[str, Any]]) \
        -> tuple[int, list[str], list[int]]:
    """Pull the whole WAL afresh from seq 0 (verified) and compare it with
    the collector's store: (records served, mismatches, seqs not held)."""
    client, state, after = a.client(), ChainState(), 0
    served, bad, extra = 0, [], []
    while True:
        batch = client.batch(after, max_records=10000)
        if not batch["frames"]:
            return served, bad, extra
        for rec in verify_batch(batch, state, a.public_key()):
            served += 1
            held = store.get(rec["seq"])
            if held is None:
                extra.append(rec["seq"])
            elif held != rec:
                bad.append(f"seq {rec['seq']}: held {held}, WAL has {rec}")
        after = state.last_seq


def log_events(a: AgentProcess) -> list[dict[str, Any]]:
    out = []
    for line in a.log_text().splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict):
            out.append(doc)
    return out


class Storm:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args, self.work = args, work
        self.a = AgentProcess(work, interval=args.interval,
                              fake_vms=args.vms)
        self.windows: list[list[float]] = []  # per start: [spawn, end] ns
        self.delays: list[float] = []
        self.failures: list[str] = []
        self.notes: list[str] = []

    def start(self) -> bool:
        self.windows.append([time.time_ns(), math.inf])
        try:
            self.a.start()
        except (RuntimeError, TimeoutError) as err:
            self.failures.append(f"start {len(self.windows)} failed: {err}")
            return False
        return True

    def end_window(self) -> None:
        self.windows[-1][1] = time.time_ns()

    def run(self) -> int:
        args, a = self.args, self.a
        rng = random.Random(args.seed)
        t0 = time.monotonic()
        if not self.start():
            return self.report(None, t0)
        collector = Collector(a)
        collector.start()
        for i in range(args.kills):
            delay = rng.uniform(0, args.max_delay)
            self.delays.append(delay)
            time.sleep(delay)
            assert a.proc is not None
            if a.proc.poll() is not None:
                self.failures.append(
                    f"the agent exited by itself with {a.proc.returncode} "
                    f"before kill {i + 1}")
                break
            a.kill()
            self.end_window()
            if not self.start() or collector.failures:
                break
            if (i + 1) % 20 == 0:
                print(f"  {i + 1} kills, {time.monotonic() - t0:.0f} s, "
                      f"collector at seq {collector.state.last_seq}",
                      file=sys.stderr, flush=True)
        final_seq = None
        if not self.failures and not collector.failures:
            final_seq = self.finish(collector)
        collector.stop.set()
        collector.join(timeout=30)
        return self.report(collector, t0, final_seq)

    def finish(self, collector: Collector) -> int | None:
        """Clean stop, one more start, catch up, re-pull all, stop."""
        a = self.a
        code = a.stop(signal.SIGTERM)
        self.end_window()
        if code != 0:
            self.failures.append(f"SIGTERM: the agent exited with {code}")
        dump = a.cli("wal", "dump", str(a.state / "wal"), "--json").stdout
        final_seq = json.loads(dump.splitlines()[-1])["seq"]
        if not self.start():
            return final_seq
        deadline = time.monotonic() + 60
        while collector.state.last_seq <= final_seq and \
                time.monotonic() < deadline and not collector.failures:
            time.sleep(0.1)
        if collector.state.last_seq <= final_seq:
            self.failures.append(f"the collector did not catch up past the "
                                 f"final seq {final_seq} in 60 s (at "
                                 f"{collector.state.last_seq})")
        collector.stop.set()
        collector.join(timeout=30)
        served, bad, extra = repull(a, collector.store)
        self.notes.append(f"fresh re-pull of the WAL: {served} records, "
                          f"{len(bad)} differ from the collector's, "
                          f"{len(extra)} not held (written after the "
                          "collector stopped)")
        collector.mismatches += [f"re-pull: {b}" for b in bad]
        code = a.stop(signal.SIGTERM)
        self.end_window()
        if code != 0:
            self.failures.append(f"final SIGTERM: the agent exited with "
                                 f"{code}")
        verify = a.cli("wal", "verify", str(a.state / "wal"),
                       "--pubkey", str(a.state / "host.pub"))
        self.wal_verify = verify.returncode
        if verify.returncode != 0:
            self.failures.append(f"vmagent wal verify exited "
                                 f"{verify.returncode}:\n{verify.stdout}"
                                 f"{verify.stderr}")
        return final_seq

    def agent_starts(self, store: dict[int, dict[str, Any]]) \
            -> tuple[int, list[int]]:
        """Map each agent_start (by its ``t``) to the start whose lifetime
        holds it; (records, starts killed before their first commit)."""
        per: list[list[int]] = [[] for _ in self.windows]
        recs = [r for r in store.values() if r["kind"] == "agent_start"]
        for r in recs:
            hit = [i for i, (s, e) in enumerate(self.windows)
                   if s <= r["t"] <= e]
            if len(hit) != 1:
                self.failures.append(f"agent_start seq {r['seq']} (t {r['t']})"
                                     " belongs to no start")
            else:
                per[hit[0]].append(r["seq"])
        early: list[int] = []
        for i, seqs in enumerate(per):
            log = self.work / f"agent{i}.log"
            started = log.exists() and '"agent_started"' in log.read_text()
            if len(seqs) > 1:
                self.failures.append(f"start {i + 1} has {len(seqs)} "
                                     f"agent_start records: seqs {seqs}")
            elif not seqs and started:
                self.failures.append(f"start {i + 1} logged agent_started "
                                     "but its agent_start record is missing")
            elif not seqs:
                early.append(i)  # killed before its first sweep committed
        return len(recs), early

    def report(self, c: Collector | None, t0: float,
               final_seq: int | None = None) -> int:
        args, a = self.args, self.a
        elapsed = time.monotonic() - t0
        events = log_events(a)
        store = c.store if c else {}
        if c:
            self.failures += c.failures
        gaps = sorted((r["seq"], r["from_seq"], r["to_seq"], r.get("reason"))
                      for r in store.values() if r["kind"] == "gap")
        top = max(store, default=0)
        holes = [s for s in range(1, top + 1) if s not in store and
                 not any(g[1] <= s <= g[2] for g in gaps)]
        if holes:
            self.failures.append(f"{len(holes)} seqs neither received nor "
                                 f"covered by a gap: {ranges(holes)}")
        if c and unexplained(c.state):
            self.failures.append(f"collector: unexplained skipped seqs "
                                 f"{unexplained(c.state)}")
        if c and c.mismatches:
            self.failures.append(f"{len(c.mismatches)} mismatches:\n  "
                                 + "\n  ".join(c.mismatches[:10]))
        ids = {r["wal"] for r in store.values() if r["kind"] == "agent_start"}
        ids |= set(c.wal_ids) if c else set()
        ids |= {bytes.fromhex(e["wal_id"]) for e in events
                if e.get("event") == "wal_opened"}
        if len(ids) > 1:
            self.failures.append("the WAL id changed: "
                                 f"{sorted(i.hex() for i in ids)}")
        abandoned = [e for e in events if e.get("event") == "wal_abandoned"]
        if abandoned:
            self.failures.append(f"WAL abandoned: {abandoned}")
        n_starts, early = self.agent_starts(store)
        expected = len(self.windows) - len(early)
        if n_starts != expected:
            self.failures.append(f"{n_starts} agent_start records for "
                                 f"{expected} starts that reached a commit")
        warn = Counter(e["event"] for e in events
                       if e.get("level") in ("warning", "error")
                       and e.get("event") != "tokens_file_created")
        kills = len(self.delays)
        print(f"seed {args.seed}; {args.vms} fake VMs, interval "
              f"{args.interval:g} s, kill after uniform "
              f"0-{args.max_delay:g} s")
        print("| figure | value |\n|---|---|")
        print(f"| kills (SIGKILL) | {kills} |")
        print(f"| agent starts | {len(self.windows)} |")
        print(f"| kills within {args.interval:g} s of a start | "
              f"{sum(d < args.interval for d in self.delays)} |")
        print(f"| records (last seq held) | {top} "
              f"(final seq before the last start: {final_seq}) |")
        print(f"| frames held | {len(c.frames) if c else 0} |")
        print(f"| gap records | {len(gaps)}"
              + "".join(f"; seq {g[0]}: {g[1]}-{g[2]} {g[3]!r}" for g in gaps)
              + " |")
        print(f"| duplicated deliveries (same content) | "
              f"{c.dup_records if c else 0} records in "
              f"{c.dup_frames if c else 0} frames |")
        print(f"| mismatches | {len(c.mismatches) if c else 0} |")
        print(f"| agent_start records | {n_starts} ({len(early)} starts "
              "killed before their first commit"
              + "".join(f"; start {i + 1} killed after {self.delays[i]:.3f} s"
                        for i in early if i < len(self.delays)) + ") |")
        print(f"| torn frames truncated at restart | "
              f"{warn['wal_tail_truncated']} |")
        tmps = Counter(e.get("file") for e in events
                       if e.get("event") == "stale_tmp_removed")
        print(f"| agent log warnings/errors | "
              f"{dict(warn) or 'none'}; traceback: "
              f"{'Traceback' in a.log_text()} |")
        if tmps:  # a kill cut a state or cursor file's tmp+rename short
            print(f"| stale tmp files removed at start | {dict(tmps)} |")
        if c:
            print(f"| successful pulls | {c.pulls} |")
            print("| collector errors by kind | "
                  + ", ".join(f"{k}: {v}" for k, v in c.errors.most_common())
                  + " |")
            print(f"| longest time without a successful pull | "
                  f"{c.longest:.2f} s |")
        print(f"| wal verify | exit {getattr(self, 'wal_verify', '-')} |")
        print(f"| elapsed | {elapsed:.0f} s |")
        for note in self.notes:
            print(note)
        if self.failures:
            print("\nFAILED:\n- " + "\n- ".join(self.failures))
            print("\nagent log tail:\n" + a.log_text()[-3000:])
            return 1
        print("\nOK: nothing lost, duplicated or changed")
        return 0


def ranges(seqs: list[int]) -> str:
    out: list[list[int]] = []
    for s in seqs:
        if out and out[-1][1] == s - 1:
            out[-1][1] = s
        else:
            out.append([s, s])
    return ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in out[:20])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=200)
    p.add_argument("--interval", type=float, default=0.2)
    p.add_argument("--vms", type=int, default=4)
    p.add_argument("--max-delay", type=float, default=1.5,
                   help="kill after uniform 0..this many seconds")
    p.add_argument("--seed", type=int, default=None)
    args = p.parse_args()
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1 << 32)
    print(f"seed {args.seed}", flush=True)
    with tempfile.TemporaryDirectory(prefix="vmagent-killstorm-") as work:
        storm = Storm(args, Path(work))
        try:
            code = storm.run()
        finally:
            storm.a.kill()
    sys.exit(code)


if __name__ == "__main__":
    main()
