"""A hostile agent for the collector's tests: an HTTP server on loopback
that speaks the pull API (docs/protocol.md) with frames from a real WAL
signed by a real host key, and misbehaves in one chosen way.

Modes (``mode``, changeable while it runs; ``"ok"`` behaves):

- forgery, in the first reply, at the 4th frame (frames 1-3 are good):
  ``altered`` (a byte of its records flipped), ``other_key`` (signed by
  another key than the pinned one), ``rewritten_seq`` (its seqs moved on
  by 100), ``reused_seqs`` (from the second reply on, the same seqs with
  other content, signed by the right key: the agent reused its seqs);
- ``replay``: every reply starts again from seq 1 (old frames, identical
  bytes, ahead of the new ones): harmless;
- transport trouble, from the second reply on (the first serves frames
  1-3): ``cut_short`` (the connection closed halfway through the body),
  ``huge`` (2 GB announced, zeros streamed), ``huge_stream`` (no length,
  zeros until the client hangs up), ``garbage`` (an HTML page as the
  body), ``hang`` (the reply never comes).
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import msgpack

from vmagent.keys import HostKey
from vmagent.wal import Wal
from vmagent.wal import format as fmt

FORGERY = ("altered", "other_key", "rewritten_seq", "reused_seqs")
TRANSPORT = ("cut_short", "huge", "huge_stream", "garbage", "hang")
GOOD_FRAMES = 3  # served before the misbehaviour
RECORDS_PER_FRAME = 2


def _record(i: int, j: int) -> dict[str, Any]:
    return {"kind": "inventory", "t": time.time_ns(), "vms": [],
            "n": i * RECORDS_PER_FRAME + j}


class HostileAgent:
    """One server and its WAL(s); ``close`` stops it."""

    def __init__(self, workdir: Path, name: str, mode: str,
                 frames: int = 8) -> None:
        self.name, self.mode = name, mode
        self.key = HostKey.generate()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.requests = 0
        self.acks: list[int] = []
        self.wal = Wal(workdir / f"{name}-wal", host=name, key=self.key)
        self.other: Wal | None = None
        for i in range(frames):
            if mode == "other_key" and i == GOOD_FRAMES:
                self.wal.key = HostKey.generate()  # not the pinned key
            self.wal.commit([_record(i, j) for j in range(RECORDS_PER_FRAME)])
        if mode == "reused_seqs":  # same id, same key, other content
            self.other = Wal(workdir / f"{name}-wal2", host=name,
                             key=self.key)
            self.other.wal_id = self.wal.wal_id
            for i in range(frames):
                self.other.commit([{**_record(i, j), "other": True}
                                   for j in range(RECORDS_PER_FRAME)])
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                      _handler(self))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       daemon=True)
        self.thread.start()

    def token(self) -> str:
        return "hostile-token"

    def public_key(self) -> bytes:
        return self.key.public

    def commit(self, n: int = 1) -> None:
        """``n`` more good frames."""
        with self.lock:
            for _ in range(n):
                self.wal.commit([_record(self.wal.next_seq, j)
                                 for j in range(RECORDS_PER_FRAME)])

    def seqs(self) -> list[int]:
        """Every seq of the (first) WAL."""
        with self.lock:
            return list(range(1, self.wal.next_seq))

    def good_seqs(self) -> list[int]:
        """The seqs of the frames served before the misbehaviour."""
        return list(range(1, GOOD_FRAMES * RECORDS_PER_FRAME + 1))

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()
        self.wal.close()
        if self.other is not None:
            self.other.close()

    # --- replies ----------------------------------------------------------

    def batch(self, after: int, max_records: int, wait: float) -> bytes:
        with self.lock:
            self.requests += 1
            first_reply = self.requests == 1
        deadline = time.monotonic() + wait
        mode = self.mode
        start = 0 if mode == "replay" else after
        while True:
            with self.lock:
                frames = self.wal.frames(start, max_records)
                if mode == "replay":
                    fresh = frames and frames[-1].last_seq > after
                else:
                    fresh = bool(frames)
            if fresh or time.monotonic() >= deadline or self.stop.is_set():
                break
            time.sleep(0.05)
        if first_reply and (mode in TRANSPORT or mode == "reused_seqs"):
            frames = frames[:GOOD_FRAMES]
        elif mode == "reused_seqs" and self.other is not None:
            with self.lock:
                frames = self.other.frames(0, max_records)
        out = [_wire(f) for f in frames]
        if first_reply and mode in FORGERY and len(out) > GOOD_FRAMES:
            bad = out[GOOD_FRAMES]
            if mode == "altered":
                raw = bytearray(bad["records"])
                raw[len(raw) // 2] ^= 0x01
                bad["records"] = bytes(raw)
            elif mode == "rewritten_seq":
                bad["first_seq"] += 100
                bad["last_seq"] += 100
        return msgpack.packb({
            "v": 1, "host": self.name, "wal": self.wal.wal_id,
            "first_seq": out[0]["first_seq"] if out else None,
            "last_seq": out[-1]["last_seq"] if out else None,
            "frames": out})


def _wire(f: fmt.Frame) -> dict[str, Any]:
    return {"records": f.records, "first_seq": f.first_seq,
            "last_seq": f.last_seq, "prev_hash": f.prev_hash,
            "hash": f.hash, "sig": f.sig, "key_id": f.key_id.hex()}


def _handler(agent: HostileAgent) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

        def do_GET(self) -> None:  # noqa: N802
            url = urlparse(self.path)
            if url.path != "/v1/batches":
                self.send_error(404)
                return
            q = {k: v[0] for k, v in parse_qs(url.query).items()}
            mode = agent.mode
            if mode in TRANSPORT and agent.requests >= 1:
                agent.requests += 1
                self.misbehave(mode)
                return
            body = agent.batch(int(q.get("after", 0)),
                               int(q.get("max", 1000)),
                               min(float(q.get("wait", 0)), 60.0))
            self.send_response(200)
            self.send_header("Content-Type", "application/msgpack")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                self.wfile.write(body)
            except OSError:  # the collector gave up on this long-poll
                self.close_connection = True

        def misbehave(self, mode: str) -> None:
            try:
                if mode == "hang":
                    agent.stop.wait()
                    return
                if mode == "garbage":
                    body = b"<html><body>502 Bad Gateway</body></html>\n"
                    self.send_response(200)
                    self.send_header("Content-Type", "application/msgpack")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                if mode == "cut_short":
                    body = agent.batch(0, 1000, 0)
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[:len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.send_response(200)
                if mode == "huge":
                    self.send_header("Content-Length", "2000000000")
                self.end_headers()
                zeros = b"\0" * 65536
                for _ in range(3000):  # ~200 MB at most
                    if agent.stop.is_set():
                        return
                    self.wfile.write(zeros)
            except OSError:  # the client hung up: what it should do
                self.close_connection = True

        def do_POST(self) -> None:  # noqa: N802
            if urlparse(self.path).path != "/v1/ack":
                self.send_error(404)
                return
            n = int(self.headers.get("Content-Length", 0))
            doc = msgpack.unpackb(self.rfile.read(n), raw=False)
            with agent.lock:
                agent.acks.append(int(doc["seq"]))
            body = json.dumps({"seq": int(doc["seq"])}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler
