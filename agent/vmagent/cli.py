"""The ``vmagent`` command: one function per sub-command (ARCHITECTURE §6).

Exit codes: 0 success, 1 failure, 2 usage error, 78 bad configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from vmagent import config as config_mod
from vmagent import log
from vmagent._version import __version__
from vmagent.errors import ConfigError, VmagentError
from vmagent.identity import load_or_create_host_id

EXIT_FAILURE, EXIT_USAGE, EXIT_CONFIG = 1, 2, 78


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vmagent",
        description="Per-VM metering straight from the kernel.")
    p.add_argument("--version", action="version",
                   version=f"vmagent {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.add_argument("-c", "--config", metavar="FILE",
                        help=f"configuration file (default "
                             f"{config_mod.DEFAULT_PATH} if it exists)")
        return sp

    vms = command("vms", "discover and sample the VMs on this host, once")
    vms.add_argument("--json", action="store_true",
                     help="print a JSON list of sample-shaped objects")
    vms.set_defaults(func=cmd_vms)
    check = command("check-config", "validate the configuration and exit")
    check.set_defaults(func=cmd_check_config)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    log.configure()
    try:
        return int(args.func(args))
    except ConfigError as err:
        print(f"vmagent: bad configuration: {err}", file=sys.stderr)
        return EXIT_CONFIG
    except VmagentError as err:
        print(f"vmagent: {err}", file=sys.stderr)
        return EXIT_FAILURE
    except BrokenPipeError:  # `vmagent vms | head`: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config)
    print(f"{cfg.source}: OK")
    return 0


def cmd_vms(args: argparse.Namespace) -> int:
    from vmagent.probes import Prober  # the native extension loads here

    cfg = config_mod.load(args.config)
    host_id = cfg.agent.host_id or load_or_create_host_id(cfg.agent.state_dir)
    if os.geteuid() != 0:
        print("vmagent: warning: not running as root, so the VMs of other "
              "users cannot be seen", file=sys.stderr)
    with Prober(host_id, procfs_root=cfg.probes.procfs,
                sysfs_root=cfg.probes.sysfs,
                debugfs_root=cfg.probes.debugfs) as prober:
        prober.discover()
        sweep = prober.sample()
    rows = [{**sample, "pid": vm.pid} for vm, sample in sweep.samples]
    rows.sort(key=lambda r: (r["vm"]["name"], r["pid"]))
    for vm, reason in sweep.failed:
        print(f"vmagent: could not read VM {vm.ref.name} (pid {vm.pid}): "
              f"{reason}", file=sys.stderr)
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        print()
    else:
        print(format_table(rows))
    return 0 if not sweep.failed else EXIT_FAILURE


def format_table(rows: list[dict[str, Any]]) -> str:
    """The ``vmagent vms`` table: one line per VM, sizes in IEC units."""
    head = ("NAME", "UUID", "PID", "VCPUS", "CPU_S", "RSS", "NET_RX",
            "NET_TX", "DISK_RD", "DISK_WR")
    lines = [head]
    for r in rows:
        nics, io = r["nics"], r["io"]
        lines.append((
            r["vm"]["name"], r["vm"]["uuid"], str(r["pid"]),
            str(len(r["cpu"].get("vcpus", [])) or "-"),
            f"{r['cpu']['total_ns'] / 1e9:.2f}",
            human_bytes(r["mem"]["rss_bytes"]),
            human_bytes(sum(n["rx_bytes"] for n in nics)) if nics else "-",
            human_bytes(sum(n["tx_bytes"] for n in nics)) if nics else "-",
            human_bytes(io["rd_bytes"]) if "rd_bytes" in io else "-",
            human_bytes(io["wr_bytes"]) if "wr_bytes" in io else "-",
        ))
    if len(lines) == 1:
        return "no VMs found"
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths))
                     .rstrip() for line in lines)


def human_bytes(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024:
            return f"{value:.1f} {unit}"
    return f"{value / 1024:.1f} TiB"


if __name__ == "__main__":
    sys.exit(main())
