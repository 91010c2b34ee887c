"""``vmagent acct``: time and user options, filters, and the JSON, CSV and
XML outputs carrying the same fields."""

from __future__ import annotations

import csv
import io
import json
import os
import time
import xml.etree.ElementTree as ET

import pytest

from unit.test_acct_parsers import freebsd_record, linux_record
from vmagent.acct import report
from vmagent.acct.records import parse
from vmagent.cli import main


@pytest.fixture
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_times_iso_with_offset_and_oneacct_local(utc):
    assert report.parse_time("2026-11-22T10:00:00+01:00") == 1795338000
    assert report.parse_time("2026-11-22T09:00:00Z") == 1795338000
    assert report.parse_time("11/22/2026 09:00:00") == 1795338000  # local=UTC
    assert report.parse_time("11/22/2026") == 1795305600
    with pytest.raises(report.UsageError, match="ISO 8601"):
        report.parse_time("yesterday")


def test_users_by_name_or_uid():
    assert report.parse_user("root") == 0
    assert report.parse_user("1234") == 1234
    with pytest.raises(report.UsageError, match="no such user"):
        report.parse_user("no-such-user-here")


def recs():
    data = (linux_record(comm=b"qemu-system-x86", pid=1, btime=1000,
                         etime_ticks=1000.0)  # runs 1000-1010
            + linux_record(comm=b"bash", pid=2, btime=2000, uid=1000)
            + linux_record(comm=b"bhyve", pid=3, btime=3000))
    return parse(data, "linux").records


def test_filters_overlap_user_and_hypervisors():
    rs = recs()
    assert [r.pid for r in report.select(rs, 1005, None, None, False)] == \
        [1, 2, 3]
    assert [r.pid for r in report.select(rs, 1011, 2500, None, False)] == [2]
    assert [r.pid for r in report.select(rs, None, None, 1000, False)] == [2]
    assert [r.pid for r in report.select(rs, None, None, None, True)] == \
        [1, 3]


def test_json_csv_xml_carry_the_same_fields():
    rs = [*parse(freebsd_record(flags=0x20 | 0x02 | 0x08),
                 "freebsd-v3").records,
          *parse(linux_record(exitcode=9, flags=0x10), "linux").records]
    doc = json.loads(report.to_json(rs))
    for key in ("command", "pid", "uid", "gid", "start", "elapsed_us",
                "cpu_user_us", "cpu_system_us", "mem_kb", "io_blocks",
                "flags", "exit"):
        assert key in doc[0]
    assert doc[0]["pid"] is None and doc[0]["exit"] is None
    assert doc[0]["flags"] == ["ASU", "ACORE", "ANVER"]
    assert doc[1]["exit"] == {"signal": 9} and doc[1]["flags"] == ["AXSIG"]
    assert doc[0]["start"].endswith("Z")
    rows = list(csv.DictReader(io.StringIO(report.to_csv(rs))))
    assert rows[0]["flags"] == "ASU|ACORE|ANVER" and rows[0]["pid"] == ""
    assert rows[1]["exit"] == "signal:9"
    root = ET.fromstring(report.to_xml(rs))
    [first, second] = root.findall("record")
    assert [f.text for f in first.find("flags")] == ["ASU", "ACORE", "ANVER"]
    assert second.find("exit").get("signal") == "9"


def test_cli_reports_and_warns_about_damage(tmp_path, capsys):
    path = tmp_path / "pacct"
    path.write_bytes(linux_record(comm=b"bash", pid=5) + bytes(range(64))
                     + linux_record(comm=b"qemu-system-x86", pid=6)
                     + linux_record()[:10])
    assert main(["acct", str(path), "--vms", "--json"]) == 0
    out = capsys.readouterr()
    assert [r["pid"] for r in json.loads(out.out)] == [6]
    assert "1 records that are not valid" in out.err
    assert "10 bytes at the end" in out.err


def test_cli_bad_time_is_a_usage_error(tmp_path, capsys):
    path = tmp_path / "pacct"
    path.write_bytes(linux_record())
    assert main(["acct", str(path), "-s", "soon"]) == 2
    assert "ISO 8601" in capsys.readouterr().err


def test_cli_table_by_default(tmp_path, capsys):
    path = tmp_path / "pacct"
    path.write_bytes(linux_record(pid=5))
    assert main(["acct", str(path)]) == 0
    head, row = capsys.readouterr().out.splitlines()
    assert head.split()[:4] == ["START", "END", "COMMAND", "PID"]
    assert row.split()[2:4] == ["qemu-system-x86", "5"]
    assert os.path.exists(path)
