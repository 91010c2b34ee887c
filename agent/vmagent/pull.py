"""``vmagent pull``: the reference collector on the command line.

Prints verified records, then acks them (``--ack``); reports gaps and WAL
changes on stderr; with ``--follow`` keeps long-polling and rides through
agent restarts.  Exit 1 at the first frame that fails verification.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vmagent.api.tls import client_context
from vmagent.collector import (
    ChainState,
    Client,
    PullError,
    VerifyError,
    unexplained,
    verify_batch,
)
from vmagent.errors import StateError
from vmagent.keys import load_public_key
from vmagent.show import record_line

FOLLOW_WAIT_S = 30.0


def pull(args: argparse.Namespace) -> int:
    client, key = _client(args)
    state = ChainState(last_seq=args.after or 0)
    after: int | None = args.after
    reported: set[tuple[int, int]] = set()
    while True:
        try:
            batch = client.batch(after, state.wal,
                                 FOLLOW_WAIT_S if args.follow else 0)
        except PullError as err:
            after = _recover_from(err, state)
            if after is None:
                print(f"vmagent pull: {err}", file=sys.stderr)
                return 1
            continue
        except OSError as err:
            if not args.follow:
                print(f"vmagent pull: {err}", file=sys.stderr)
                return 1
            time.sleep(1)  # the agent is restarting
            continue
        if after is None:
            state.last_seq = _start_of(batch)
        try:
            printed = _print_records(verify_batch(batch, state, key), args)
        except VerifyError as err:
            print(f"vmagent pull: verification failed: {err}",
                  file=sys.stderr)
            return 1
        _report_gaps(state, reported)
        after = state.last_seq
        if args.ack and printed and state.wal is not None:
            client.ack(state.wal, state.last_seq)
        if not args.follow and not printed:
            break
    missing = unexplained(state)
    for a, b in missing:
        print(f"vmagent pull: seqs {a}-{b} missing without a gap record",
              file=sys.stderr)
    return 1 if missing else 0


def _client(args: argparse.Namespace) -> tuple[Client, bytes | None]:
    """The HTTP client (token or client certificate) and the public key."""
    if not args.token_file and not args.cert:
        raise StateError("give --token-file, or --cert and --key for mutual "
                         "TLS")
    token = Path(args.token_file).read_text().strip() if args.token_file \
        else None
    context = None
    if args.url.startswith("https:"):
        context = client_context(
            *(Path(p) if p else None for p in (args.cacert, args.cert,
                                               args.key)))
    key = load_public_key(Path(args.pubkey)) if args.pubkey else None
    if key is None:
        print("vmagent pull: no --pubkey: signatures are NOT checked",
              file=sys.stderr)
    return Client(args.url, args.consumer, token, ssl_context=context), key


def _report_gaps(state: ChainState, reported: set[tuple[int, int]]) -> None:
    for a, b, reason in state.gaps:
        if (a, b) not in reported:
            reported.add((a, b))
            print(f"vmagent pull: gap: seqs {a}-{b}: {reason}",
                  file=sys.stderr)


def _start_of(batch: dict[str, Any]) -> int:
    """Where the first reply of a session (after = the ack) starts."""
    frames = batch.get("frames") or []
    return max(0, frames[0]["first_seq"] - 1) if frames else 0


def _recover_from(err: PullError, state: ChainState) -> int | None:
    """What to do after an HTTP error: a new WAL restarts from 0, seqs no
    longer kept (missing at the source) are reported and skipped; anything
    else stops."""
    current = state.wal.hex() if state.wal else None
    if err.status == 409 and err.body.get("wal") not in (None, current):
        print(f"vmagent pull: the agent has a new WAL {err.body['wal']}: "
              "starting it from seq 0", file=sys.stderr)
        state.__init__()  # type: ignore[misc]
        return 0
    if err.status == 409 and current is not None:
        err.args = (f"the agent's WAL {current} no longer reaches seq "
                    f"{state.last_seq}, which was received: it went back "
                    f"({err.body.get('error', '')})",)
        return None
    a, b = err.body.get("missing_from"), err.body.get("missing_to")
    if err.status == 410 and isinstance(a, int) and isinstance(b, int) \
            and b >= state.last_seq:
        print(f"vmagent pull: seqs {a}-{b} are missing at the source (no "
              "longer kept): continuing after them", file=sys.stderr)
        state.last_seq, state.last_hash = b, None
        return b
    return None


def _print_records(records: Iterator[dict[str, Any]],
                   args: argparse.Namespace) -> int:
    n = 0
    for rec in records:
        print(record_line(rec, args.json))
        n += 1
    sys.stdout.flush()
    return n
