"""The pull API over HTTP/1.1 (ARCHITECTURE §5, docs/protocol.md).

``GET /v1/batches``, ``POST /v1/ack``, ``GET /v1/status``, ``GET /metrics``;
every endpoint needs ``Authorization: Bearer <token>``.  Every error is a
JSON ``{"error": ...}`` with a 4xx code; nothing a client sends reaches the
WAL except a well-formed ack.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import msgpack

from vmagent.api import tls
from vmagent.api.guard import ConnectionGuard
from vmagent.api.metrics import render
from vmagent.wal import CursorError

if TYPE_CHECKING:
    from vmagent.daemon import Agent

MAX_RECORDS, DEFAULT_RECORDS = 10_000, 1000
MAX_WAIT_S = 60.0
MAX_BATCH_BYTES = 4 << 20
MAX_BODY = 64 << 10
REQUEST_TIMEOUT_S = 30.0


class ApiError(Exception):
    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.body = status, {"error": message, **extra}


def parse_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


class ApiServer(ThreadingHTTPServer):
    """Plain HTTP or TLS; the TLS handshake runs in the connection's own
    thread, so a client that never finishes it holds up nobody else."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 128

    def __init__(self, agent: Agent) -> None:
        host, port = parse_listen(agent.cfg.api.listen)
        if ":" in host:
            self.address_family = socket.AF_INET6
        self.agent = agent
        self.tls = tls.server_context(agent.cfg)
        self.guard = ConnectionGuard(
            header_timeout=agent.cfg.api.client_timeout_s)
        super().__init__((host, port), Handler)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="api",
                                  daemon=True)
        thread.start()
        return thread

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.guard.admit():  # every slot taken: refuse at once
            with contextlib.suppress(OSError):
                request.sendall(BUSY)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.guard.release()
            raise

    def process_request_thread(self, request: Any,
                               client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.guard.release()

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(self.guard.header_timeout)
        try:
            conn = self.tls.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError):
            return  # no certificate, a foreign CA, or no handshake at all
        try:
            super().finish_request(conn, client_address)
        finally:
            conn.close()

    def server_close(self) -> None:
        self.guard.close()
        super().server_close()


BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json"
        b"\r\nContent-Length: 33\r\nConnection: close\r\n\r\n"
        b'{"error": "too many connections"}')


