"""Per-VM series on the agent's /metrics, rendered from sample records."""

from __future__ import annotations

import subprocess

import pytest

from needs import missing
from vmagent.api.metrics import render
from vmagent.api.vm_metrics import FAMILIES, render_vms

SAMPLE = {
    "kind": "sample", "t": 1, "host": "h",
    "vm": {"uuid": "u-1", "name": 'we"b', "gen": "g-1",
           "hypervisor": "kvm", "started_ns": 1},
    "cpu": {"total_ns": 2_500_000_000, "user_ns": 2_000_000_000,
            "system_ns": 500_000_000, "guest_ns": 1_500_000_000,
            "vcpus": [{"id": 0, "tid": 11, "run_ns": 1_000_000_000,
                       "wait_ns": 250_000_000},
                      {"id": 1, "tid": 12, "run_ns": 3, "wait_ns": 0}]},
    "mem": {"rss_bytes": 1024, "alloc_bytes": 2048, "hugetlb_bytes": 0},
    "nics": [{"name": "tap0", "mac": "52:54:00:00:00:01", "rx_bytes": 100,
              "rx_packets": 2, "rx_errors": 0, "rx_drops": 1,
              "tx_bytes": 50, "tx_packets": 1, "tx_errors": 0,
              "tx_drops": 0}],
    "io": {"rd_bytes": 4096, "wr_bytes": 8192},
    "disks": [{"path": "/var/lib/img/a.qcow2", "capacity_bytes": 10,
               "allocated_bytes": 5}],
    "kvm": {"exits": 7, "pages_4k": 3},
}


def value(lines: list[str], prefix: str) -> str:
    found = [line for line in lines if line.startswith(prefix)]
    assert len(found) == 1, (prefix, found)
    return found[0].rsplit(" ", 1)[1]


def test_counters_are_in_seconds_and_bytes_with_vm_labels():
    lines = render_vms([SAMPLE])
    vm = 'uuid="u-1",name="we\\"b"'
    assert value(lines, f"vmagent_vm_cpu_seconds_total{{{vm}}}") == "2.5"
    assert value(lines, f'vmagent_vm_vcpu_wait_seconds_total{{{vm},'
                        f'vcpu="0"}}') == "0.25"
    assert value(lines, f'vmagent_vm_nic_receive_bytes_total{{{vm},'
                        f'nic="tap0",mac="52:54:00:00:00:01"}}') == "100"
    assert value(lines, f'vmagent_vm_nic_receive_drops_total{{{vm},'
                        f'nic="tap0",mac="52:54:00:00:00:01"}}') == "1"
    assert value(lines, f"vmagent_vm_memory_rss_bytes{{{vm}}}") == "1024"
    assert value(lines, f'vmagent_vm_disk_allocated_bytes{{{vm},'
                        f'disk="/var/lib/img/a.qcow2"}}') == "5"
    assert value(lines, f"vmagent_vm_kvm_exits_total{{{vm}}}") == "7"
    assert value(lines, f'vmagent_vm_kvm_pages{{{vm},size="4k"}}') == "3"
    assert value(lines, f'vmagent_vm_info{{{vm},gen="g-1",'
                        f'hypervisor="kvm"}}') == "1"


def test_what_the_kernel_did_not_give_is_absent_not_zero():
    lines = render_vms([SAMPLE])
    text = "\n".join(lines)
    assert "vmagent_vm_vhost_cpu_seconds_total" not in text  # no vhost_ns
    assert "vmagent_vm_disk_read_bytes_total" not in text  # image file
    assert "vmagent_vm_kvm_halt_exits_total" not in text


def test_every_family_has_help_and_type_once_and_the_right_suffix():
    lines = render_vms([SAMPLE, {**SAMPLE, "vm": {**SAMPLE["vm"],
                                                  "uuid": "u-2"}}])
    for name, kind, _, _ in FAMILIES:
        assert (kind == "counter") == name.endswith("_total"), name
        types = [line for line in lines if line == f"# TYPE {name} {kind}"]
        assert len(types) <= 1, name
    assert sum(line.startswith("vmagent_vm_cpu_seconds_total{")
               for line in lines) == 2


def test_no_vms_no_series():
    assert [line for line in render_vms([])
            if not line.startswith("#")] == []


def test_promtool_finds_the_whole_exposition_clean():
    why = missing("promtool")
    if why:
        pytest.skip(why)
    doc = {"health": {"state": "healthy"}, "uptime_s": 1.5, "vms": 1,
           "sweeps": 3, "last_sweep": {"duration_s": 0.01},
           "wal": {"bytes": 1, "segments": 1, "first_seq": 1,
                   "durable_seq": 9, "coalescing": False, "quarantined": 0},
           "consumers": {"default": {"acked_seq": 1, "lag_records": 8,
                                     "lag_s": 2.0}}, "errors": []}
    text = render(doc) + "".join(f"{line}\n" for line in render_vms([SAMPLE]))
    out = subprocess.run(["promtool", "check", "metrics"], input=text,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and not out.stdout.strip(), \
        out.stdout + out.stderr


def test_series_are_rendered_once_per_sweep_however_often_scraped():
    from vmagent.api.vm_metrics import VmSeries

    series = VmSeries()
    sweep = [SAMPLE]
    first = series.text(sweep)
    assert series.text(sweep) is first  # the same sweep: not rendered again
    later = [{**SAMPLE, "cpu": {**SAMPLE["cpu"], "total_ns": 5 * 10**9}}]
    assert 'vmagent_vm_cpu_seconds_total{uuid="u-1",name="we\\"b"} 5.0' \
        in series.text(later)
