"""Pure parsers for hypervisor command lines (QEMU, Firecracker).

QEMU options are QemuOpts strings (``key=value,...``, a literal comma written
``,,``, the first item possibly a value of the option's implied key) or, as
libvirt passes them since 7.x, JSON objects.  Sources:
qemu/qemu:qemu-options.hx, util/qemu-option.c, system/vl.c;
libvirt/libvirt:src/qemu/qemu_command.c.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

_MIB = 1 << 20
# qemu/qemu:util/cutils.c (qemu_strtosz): suffixes are powers of 1024.
_SIZE_SUFFIX = {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30,
                "t": 1 << 40, "p": 1 << 50, "e": 1 << 60}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([bkmgtpe]?)\s*$", re.IGNORECASE)
_UUID_RE = re.compile(
    r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


@dataclass
class QemuArgs:
    """What vmagent takes from a QEMU command line."""

    name: str | None = None
    uuid: str | None = None
    mem_bytes: int | None = None  # -m; None when not given
    vcpus: int | None = None  # -smp; None when not given
    tap_macs: dict[str, str] = field(default_factory=dict)  # ifname -> MAC
    fd_macs: dict[int, str] = field(default_factory=dict)  # tap fd -> MAC
    wants_kvm: bool = False


def split_opts(value: str) -> list[tuple[str | None, str]]:
    """Split a QemuOpts string into (key, value); key None for a bare value.

    >>> split_opts("guest=a,,b,debug-threads=on")
    [('guest', 'a,b'), ('debug-threads', 'on')]
    """
    parts: list[str] = []
    cur: list[str] = []
    i = 0
    while i < len(value):
        ch = value[i]
        if ch == ",":
            if value[i + 1 : i + 2] == ",":
                cur.append(",")
                i += 2
                continue
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    parts.append("".join(cur))
    out: list[tuple[str | None, str]] = []
    for part in parts:
        key, eq, val = part.partition("=")
        out.append((key, val) if eq else (None, part))
    return out


def option_map(value: str, implied: str | None = None) -> dict[str, str]:
    """A QemuOpts string or a JSON object as a flat dict of strings."""
    if value.lstrip().startswith("{"):
        try:
            obj = json.loads(value)
        except ValueError:
            return {}
        if not isinstance(obj, dict):
            return {}
        return {str(k): _json_scalar(v) for k, v in obj.items()}
    out: dict[str, str] = {}
    for i, (key, val) in enumerate(split_opts(value)):
        if key is None:
            if i == 0 and implied is not None:
                out[implied] = val
            else:  # a bare flag such as "vhost" means "on"
                out[val] = "on"
        else:
            out[key] = val
    return out


def _json_scalar(v: object) -> str:
    if isinstance(v, bool):
        return "on" if v else "off"
    return str(v)


def parse_size(text: str, default_unit: int = _MIB) -> int | None:
    """A QEMU size (``512``, ``2G``, ``1048576k``); no suffix means MiB."""
    m = _SIZE_RE.match(text)
    if not m:
        return None
    number, suffix = m.groups()
    unit = _SIZE_SUFFIX[suffix.lower()] if suffix else default_unit
    if "." in number:
        whole, frac = number.split(".")
        return int(whole) * unit + int(frac) * unit // 10 ** len(frac)
    return int(number) * unit


def parse_smp(value: str) -> int | None:
    """vCPUs from ``-smp``: ``cpus`` (or the bare first value), else
    ``maxcpus``, else the product of the topology (qemu/qemu:hw/core/
    machine-smp.c, machine_parse_smp_config)."""
    opts = option_map(value, implied="cpus")
    try:
        if "cpus" in opts and int(opts["cpus"]) > 0:
            return int(opts["cpus"])
        if "maxcpus" in opts and int(opts["maxcpus"]) > 0:
            return int(opts["maxcpus"])
        product = 1
        for key in ("drawers", "books", "sockets", "dies", "clusters",
                    "modules", "cores", "threads"):
            product *= int(opts.get(key, "1"))
    except ValueError:
        return None
    return product if product > 0 else None


def canonical_uuid(text: str) -> str | None:
    """The lowercase canonical form of a UUID string, None if it is not one."""
    t = text.strip().lower()
    if len(t) == 32 and all(c in "0123456789abcdef" for c in t):
        t = f"{t[:8]}-{t[8:12]}-{t[12:16]}-{t[16:20]}-{t[20:]}"
    return t if _UUID_RE.match(t) else None


def canonical_mac(text: str) -> str | None:
    t = text.strip().lower().replace("-", ":")
    return t if _MAC_RE.match(t) else None


def parse_qemu_argv(argv: list[str]) -> QemuArgs:
    """Name, UUID, memory, vCPUs and NIC MACs from a QEMU argv."""
    out = QemuArgs()
    netdevs: dict[str, dict[str, str]] = {}  # id -> tap options
    nic_devices: list[dict[str, str]] = []
    i = 1
    while i < len(argv):
        opt = argv[i]
        if opt.startswith("--"):
            opt = opt[1:]
        val = argv[i + 1] if i + 1 < len(argv) else None
        i += 1
        if opt == "-enable-kvm":
            out.wants_kvm = True
            continue
        if val is None:
            break
        if opt == "-name":
            out.name = option_map(val, implied="guest").get("guest", out.name)
        elif opt == "-uuid":
            out.uuid = canonical_uuid(val)
        elif opt == "-m":
            size = option_map(val, implied="size").get("size")
            out.mem_bytes = parse_size(size) if size else None
        elif opt == "-smp":
            out.vcpus = parse_smp(val)
        elif opt == "-netdev":
            nd = option_map(val, implied="type")
            if nd.get("type") == "tap" and "id" in nd:
                netdevs[nd["id"]] = nd
        elif opt == "-device":
            dev = option_map(val, implied="driver")
            if "netdev" in dev and "mac" in dev:
                nic_devices.append(dev)
        elif opt == "-nic":
            nic = option_map(val, implied="type")
            mac = canonical_mac(nic.get("mac", ""))
            if nic.get("type") == "tap" and mac:
                _note_tap(out, nic, mac)
        elif opt in ("-accel", "-machine", "-M"):
            accel = option_map(val, implied="accel" if opt == "-accel"
                               else "type").get("accel", "")
            out.wants_kvm |= "kvm" in accel.split(":")
        else:
            continue
        i += 1
    for dev in nic_devices:
        mac = canonical_mac(dev["mac"])
        tap = netdevs.get(dev["netdev"])
        if mac and tap is not None:
            _note_tap(out, tap, mac)
    return out


def _note_tap(out: QemuArgs, opts: dict[str, str], mac: str) -> None:
    if "ifname" in opts:
        out.tap_macs[opts["ifname"]] = mac
    fds = opts.get("fds") or opts.get("fd") or ""
    for fd in fds.split(":"):
        if fd.isdigit():
            out.fd_macs[int(fd)] = mac


def firecracker_id(argv: list[str]) -> str | None:
    """Firecracker's ``--id`` (its VM name; it has no UUID option)."""
    for i, arg in enumerate(argv[:-1]):
        if arg == "--id":
            return argv[i + 1]
        if arg.startswith("--id="):
            return arg[5:]
    if argv and argv[-1].startswith("--id="):
        return argv[-1][5:]
    return None


_VCPU_THREAD = re.compile(
    r"CPU (\d+)/(?:KVM|TCG|HVF|WHPX|NVMM)"  # QEMU, with debug-threads=on
    r"|fc_vcpu (\d+)"  # Firecracker (src/vmm/src/vstate/vcpu)
    r"|vcpu(\d+)")  # cloud-hypervisor (vmm/src/cpu.rs)


def vcpu_index(thread_name: str) -> int | None:
    """The vCPU index from a vCPU thread's name: QEMU's ``CPU 3/KVM`` or
    ``CPU 0/TCG`` (qemu/qemu:accel/kvm/kvm-accel-ops.c, accel/tcg/
    tcg-accel-ops-mttcg.c), Firecracker's ``fc_vcpu 0``, cloud-hypervisor's
    ``vcpu0``."""
    m = _VCPU_THREAD.fullmatch(thread_name.strip())
    if m is None:
        return None
    return int(next(g for g in m.groups() if g is not None))
