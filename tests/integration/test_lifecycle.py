"""VM lifecycle edges with real KVM guests and real process accounting, in a
child pid namespace with its own ``accton`` (the host's accounting is never
touched): the agent and the guests run inside it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from integration.agent_process import AgentProcess
from integration.conftest import wait_until
from integration.guests import stop_process
from integration.test_acct_real import (
    acct_tolerance,
    cpu_ticks,
    host_pid_of,
    timeslices,
)
from needs import require

pytestmark = pytest.mark.realguest
TICK = os.sysconf("SC_CLK_TCK")


class Namespace:
    """A pid (and mount, for /proc) namespace kept alive by a shell that
    has turned accounting on into ``acct``."""

    def __init__(self, acct: Path) -> None:
        require("accton")
        acct.touch()
        self.init = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--mount-proc", "sh", "-c",
             f"accton {acct} >/dev/null; while :; do sleep 1; done"])
        self.host_init = wait_until(self._find_init)

    def _find_init(self) -> int | None:
        for child in Path(f"/proc/{self.init.pid}/task/{self.init.pid}/"
                          "children").read_text().split():
            return int(child)  # unshare --fork: the namespace's pid 1
        return None

    def prefix(self) -> list[str]:
        return ["nsenter", "-t", str(self.host_init), "-p", "-m", "--"]

    def start_vm(self, name: str, workdir: Path) -> int:
        log = open(workdir / f"{name}.log", "wb")  # noqa: SIM115
        subprocess.Popen([*self.prefix(), "qemu-system-x86_64", "-accel",
                          "kvm", "-m", "64", "-smp", "1", "-nodefaults",
                          "-nographic", "-serial", "none", "-monitor",
                          "none", "-name", f"guest={name},debug-threads=on"],
                         stdout=log, stderr=log)
        log.close()
        return wait_until(lambda: host_pid_of(name))

    def close(self) -> None:
        os.kill(self.host_init, signal.SIGKILL)  # takes the namespace down
        self.init.wait(timeout=30)


def terminate_in_namespace(a: AgentProcess) -> int:
    """SIGTERM the agent itself, not nsenter in front of it."""
    assert a.proc is not None
    nsenter = a.proc.pid
    agent = int(Path(f"/proc/{nsenter}/task/{nsenter}/children").read_text()
                .split()[0])
    os.kill(agent, signal.SIGTERM)
    code = a.proc.wait(timeout=60)
    a.proc = None
    return code


def kill_stopped(pid: int) -> None:
    """SIGKILL a process stopped by ``stop_process``, then SIGCONT its
    parent: nsenter stops itself when its child stops, and would never
    reap it (nor let the namespace end) otherwise."""
    parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1]
                 .split()[1])
    os.kill(pid, signal.SIGKILL)
    os.kill(parent, signal.SIGCONT)


def records(a: AgentProcess) -> list[dict]:
    out = a.cli("wal", "dump", str(a.state / "wal"), "--json").stdout
    return [json.loads(line) for line in out.splitlines()]


def of_kind(recs, kind, name):
    return [r for r in recs if r["kind"] == kind and r["vm"]["name"] == name]


def test_exits_are_closed_by_vm_stop_and_the_kernels_accounting(tmp_path):
    ns = Namespace(tmp_path / "pacct")
    a = AgentProcess(tmp_path / "agent", interval=2)
    a.config.write_text(a.config.read_text()
                        + f'[probes]\nacct_file = "{tmp_path / "pacct"}"\n')
    first, second = (f"lc-{uuid.uuid4().hex[:6]}" for _ in range(2))
    try:
        a.start(prefix=ns.prefix())
        pid1 = ns.start_vm(first, tmp_path)
        wait_until(lambda: of_kind(records(a), "sample", first), timeout=60)
        time.sleep(3)  # a runtime of seconds
        stop_process(pid1)  # its counters still from here: read, then kill
        last_proc = of_kind(records(a), "sample", first)[-1]
        last_ticks, slices = cpu_ticks(pid1), timeslices(pid1)
        [start] = of_kind(records(a), "vm_start", first)
        assert start["config"]["alloc_bytes"] > 0  # what it started with
        assert start["vm"]["started_ns"] <= last_proc["t"]
        killed_ns = time.time_ns()
        kill_stopped(pid1)
        # at once (pidfd), not at the next sweep; then the kernel's record
        stop = wait_until(lambda: of_kind(records(a), "vm_stop", first))
        assert stop[0]["exit"]["source"] == "pidfd"
        assert killed_ns <= stop[0]["exit"]["at_ns"] <= stop[0]["t"]
        assert stop[0]["cpu"]["total_ns"] >= last_proc["cpu"]["total_ns"]
        [acct] = wait_until(lambda: of_kind(records(a), "vm_acct", first))
        fields = acct["acct"]
        assert fields["match"] == "pid+start"
        assert fields["exit"] == {"signal": 9}
        runtime_s = fields["elapsed_us"] / 1e6
        kernel_ticks = (fields["cpu_user_us"] + fields["cpu_system_us"]) \
            * TICK / 1e6
        assert abs(kernel_ticks - last_ticks) <= \
            acct_tolerance(runtime_s, slices), (kernel_ticks, last_ticks)

        # the agent is down while a VM exits: closed on restart
        pid2 = ns.start_vm(second, tmp_path)
        wait_until(lambda: of_kind(records(a), "sample", second), timeout=60)
        assert terminate_in_namespace(a) == 0
        killed_ns = time.time_ns()
        os.kill(pid2, signal.SIGKILL)
        time.sleep(0.5)
        a.start(prefix=ns.prefix())
        [stop2] = wait_until(lambda: of_kind(records(a), "vm_stop", second))
        assert stop2["exit"]["source"] == "restart"
        exit2 = stop2["exit"]  # ended between the last sight and the restart
        assert exit2["after_ns"] <= killed_ns <= exit2["before_ns"]
        [acct2] = wait_until(lambda: of_kind(records(a), "vm_acct", second))
        assert acct2["acct"]["exit"] == {"signal": 9}
        assert a.cli("wal", "verify", str(a.state / "wal")).returncode == 0
    finally:
        a.kill()
        ns.close()


def test_a_taps_final_counters_reach_vm_stop_from_rtm_dellink(agent, tmp_path):
    """QEMU creates the tap, so it goes with QEMU; frames sent after the
    last sample are in the vm_stop, exactly as the kernel's RTM_DELLINK."""
    import threading

    from pyroute2 import IPRoute

    from integration.guests import send_frames

    tap = f"vmd{os.getpid() % 100000}"
    seen: dict[str, dict] = {}
    bound = threading.Event()

    def listen() -> None:  # pyroute2 sockets belong to their thread
        ipr = IPRoute()
        ipr.bind()
        bound.set()
        while "final" not in seen:
            for msg in ipr.get():
                if msg.get("event") == "RTM_DELLINK" and \
                        msg.get_attr("IFLA_IFNAME") == tap:
                    seen["final"] = dict(msg.get_attr("IFLA_STATS64"))

    threading.Thread(target=listen, daemon=True).start()
    bound.wait(10)
    a = agent(interval=2)
    name = f"dl-{uuid.uuid4().hex[:6]}"
    qemu = subprocess.Popen(
        ["qemu-system-x86_64", "-accel", "kvm", "-m", "64", "-nodefaults",
         "-nographic", "-serial", "none", "-monitor", "none",
         "-name", f"guest={name},debug-threads=on",
         "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
         "-device", "virtio-net-pci,netdev=n0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: [s for s in of_kind(records(a), "sample", name)
                            if s["nics"]], timeout=60)
        Path(f"/proc/sys/net/ipv6/conf/{tap}/disable_ipv6").write_text("1")
        subprocess.run(["ip", "link", "set", tap, "up"], check=True)
        time.sleep(2.5)  # a sample of the tap up, then frames after it
        last = of_kind(records(a), "sample", name)[-1]["nics"][0]
        send_frames(tap, 1500, 200)
        qemu.kill()
        qemu.wait(timeout=30)
        [stop] = wait_until(lambda: of_kind(records(a), "vm_stop", name))
        final = wait_until(lambda: seen.get("final"))
    finally:
        if qemu.poll() is None:
            qemu.kill()
            qemu.wait()
    [nic] = stop["nics"]
    assert nic["name"] == tap
    assert nic["rx_packets"] == final["tx_packets"]
    assert nic["rx_drops"] == final["tx_dropped"]
    assert nic["rx_bytes"] == final["tx_bytes"]
    assert nic["tx_packets"] == final["rx_packets"]
    assert nic["rx_packets"] + nic["rx_drops"] > \
        last["rx_packets"] + last["rx_drops"]


