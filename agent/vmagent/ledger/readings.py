"""What the ledger's fold takes from a record (docs/usage.md): a VM's
identity (``vm_of``), its cumulative counters by meter and device
(``counters``), and for a ``sample`` all of it at once as a ``Reading``.

A ``Reading`` is made from a decoded record (``of_record``) or, for a
sample in its usual shape, straight from its msgpack bytes by the C
scanner (``of_bytes``; native/common/msgpack_reading.c): the same values
``of_record`` gives after decoding, or None where the scanner cannot vouch
for them (then the record is decoded).  Rules: a field counts only when
it is an integer (as Python's ``isinstance(v, int)``); absent fields stay
absent; a NIC is named by its MAC, else its name; a disk by its path.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from vmagent.errors import NativeExtensionError

try:
    from vmagent.probes._native import ffi, lib
except NativeExtensionError:  # pragma: no cover - depends on the install
    ffi = lib = None

#: A meter and its device (NIC or disk id; "" for none).
Key = tuple[str, str]

#: Counters that start with the process: baseline 0 for a new gen.
PROCESS_METERS = ("cpu_ns", "io_rd_bytes", "io_wr_bytes")
NET_FIELDS = (("net_rx_bytes", "rx_bytes"), ("net_tx_bytes", "tx_bytes"),
              ("net_rx_packets", "rx_packets"),
              ("net_tx_packets", "tx_packets"))
DISK_FIELDS = (("disk_rd_bytes", "rd_bytes"), ("disk_wr_bytes", "wr_bytes"),
               ("disk_rd_ops", "rd_ops"), ("disk_wr_ops", "wr_ops"))
IO_FIELDS = ((("io_rd_bytes", ""), "rd_bytes"),
             (("io_wr_bytes", ""), "wr_bytes"))


class Vm(NamedTuple):
    """The gen a record names."""

    uuid: str
    gen: str
    name: str
    started_ns: int | None


class Reading(NamedTuple):
    """A ``sample`` record as the fold reads it; ``vm`` None: it names no
    gen (the fold then only notes its time)."""

    seq: int
    t: int
    vm: Vm | None
    keys: tuple[Key, ...]  # sorted
    values: tuple[int, ...]  # the counters, in the order of ``keys``
    rss: int | None
    vcpus: int | None  # the vCPU threads listed (None: none)
    alloc: int | None  # configured memory, bytes


def vm_of(vm: Any) -> Vm | None:
    """The gen a record's ``vm`` names (None: no uuid or gen)."""
    if not isinstance(vm, dict) or not vm.get("uuid") or not vm.get("gen"):
        return None
    started = vm.get("started_ns")
    return Vm(str(vm["uuid"]), str(vm["gen"]), str(vm.get("name") or ""),
              started if isinstance(started, int) else None)


def counters(rec: dict[str, Any]) -> dict[Key, int]:
    """A sample's (or vm_stop's) cumulative counters by meter and device;
    absent fields stay absent."""
    out: dict[Key, int] = {}  # per sample: one lookup per field
    cpu = rec.get("cpu")
    if isinstance(cpu, dict):
        total = cpu.get("total_ns")
        if isinstance(total, int):
            out[("cpu_ns", "")] = total + int_of(cpu.get("vhost_ns"))
    io = rec.get("io")
    if isinstance(io, dict):
        for key, name in IO_FIELDS:
            v = io.get(name)
            if isinstance(v, int):
                out[key] = v
    for nic in dicts_of(rec.get("nics")):
        _device(out, str(nic.get("mac") or nic.get("name") or ""), nic,
                NET_FIELDS)
    for disk in dicts_of(rec.get("disks")):
        _device(out, str(disk.get("path") or ""), disk, DISK_FIELDS)
    return out


def rss_of(rec: dict[str, Any]) -> int | None:
    rss = dict_of(rec.get("mem")).get("rss_bytes")
    return rss if isinstance(rss, int) else None


def config_of(rec: dict[str, Any]) -> tuple[int | None, int | None]:
    """A sample's configuration, for a gen whose vm_start was not seen:
    its vCPU threads and configured memory."""
    vcpus = dict_of(rec.get("cpu")).get("vcpus")
    mem = dict_of(rec.get("mem")).get("alloc_bytes")
    return (len(vcpus) if isinstance(vcpus, list) and vcpus else None,
            mem if isinstance(mem, int) else None)


