"""``vmcollector export cloudstack|focus``: usage records (the JSON shape of
COLLECTOR.md §5, as dicts) as CloudStack usage records and FOCUS 1.x rows
(docs/usage.md, "Exports").

Pure functions of the records: rows come out in a stable order (period,
slice, VM, meter, device, id) whatever order the records come in, and
nothing depends on when the export runs.  Quantities stay exact: hours are
rounded half-even to 9 places from the integer nanoseconds, everything
else is written exactly.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vmagent.errors import VmagentError
from vmagent.ledger.exact import (
    ExactError,
    format_rfc3339_ns,
    ns_to_hours,
    parse_int,
    parse_rfc3339_ns,
    ratio,
)

STATUSES = ("provisional", "final", "correction")


class ExportError(VmagentError):
    """A usage record an export cannot read; the message names the record
    and the field."""


@dataclass(frozen=True)
class Usage:
    """One usage record, checked and with its times and quantity as ints."""
    id: str
    vm_uuid: str
    vm_name: str
    host: str
    account: str | None
    project: str | None
    meter: str
    quantity: int
    device: str  # the NIC or disk, "" for per-VM meters
    start_ns: int
    end_ns: int
    period_start_ns: int
    period_end_ns: int
    status: str
    supersedes: str | None
    seq_ranges: list[Any]
    gap_ns: int
    interpolated_ns: int

    def sort_key(self) -> tuple[int, int, int, str, str, str, str]:
        return (self.period_start_ns, self.start_ns, self.end_ns,
                self.vm_uuid, self.meter, self.device, self.id)


def read_usage(rec: Mapping[str, Any]) -> Usage:
    """Check one record of the §5 shape; ``ExportError`` names the record
    and the first bad field."""
    r = _Fields(rec)
    status = r.text(rec, "status")
    if status not in STATUSES:
        raise r.error("status", f"{status!r} is not one of "
                      f"{', '.join(STATUSES)}")
    vm, prov = r.obj("vm"), r.obj("provenance")
    seq_ranges = prov.get("seq_ranges")
    if not isinstance(seq_ranges, list):
        raise r.error("provenance.seq_ranges", "not a list")
    return Usage(
        id=r.text(rec, "id"), vm_uuid=r.text(vm, "uuid", "vm."),
        vm_name=r.text(vm, "name", "vm.", null=True) or "",
        host=r.text(rec, "host"), account=r.text(rec, "account", null=True),
        project=r.text(rec, "project", null=True), meter=r.text(rec, "meter"),
        quantity=r.number("quantity", parse_int),
        device=(r.text(rec, "nic", null=True)
                or r.text(rec, "disk", null=True) or ""),
        start_ns=r.number("start", parse_rfc3339_ns),
        end_ns=r.number("end", parse_rfc3339_ns),
        period_start_ns=r.number("period_start", parse_rfc3339_ns),
        period_end_ns=r.number("period_end", parse_rfc3339_ns),
        status=status, supersedes=r.text(rec, "supersedes", null=True),
        seq_ranges=seq_ranges, gap_ns=r.count(prov, "gap_ns"),
        interpolated_ns=r.count(prov, "interpolated_ns"))


class _Fields:
    """Typed access to one record's fields, with errors naming it."""

    def __init__(self, rec: Any) -> None:
        rid = rec.get("id") if isinstance(rec, Mapping) else None
        self.who = f"record {rid}" if isinstance(rid, str) else \
            "record without id"
        if not isinstance(rec, Mapping):
            raise self.error("", "not a JSON object")
        self.rec: Mapping[str, Any] = rec

    def error(self, field: str, problem: str) -> ExportError:
        return ExportError(f"{self.who}: {field}: {problem}" if field
                           else f"{self.who}: {problem}")

    def obj(self, key: str) -> Mapping[str, Any]:
        value = self.rec.get(key)
        if not isinstance(value, Mapping):
            raise self.error(key, "missing or not an object")
        return value

    def text(self, obj: Mapping[str, Any], key: str, prefix: str = "",
             null: bool = False) -> Any:
        value = obj.get(key)
        if null and (value is None or isinstance(value, str)):
            return value  # optional: null or any string
        if not isinstance(value, str) or not value:
            raise self.error(prefix + key, "missing or not a string")
        return value

    def number(self, key: str, parse: Callable[[Any], int]) -> int:
        try:
            return parse(self.rec.get(key))
        except ExactError as e:
            raise self.error(key, str(e)) from None

    def count(self, prov: Mapping[str, Any], key: str) -> int:
        value = prov.get(key, 0)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.error("provenance." + key, "not an integer")
        return value


