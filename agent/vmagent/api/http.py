"""The pull API's endpoints (docs/protocol.md).

``GET /v1/batches``, ``POST /v1/ack``, ``GET /v1/status``, ``GET /metrics``;
every endpoint needs ``Authorization: Bearer <token>`` (or, under mutual
TLS, a client certificate whose CN is a consumer).  Every error is a JSON
``{"error": ...}`` with a 4xx code; nothing a client sends reaches the WAL
except a well-formed ack.  WAL reads and acks run in worker threads, so the
event loop never waits for the WAL lock or the disk.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qs, urlsplit

import msgpack

from vmagent.api.commits import Commits
from vmagent.api.metrics import render
from vmagent.api.server import MAX_BODY, Reply, Request
from vmagent.api.source import EvidenceSource
from vmagent.api.vm_metrics import VmSeries
from vmagent.errors import VmagentError
from vmagent.wal import NotKept, WalConflict

MAX_RECORDS, DEFAULT_RECORDS = 10_000, 1000
MAX_WAIT_S = 60.0
MAX_BATCH_BYTES = 4 << 20
ROUTES = {"/v1/batches": "GET", "/v1/ack": "POST", "/v1/status": "GET",
          "/metrics": "GET"}
INTEGER = re.compile(r"[0-9]{1,19}")  # ASCII only: str.isdigit takes "²"
SECONDS = re.compile(r"([0-9]{1,9}(\.[0-9]{0,9})?|\.[0-9]{1,9})"
                     r"([eE][-+]?[0-9]{1,3})?")
JSON, MSGPACK = "application/json", "application/msgpack"


class ApiError(VmagentError):
    """A request that gets an error reply instead of its answer."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.reply = Reply.error(status, message, **extra)


class PullApi:
    def __init__(self, agent: EvidenceSource, commits: Commits) -> None:
        self.agent, self.commits = agent, commits
        self.vm_series = VmSeries()
        self._handlers: dict[str, Callable[[Request], Awaitable[Reply]]] = {
            "/v1/batches": self._batches, "/v1/ack": self._ack,
            "/v1/status": self._status, "/metrics": self._metrics}

    def admit(self, request: Request) -> Reply | None:
        """Before any body: the endpoint, the credentials, the query and
        the body's size.  Sets ``request.consumer`` when the credentials
        are valid, whatever else is wrong."""
        try:
            self._admit(request)
        except ApiError as err:
            return err.reply
        return None

    def _admit(self, request: Request) -> None:
        request.consumer, refusal = self._credentials(request)
        try:
            url = urlsplit(request.target)
        except ValueError:  # e.g. "//[": a netloc that is no address
            raise ApiError(400, "the request target is not a path") \
                from None
        if url.path not in ROUTES:
            raise ApiError(404, f"no such endpoint {url.path[:100]!r}")
        want = ROUTES[url.path]
        if request.method != want:
            raise ApiError(405, f"{url.path} takes {want}, not "
                           f"{request.method[:20]}")
        if refusal is not None:
            raise refusal
        request.state.update(path=url.path, query=parse_query(url.query))
        if want == "POST":
            check_length(request.headers)

    async def handle(self, request: Request) -> Reply:
        try:
            return await self._handlers[request.state["path"]](request)
        except ApiError as err:
            return err.reply

    # --- credentials ----------------------------------------------------

    def _credentials(self, request: Request) -> tuple[str | None,
                                                      ApiError | None]:
        """The consumer this request speaks for: the CN of a verified client
        certificate (mutual TLS), else the owner of the bearer token."""
        cn = request.cert_cn
        if cn is not None:
            if cn not in self.agent.consumers():
                return None, ApiError(403, f"certificate CN {cn[:128]!r} is "
                                      "not a consumer")
            return cn, None
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None, ApiError(401, "a bearer token is required "
                                  "(Authorization: Bearer <token>)")
        consumer = self.agent.consumer_of(token.strip())
        if consumer is None:
            return None, ApiError(401, "unknown token")
        return consumer, None

    @staticmethod
    def _consumer(authenticated: str | None, claimed: object) -> str:
        if not isinstance(claimed, str) or not claimed:
            raise ApiError(400, "consumer is required")
        if claimed != authenticated:
            raise ApiError(403, f"this token is not consumer "
                           f"{claimed[:128]!r}'s")
        return claimed

    # --- GET /v1/batches ------------------------------------------------

    async def _batches(self, request: Request) -> Reply:
        q = request.state["query"]
        consumer = self._consumer(request.consumer, q.get("consumer"))
        limit = query_int(q, "max", DEFAULT_RECORDS, 1, MAX_RECORDS)
        assert limit is not None  # it has a default
        wait = query_wait(q)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        after: int | None = None
        with self.commits.waiting():
            while True:
                commit = self.commits.next()
                after, frames, body = await asyncio.to_thread(
                    self._read, consumer, q, after, limit)
                left = deadline - loop.time()
                if frames or left <= 0:
                    return Reply(200, MSGPACK, body)
                await self.commits.wait(commit, left)

    def _read(self, consumer: str, q: dict[str, str], after: int | None,
              limit: int) -> tuple[int, int, bytes]:
        """In a worker thread: (after, frames, the packed batch)."""
        if after is None:
            after = query_int(q, "after", None, 0, 2**63)
        try:
            wal_id, after, frames = self.agent.read_batch(
                consumer, after, q.get("wal"), limit, MAX_BATCH_BYTES)
        except WalConflict as err:
            raise ApiError(409, str(err), wal=err.wal) from None
        except NotKept as err:
            raise ApiError(410, str(err), missing_from=err.missing_from,
                           missing_to=err.missing_to) from None
        return after, len(frames), msgpack.packb({
            "v": 1, "host": self.agent.host_id, "wal": wal_id,
            "first_seq": frames[0].first_seq if frames else None,
            "last_seq": frames[-1].last_seq if frames else None,
            "frames": [{"records": f.records, "first_seq": f.first_seq,
                        "last_seq": f.last_seq, "prev_hash": f.prev_hash,
                        "hash": f.hash, "sig": f.sig,
                        "key_id": f.key_id.hex()} for f in frames]})

    # --- POST /v1/ack -----------------------------------------------------

    async def _ack(self, request: Request) -> Reply:
        doc = parse_body(request)
        consumer = self._consumer(request.consumer, doc.get("consumer"))
        wal_field, seq = doc.get("wal"), doc.get("seq")
        if isinstance(wal_field, str):
            try:
                wal_field = bytes.fromhex(wal_field)
            except ValueError:
                raise ApiError(400, "wal must be the WAL id (bin, or hex in "
                               "JSON)") from None
        if not isinstance(wal_field, bytes):
            raise ApiError(400, "wal is required")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise ApiError(400, "seq must be an integer >= 0")
        cursor = await asyncio.to_thread(self._ack_durably, consumer,
                                         wal_field, seq)
        return Reply(200, JSON, json.dumps({"consumer": consumer,
                                            "seq": cursor}).encode())

    def _ack_durably(self, consumer: str, wal_id: bytes, seq: int) -> int:
        """In a worker thread: the consumer's cursor, on disk."""
        try:
            return self.agent.ack(consumer, wal_id, seq)
        except WalConflict as err:
            raise ApiError(409, str(err), wal=err.wal) from None
        except OSError as err:
            raise ApiError(503, f"cannot make the ack durable: "
                           f"{err.strerror or err}") from None

    # --- GET /v1/status, GET /metrics -------------------------------------

    async def _status(self, _request: Request) -> Reply:
        doc = await asyncio.to_thread(self.agent.status)
        return Reply(200, JSON, json.dumps(doc, default=repr).encode())

    async def _metrics(self, _request: Request) -> Reply:
        doc = await asyncio.to_thread(self.agent.status)
        text = render(doc)
        if self.agent.cfg.api.vm_metrics:
            text += self.vm_series.text(self.agent.vm_samples())
        return Reply(200, "text/plain; version=0.0.4", text.encode())


