"""The one frame verifier: ``vmagent pull``, collectors and ``vmagent wal
verify`` check frames with this code (docs/protocol.md).

``check_frame`` is what a frame must be on its own: its hash over its
records, its key id and Ed25519 signature with the pinned host key, and
records holding exactly its seqs.  ``verify_batch`` adds what a sequence of
frames must be: seqs that follow on, a continuous hash chain except across
seqs a ``gap`` record declares lost, and a frame never coming back with
other content.  Nothing that fails is handed on.  The ``_heads`` variants
hand on each frame's record heads (wal/heads.py) instead of the decoded
records: the collector stores those without decoding the rest.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from vmagent import keys
from vmagent.errors import VmagentError
from vmagent.wal import format as fmt
from vmagent.wal.heads import Heads, record_heads
from vmagent.wal.scan import covered

RECENT_FRAMES = 4096


class VerifyError(VmagentError):
    """A frame failed verification: nothing of it may be stored or acked."""


def check_frame(frame: fmt.Frame, host: str, wal: bytes,
                public_key: bytes | None) -> list[dict[str, Any]]:
    """The frame's records, or VerifyError saying what is wrong with it.
    Without a public key the signature is not checked."""
    return check_frame_heads(frame, host, wal, public_key).decoded()


#: bytes of the smallest record holding a seq (``{"seq": 1}``): a frame
#: naming more records than its bytes can hold is refused before the scan
#: sets aside room for them
SMALLEST_RECORD = len(b"\x81\xa3seq\x01")


def check_frame_heads(frame: fmt.Frame, host: str, wal: bytes,
                      public_key: bytes | None) -> Heads:
    """``check_frame``, giving the heads of the frame's records."""
    if fmt.chain_hash(frame.prev_hash, frame.records) != frame.hash:
        raise VerifyError("hash does not match its records")
    if public_key is not None:
        if frame.key_id != keys.key_id(public_key):
            raise VerifyError(f"signed by another key (key id "
                              f"{frame.key_id.hex()})")
        data = fmt.signed_bytes(host, wal, frame.first_seq, frame.last_seq,
                                frame.hash)
        if not keys.verify_signature(public_key, frame.sig, data):
            raise VerifyError("bad signature")
    count = frame.last_seq - frame.first_seq + 1
    if count > len(frame.records) // SMALLEST_RECORD:  # before any scan
        raise VerifyError("records do not hold exactly its seqs")
    heads = record_heads(frame.records, count)
    if len(heads) != count or \
            heads.seqs != list(range(frame.first_seq, frame.last_seq + 1)):
        raise VerifyError("records do not hold exactly its seqs")
    return heads


@dataclass
class ChainState:
    """What the collector knows of one WAL so far."""

    wal: bytes | None = None
    last_seq: int = 0
    last_hash: bytes | None = None  # None: the chain starts at the next frame
    missing: list[tuple[int, int]] = field(default_factory=list)
    gaps: list[tuple[int, int, str]] = field(default_factory=list)
    # the hashes of the latest frames held, to tell a frame delivered again
    # from one whose seqs came back with other content
    recent: dict[tuple[int, int], bytes] = field(default_factory=dict)

    def remember(self, first: int, last: int, frame_hash: bytes) -> None:
        self.recent[(first, last)] = frame_hash
        if len(self.recent) > RECENT_FRAMES:
            del self.recent[next(iter(self.recent))]

    def covered(self, a: int, b: int) -> bool:
        return covered([(g[0], g[1]) for g in self.gaps], a, b)


def verify_batch(batch: dict[str, Any], state: ChainState,
                 public_key: bytes | None) -> Iterator[dict[str, Any]]:
    """The records of ``batch`` after ``state.last_seq``, verified, in order;
    updates ``state``.  Raises VerifyError at the first bad frame."""
    for heads in verify_batch_heads(batch, state, public_key):
        yield from heads.decoded()


def verify_batch_heads(batch: dict[str, Any], state: ChainState,
                       public_key: bytes | None) -> Iterator[Heads]:
    """``verify_batch``: per frame that brings records after
    ``state.last_seq``, the heads of those records."""
    wal, host = batch.get("wal"), batch.get("host")
    if not isinstance(wal, bytes) or len(wal) != 16 or not isinstance(host,
                                                                      str):
        raise VerifyError("batch has no valid wal id or host")
    if state.wal not in (None, wal):
        raise VerifyError("batch is from another WAL")
    state.wal = wal
    for f in batch.get("frames") or []:
        heads = _verify_frame(f, wal, host, state, public_key)
        if heads is not None:
            yield heads


def _verify_frame(f: Any, wal: bytes, host: str, state: ChainState,
                  public_key: bytes | None) -> Heads | None:
    try:
        first, last = int(f["first_seq"]), int(f["last_seq"])
        records, prev, h, sig = (bytes(f[k]) for k in
                                 ("records", "prev_hash", "hash", "sig"))
        key_id = bytes.fromhex(f["key_id"])
    except (KeyError, TypeError, ValueError):
        raise VerifyError("frame lacks a field") from None
    where = f"frame {first}-{last}"
    held = state.last_seq
    known = state.recent.get((first, last))
    if known is not None and known != h:
        raise VerifyError(f"{where} came back with other content than "
                          "before: the agent reused its seqs")
    if last <= held:
        return None  # already held (a reply starts with the frame of after+1)
    if first > held + 1:  # lost seqs: the chain may break here
        state.missing.append((held + 1, first - 1))
    elif state.last_hash is not None and prev != state.last_hash:
        raise VerifyError(f"{where}: chain broken (prev_hash is not the "
                          "previous frame's hash)")
    try:
        heads = check_frame_heads(fmt.Frame(first, last, records, prev, h,
                                            key_id, sig), host, wal,
                                  public_key)
    except VerifyError as err:
        raise VerifyError(f"{where}: {err}") from None
    state.last_seq, state.last_hash = last, h
    state.remember(first, last, h)
    for rec in heads.gap_records():
        state.gaps.append((rec["from_seq"], rec["to_seq"],
                           str(rec.get("reason", ""))))
    return heads.after(held)


def unexplained(state: ChainState) -> list[tuple[int, int]]:
    """Seq ranges skipped that no gap record (so far) explains."""
    return [(a, b) for a, b in state.missing if not state.covered(a, b)]