class Handler(BaseHTTPRequestHandler):
    server: ApiServer
    protocol_version = "HTTP/1.1"
    server_version = "vmagent"
    timeout = REQUEST_TIMEOUT_S

    def log_message(self, format: str, *args: Any) -> None:
        pass  # errors are logged by the agent, not per request

    def send_error(self, code: int, message: str | None = None,
                   explain: str | None = None) -> None:
        """Errors found while parsing the request: JSON like every other
        error, with a status line even for HTTP/0.9-looking requests."""
        if self.request_version == "HTTP/0.9" or not hasattr(self, "command"):
            self.request_version = "HTTP/1.1"
        self.command = getattr(self, "command", None) or "GET"
        text = message or HTTPStatus(code).phrase
        self._reply(code, "application/json",
                    json.dumps({"error": text}).encode())

    def handle_one_request(self) -> None:
        # the request line and headers must arrive within the deadline
        self.server.guard.watch(self.connection)
        try:
            super().handle_one_request()
        finally:
            self.server.guard.unwatch(self.connection)

    def parse_request(self) -> bool:
        ok = super().parse_request()  # reads the headers
        self.server.guard.unwatch(self.connection)
        return ok

    # --- dispatch -----------------------------------------------------------

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def _other(self) -> None:
        self._handle(self.command)

    do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _other

    def _handle(self, method: str) -> None:
        url = urlsplit(self.path)
        routes = {"/v1/batches": ("GET", self._batches),
                  "/v1/ack": ("POST", self._ack),
                  "/v1/status": ("GET", self._status),
                  "/metrics": ("GET", self._metrics)}
        try:
            if not self.server.guard.allow(self.client_address[0]):
                raise ApiError(HTTPStatus.TOO_MANY_REQUESTS, "too many "
                               "requests from this address; slow down")
            if url.path not in routes:
                raise ApiError(HTTPStatus.NOT_FOUND, f"no such endpoint "
                               f"{url.path!r}")
            want, handler = routes[url.path]
            if method != want:
                raise ApiError(HTTPStatus.METHOD_NOT_ALLOWED,
                               f"{url.path} takes {want}, not {method}")
            consumer = self._authenticate()
            query = self._query(url.query)
            ctype, body = handler(consumer, query)
            self._reply(HTTPStatus.OK, ctype, body)
        except ApiError as err:
            self._reply(err.status, "application/json",
                        json.dumps(err.body).encode())

    def _reply(self, status: int, ctype: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        if status >= 400:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    # --- request parsing ----------------------------------------------------

    def _authenticate(self) -> str:
        """The consumer this request speaks for: the CN of a verified client
        certificate (mutual TLS), else the owner of the bearer token."""
        agent = self.server.agent
        cn = tls.peer_common_name(self.connection)
        if cn is not None:
            if cn not in agent.consumers():
                raise ApiError(HTTPStatus.FORBIDDEN, f"certificate CN {cn!r} "
                               "is not a consumer")
            return cn
        header = self.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(HTTPStatus.UNAUTHORIZED, "a bearer token is "
                           "required (Authorization: Bearer <token>)")
        consumer = self.server.agent.tokens.consumer_of(token.strip())
        if consumer is None:
            raise ApiError(HTTPStatus.UNAUTHORIZED, "unknown token")
        return consumer

    @staticmethod
    def _query(qs: str) -> dict[str, str]:
        try:
            parsed = parse_qs(qs, keep_blank_values=True, strict_parsing=False,
                              max_num_fields=16)
        except ValueError as err:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"bad query: {err}") \
                from None
        return {k: v[-1] for k, v in parsed.items()}

    @staticmethod
    def _int(query: dict[str, str], key: str, default: int | None,
             low: int, high: int) -> int | None:
        if key not in query:
            return default
        text = query[key]
        if not text.isdigit() or not low <= int(text) <= high:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"{key} must be an integer "
                           f"from {low} to {high}, got {text[:40]!r}")
        return int(text)

    def _consumer(self, token_consumer: str, claimed: object) -> str:
        if not isinstance(claimed, str) or not claimed:
            raise ApiError(HTTPStatus.BAD_REQUEST, "consumer is required")
        if claimed != token_consumer:
            raise ApiError(HTTPStatus.FORBIDDEN, f"this token is not "
                           f"consumer {claimed[:128]!r}'s")
        return claimed

    # --- endpoints ----------------------------------------------------------

    def _batches(self, consumer: str, q: dict[str, str]) -> tuple[str, bytes]:
        consumer = self._consumer(consumer, q.get("consumer"))
        agent = self.server.agent
        wal = agent.wal
        limit = self._int(q, "max", DEFAULT_RECORDS, 1, MAX_RECORDS)
        wait = self._wait(q)
        with agent.committed:
            current = wal.wal_id.hex()
            if "wal" in q and q["wal"].lower() != current:
                raise ApiError(HTTPStatus.CONFLICT, "not the current WAL",
                               wal=current)
            after = self._int(q, "after", None, 0, 2**63)
            if after is None:
                after = wal.cursors.acked.get(consumer, 0)
            if after > wal.next_seq - 1:
                raise ApiError(HTTPStatus.CONFLICT, f"after {after} is beyond "
                               f"the last seq {wal.next_seq - 1}", wal=current)
            if after + 1 < wal.first_seq:
                raise ApiError(HTTPStatus.GONE, "those seqs are no longer "
                               "kept", missing_from=after + 1,
                               missing_to=wal.first_seq - 1)
            if wal.durable_seq <= after and wait > 0:
                agent.committed.wait_for(lambda: wal.durable_seq > after,
                                         timeout=wait)
            frames = wal.frames(after, max_records=limit or DEFAULT_RECORDS,
                                max_bytes=MAX_BATCH_BYTES)
            wal_id = wal.wal_id
        return "application/msgpack", msgpack.packb({
            "v": 1, "host": agent.host_id, "wal": wal_id,
            "first_seq": frames[0].first_seq if frames else None,
            "last_seq": frames[-1].last_seq if frames else None,
            "frames": [{"records": f.records, "first_seq": f.first_seq,
                        "last_seq": f.last_seq, "prev_hash": f.prev_hash,
                        "hash": f.hash, "sig": f.sig,
                        "key_id": f.key_id.hex()} for f in frames]})

    def _wait(self, q: dict[str, str]) -> float:
        if "wait" not in q:
            return 0.0
        try:
            wait = float(q["wait"])
        except ValueError:
            wait = -1.0
        if not 0 <= wait <= MAX_WAIT_S:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"wait must be seconds from "
                           f"0 to {MAX_WAIT_S:g}, got {q['wait'][:40]!r}")
        return wait

    def _ack(self, consumer: str, _q: dict[str, str]) -> tuple[str, bytes]:
        doc = self._body()
        consumer = self._consumer(consumer, doc.get("consumer"))
        agent = self.server.agent
        wal_field, seq = doc.get("wal"), doc.get("seq")
        if isinstance(wal_field, str):
            try:
                wal_field = bytes.fromhex(wal_field)
            except ValueError:
                raise ApiError(HTTPStatus.BAD_REQUEST, "wal must be the WAL "
                               "id (bin, or hex in JSON)") from None
        if not isinstance(wal_field, bytes):
            raise ApiError(HTTPStatus.BAD_REQUEST, "wal is required")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise ApiError(HTTPStatus.BAD_REQUEST, "seq must be an integer "
                           ">= 0")
        with agent.lock:
            current = agent.wal.wal_id
            if wal_field != current:
                raise ApiError(HTTPStatus.CONFLICT, "not the current WAL",
                               wal=current.hex())
            try:
                cursor = agent.wal.ack(consumer, seq)
            except CursorError as err:
                raise ApiError(HTTPStatus.CONFLICT, str(err),
                               wal=current.hex()) from None
        return "application/json", json.dumps(
            {"consumer": consumer, "seq": cursor}).encode()

    def _body(self) -> dict[str, Any]:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise ApiError(HTTPStatus.LENGTH_REQUIRED, "Content-Length is "
                           "required")
        if int(length) > MAX_BODY:
            raise ApiError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                           f"body over {MAX_BODY} bytes")
        self.server.guard.watch(self.connection)  # the body too, in time
        try:
            raw = self.rfile.read(int(length))
        finally:
            self.server.guard.unwatch(self.connection)
        ctype = self.headers.get("Content-Type", "").split(";")[0].strip()
        try:
            if ctype == "application/msgpack":
                doc = msgpack.unpackb(raw, raw=False, strict_map_key=True,
                                      max_bin_len=1024, max_str_len=1024,
                                      max_array_len=16, max_map_len=16)
            else:
                doc = json.loads(raw)
        except (ValueError, msgpack.UnpackException) as err:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"body is not valid "
                           f"{ctype or 'JSON'}: {str(err)[:100]}") from None
        if not isinstance(doc, dict):
            raise ApiError(HTTPStatus.BAD_REQUEST, "body must be a map")
        return doc

    def _status(self, _c: str, _q: dict[str, str]) -> tuple[str, bytes]:
        return "application/json", json.dumps(self.server.agent.status(),
                                              default=repr).encode()

    def _metrics(self, _c: str, _q: dict[str, str]) -> tuple[str, bytes]:
        return "text/plain; version=0.0.4", \
            render(self.server.agent.status()).encode()
