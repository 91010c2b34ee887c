"""The reference pull client: pull batches and ack them
(``vmagent pull``; docs/protocol.md is the contract).  Verification is
``vmagent.frames``: nothing unverified is handed on or acked.
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import suppress
from typing import Any
from urllib.parse import urlencode

import msgpack

from vmagent.errors import VmagentError
from vmagent.frames import (  # the verifier, for the collector's users
    ChainState,
    VerifyError,
    unexplained,
    verify_batch,
)

__all__ = ["BadReply", "ChainState", "Client", "PullError", "TlsError",
           "Unreachable", "VerifyError", "tls_context", "unexplained",
           "verify_batch"]

# A reply is at most 4 MiB plus one frame (docs/protocol.md); a frame is
# one commit.  Anything far above is not an agent's batch.
MAX_BODY = 64 << 20
_CHUNK = 1 << 16


class Unreachable(urllib.error.URLError):
    """No connection to the agent (refused, no route, name unknown, TLS
    handshake refused): ``reason`` is the cause.  A URLError, so callers that
    look at ``reason`` still can, and an OSError like every connection
    failure; its message says where and why in words."""

    def __init__(self, url: str, reason: BaseException | str,
                 hint: str = "") -> None:
        super().__init__(reason)
        self.url, self.hint = url, hint

    def __str__(self) -> str:
        return f"cannot reach {self.url}: {_words(self.reason)}{self.hint}"


def _words(reason: BaseException | str) -> str:
    """``connection refused`` rather than ``[Errno 111] Connection
    refused``."""
    text = (getattr(reason, "strerror", None) or str(reason)).strip()
    if len(text) > 1 and text[0].isupper() and text[1].islower():
        text = text[0].lower() + text[1:]
    return text or type(reason).__name__


class BadReply(ConnectionError):
    """The agent's reply is not a batch at all (larger than the cap, not
    msgpack, not a version 1 map, too slow): transport trouble, retried
    like a refused connection, never evidence that failed verification
    (nothing in it was signed)."""


class PullError(VmagentError):
    """The agent answered with an error (its status and JSON body)."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(f"HTTP {status}: {body.get('error', body)}")
        self.status, self.body = status, body


class TlsError(VmagentError):
    """A CA certificate, client certificate or key that does not load."""


def tls_context(cacert: str | None, cert_pem: str | None = None,
                key_pem: str | None = None) -> ssl.SSLContext:
    """A client context that verifies the agent against ``cacert`` (a
    file; the system store without one) and, for mutual TLS, presents
    the certificate and key given as PEM text (what the collector's
    store keeps).  ``ssl`` loads a chain only from files: they are
    written to a private temporary directory and removed at once."""
    try:
        ctx = ssl.create_default_context(cafile=cacert)
    except (OSError, ssl.SSLError) as err:
        raise TlsError(f"cannot load CA certificate {cacert}: "
                       f"{getattr(err, 'strerror', None) or err}") from None
    if cert_pem is None and key_pem is None:
        return ctx
    if not cert_pem or not key_pem:
        raise TlsError("mutual TLS needs both a certificate and its key")
    with tempfile.TemporaryDirectory(prefix="vmcollector-tls-") as d:
        paths = []
        for name, text in (("cert.pem", cert_pem), ("key.pem", key_pem)):
            path = os.path.join(d, name)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            paths.append(path)
        try:
            ctx.load_cert_chain(paths[0], paths[1])
        except ssl.SSLError as err:
            raise TlsError("client certificate and key do not load "
                           f"together: {err.reason or err}") from None
    return ctx


def read_pem(path: str, what: str) -> str:
    """A PEM file's text, or TlsError naming the file (no PEM block in
    it is an error too)."""
    try:
        with open(path, encoding="ascii") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as err:
        why = getattr(err, "strerror", None) or "not PEM text"
        raise TlsError(f"cannot read {what} {path}: {why}") from None
    if "-----BEGIN " not in text:
        raise TlsError(f"{what} {path} holds no PEM block")
    return text


