"""CloudStack and FOCUS exports over literal usage records (COLLECTOR.md §5
shape), and the exact decimal and time text they are written with."""

from __future__ import annotations

import csv
import io
import json
import random

import pytest

from vmagent.ledger.exact import (
    ExactError,
    format_rfc3339_ns,
    ns_to_hours,
    ns_to_seconds,
    parse_int,
    parse_rfc3339_ns,
    ratio,
)
from vmagent.ledger.exports import (
    CLOUDSTACK_COLUMNS,
    FOCUS_COLUMNS,
    ExportError,
    cloudstack_csv,
    cloudstack_json,
    cloudstack_rows,
    focus_csv,
    focus_rows,
)

VM1 = "6f1c8a52-3b1e-4c7a-9d2e-0a1b2c3d4e5f"
VM2 = "0b7d2e41-9c3f-4a8b-8e1d-5f6a7b8c9d0e"
MAC = "52:54:00:12:34:56"
DISK = "/dev/vg0/vm1-root"
SEQ = [["hv1", "a1b2", 10, 42]]
# 45 minutes and 1.8 µs: 0.7500000005 h, a tie at the 10th place.
TIE_NS = 2_700_000_001_800


def record(rid: str, meter: str, quantity: str, *, vm: str = VM1,
           status: str = "final", supersedes: str | None = None,
           start: str = "2026-11-30T04:00:00Z",
           end: str = "2026-11-30T05:00:00Z", **extra: object) -> dict:
    rec = {
        "id": rid, "vm": {"uuid": vm, "name": "web-1" if vm == VM1 else
                          "db-1"},
        "gen": "g1", "host": "hv1", "account": "acme", "project": "shop",
        "meter": meter, "unit": "ns", "quantity": quantity,
        "start": start, "end": end, "period": "2026-11",
        "period_start": "2026-11-01T00:00:00Z",
        "period_end": "2026-12-01T00:00:00Z",
        "status": status, "supersedes": supersedes,
        "provenance": {"seq_ranges": SEQ, "samples": 360, "gap_ns": 0,
                       "interpolated_ns": 0, "lost": False},
    }
    rec.update(extra)
    return rec


RECORDS = [
    record("aa01", "running_ns", str(TIE_NS)),
    record("aa02", "running_ns", "2700000005400", vm=VM2),
    record("aa03", "net_tx_bytes", "77776", nic=MAC),
    record("aa04", "net_rx_bytes", "123456789", nic=MAC),
    record("aa05", "disk_rd_ops", "120", disk=DISK),
    record("aa06", "disk_wr_bytes", "4096", disk=DISK),
    record("aa07", "cpu_ns", "1500000000"),
    # late evidence for October: a reversal and its replacement
    record("cc01", "running_ns", "-3600000000000", status="correction",
           supersedes="bb01", start="2026-10-31T23:00:00Z",
           end="2026-11-01T00:00:00Z"),
    record("cc02", "running_ns", "1800000000000", status="correction",
           supersedes="bb01", start="2026-10-31T23:00:00Z",
           end="2026-11-01T00:00:00Z"),
]


def by_id(rows: list[dict], key: str) -> dict[str, dict]:
    return {r[key]: r for r in rows}


# -- exact text ------------------------------------------------------------

@pytest.mark.parametrize("ns, hours", [
    (TIE_NS, "0.750000000"),           # tie, 0 is even: stays
    (2_700_000_005_400, "0.750000002"),  # tie, 1 is odd: up
    (2_700_000_001_801, "0.750000001"),  # just above the tie
    (-2_700_000_005_400, "-0.750000002"),
    (-1, "0.000000000"),                 # no negative zero
    (3_600_000_000_000, "1.000000000"),
])
def test_hours_round_half_even_to_nine_places(ns, hours):
    assert ns_to_hours(ns) == hours


def test_ratios_stay_exact_beyond_float_precision():
    ns = 10**30 + 1800  # a float would lose the last 15 digits
    assert ns_to_seconds(ns) == "1000000000000000000000.000001800"
    assert ratio(2, 3, 0) == "1" and ratio(1, 2, 0) == "0"
    assert ratio(5, 2, 0) == "2" and ratio(7, 2, 0) == "4"


@pytest.mark.parametrize("text", ["1.5", "+1", "01", " 1", "", "1e3", 7])
def test_quantities_must_be_plain_decimal_integers(text):
    with pytest.raises(ExactError, match="not a decimal integer"):
        parse_int(text)


def test_rfc3339_round_trips_to_the_nanosecond():
    ns = parse_rfc3339_ns("2026-11-30T05:00:00.000000001+01:00")
    assert ns == parse_rfc3339_ns("2026-11-30T04:00:00Z") + 1
    assert format_rfc3339_ns(ns) == "2026-11-30T04:00:00.000000001Z"
    assert format_rfc3339_ns(ns - 1) == "2026-11-30T04:00:00Z"


