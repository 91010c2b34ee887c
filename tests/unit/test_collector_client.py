"""The collector's HTTP client when the agent goes away mid-response (it
was killed or restarted): a ConnectionError, which ``vmagent pull --follow``
and collectors treat like a refused connection, never an HTTP library
exception that ends them."""

from __future__ import annotations

import socket
import threading
import urllib.error

import pytest

from vmagent.collector import Client, Unreachable


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
