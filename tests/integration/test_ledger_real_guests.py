"""The usage ledger over real guests end to end (issue 14, "Show"): a real
``vmagent run`` metering a paused KVM guest and the Linux test guest, a
real ``vmcollector run`` storing into SQLite, and ``usage --json`` compared
with what the guests did: the test guest's frames to the byte and packet,
its CPU burnt while the agent was down (its gen started after the host's
first evidence, so its CPU baseline is 0: COLLECTOR.md §5), the paused
guest's running time against its process lifetime, and its ``vcpu_ns``
exactly vCPUs × ``running_ns``."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from integration.conftest import wait_until
from integration.guests import (
    Guest,
    new_uuid,
    raw_image,
    send_frames,
    tap_counters,
)
from integration.test_collector import CollectorProcess
from testguest.builder import MissingTool, build
from testguest.guest import LinuxTestGuest

pytestmark = pytest.mark.realguest

HOST = "hv-real"
MIB = 1 << 20
S = 10**9
TICK = os.sysconf("SC_CLK_TCK")
RANGE = ("-s", "2000-01-01T00:00:00Z", "-e", "2100-01-01T00:00:00Z")
TX = (50, 200)  # frames the test guest sends: count, size
RX = (40, 300)  # frames the host writes into its tap


@pytest.fixture(scope="module")
def image():
    try:
        return build()
    except MissingTool as err:  # a skip naming the package, not an error
        pytest.skip(str(err))


def started_wall_ns(pid: int) -> int:
    """When ``pid`` started, in Unix ns: its start tick from /proc, placed
    against /proc/uptime read at (nearly) the same instant."""
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    now = time.time_ns()
    return now - int((uptime - int(stat[19]) / TICK) * S)


def stored(c: CollectorProcess, uuid: str) -> list[dict[str, Any]]:
    """The stored records about VM ``uuid``, samples inside ``coalesced``
    unpacked, in seq order."""
    out: list[dict[str, Any]] = []
    for _, _, rec in c.records(HOST):
        inner = rec.get("samples", []) if rec["kind"] == "coalesced" \
            else [rec]
        out += [r for r in inner if r.get("vm", {}).get("uuid") == uuid]
    return out


def nic_of(rec: dict[str, Any]) -> dict[str, int]:
    [nic] = rec.get("nics") or [{}]
    return nic


def cpu_of(rec: dict[str, Any]) -> int | None:
    cpu = rec.get("cpu") or {}
    if "total_ns" not in cpu:
        return None
    return cpu["total_ns"] + cpu.get("vhost_ns", 0)


def totals(records: list[dict[str, Any]], uuid: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in records:
        if r["vm"]["uuid"] == uuid:
            out[r["meter"]] = out.get(r["meter"], 0) + int(r["quantity"])
    return out


def usage(c: CollectorProcess) -> list[dict[str, Any]]:
    out = c.cli("usage", *RANGE, "--period", "hour", "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["records"]


def stopped(c: CollectorProcess, uuid: str) -> bool:
    return any(r["kind"] == "vm_stop" for r in stored(c, uuid))


def test_ledger_totals_match_what_real_guests_did(agent, guests, taps,
                                                  image, tmp_path):
    a = agent(interval=0.3)
    c = CollectorProcess(tmp_path / "collector",
                         [(HOST, a, a.public_key())], interval="1s")
    paused: Guest = guests(name="led-paused", uuid=new_uuid(), vcpus=2,
                           paused=True)
    born = started_wall_ns(paused.pid)
    [tap] = taps(1)
    try:
        assert c.cli("migrate").returncode == 0
        c.start()  # the host's first evidence: before both gens start
        wait_until(lambda: stored(c, paused.uuid or ""), 60)
        a.stop()  # an outage: the test guest boots and burns unseen
        with LinuxTestGuest(image, tmp_path, name="led-tg", uuid=new_uuid(),
                            tap=tap, mac="52:54:00:7e:57:02",
                            disk=raw_image(tmp_path / "tg.img", 16 * MIB),
                            steps=[f"frames:{TX[0]}:{TX[1]}", "idle"]) as g:
            a.start()
            g.run_step(1)  # the guest sends TX
            send_frames(tap, *RX)
            g.run_step(2)  # a round trip: QEMU has read the tap by now
            wait_until(lambda: any(
                nic_of(r).get("rx_packets") == RX[0]
                and nic_of(r).get("tx_packets") == TX[0]
                for r in stored(c, g.uuid)), 60)
            host_view = tap_counters(tap)
        killed = time.time_ns()
        paused.kill()
        wait_until(lambda: stopped(c, g.uuid) and
                   stopped(c, paused.uuid or ""), 60)
        assert c.stop() == 0, c.log_text()[-2000:]
        records = usage(c)
        check_frames(totals(records, g.uuid), host_view)
        check_cpu_before_first_sight(totals(records, g.uuid),
                                     stored(c, g.uuid))
        check_paused(records, paused.uuid or "", killed - born)
        ends = {h["vm"]["uuid"]: h["end_reason"] for h in json.loads(
            c.cli("history", "--json").stdout)["records"]}
        assert ends == {g.uuid: "pidfd", paused.uuid: "pidfd"}
    finally:
        c.kill()


def check_frames(got: dict[str, int], host_view: dict[str, int]) -> None:
    """Nothing else moves on the tap (IPv6 off on both sides), so the
    gen's totals are exactly the frames, and the tap's own counters
    (host view: swapped) agree."""
    want = {"net_tx_packets": TX[0], "net_tx_bytes": TX[0] * TX[1],
            "net_rx_packets": RX[0], "net_rx_bytes": RX[0] * RX[1]}
    assert {m: got.get(m) for m in want} == want
    assert (host_view["rx_packets"], host_view["rx_bytes"],
            host_view["tx_packets"], host_view["tx_bytes"]) == \
        (TX[0], TX[0] * TX[1], RX[0], RX[0] * RX[1])


def check_cpu_before_first_sight(got: dict[str, int],
                                 evidence: list[dict[str, Any]]) -> None:
    """The gen started after the host's first evidence: its CPU baseline
    is 0, so ``cpu_ns`` is its last reading whole, the boot the agent
    never saw (it was down) included."""
    readings = [(r["t"], cpu) for r in evidence
                if (cpu := cpu_of(r)) is not None]
    first, last = readings[0][1], max(readings)[1]
    started = evidence[0]["vm"]["started_ns"]
    assert started < evidence[0]["t"] - S, "seen only after its boot"
    assert first > 0.1 * S, f"the unseen boot burnt {first} ns"
    assert got["cpu_ns"] == last


def check_paused(records: list[dict[str, Any]], uuid: str,
                 lifetime: int) -> None:
    """A paused KVM guest whose process runs is billed as running: its
    running time is its process lifetime (within a second), its
    ``vcpu_ns`` exactly 2 × that, record by record."""
    got = totals(records, uuid)
    assert abs(got["running_ns"] - lifetime) < S, (got, lifetime)
    assert got["vcpu_ns"] == 2 * got["running_ns"]
    mine = [r for r in records if r["vm"]["uuid"] == uuid]
    pairs = {(r["start"], r["meter"]): int(r["quantity"]) for r in mine}
    assert all(pairs[(start, "vcpu_ns")] == 2 * q
               for (start, meter), q in pairs.items()
               if meter == "running_ns")