def of_record(rec: dict[str, Any], t: int, seq: int) -> Reading:
    """A decoded sample record's reading."""
    found = sorted(counters(rec).items())
    vcpus, alloc = config_of(rec)
    return Reading(seq, t, vm_of(rec.get("vm")),
                   tuple(k for k, _ in found), tuple(v for _, v in found),
                   rss_of(rec), vcpus, alloc)


def _device(out: dict[Key, int], dev: str, fields_of: dict[str, Any],
            fields: tuple[tuple[str, str], ...]) -> None:
    if dev:
        for meter, name in fields:
            v = fields_of.get(name)
            if isinstance(v, int):
                out[(meter, dev)] = v


def dict_of(value: Any) -> dict[str, Any]:
    """``value`` if it is a dict, else an empty one."""
    return value if isinstance(value, dict) else {}


def dicts_of(value: Any) -> list[dict[str, Any]]:
    """The dicts in ``value`` if it is a list."""
    return [v for v in value if isinstance(v, dict)] \
        if isinstance(value, list) else []


def int_of(value: Any) -> int:
    """``value`` if it is an integer, else 0."""
    return value if isinstance(value, int) else 0


#: The C scanner's meter ids (native/vmprobe.h), in sorted order.
_METERS = ("cpu_ns", "disk_rd_bytes", "disk_rd_ops", "disk_wr_bytes",
           "disk_wr_ops", "io_rd_bytes", "io_wr_bytes", "net_rx_bytes",
           "net_rx_packets", "net_tx_bytes", "net_tx_packets")


_HEAD, _STARTED, _RSS, _ALLOC = (
    (lib.VMPROBE_READING_HEAD, lib.VMPROBE_READING_STARTED,
     lib.VMPROBE_READING_RSS, lib.VMPROBE_READING_ALLOC)
    if lib is not None else (16, 1, 2, 4))


class FromBytes:
    """``Reading``s straight from sample records' msgpack bytes (the C
    scanner), or None where a record must be decoded (not a sample, not
    the usual shape, no native module).  One per thread: it keeps its
    output buffers, and the gens and counter keys it has seen (by their
    bytes: a gen's samples repeat them)."""

    def __init__(self) -> None:
        self._out = self._sig = None
        if lib is not None:
            self._out = ffi.new("int64_t[]", lib.VMPROBE_READING_WORDS)
            self._sig = ffi.new("unsigned char[]", lib.VMPROBE_READING_SIG)
        self._vms: dict[bytes, Vm] = {}
        self._keys: dict[bytes, tuple[Key, ...]] = {}

    def __call__(self, body: bytes, seq: int) -> Reading | None:
        out = self._out
        if out is None or lib.vmprobe_sample_reading(body, len(body), out,
                                                     self._sig) != 0:
            return None
        w = ffi.unpack(out, _HEAD + out[14])
        raw = body[w[1]:w[1] + w[2]]
        vm = self._vms.get(raw)
        if vm is None:
            vm = self._vms[raw] = Vm(
                body[w[3]:w[3] + w[4]].decode(),
                body[w[5]:w[5] + w[6]].decode(),
                body[w[7]:w[7] + w[8]].decode(),
                w[10] if w[9] & _STARTED else None)
        sig = ffi.buffer(self._sig, w[15])[:]
        keys = self._keys.get(sig)
        if keys is None:
            keys = self._keys[sig] = _keys_of(sig)
        flags = w[9]
        return Reading(seq, w[0], vm, keys, tuple(w[_HEAD:]),
                       w[11] if flags & _RSS else None, w[13] or None,
                       w[12] if flags & _ALLOC else None)


def _keys_of(sig: bytes) -> tuple[Key, ...]:
    """The counter keys the C scanner wrote (native/vmprobe.h)."""
    keys, at = [], 0
    while at < len(sig):
        n = int.from_bytes(sig[at + 1:at + 3], "big")
        dev = "" if n == 0xFFFF else sig[at + 3:at + 3 + n].decode()
        keys.append((_METERS[sig[at]], dev))
        at += 3 + (0 if n == 0xFFFF else n)
    return tuple(keys)