def _sorted(records: Iterable[Mapping[str, Any]]) -> list[Usage]:
    return sorted((read_usage(r) for r in records), key=Usage.sort_key)


# -- CloudStack -------------------------------------------------------------

# The names of CloudStack's listUsageRecords response (UsageRecordResponse),
# then vmagent's own, prefixed x_ as FOCUS does.
CLOUDSTACK_COLUMNS = (
    "account", "accountid", "domainid", "zoneid", "project", "projectid",
    "description", "usage", "usagetype", "rawusage", "usageid",
    "virtualmachineid", "name", "offeringid", "templateid",
    "startdate", "enddate", "x_recordid", "x_status", "x_supersedes",
    "x_host")


@dataclass(frozen=True)
class _CsType:
    usagetype: int
    description: str  # CloudStack's own wording
    display: str  # after the quantity in ``usage``; "" for hours
    device: str  # how the description names the device


CLOUDSTACK_TYPES: dict[str, _CsType] = {
    "running_ns": _CsType(1, "running time", "", ""),
    "net_tx_bytes": _CsType(4, "network bytes sent", "bytes sent", "NIC"),
    "net_rx_bytes": _CsType(5, "network bytes received", "bytes received",
                            "NIC"),
    "disk_rd_ops": _CsType(21, "disk I/O read (io requests)", "io read",
                           "Volume"),
    "disk_wr_ops": _CsType(22, "disk I/O write (io requests)", "io write",
                           "Volume"),
    "disk_rd_bytes": _CsType(23, "disk I/O read (bytes)", "bytes read",
                             "Volume"),
    "disk_wr_bytes": _CsType(24, "disk I/O write (bytes)", "bytes write",
                             "Volume"),
}