def parse_query(qs: str) -> dict[str, str]:
    try:
        parsed = parse_qs(qs, keep_blank_values=True, max_num_fields=16)
    except ValueError as err:
        raise ApiError(400, f"bad query: {str(err)[:100]}") from None
    return {k: v[-1] for k, v in parsed.items()}


def query_int(q: dict[str, str], key: str, default: int | None, low: int,
              high: int) -> int | None:
    if key not in q:
        return default
    text = q[key]
    if not INTEGER.fullmatch(text) or not low <= int(text) <= high:
        raise ApiError(400, f"{key} must be an integer from {low} to "
                       f"{high}, got {text[:40]!r}")
    return int(text)


def query_wait(q: dict[str, str]) -> float:
    if "wait" not in q:
        return 0.0
    text = q["wait"]
    if not SECONDS.fullmatch(text) or not 0 <= float(text) <= MAX_WAIT_S:
        raise ApiError(400, f"wait must be seconds from 0 to "
                       f"{MAX_WAIT_S:g}, got {text[:40]!r}")
    return float(text)


def check_length(headers: dict[str, str]) -> None:
    """h11 has checked that a Content-Length is digits."""
    length = headers.get("content-length")
    if length is None:
        raise ApiError(411, "Content-Length is required")
    if len(length) > 19 or int(length) > MAX_BODY:
        raise ApiError(413, f"body over {MAX_BODY} bytes")


def parse_body(request: Request) -> dict[str, Any]:
    raw = request.body
    ctype = request.headers.get("content-type", "").split(";")[0].strip()
    try:
        if ctype == MSGPACK:
            doc = msgpack.unpackb(raw, raw=False, strict_map_key=True,
                                  max_bin_len=1024, max_str_len=1024,
                                  max_array_len=16, max_map_len=16)
        else:
            doc = json.loads(raw)
    except (ValueError, RecursionError, msgpack.UnpackException) as err:
        raise ApiError(400, f"body is not valid {ctype[:40] or 'JSON'}: "
                       f"{str(err)[:100]}") from None
    if not isinstance(doc, dict):
        raise ApiError(400, "body must be a map")
    return doc
