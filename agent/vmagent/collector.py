"""The reference collector: pull batches, verify them, hand records on,
then ack (``vmagent pull``; docs/protocol.md is the contract).

Per frame it checks the hash over the records, the Ed25519 signature (with
the host's public key), that the records hold exactly the frame's seqs, that
seqs follow on, and that the hash chain is continuous -- except across seqs
that a ``gap`` record declares lost.  Nothing unverified is handed on or
acked.
"""

from __future__ import annotations

import http.client
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import msgpack

from vmagent import keys
from vmagent.errors import VmagentError
from vmagent.wal import format as fmt
from vmagent.wal.scan import covered, iter_records


RECENT_FRAMES = 4096


class VerifyError(VmagentError):
    """A batch failed verification: nothing of it may be stored or acked."""


class Unreachable(urllib.error.URLError):
    """No connection to the agent (refused, no route, name unknown, TLS
    handshake refused): ``reason`` is the cause.  A URLError, so callers that
    look at ``reason`` still can, and an OSError like every connection
    failure; its message says where and why in words."""

    def __init__(self, url: str, reason: BaseException | str) -> None:
        super().__init__(reason)
        self.url = url

    def __str__(self) -> str:
        return f"cannot reach {self.url}: {_words(self.reason)}"


def _words(reason: BaseException | str) -> str:
    """``connection refused`` rather than ``[Errno 111] Connection
    refused``."""
    text = (getattr(reason, "strerror", None) or str(reason)).strip()
    if len(text) > 1 and text[0].isupper() and text[1].islower():
        text = text[0].lower() + text[1:]
    return text or type(reason).__name__


class PullError(VmagentError):
    """The agent answered with an error (its status and JSON body)."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(f"HTTP {status}: {body.get('error', body)}")
        self.status, self.body = status, body


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


class Client:
    """HTTP access to one agent's pull API with a bearer token."""

    def __init__(self, url: str, consumer: str, token: str | None,
                 timeout: float = 90.0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.url, self.consumer, self.token = url.rstrip("/"), consumer, token
        self.timeout, self.ssl_context = timeout, ssl_context

    def _request(self, path: str, body: bytes | None = None,
                 ctype: str = "") -> bytes:
        req = urllib.request.Request(self.url + path, data=body)
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        if ctype:
            req.add_header("Content-Type", ctype)
        try:
            return self._open(req)
        except http.client.HTTPException as err:  # cut off mid-response:
            raise ConnectionError(  # an agent restarting, like a refusal
                f"{self.url}{path.split('?')[0]}: response cut off "
                f"({type(err).__name__})") from None

    def _open(self, req: urllib.request.Request) -> bytes:
        try:
            with urllib.request.urlopen(req, timeout=self.timeout,
                                        context=self.ssl_context) as resp:
                return resp.read()
        except urllib.error.HTTPError as err:
            raw = err.read()
            try:
                doc = json.loads(raw)
            except ValueError:
                doc = {"error": raw[:200].decode("utf-8", "replace")}
            raise PullError(err.code, doc) from None
        except urllib.error.URLError as err:  # not connected at all
            raise Unreachable(self.url, err.reason) from None

    def batch(self, after: int | None, wal: bytes | None = None,
              wait: float = 0, max_records: int = 1000) -> dict[str, Any]:
        q: dict[str, Any] = {"consumer": self.consumer, "max": max_records,
                             "wait": wait}
        if after is not None:
            q["after"] = after
        if wal is not None:
            q["wal"] = wal.hex()
        raw = self._request("/v1/batches?" + urlencode(q))
        try:
            doc = msgpack.unpackb(raw, raw=False, strict_map_key=True)
        except (ValueError, msgpack.UnpackException) as err:
            raise VerifyError(f"batch is not msgpack: {err}") from None
        if not isinstance(doc, dict) or doc.get("v") != 1:
            raise VerifyError("batch is not a version 1 batch map")
        return doc

    def ack(self, wal: bytes, seq: int) -> int:
        body = msgpack.packb({"consumer": self.consumer, "wal": wal,
                              "seq": seq})
        doc = json.loads(self._request("/v1/ack", body, "application/msgpack"))
        return int(doc["seq"])


def verify_batch(batch: dict[str, Any], state: ChainState,
                 public_key: bytes | None) -> Iterator[dict[str, Any]]:
    """The records of ``batch`` after ``state.last_seq``, verified, in order;
    updates ``state``.  Raises VerifyError at the first bad frame."""
    wal, host = batch.get("wal"), batch.get("host")
    if not isinstance(wal, bytes) or len(wal) != 16 or not isinstance(host,
                                                                      str):
        raise VerifyError("batch has no valid wal id or host")
    if state.wal not in (None, wal):
        raise VerifyError("batch is from another WAL")
    state.wal = wal
    for f in batch.get("frames") or []:
        yield from _verify_frame(f, wal, host, state, public_key)


def _verify_frame(f: Any, wal: bytes, host: str, state: ChainState,
                  public_key: bytes | None) -> Iterator[dict[str, Any]]:
    try:
        first, last = int(f["first_seq"]), int(f["last_seq"])
        records, prev, h, sig = (bytes(f[k]) for k in
                                 ("records", "prev_hash", "hash", "sig"))
    except (KeyError, TypeError, ValueError):
        raise VerifyError("frame lacks a field") from None
    where = f"frame {first}-{last}"
    held = state.last_seq
    known = state.recent.get((first, last))
    if known is not None and known != h:
        raise VerifyError(f"{where} came back with other content than "
                          "before: the agent reused its seqs")
    if last <= held:
        return  # already held (a reply starts with the frame of after + 1)
    if first > held + 1:  # lost seqs: the chain may break here
        state.missing.append((held + 1, first - 1))
    elif state.last_hash is not None and prev != state.last_hash:
        raise VerifyError(f"{where}: chain broken (prev_hash is not the "
                          "previous frame's hash)")
    if fmt.chain_hash(prev, records) != h:
        raise VerifyError(f"{where}: hash does not match its records")
    if public_key is not None:
        if f.get("key_id") != keys.key_id(public_key).hex():
            raise VerifyError(f"{where}: signed by another key")
        data = fmt.signed_bytes(host, wal, first, last, h)
        if not keys.verify_signature(public_key, sig, data):
            raise VerifyError(f"{where}: bad signature")
    recs = list(iter_records(records))
    if [r.get("seq") if isinstance(r, dict) else None for r in recs] != \
            list(range(first, last + 1)):
        raise VerifyError(f"{where}: records do not hold exactly its seqs")
    state.last_seq, state.last_hash = last, h
    state.remember(first, last, h)
    for rec in recs:
        if rec.get("kind") == "gap":
            state.gaps.append((rec["from_seq"], rec["to_seq"],
                               str(rec.get("reason", ""))))
        if rec["seq"] > held:
            yield rec


def unexplained(state: ChainState) -> list[tuple[int, int]]:
    """Seq ranges skipped that no gap record (so far) explains."""
    return [(a, b) for a, b in state.missing if not state.covered(a, b)]