def qmp(path: Path, *commands: dict) -> list[dict]:
    """Run QMP commands on QEMU's monitor socket; their replies."""
    import socket as socket_mod

    with socket_mod.socket(socket_mod.AF_UNIX) as s:
        s.connect(str(path))
        f = s.makefile("rw")
        json.loads(f.readline())  # the greeting
        replies = []
        for cmd in ({"execute": "qmp_capabilities"}, *commands):
            f.write(json.dumps(cmd) + "\n")
            f.flush()
            while True:
                reply = json.loads(f.readline())
                if "return" in reply or "error" in reply:
                    break
            replies.append(reply)
    return replies[1:]


def test_hotplugged_nic_and_vcpu_give_vm_config(agent, taps, tmp_path):
    [tap] = taps(1)
    a = agent('[probes]\nrescan = "1s"\n', interval=1)
    name = f"hp-{uuid.uuid4().hex[:6]}"
    sock = tmp_path / "qmp.sock"
    qemu = subprocess.Popen(
        ["qemu-system-x86_64", "-accel", "kvm", "-m", "64",
         "-smp", "1,sockets=2,cores=1,threads=1,maxcpus=2", "-nodefaults",
         "-nographic",
         "-serial", "none", "-monitor", "none",
         "-qmp", f"unix:{sock},server=on,wait=off",
         "-name", f"guest={name},debug-threads=on"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: of_kind(records(a), "sample", name), timeout=60)
        wait_until(sock.exists)
        replies = qmp(sock, {"execute": "netdev_add", "arguments": {
            "type": "tap", "id": "hn0", "ifname": tap, "script": "no",
            "downscript": "no"}}, {"execute": "device_add", "arguments": {
                "driver": "qemu64-x86_64-cpu", "id": "cpu1",
                "socket-id": 1, "core-id": 0, "thread-id": 0}})
        assert all("return" in r for r in replies), replies
        def merged() -> dict:
            """Each field's first old and last new value over vm_configs."""
            out: dict = {}
            for r in of_kind(records(a), "vm_config", name):
                for field, (old, new) in r["changed"].items():
                    out[field] = [out.get(field, [old])[0], new]
            return out if {"nics", "vcpus"} <= set(out) else {}

        changed = wait_until(merged, timeout=30)
        assert changed["nics"] == [[], [tap]]
        assert changed["vcpus"] == [1, 2]
        sample = of_kind(records(a), "sample", name)[-1]
        assert [n["name"] for n in sample["nics"]] == [tap]
        assert [v["id"] for v in sample["cpu"]["vcpus"]] == [0, 1]
    finally:
        qemu.kill()
        qemu.wait(timeout=30)
