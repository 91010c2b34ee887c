"""Per-VM series for ``GET /metrics``, from the last sweep's ``sample``
records (docs/metrics.md): a scrape reads nothing from the kernel.

Prometheus conventions: base units (seconds, bytes), ``_total`` for
counters; every series is labelled ``uuid`` and ``name``, per-device ones
``nic`` and ``mac`` or ``disk``, per-vCPU ones ``vcpu``.  The gen is only a
label of ``vmagent_vm_info``: a restarted VM's counters continue in the same
series and reset to zero, which ``rate()`` handles as any counter reset.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from vmagent.api.metrics import escape

Labels = dict[str, str]
#: one sample record -> its series of one family: (extra labels, value)
Extract = Callable[[dict[str, Any]], Iterator[tuple[Labels, float]]]

NS = 1e9


def _scaled(value: int, scale: float | None) -> float:
    """Counts stay integers; nanoseconds become seconds."""
    return value / scale if scale else value


def _field(part: str, key: str, scale: float | None = None) -> Extract:
    """A top-level part's field (``cpu.total_ns`` ...), where present."""
    def extract(s: dict[str, Any]) -> Iterator[tuple[Labels, float]]:
        value = (s.get(part) or {}).get(key)
        if value is not None:
            yield {}, _scaled(value, scale)
    return extract


def _each(part: str, key: str, labels: Callable[[dict[str, Any]], Labels],
          scale: float | None = None) -> Extract:
    """A field of every entry of a list part (``nics``, ``disks``,
    ``cpu.vcpus``)."""
    def extract(s: dict[str, Any]) -> Iterator[tuple[Labels, float]]:
        entries = s.get(part) if part != "vcpus" else \
            (s.get("cpu") or {}).get("vcpus")
        for entry in entries or ():
            if entry.get(key) is not None:
                yield labels(entry), _scaled(entry[key], scale)
    return extract


def _nic(entry: dict[str, Any]) -> Labels:
    return {"nic": entry["name"], "mac": entry.get("mac") or ""}


def _disk(entry: dict[str, Any]) -> Labels:
    return {"disk": entry["path"]}


def _vcpu(entry: dict[str, Any]) -> Labels:
    return {"vcpu": str(entry["id"])}


def _kvm(key: str) -> Extract:
    return _field("kvm", key)


def _pages(s: dict[str, Any]) -> Iterator[tuple[Labels, float]]:
    kvm = s.get("kvm") or {}
    for size in ("4k", "2m", "1g"):
        if kvm.get(f"pages_{size}") is not None:
            yield {"size": size}, kvm[f"pages_{size}"]


#: (name, type, help, extract); the order of the exposition
FAMILIES: list[tuple[str, str, str, Extract]] = [
    ("vmagent_vm_cpu_seconds_total", "counter",
     "CPU time of the VM's process, all threads", _field("cpu", "total_ns",
                                                         NS)),
    ("vmagent_vm_cpu_user_seconds_total", "counter", "user CPU time",
     _field("cpu", "user_ns", NS)),
    ("vmagent_vm_cpu_system_seconds_total", "counter", "system CPU time",
     _field("cpu", "system_ns", NS)),
    ("vmagent_vm_cpu_guest_seconds_total", "counter",
     "CPU time in guest mode (part of user)", _field("cpu", "guest_ns", NS)),
    ("vmagent_vm_vhost_cpu_seconds_total", "counter",
     "CPU time of vhost kernel threads outside the process (kernels < 6.4)",
     _field("cpu", "vhost_ns", NS)),
    ("vmagent_vm_vcpu_run_seconds_total", "counter",
     "time each vCPU thread ran", _each("vcpus", "run_ns", _vcpu, NS)),
    ("vmagent_vm_vcpu_wait_seconds_total", "counter",
     "time each vCPU was runnable but not running (the guest's steal)",
     _each("vcpus", "wait_ns", _vcpu, NS)),
    ("vmagent_vm_memory_rss_bytes", "gauge", "resident memory",
     _field("mem", "rss_bytes")),
    ("vmagent_vm_memory_alloc_bytes", "gauge", "configured guest memory",
     _field("mem", "alloc_bytes")),
    ("vmagent_vm_memory_hugetlb_bytes", "gauge", "huge pages held",
     _field("mem", "hugetlb_bytes")),
    *[(f"vmagent_vm_nic_{way}_{unit}_total", "counter",
       f"{unit} the guest {verb} on this NIC",
       _each("nics", f"{short}_{unit}", _nic))
      for way, verb, short in (("receive", "received", "rx"),
                               ("transmit", "sent", "tx"))
      for unit in ("bytes", "packets", "errors", "drops")],
    ("vmagent_vm_io_read_bytes_total", "counter",
     "storage-layer bytes the VM's process read", _field("io", "rd_bytes")),
    ("vmagent_vm_io_write_bytes_total", "counter",
     "storage-layer bytes the VM's process wrote", _field("io", "wr_bytes")),
    ("vmagent_vm_disk_capacity_bytes", "gauge", "virtual size of the disk",
     _each("disks", "capacity_bytes", _disk)),
    ("vmagent_vm_disk_allocated_bytes", "gauge",
     "space the disk's file takes on the host",
     _each("disks", "allocated_bytes", _disk)),
    *[(f"vmagent_vm_disk_{name}_total", "counter",
       f"{name.replace('_', ' ')} of a block device dedicated to the VM",
       _each("disks", key, _disk))
      for name, key in (("read_bytes", "rd_bytes"),
                        ("write_bytes", "wr_bytes"),
                        ("read_ops", "rd_ops"), ("write_ops", "wr_ops"))],
    *[(f"vmagent_vm_kvm_{key}_total", "counter",
       f"KVM {key.replace('_', ' ')}, all vCPUs", _kvm(key))
      for key in ("exits", "halt_exits", "halt_wakeup", "io_exits",
                  "mmio_exits", "irq_exits", "signal_exits",
                  "insn_emulation", "pf_taken")],
    ("vmagent_vm_kvm_pages", "gauge", "guest memory mapped by page size",
     _pages),
]


def render_vms(samples: Sequence[dict[str, Any]]) -> list[str]:
    """The exposition lines of every family for these sample records."""
    vms = [(s, f'uuid="{escape(s["vm"]["uuid"])}",'
               f'name="{escape(s["vm"]["name"])}"') for s in samples]
    out: list[str] = ["# HELP vmagent_vm_info the VMs of the last sweep; "
                      "gen tells a VM's runs apart",
                      "# TYPE vmagent_vm_info gauge"]
    out += [f'vmagent_vm_info{{{vm},gen="{escape(s["vm"]["gen"])}",'
            f'hypervisor="{escape(s["vm"].get("hypervisor", ""))}"}} 1'
            for s, vm in vms]
    for name, kind, text, extract in FAMILIES:
        lines = [f"{name}{{{vm}{_tags(labels)}}} {value!r}"
                 for s, vm in vms for labels, value in extract(s)]
        if lines:
            out += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", *lines]
    return out


def _tags(labels: Labels) -> str:
    return "".join(f',{k}="{escape(v)}"' for k, v in labels.items())


class VmSeries:
    """The per-VM exposition of the last sweep, rendered once per sweep
    however often it is scraped (the daemon replaces the list each
    sweep)."""

    def __init__(self) -> None:
        self._of: object = None
        self._text = ""

    def text(self, samples: Sequence[dict[str, Any]]) -> str:
        if samples is not self._of:
            self._text = "".join(f"{line}\n" for line in render_vms(samples))
            self._of = samples
        return self._text