@pytest.mark.parametrize("text", ["2026-11-30T04:00:00",
                                  "2026-02-30T00:00:00Z",
                                  "2026-11-30T04:00:00+24:00",
                                  "2026-11-30T04:00:00.1234567890Z"])
def test_times_without_offset_or_impossible_are_refused(text):
    with pytest.raises(ExactError):
        parse_rfc3339_ns(text)


# -- CloudStack ------------------------------------------------------------

def test_running_time_is_hours_rounded_half_even():
    rows = by_id(cloudstack_rows(RECORDS), "x_recordid")
    assert rows["aa01"]["rawusage"] == "0.750000000"
    assert rows["aa01"]["usage"] == "0.750000000 Hrs"
    assert rows["aa02"]["rawusage"] == "0.750000002"
    assert rows["aa01"]["usageid"] == VM1
    assert rows["aa01"]["description"] == "web-1 running time"


def test_each_meter_gets_its_cloudstack_usage_type():
    rows = by_id(cloudstack_rows(RECORDS), "x_recordid")
    types = {rid: r["usagetype"] for rid, r in rows.items()}
    assert types == {"aa01": 1, "aa02": 1, "aa03": 4, "aa04": 5,
                     "aa05": 21, "aa06": 24, "cc01": 1, "cc02": 1}
    assert "aa07" not in rows  # cpu_ns: CloudStack has no type for it


def test_nic_and_disk_records_name_their_device_in_cloudstack_words():
    rows = by_id(cloudstack_rows(RECORDS), "x_recordid")
    sent, reads = rows["aa03"], rows["aa05"]
    assert sent["usage"] == "77776 bytes sent"
    assert sent["rawusage"] == "77776.000000000"
    assert sent["usageid"] == MAC
    assert sent["description"] == f"network bytes sent for Vm: web-1 and " \
                                  f"NIC: {MAC}"
    assert reads["usage"] == "120 io read"
    assert reads["description"] == ("disk I/O read (io requests) for Vm: "
                                    f"web-1 and Volume: {DISK}")
    assert rows["aa06"]["usage"] == "4096 bytes write"


def test_a_correction_is_negative_and_names_what_it_supersedes():
    rows = by_id(cloudstack_rows(RECORDS), "x_recordid")
    reversal, replacement = rows["cc01"], rows["cc02"]
    assert reversal["rawusage"] == "-1.000000000"
    assert reversal["usage"] == "-1.000000000 Hrs"
    assert replacement["rawusage"] == "0.500000000"
    for row in (reversal, replacement):
        assert row["x_status"] == "correction"
        assert row["x_supersedes"] == "bb01"
        assert row["startdate"] == "2026-10-31T23:00:00Z"
    assert rows["aa01"]["x_supersedes"] == ""


def test_cloudstack_csv_has_cloudstacks_column_names_and_owner():
    rows = list(csv.DictReader(io.StringIO(cloudstack_csv(RECORDS))))
    assert tuple(rows[0]) == CLOUDSTACK_COLUMNS
    assert {"account", "accountid", "domainid", "zoneid", "usagetype",
            "rawusage", "usageid", "virtualmachineid", "offeringid",
            "templateid", "startdate", "enddate"} <= set(rows[0])
    assert all(r["account"] == "acme" and r["projectid"] == "shop"
               for r in rows)
    assert len(rows) == 8


def test_cloudstack_json_is_a_list_usage_records_response():
    body = json.loads(cloudstack_json(RECORDS))["listusagerecordsresponse"]
    assert body["count"] == len(body["usagerecord"]) == 8
    first = body["usagerecord"][0]
    assert isinstance(first["usagetype"], int)
    assert isinstance(first["rawusage"], str)


def test_a_vm_without_a_name_is_described_by_its_uuid():
    rec = record("dd02", "running_ns", "0", vm=VM1)
    rec["vm"] = {"uuid": VM1, "name": ""}
    row = cloudstack_rows([rec])[0]
    assert row["name"] == ""
    assert row["description"] == f"{VM1} running time"
    assert focus_rows([rec])[0]["ChargeDescription"] == \
        f"running time of VM {VM1}"


def test_an_unowned_vm_exports_empty_account():
    rec = record("dd01", "running_ns", "0", account=None, project=None)
    row = cloudstack_rows([rec])[0]
    assert row["account"] == row["accountid"] == row["project"] == ""
    assert row["rawusage"] == "0.000000000"  # measured zero is kept


# -- FOCUS -----------------------------------------------------------------

