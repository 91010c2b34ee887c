"""One client connection of the pull API: h11 parses what arrives, one
timer enforces whichever deadline applies (headers from accept, the body,
taking the reply, idle keep-alive), and a task exists only while a request
is being answered.  A client that goes away is one log line."""

from __future__ import annotations

import asyncio
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Coroutine

import h11

from vmagent.api import tls
from vmagent.api.server import (
    MAX_BODY,
    MAX_HEADERS,
    STOPPING,
    WRITE_TIMEOUT_S,
    HttpServer,
    Reply,
    Request,
)

LINGER_S, LINGER_BYTES = 2.0, 256 << 10  # unread request data after a reply
PIECE = 256 << 10  # a reply body is written (and encrypted) this much at once


class Connection(asyncio.Protocol):
    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.h11 = h11.Connection(h11.SERVER,
                                  max_incomplete_event_size=MAX_HEADERS)
        self.transport: Any = None  # the TLS transport once handshaken
        self.client = "?"
        self.cert_cn: str | None = None
        self.handshaking = False
        self.request: Request | None = None  # being read or answered
        self.body = bytearray()
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.writable: asyncio.Future[None] | None = None
        self.reason: str | None = None  # why we cut it off
        self.lingering: int | None = None  # bytes discarded so far
        self.eof = False

    # --- asyncio's callbacks ------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.client = str(peer[0]) if isinstance(peer, tuple) else "local"
        self.server.opened(self)
        self.server.make_pending(self)
        self._arm(self.server.timeout_s, "no request headers in time")
        if self.server.tls is not None:
            # The task's first step is queued before the loop can poll
            # this socket: start_tls puts the TLS layer in (and pauses
            # reading, cancelling any read already queued) before a byte
            # is read.  Pausing here would not do: before 3.11 asyncio
            # starts reading a paused new transport all the same.
            self.handshaking = True
            self.task = self.loop.create_task(self._handshake(transport))

    def data_received(self, data: bytes) -> None:
        if self.lingering is not None:
            self.lingering += len(data)
            if self.lingering > LINGER_BYTES:
                self.abort("too much unread data")
            return
        self.h11.receive_data(data)
        if not self.handshaking:
            self._pump()

    def eof_received(self) -> bool:
        if self.lingering is not None:
            return False  # closes
        self.eof = True
        self.h11.receive_data(b"")
        if not self.handshaking:
            self._pump()
        return self.server.tls is None  # half-closed TCP: the reply goes out

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.server.closed(self)
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)
        if self.request is not None and self.reason != STOPPING:
            self._log_gone(exc)
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def pause_writing(self) -> None:
        self.writable = self.loop.create_future()

    def resume_writing(self) -> None:
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)
        self.writable = None

    def abort(self, reason: str) -> None:
        self.reason = reason
        if self.transport is not None:
            self.transport.abort()

    # --- TLS --------------------------------------------------------------

    async def _handshake(self, raw: asyncio.Transport) -> None:
        assert self.server.tls is not None
        why = "closed during the handshake"  # start_tls returns None then
        try:
            transport = await self.loop.start_tls(
                raw, self, self.server.tls, server_side=True,
                ssl_handshake_timeout=self.server.timeout_s)
        except (OSError, asyncio.TimeoutError) as err:  # ssl.SSLError too
            transport, why = None, str(err)[:200]
        if transport is None:
            self.server.log.debug("api_tls_handshake_failed",
                                  client=self.client, error=why)
            self.abort(self.reason or "TLS handshake failed")
            self._disarm()
            self.server.closed(self)  # asyncio does not tell the protocol
            return
        self.transport, self.handshaking, self.task = transport, False, None
        self.cert_cn = tls.peer_common_name(
            transport.get_extra_info("ssl_object"))
        self._pump()  # what arrived with the handshake

    # --- reading a request --------------------------------------------------

    def _pump(self) -> None:
        """Act on every event h11 can make of what has arrived."""
        while self.task is None and not self.transport.is_closing():
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as err:
                self._bad_request(err)
                return
            if event is h11.NEED_DATA:
                return
            if isinstance(event, h11.Request):
                self._on_head(event)
            elif isinstance(event, h11.Data):
                self._on_body(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self._on_end()
            else:  # ConnectionClosed, PAUSED (a protocol switch)
                self.transport.close()
                return

    def _on_head(self, event: h11.Request) -> None:
        self.server.pending.discard(self)
        headers: dict[str, str] = {}
        for name, value in event.headers:
            headers.setdefault(name.decode("ascii", "replace"),
                               value.decode("latin-1"))
        self.request = Request(event.method.decode("ascii", "replace"),
                               event.target.decode("latin-1"), headers,
                               self.client, self.cert_cn)
        self.body = bytearray()
        reply = self._admit(self.request, head_size(event))
        if reply is not None:
            self._start(self._send(reply))
            return
        self._arm(self.server.timeout_s, "no request body in time")
        if self.h11.they_are_waiting_for_100_continue:
            self.transport.write(self.h11.send(h11.InformationalResponse(
                status_code=100, headers=[], reason=b"Continue")))

    def _admit(self, request: Request, head_bytes: int) -> Reply | None:
        try:
            reply = self.server.app.admit(request)
        except Exception as err:  # noqa: BLE001 - a bug: a 500, go on
            reply = self._internal_error(request, err)
        if head_bytes > MAX_HEADERS:
            reply = Reply.error(431, f"request line and headers over "
                                f"{MAX_HEADERS} bytes")
        if reply is None:
            return None
        return self.server.throttle(request, reply, self.client)

    def _on_body(self, data: bytes) -> None:
        self.body += data
        if len(self.body) > MAX_BODY:
            self._start(self._send(Reply.error(
                413, f"body over {MAX_BODY} bytes")))

    def _on_end(self) -> None:
        self._disarm()
        assert self.request is not None
        self.request.body = bytes(self.body)
        self._start(self._serve(self.request))

    def _bad_request(self, err: h11.RemoteProtocolError) -> None:
        if self.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            self.abort("protocol error")
            return
        self.server.pending.discard(self)
        hint = err.error_status_hint
        reply = Reply.error(hint if 400 <= hint < 500 else 400,
                            f"bad request: {str(err)[:200]}")
        self._start(self._send(
            self.server.throttle(self.request, reply, self.client)))

    # --- answering ----------------------------------------------------------

    def _start(self, work: Coroutine[Any, Any, None]) -> None:
        self.transport.pause_reading()
        self.task = self.loop.create_task(work)

    async def _serve(self, request: Request) -> None:
        try:
            reply = await self.server.app.handle(request)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # noqa: BLE001 - a bug: a 500
            reply = self._internal_error(request, err)
        await self._send(reply)

    async def _send(self, reply: Reply) -> None:
        if reply.delay_s:  # held back, at the cost of a pending connection
            self._disarm()
            self.server.make_pending(self)
            await asyncio.sleep(reply.delay_s)
            self.server.pending.discard(self)
        if self.transport.is_closing():
            return
        try:
            sent = await self._write(reply)
        except h11.LocalProtocolError as err:
            self.server.log.error("api_reply_failed", client=self.client,
                                  error=str(err)[:200])
            self.abort("cannot frame the reply")
            return
        if sent:
            self._finish()

    async def _write(self, reply: Reply) -> bool:
        """The reply, a piece at a time as the client takes it (TLS then
        encrypts while the client decrypts); False if cut off."""
        headers = [("Content-Type", reply.ctype),
                   ("Content-Length", str(len(reply.body))),
                   ("Server", "vmagent"), ("Date", formatdate(usegmt=True))]
        if reply.status >= 400:
            headers.append(("Connection", "close"))
        head = self.h11.send(h11.Response(
            status_code=reply.status, headers=headers,
            reason=HTTPStatus(reply.status).phrase.encode())) or b""
        body = reply.body
        if self.request is not None and self.request.method == "HEAD":
            body = b""
        if len(body) <= PIECE:  # one write, one segment
            if body:
                head += self.h11.send(h11.Data(data=body)) or b""
            self.transport.write(head)
        else:
            self.transport.write(head)
            for start in range(0, len(body), PIECE):
                for part in self.h11.send_with_data_passthrough(
                        h11.Data(data=body[start:start + PIECE])) or ():
                    self.transport.write(part)
                if not await self._drained():
                    return False
        self.h11.send(h11.EndOfMessage())
        return await self._drained()

    async def _drained(self) -> bool:
        """Wait until the client has taken what was written: it must keep
        taking the reply, at least a piece every WRITE_TIMEOUT_S."""
        if self.writable is not None:
            self._arm(WRITE_TIMEOUT_S, "too slow to take its reply")
            await self.writable
            self._disarm()
        else:  # a turn of the loop: a reset client is noticed (TLS too)
            await asyncio.sleep(0)
        return not self.transport.is_closing()

    def _finish(self) -> None:
        """The reply is out: the next request on this connection, or a
        close (after discarding what the client still sends)."""
        self.request, self.task = None, None
        conn = self.h11
        self._read_rest()
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
            self.server.make_pending(self)
            self._arm(self.server.timeout_s, "idle")
            self.transport.resume_reading()
            self._pump()  # a pipelined request may be waiting
        elif conn.their_state in (h11.SEND_BODY, h11.ERROR) and \
                not self.eof and self.transport.can_write_eof():
            self._linger()
        else:  # what is still buffered must go out in time, too
            self._arm(WRITE_TIMEOUT_S, "too slow to take its reply")
            self.transport.close()

    def _read_rest(self) -> None:
        """Discard what h11 already holds of a request answered early
        (for a GET, just the end of its empty body)."""
        try:
            while self.h11.their_state is h11.SEND_BODY:
                if self.h11.next_event() is h11.NEED_DATA:
                    return
        except h11.RemoteProtocolError:
            pass

    def _linger(self) -> None:
        """Answered before the whole request was read: closing now would
        reset the connection and could destroy the reply in flight."""
        try:
            self.transport.write_eof()
        except OSError:  # already reset by the client
            self.abort("reset")
            return
        self.lingering = 0
        self.server.make_pending(self)
        self._arm(min(LINGER_S, self.server.timeout_s), "lingering")
        self.transport.resume_reading()

    def _internal_error(self, request: Request, err: Exception) -> Reply:
        self.server.log.error("api_request_failed", request=request.line(),
                              error=f"{type(err).__name__}: {err}"[:300])
        return Reply.error(500, "internal error; see the agent's log")

    # --- deadlines and logging ---------------------------------------------

    def _arm(self, seconds: float, reason: str) -> None:
        self._disarm()
        self.timer = self.loop.call_later(seconds, self.abort, reason)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _log_gone(self, exc: Exception | None) -> None:
        """One line for a client that went away (or was cut off) before
        its reply was out; never a traceback."""
        request = self.request
        assert request is not None
        log = self.server.log.info if request.authenticated \
            else self.server.log.debug
        why = self.reason or (f"{type(exc).__name__}: {exc}" if exc
                              else "closed by the client")
        log("api_client_gone", client=self.client, request=request.line(),
            consumer=request.consumer, reason=why[:200])


def head_size(event: h11.Request) -> int:
    """About the bytes of a request line and headers: h11 bounds only what
    it holds incomplete, and a whole head can come in one read."""
    return len(event.method) + len(event.target) + sum(
        len(name) + len(value) + 4 for name, value in event.headers)