def cloudstack_rows(
        records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """CloudStack usage records (``CLOUDSTACK_COLUMNS``), one per record of
    a meter CloudStack has a usage type for; other meters are left out."""
    return [_cloudstack_row(u) for u in _sorted(records)
            if u.meter in CLOUDSTACK_TYPES]


def _cloudstack_row(u: Usage) -> dict[str, Any]:
    cs = CLOUDSTACK_TYPES[u.meter]
    name = u.vm_name or u.vm_uuid
    if cs.usagetype == 1:
        raw = ns_to_hours(u.quantity)
        usage = f"{raw} Hrs"
        description = f"{name} {cs.description}"
        usageid = u.vm_uuid
    else:
        raw = ratio(u.quantity, 1)
        usage = f"{u.quantity} {cs.display}"
        description = (f"{cs.description} for Vm: {name} and "
                       f"{cs.device}: {u.device}")
        usageid = u.device
    return {
        "account": u.account or "", "accountid": u.account or "",
        "domainid": "", "zoneid": "",
        "project": u.project or "", "projectid": u.project or "",
        "description": description, "usage": usage,
        "usagetype": cs.usagetype, "rawusage": raw, "usageid": usageid,
        "virtualmachineid": u.vm_uuid, "name": u.vm_name,
        "offeringid": "", "templateid": "",
        "startdate": format_rfc3339_ns(u.start_ns),
        "enddate": format_rfc3339_ns(u.end_ns),
        "x_recordid": u.id, "x_status": u.status,
        "x_supersedes": u.supersedes or "", "x_host": u.host,
    }


def cloudstack_csv(records: Iterable[Mapping[str, Any]]) -> str:
    return to_csv(CLOUDSTACK_COLUMNS, cloudstack_rows(records))


def cloudstack_json(records: Iterable[Mapping[str, Any]]) -> str:
    """The rows as a listUsageRecords response body."""
    rows = cloudstack_rows(records)
    body = {"listusagerecordsresponse": {"count": len(rows),
                                         "usagerecord": rows}}
    return json.dumps(body, ensure_ascii=False, indent=1) + "\n"


# -- FOCUS ------------------------------------------------------------------

FOCUS_COLUMNS = (
    "BillingPeriodStart", "BillingPeriodEnd", "ChargePeriodStart",
    "ChargePeriodEnd", "ChargeCategory", "ChargeClass", "ChargeDescription",
    "ConsumedQuantity", "ConsumedUnit", "ResourceId", "ResourceName",
    "SubAccountId", "BilledCost", "EffectiveCost", "ListCost",
    "BillingCurrency", "x_Meter", "x_Host", "x_Status", "x_RecordId",
    "x_Supersedes", "x_SeqRanges", "x_GapNs", "x_InterpolatedNs")

# meter -> (ConsumedUnit in FOCUS's unit format, units of the meter per
# consumed unit, description).  FOCUS has no nanoseconds: ns meters are
# written in seconds with 9 places, which is exact.
FOCUS_UNITS: dict[str, tuple[str, int, str]] = {
    "running_ns": ("Seconds", 10**9, "running time"),
    "vcpu_ns": ("vCPU-Seconds", 10**9, "vCPU time allocated"),
    "mem_alloc_byte_ns": ("B-Seconds", 10**9, "memory allocated"),
    "mem_rss_max_bytes": ("B", 1, "maximum resident memory"),
    "cpu_ns": ("Seconds", 10**9, "CPU time"),
    "net_rx_bytes": ("B", 1, "network bytes received"),
    "net_tx_bytes": ("B", 1, "network bytes sent"),
    "net_rx_packets": ("Packets", 1, "network packets received"),
    "net_tx_packets": ("Packets", 1, "network packets sent"),
    "io_rd_bytes": ("B", 1, "storage bytes read"),
    "io_wr_bytes": ("B", 1, "storage bytes written"),
    "disk_rd_bytes": ("B", 1, "disk bytes read"),
    "disk_wr_bytes": ("B", 1, "disk bytes written"),
    "disk_rd_ops": ("Requests", 1, "disk reads"),
    "disk_wr_ops": ("Requests", 1, "disk writes"),
}


def focus_rows(records: Iterable[Mapping[str, Any]]) -> list[dict[str, str]]:
    """FOCUS rows (``FOCUS_COLUMNS``), one per record; a record of an
    unknown meter is an error (its unit would be a guess)."""
    return [_focus_row(u) for u in _sorted(records)]


def _focus_row(u: Usage) -> dict[str, str]:
    if u.meter not in FOCUS_UNITS:
        raise ExportError(f"record {u.id}: meter: unknown meter {u.meter!r}")
    unit, per, what = FOCUS_UNITS[u.meter]
    device = ""
    if u.device:
        device = (" on NIC " if u.meter.startswith("net_") else
                  " on disk ") + u.device
    return {
        "BillingPeriodStart": format_rfc3339_ns(u.period_start_ns),
        "BillingPeriodEnd": format_rfc3339_ns(u.period_end_ns),
        "ChargePeriodStart": format_rfc3339_ns(u.start_ns),
        "ChargePeriodEnd": format_rfc3339_ns(u.end_ns),
        "ChargeCategory": "Usage",
        "ChargeClass": "Correction" if u.status == "correction" else "",
        "ChargeDescription":
            f"{what} of VM {u.vm_name or u.vm_uuid}{device}",
        "ConsumedQuantity": (ratio(u.quantity, per) if per > 1
                             else str(u.quantity)),
        "ConsumedUnit": unit, "ResourceId": u.vm_uuid,
        "ResourceName": u.vm_name, "SubAccountId": u.account or "",
        "BilledCost": "0", "EffectiveCost": "0", "ListCost": "0",
        "BillingCurrency": "", "x_Meter": u.meter, "x_Host": u.host,
        "x_Status": u.status, "x_RecordId": u.id,
        "x_Supersedes": u.supersedes or "",
        "x_SeqRanges": json.dumps(u.seq_ranges, separators=(",", ":"),
                                  ensure_ascii=False),
        "x_GapNs": str(u.gap_ns), "x_InterpolatedNs": str(u.interpolated_ns),
    }


def focus_csv(records: Iterable[Mapping[str, Any]]) -> str:
    return to_csv(FOCUS_COLUMNS, focus_rows(records))


def to_csv(columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> str:
    """A header and the rows, comma-separated, quoted where needed, lines
    ending in ``\\n``."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([row[c] for c in columns])
    return out.getvalue()