def test_focus_header_is_exactly_the_contracts_columns():
    header = focus_csv(RECORDS).splitlines()[0].split(",")
    assert header == [
        "BillingPeriodStart", "BillingPeriodEnd", "ChargePeriodStart",
        "ChargePeriodEnd", "ChargeCategory", "ChargeClass",
        "ChargeDescription", "ConsumedQuantity", "ConsumedUnit",
        "ResourceId", "ResourceName", "SubAccountId", "BilledCost",
        "EffectiveCost", "ListCost", "BillingCurrency", "x_Meter", "x_Host",
        "x_Status", "x_RecordId", "x_Supersedes", "x_SeqRanges", "x_GapNs",
        "x_InterpolatedNs"]
    assert tuple(header) == FOCUS_COLUMNS


def test_focus_corrections_are_charge_class_correction():
    rows = by_id(focus_rows(RECORDS), "x_RecordId")
    assert rows["cc01"]["ChargeClass"] == "Correction"
    assert rows["cc01"]["ConsumedQuantity"] == "-3600.000000000"
    assert rows["cc01"]["x_Supersedes"] == "bb01"
    # the original charge period, billed in the open period
    assert rows["cc01"]["ChargePeriodStart"] == "2026-10-31T23:00:00Z"
    assert rows["cc01"]["BillingPeriodStart"] == "2026-11-01T00:00:00Z"
    assert rows["aa01"]["ChargeClass"] == ""
    assert {r["ChargeCategory"] for r in rows.values()} == {"Usage"}


def test_focus_quantities_are_exact_in_focus_units():
    rows = by_id(focus_rows(RECORDS), "x_RecordId")
    assert (rows["aa01"]["ConsumedQuantity"],
            rows["aa01"]["ConsumedUnit"]) == ("2700.000001800", "Seconds")
    assert (rows["aa04"]["ConsumedQuantity"],
            rows["aa04"]["ConsumedUnit"]) == ("123456789", "B")
    assert rows["aa05"]["ConsumedUnit"] == "Requests"
    assert rows["aa04"]["ChargeDescription"] == \
        f"network bytes received of VM web-1 on NIC {MAC}"
    assert rows["aa06"]["ChargeDescription"].endswith(f"on disk {DISK}")


def test_focus_rows_carry_owner_costs_and_provenance():
    row = by_id(focus_rows(RECORDS), "x_RecordId")["aa07"]
    assert (row["ResourceId"], row["ResourceName"], row["SubAccountId"]) \
        == (VM1, "web-1", "acme")
    assert (row["BilledCost"], row["EffectiveCost"], row["ListCost"],
            row["BillingCurrency"]) == ("0", "0", "0", "")
    assert json.loads(row["x_SeqRanges"]) == SEQ
    assert (row["x_Meter"], row["x_Host"], row["x_Status"]) == \
        ("cpu_ns", "hv1", "final")
    assert (row["x_GapNs"], row["x_InterpolatedNs"]) == ("0", "0")


# -- both ------------------------------------------------------------------

def test_output_does_not_depend_on_input_order():
    shuffled = RECORDS[:]
    random.Random(7).shuffle(shuffled)
    assert focus_csv(shuffled) == focus_csv(RECORDS)
    assert cloudstack_csv(shuffled) == cloudstack_csv(RECORDS)
    assert cloudstack_json(reversed(RECORDS)) == cloudstack_json(RECORDS)


def test_rows_sort_by_instant_not_by_text():
    later = record("ee01", "running_ns", "1", start="2026-11-30T04:00:00Z")
    earlier = record("ee02", "running_ns", "1",
                     start="2026-11-30T05:00:00.5+02:00")  # 03:00:00.5Z
    rows = cloudstack_rows([later, earlier])
    assert [r["x_recordid"] for r in rows] == ["ee02", "ee01"]
    assert rows[0]["startdate"] == "2026-11-30T03:00:00.500000000Z"


@pytest.mark.parametrize("change, message", [
    ({"quantity": "1.5"}, "record x1: quantity: not a decimal integer"),
    ({"quantity": None}, "record x1: quantity: not a decimal integer"),
    ({"start": "yesterday"}, "record x1: start: not an RFC 3339 time"),
    ({"status": "maybe"}, "record x1: status: 'maybe' is not one of"),
    ({"vm": {"name": "x"}}, "record x1: vm.uuid: missing or not a string"),
    ({"provenance": None}, "record x1: provenance: missing or not an obj"),
    ({"meter": "gpu_ns"}, "record x1: meter: unknown meter 'gpu_ns'"),
    ({"id": None}, "record without id: id: missing"),
])
def test_a_bad_record_is_a_one_line_error_naming_record_and_field(
        change, message):
    rec = record("x1", "running_ns", "5")
    rec.update(change)
    with pytest.raises(ExportError) as e:
        focus_rows([rec])
    assert str(e.value).startswith(message)
    assert "\n" not in str(e.value)


def test_a_record_that_is_not_an_object_is_an_error():
    with pytest.raises(ExportError, match="not a JSON object"):
        cloudstack_rows([["not", "a", "record"]])  # type: ignore[list-item]
