"""Fixtures that start real guests and always clean up after them."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

import pytest

from integration.guests import Guest, delete_tap, make_tap
from vmagent.probes import VM, Prober

HOST_ID = "test-host-7"


@pytest.fixture
def taps() -> Iterator[Callable[[int], list[str]]]:
    """``taps(n)``: n new taps, IPv6 off, removed after the test."""
    made: list[str] = []

    def make(n: int) -> list[str]:
        names = [make_tap(f"vmt{os.getpid() % 100000}x{len(made) + i}")
                 for i in range(n)]
        made.extend(names)
        return names

    yield make
    for name in made:
        delete_tap(name)


@pytest.fixture
def guests(tmp_path) -> Iterator[Callable[..., Guest]]:
    """``guests(name=..., ...)``: a started Guest, killed after the test."""
    started: list[Guest] = []

    def start(**kwargs: object) -> Guest:
        g = Guest(workdir=tmp_path, **kwargs).start()
        started.append(g)
        return g

    yield start
    for g in started:
        g.kill()


@pytest.fixture
def prober() -> Iterator[Prober]:
    with Prober(HOST_ID) as p:
        yield p


def wait_until(pred, timeout: float = 30.0):  # noqa: ANN001, ANN201
    """Poll ``pred`` until it returns something true; that value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"condition not met in {timeout}s")


def wait_until_still(value, still: float = 1.5,  # noqa: ANN001, ANN201
                     timeout: float = 30.0):
    """Poll ``value`` until it has not changed for ``still`` seconds (a
    count that stopped growing, however loaded the machine); that value."""
    deadline = time.monotonic() + timeout
    last, since = value(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = value()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= still:
            return now
    raise TimeoutError(f"still changing after {timeout}s")


def wait_for_vm(prober: Prober, pid: int, timeout: float = 30.0) -> VM:
    """Discover until the VM with ``pid`` is metered with all its vCPUs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        prober.discover()
        vm = next((v for v in prober.vms() if v.pid == pid), None)
        if vm is not None and vm.complete:
            return vm
        time.sleep(0.05)
    raise TimeoutError(f"VM pid {pid} not found complete in {timeout}s")


@pytest.fixture
def agent(tmp_path):
    """``agent(extra_config="", interval=0.5, fake_vms=0)``: a started
    vmagent process, killed after the test."""
    from integration.agent_process import AgentProcess

    started: list[AgentProcess] = []

    def start(extra_config: str = "", interval: float = 0.5,
              fake_vms: int = 0) -> AgentProcess:
        a = AgentProcess(tmp_path / f"agent{len(started)}", extra_config,
                         interval, fake_vms)
        started.append(a)
        return a.start()

    yield start
    for a in started:
        a.kill()


@pytest.fixture(scope="session")
def pg_cluster():
    """A throwaway PostgreSQL cluster for the session (integration/
    postgres.py); skips naming the package when it is not installed."""
    from integration.postgres import Cluster, skip_reason

    why = skip_reason()
    if why:
        pytest.skip(why)
    cluster = Cluster()
    try:
        yield cluster.init()
    finally:
        cluster.destroy()


@pytest.fixture
def pg_url(pg_cluster) -> str:
    """A new, empty database in the session's cluster: its URL."""
    return pg_cluster.create_database()
