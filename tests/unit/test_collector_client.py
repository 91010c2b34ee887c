"""The collector's HTTP client when the agent goes away mid-response (it
was killed or restarted): a ConnectionError, which ``vmagent pull --follow``
and collectors treat like a refused connection, never an HTTP library
exception that ends them."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import urllib.error

import pytest

from vmagent.collector import Client, Unreachable
from vmagent.collector.client import BadReply


def serve_once(reply: bytes) -> tuple[str, threading.Thread]:
    """A server that answers one request with ``reply`` and hangs up."""
    srv = socket.create_server(("127.0.0.1", 0))

    def run() -> None:
        conn, _ = srv.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(reply)
        srv.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return f"http://127.0.0.1:{srv.getsockname()[1]}", t


@pytest.mark.parametrize("reply", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 34\r\n\r\nonly part",  # body cut
    b"HTTP/1.1 409 Conflict\r\nContent-Length: 90\r\n\r\n{\"err",  # error
    b"HTTP/1.1 20",  # status line cut
    b"",  # closed before answering
])
def test_a_response_cut_off_is_a_connection_error(reply):
    url, t = serve_once(reply)
    with pytest.raises(ConnectionError, match="cut off|closed|reset|abort"):
        Client(url, "default", "token", timeout=30).batch(None)
    t.join(30)


def test_no_agent_listening_is_unreachable_in_words():
    """``vmagent pull`` prints this message; ``--follow`` and collectors
    retry it like any OSError; ``reason`` still holds the cause."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(Unreachable) as e:
        Client(url, "default", "token", timeout=30).batch(None)
    assert str(e.value) == f"cannot reach {url}: connection refused"
    assert isinstance(e.value, OSError)
    assert isinstance(e.value, urllib.error.URLError)
    assert isinstance(e.value.reason, ConnectionRefusedError)


def serve(handler) -> tuple[str, threading.Thread]:  # noqa: ANN001
    """A server that runs ``handler(conn)`` for one connection."""
    srv = socket.create_server(("127.0.0.1", 0))

    def run() -> None:
        conn, _ = srv.accept()
        with conn:
            conn.recv(65536)
            with contextlib.suppress(OSError):  # the client hung up
                handler(conn)
        srv.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return f"http://127.0.0.1:{srv.getsockname()[1]}", t


def test_a_huge_declared_body_is_refused_without_reading_it():
    def huge(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2000000000\r\n\r\n")
        for _ in range(10_000):
            conn.sendall(b"\0" * 65536)

    url, t = serve(huge)
    with pytest.raises(BadReply, match="2000000000 bytes refused"):
        Client(url, "default", "token", timeout=30,
               max_body=1 << 20).batch(None)
    t.join(30)


def test_a_body_without_length_is_cut_at_the_cap():
    sent = []

    def stream(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.0 200 OK\r\n\r\n")
        for _ in range(10_000):
            conn.sendall(b"\0" * 65536)
            sent.append(1)

    url, t = serve(stream)
    with pytest.raises(BadReply, match="larger than 1048576 bytes"):
        Client(url, "default", "token", timeout=30,
               max_body=1 << 20).batch(None)
    t.join(30)
    assert len(sent) < 1000  # it stopped reading long before the end


def test_a_trickling_reply_is_dropped_at_the_deadline():
    def trickle(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        for _ in range(100):
            conn.sendall(b"\x90")
            time.sleep(0.1)

    url, t = serve(trickle)
    began = time.monotonic()
    with pytest.raises(BadReply, match="not complete after 1 s"):
        Client(url, "default", "token", timeout=1).batch(None)
    assert time.monotonic() - began < 2
    t.join(30)


@pytest.mark.parametrize("body", [b"<html>bad gateway</html>",
                                  b"\x92\x01\x02", b"\x81\xa1v\x02"])
def test_garbage_is_a_bad_reply_not_a_verification_failure(body):
    url, t = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                        % (len(body), body))
    with pytest.raises(BadReply) as e:
        Client(url, "default", "token", timeout=30).batch(None)
    assert isinstance(e.value, OSError)  # retried: the host turns failing
    t.join(30)
