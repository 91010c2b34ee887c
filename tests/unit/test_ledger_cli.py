"""``vmcollector usage``, ``history`` and ``rebuild`` over a store with
literal evidence: the forms, the filters, and one-line usage errors."""

from __future__ import annotations

import csv
import io
import json
import xml.etree.ElementTree as ET

import pytest

from unit.test_ledger_book import GIB, Evidence, M, S, ns, sample, start, stop
from vmagent.collector.cli import main


@pytest.fixture
def cfg(tmp_path):
    state = tmp_path / "s"
    state.mkdir()
    ev = Evidence(state)
    t0 = ns("2026-11-30T10:00:00+00:00")
    ev.batch({"kind": "agent_start", "t": t0 - S}, start(t0, mem=2 * GIB),
             sample(t0 + 10 * M, cpu=3 * S),
             stop(t0 + 20 * M, at=t0 + 20 * M, cpu=4 * S))
    ev.close()
    path = tmp_path / "c.toml"
    path.write_text(f'[collector]\nstate_dir = "{state}"\nlisten = ""\n')
    return str(path)


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_usage_json_lists_every_meter_of_the_day(cfg, capsys):
    code, out, _ = run(capsys, "usage", "-s", "2026-11-30", "-e",
                       "2026-12-01", "--period", "day", "--json", "-c", cfg)
    assert code == 0
    recs = json.loads(out)["records"]
    got = {r["meter"]: r["quantity"] for r in recs}
    assert got == {"running_ns": str(20 * M), "vcpu_ns": str(2 * 20 * M),
                   "mem_alloc_byte_ns": str(2 * GIB * 20 * M),
                   "cpu_ns": str(4 * S)}
    assert {r["period"] for r in recs} == {"2026-11-30"}
    again = run(capsys, "usage", "-s", "2026-11-30", "-e", "2026-12-01",
                "--period", "day", "--json", "-c", cfg)[1]
    assert again == out  # byte-identical


def test_usage_csv_xml_table_and_group_by(cfg, capsys):
    args = ("usage", "-s", "2026-11", "-e", "2026-12", "-c", cfg)
    rows = list(csv.DictReader(io.StringIO(run(capsys, *args, "--csv")[1])))
    assert {r["meter"] for r in rows} >= {"running_ns", "cpu_ns"}
    assert all(r["host"] == "hv1" and r["period"] == "2026-11"
               for r in rows)
    root = ET.fromstring(run(capsys, *args, "--xml")[1])
    assert len(root.findall("record")) == len(rows)
    table = run(capsys, *args)[1]
    assert "0.333 h" in table  # 20 minutes of running_ns
    grouped = json.loads(run(capsys, *args, "--group-by", "vm",
                             "--json")[1])["records"]
    assert {r["meter"]: r["quantity"] for r in grouped}["cpu_ns"] == \
        str(4 * S)


def test_usage_filters_by_vm_and_host(cfg, capsys):
    base = ("usage", "-s", "2026-11", "-e", "2026-12", "--json", "-c", cfg)
    assert json.loads(run(capsys, *base, "--host", "hv2")[1]) == \
        {"records": []}
    assert json.loads(run(capsys, *base, "--vm", "nope")[1]) == \
        {"records": []}


def test_history_has_one_row_per_gen(cfg, capsys):
    code, out, _ = run(capsys, "history", "--json", "-c", cfg)
    assert code == 0
    [row] = json.loads(out)["records"]
    assert (row["start"], row["end"], row["end_reason"]) == (
        "2026-11-30T10:00:00Z", "2026-11-30T10:20:00Z", "pidfd")
    assert (row["vcpus"], row["memory_bytes"], row["cpu_ns"]) == (
        2, 2 * GIB, str(4 * S))
    assert "pidfd" in run(capsys, "history", "-c", cfg)[1]


def test_rebuild_reproduces_the_records(cfg, capsys):
    args = ("usage", "-s", "2026-11", "-e", "2026-12", "--json", "-c", cfg)
    before = run(capsys, *args)[1]
    code, out, _ = run(capsys, "rebuild", "-s", "2026-11", "-e", "2026-12",
                       "--reason", "audit", "-c", cfg)
    assert code == 0 and "0 slice(s) in the range changed" in out
    assert run(capsys, *args)[1] == before
    again = run(capsys, "rebuild", "-s", "2026-11", "-e", "2026-12",
                "--reason", "twice", "-c", cfg)  # rebuild twice: identical
    assert again[0] == 0 and "0 slice(s)" in again[1]
    assert run(capsys, *args)[1] == before


@pytest.mark.parametrize(("argv", "message"), [
    (("usage", "-s", "soon", "-e", "2026-12"), "bad time 'soon'"),
    (("usage", "-s", "2026-12", "-e", "2026-11"), "end must be after"),
    (("usage", "-s", "2026-11", "-e", "2026-12", "--tz", "Mars/Base"),
     "unknown time zone"),
    (("rebuild", "-s", "2026-11", "-e", "2026-12", "--reason", " "),
     "--reason must not be empty"),
])
def test_bad_arguments_exit_2_with_one_line(cfg, capsys, argv, message):
    code, _, err = run(capsys, *argv, "-c", cfg)
    assert code == 2
    assert message in err and err.count("\n") == 1
