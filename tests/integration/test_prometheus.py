"""A real Prometheus (Debian's ``prometheus``) scrapes a real agent sampling
real KVM guests with a bearer token: every VM's series are there, and their
values are the agent's own signed records."""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from integration.agent_process import free_port
from integration.conftest import wait_until
from integration.guests import new_uuid
from integration.test_collector import CollectorProcess
from needs import require
from vmagent.collector import ChainState, verify_batch

pytestmark = pytest.mark.realguest
ROOT = Path(__file__).resolve().parents[2]


class Prometheus:
    """``prometheus`` on a loopback port, scraping one target each second;
    killed (and its data with tmp_path) after the test."""

    def __init__(self, workdir: Path, target: str, token: str,
                 collector: str) -> None:
        require("prometheus")
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "token").write_text(token)
        (workdir / "prometheus.yml").write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: vmagent\n"
            "    authorization:\n"
            f"      credentials_file: {workdir / 'token'}\n"
            f"    static_configs: [{{targets: ['{target}']}}]\n"
            "  - job_name: vmcollector\n"
            f"    static_configs: [{{targets: ['{collector}']}}]\n")
        self.port = free_port()
        log = open(workdir / "prometheus.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen([
            "prometheus", f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=log, stderr=log)
        log.close()

    def query(self, promql: str) -> list[dict]:
        url = (f"http://127.0.0.1:{self.port}/api/v1/query?"
               + urllib.parse.urlencode({"query": promql}))
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                doc = json.load(resp)
        except OSError:  # not listening yet
            return []
        assert doc["status"] == "success", doc
        return doc["data"]["result"]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def prometheus(tmp_path) -> Iterator:
    made: list[Prometheus] = []

    def start(target: str, token: str, collector: str) -> Prometheus:
        made.append(Prometheus(tmp_path / "prometheus", target, token,
                               collector))
        return made[-1]

    yield start
    for p in made:
        p.stop()


def test_prometheus_scrapes_each_vms_series_equal_to_its_records(
        agent, guests, taps, prometheus, tmp_path):
    vms = {}
    for i, tap in enumerate(taps(2)):
        g = guests(name=f"prom-{i}", uuid=new_uuid(), taps=[tap],
                   mem_mib=64 + 32 * i)
        vms[g.uuid] = g
    a = agent(interval=1.0)
    c = CollectorProcess(tmp_path / "collector", [("hv1", a,
                                                   a.public_key())],
                         interval="1s")
    assert c.cli("migrate").returncode == 0
    c.start()
    try:
        scraped(prometheus(f"127.0.0.1:{a.port}", a.token(),
                           f"127.0.0.1:{c.listen}"), a, vms)
    finally:
        c.kill()


def scraped(prom, a, vms) -> None:
    """Every VM's series with the values of its signed records, and data
    for every expression of the dashboard (the collector's too)."""
    series = wait_until(lambda: len(r := prom.query(
        "vmagent_vm_cpu_seconds_total")) >= 2 and r, 60)
    assert {s["metric"]["uuid"] for s in series} == set(vms)
    assert {s["metric"]["name"] for s in series} == \
        {g.name for g in vms.values()}
    # each scraped value is one of the agent's signed samples
    records = list(verify_batch(a.client().batch(0, max_records=10_000),
                                ChainState(), a.public_key()))
    samples = [r for r in records if r["kind"] == "sample"]
    for s in series:
        uuid, value = s["metric"]["uuid"], float(s["value"][1])
        totals = {r["cpu"]["total_ns"] for r in samples
                  if r["vm"]["uuid"] == uuid}
        assert any(abs(value * 1e9 - t) < 1000 for t in totals), \
            (uuid, value, sorted(totals)[-3:])
    alloc = {r["metric"]["uuid"]: float(r["value"][1])
             for r in prom.query("vmagent_vm_memory_alloc_bytes")}
    assert alloc == {u: g.mem_mib * 2**20 for u, g in vms.items()}
    nics = prom.query("vmagent_vm_nic_receive_bytes_total")
    assert {(n["metric"]["uuid"], n["metric"]["mac"]) for n in nics} == \
        {(u, g.mac(0)) for u, g in vms.items()}
    vcpus = prom.query("count by (uuid) (vmagent_vm_vcpu_run_seconds_total)")
    assert {v["metric"]["uuid"]: v["value"][1] for v in vcpus} == \
        {u: str(g.vcpus) for u, g in vms.items()}
    for expr in dashboard_expressions():  # every panel has data
        wait_until(lambda expr=expr: prom.query(expr), 60)


def dashboard_expressions() -> list[str]:
    """The dashboard's PromQL with its variables as Grafana fills them
    for "All" VMs."""
    doc = json.loads((ROOT / "packaging/grafana/vmagent.json").read_text())
    exprs = [t["expr"] for p in doc["panels"] for t in p.get("targets", ())]
    assert len(exprs) >= 10
    return [e.replace("$__rate_interval", "10s").replace("$vm", ".*")
            for e in exprs]


def test_vm_metrics_false_leaves_only_the_agents_own(agent, guests):
    guests(name="prom-off", uuid=new_uuid())
    a = agent(extra_config="vm_metrics = false\n", interval=0.5)
    wait_until(lambda: a.request("/v1/status")[1]["vms"] >= 1)
    status, body = a.request("/metrics")
    assert status == 200
    assert isinstance(body, bytes)
    text = body.decode()
    assert "vmagent_vms 1" in text and "vmagent_vm_" not in \
        text.replace("vmagent_vms", "")
