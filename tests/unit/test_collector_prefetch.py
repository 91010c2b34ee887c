"""The pull client's prefetch: the next batch of a backlog is pulled while
the collector stores the last one, and used only for the same cursor."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from urllib.parse import parse_qs, urlparse

import msgpack
import pytest

from vmagent.collector import Client, PullError

WAL = b"w" * 16


class Agent(http.server.BaseHTTPRequestHandler):
    """Answers GET /v1/batches with a batch naming the query's ``after``;
    the first ``fail`` requests get a 500, and ``empty`` replies hold no
    frames."""

    seen: list[dict[str, str]] = []
    fail = 0
    empty = False

    def do_GET(self) -> None:  # noqa: N802 - the handler's name
        q = {k: v[0] for k, v in parse_qs(urlparse(self.path).query).items()}
        type(self).seen.append(q)
        if type(self).fail > 0:
            type(self).fail -= 1
            self._reply(500, b'{"error": "boom"}', "application/json")
            return
        frames = [] if type(self).empty else [{"after": int(q["after"])}]
        self._reply(200, msgpack.packb({"v": 1, "wal": WAL, "host": "hv",
                                        "frames": frames}),
                    "application/msgpack")

    def _reply(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def agent() -> Iterator[Client]:
    Agent.seen, Agent.fail, Agent.empty = [], 0, False
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Agent)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield Client(f"http://127.0.0.1:{srv.server_port}", "default",
                     "token", timeout=30)
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(30)


def test_prefetched_batch_serves_the_next_pull_of_the_same_cursor(agent):
    agent.prefetch(5, WAL, 100)
    doc = agent.batch(5, WAL, wait=10, max_records=100)
    assert doc["frames"] == [{"after": 5}]
    assert [(q["after"], q["wait"]) for q in Agent.seen] == [("5", "0")]


def test_prefetch_for_another_cursor_is_dropped(agent):
    agent.prefetch(5, WAL, 100)
    doc = agent.batch(7, WAL, wait=0, max_records=100)
    assert doc["frames"] == [{"after": 7}]
    # the dropped pull is not waited for: it may land after the other
    deadline = time.monotonic() + 30
    while len(Agent.seen) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(q["after"] for q in Agent.seen) == ["5", "7"]
    assert agent.batch(5, WAL, max_records=100)["frames"] == [{"after": 5}]
    assert len(Agent.seen) == 3  # used once at most


def test_failed_prefetch_is_asked_again_and_its_error_seen(agent):
    Agent.fail = 2
    agent.prefetch(5, WAL, 100)
    with pytest.raises(PullError) as e:
        agent.batch(5, WAL, max_records=100)
    assert e.value.status == 500
    assert len(Agent.seen) == 2
    agent.prefetch(5, WAL, 100)  # the agent answers again
    assert agent.batch(5, WAL, max_records=100)["frames"] == [{"after": 5}]
    assert len(Agent.seen) == 3


def test_an_empty_prefetched_batch_is_asked_again_with_the_long_poll(agent):
    Agent.empty = True
    agent.prefetch(5, WAL, 100)
    assert agent.batch(5, WAL, wait=1, max_records=100)["frames"] == []
    assert [q["wait"] for q in Agent.seen] == ["0", "1"]