class Client:
    """HTTP access to one agent's pull API with a bearer token or, for
    mutual TLS, the client certificate in ``ssl_context`` (no token).

    ``timeout`` bounds every socket operation and the whole reply: a
    reply not complete ``timeout`` seconds after the request was sent is
    dropped (``BadReply``), however slowly its bytes trickle in; a body
    above ``max_body`` bytes is refused without reading it whole."""

    def __init__(self, url: str, consumer: str, token: str | None,
                 timeout: float = 90.0,
                 ssl_context: ssl.SSLContext | None = None,
                 max_body: int = MAX_BODY, client_cert: bool = False) -> None:
        self.url, self.consumer, self.token = url.rstrip("/"), consumer, token
        self.timeout, self.ssl_context = timeout, ssl_context
        self.max_body = max_body
        self.client_cert = client_cert  # ssl_context presents one
        self._ahead: _Ahead | None = None  # a batch pulled ahead (prefetch)

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
            where = f"{self.url}{path.split('?')[0]}"
            if isinstance(err, http.client.RemoteDisconnected):
                raise ConnectionError(
                    f"{where}: the agent closed the connection without a "
                    f"reply{self._hint()}") from None
            raise ConnectionError(  # an agent restarting, like a refusal
                f"{where}: response cut off ({type(err).__name__})") \
                from None

    def _open(self, req: urllib.request.Request) -> bytes:
        deadline = time.monotonic() + self.timeout
        try:
            with urllib.request.urlopen(req, timeout=self.timeout,
                                        context=self.ssl_context) as resp:
                return self._body(resp, deadline)
        except urllib.error.HTTPError as err:
            fp = err.fp
            raw = self._body(fp, deadline) \
                if isinstance(fp, http.client.HTTPResponse) else err.read()
            try:
                doc = json.loads(raw)
            except ValueError:
                doc = {"error": raw[:200].decode("utf-8", "replace")}
            raise PullError(err.code, doc) from None
        except urllib.error.URLError as err:  # not connected at all
            reset = isinstance(err.reason, (ConnectionResetError,
                                            ssl.SSLError))
            raise Unreachable(self.url, err.reason,
                              self._hint() if reset else "") from None

    def _hint(self) -> str:
        """TLS 1.3 refuses a missing client certificate after the
        handshake: the client sees a reset or a closed connection."""
        if self.ssl_context is None or self.client_cert:
            return ""
        return " (does the agent require a client certificate? give cert " \
            "and key)"

    def _body(self, resp: http.client.HTTPResponse,
              deadline: float) -> bytes:
        """The body, read a socket read at a time against the deadline
        and the size cap."""
        where = resp.geturl().split("?")[0]
        length = resp.getheader("Content-Length")
        if length is not None and length.isdigit() and \
                int(length) > self.max_body:
            raise BadReply(f"{where}: reply of {int(length)} bytes refused "
                           f"(cap {self.max_body})")
        parts: list[bytes] = []
        size = 0
        while True:
            if time.monotonic() > deadline:
                raise BadReply(f"{where}: reply not complete after "
                               f"{self.timeout:g} s")
            chunk = resp.read1(_CHUNK)
            if not chunk:
                if resp.length:  # fewer bytes than Content-Length said
                    raise http.client.IncompleteRead(b"", resp.length)
                return b"".join(parts)
            size += len(chunk)
            if size > self.max_body:
                raise BadReply(f"{where}: reply larger than "
                               f"{self.max_body} bytes refused")
            parts.append(chunk)

    def batch(self, after: int | None, wal: bytes | None = None,
              wait: float = 0, max_records: int = 1000) -> dict[str, Any]:
        """The batch after ``after``: the one ``prefetch`` pulled for the
        same ``after``, WAL and ``max_records`` if it holds frames, else
        asked for now."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead.key == (after, wal, max_records):
            doc = ahead.result()
            if doc is not None and doc.get("frames"):
                return doc
        return self._batch(after, wal, wait, max_records)

    def prefetch(self, after: int, wal: bytes, max_records: int) -> None:
        """Pull the batch after ``after`` (no long-poll) in the background,
        for the next ``batch`` call: a backlog's next batch travels while
        the caller stores this one.  Pulling changes nothing at the agent
        (only acks do); a reply not used, or failed, is dropped."""
        self._ahead = _Ahead((after, wal, max_records), lambda: self._batch(
            after, wal, 0, max_records))

    def _batch(self, after: int | None, wal: bytes | None, wait: float,
               max_records: int) -> dict[str, Any]:
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
            raise BadReply(f"{self.url}: reply is not msgpack: "
                           f"{str(err)[:100]}") from None
        if not isinstance(doc, dict) or doc.get("v") != 1:
            raise BadReply(f"{self.url}: reply is not a version 1 batch "
                           "map")
        return doc

    def ack(self, wal: bytes, seq: int) -> int:
        body = msgpack.packb({"consumer": self.consumer, "wal": wal,
                              "seq": seq})
        doc = json.loads(self._request("/v1/ack", body, "application/msgpack"))
        return int(doc["seq"])


class _Ahead:
    """One batch being pulled in a thread of its own (``prefetch``)."""

    def __init__(self, key: tuple[Any, ...],
                 pull: Callable[[], dict[str, Any]]) -> None:
        self.key = key
        self.doc: dict[str, Any] | None = None
        self.thread = threading.Thread(target=self._run, args=(pull,),
                                       name="prefetch", daemon=True)
        self.thread.start()

    def _run(self, pull: Callable[[], dict[str, Any]]) -> None:
        # failed: dropped, ``batch`` asks again and sees the error itself
        with suppress(VmagentError, OSError, ValueError):
            self.doc = pull()

    def result(self) -> dict[str, Any] | None:
        """The reply, once the pull is over (its own timeout bounds it)."""
        self.thread.join()
        return self.doc
