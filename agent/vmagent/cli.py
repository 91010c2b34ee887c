"""The ``vmagent`` command: one function per sub-command
(docs/architecture.md, "Commands").

Exit codes: 0 success, 1 failure (``status``: degraded), 2 usage error,
3 not running (``status``), 78 bad configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vmagent import config as config_mod
from vmagent import log
from vmagent._version import __version__
from vmagent.errors import ConfigError, StateError, VmagentError
from vmagent.identity import load_or_create_host_id
from vmagent.show import columns

EXIT_FAILURE, EXIT_USAGE, EXIT_NOT_RUNNING, EXIT_CONFIG = 1, 2, 3, 78


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vmagent",
        description="Per-VM metering straight from the kernel.")
    p.add_argument("--version", action="version",
                   version=f"vmagent {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _agent_commands(sub)
    _pull_command(sub)
    _acct_command(sub)
    _group(sub, "consumer", "manage consumers", [
        ("drop", "a dead consumer stops holding WAL data", cmd_consumer_drop,
         [("name", {"metavar": "NAME"})], True)])
    _group(sub, "key", "the host's signing key", [
        ("show", "print the public key in hex (generated if missing)",
         cmd_key_show, [], True)])
    _group(sub, "wal", "inspect a write-ahead log directory", [
        ("verify", "check checksums, seqs, chain and signatures",
         cmd_wal_verify, [("dir", {"metavar": "DIR"}), ("--pubkey", {
             "metavar": "F", "help": "public key, raw or hex (default: "
             "host.pub in DIR's parent, the state dir)"})], False),
        ("dump", "print the records", cmd_wal_dump,
         [("dir", {"metavar": "DIR"}), ("--json", {
             "action": "store_true", "help": "one JSON object per line"})],
         False)])
    return p


def with_config(sp: argparse.ArgumentParser,
                default: Path = config_mod.DEFAULT_PATH
                ) -> argparse.ArgumentParser:
    """``-c FILE`` on a sub-command (``vmcollector`` passes its default)."""
    sp.add_argument("-c", "--config", metavar="FILE",
                    help=f"configuration file (default {default} if it "
                         "exists)")
    return sp


def _agent_commands(sub: Any) -> None:
    for name, text, func, json_flag in (
            ("vms", "discover and sample the VMs on this host, once",
             cmd_vms, "print a JSON list of sample-shaped objects"),
            ("check-config", "validate the configuration and exit",
             cmd_check_config, None),
            ("run", "run the agent in the foreground (systemd, daemon(8))",
             cmd_run, None),
            ("status", "ask the running agent how it is; exit 0 healthy, "
             "1 degraded, 3 not running", cmd_status,
             "the whole status document")):
        sp = with_config(sub.add_parser(name, help=text, description=text))
        if json_flag:
            sp.add_argument("--json", action="store_true", help=json_flag)
        sp.set_defaults(func=func)


def _group(sub: Any, name: str, text: str,
           actions: list[tuple[str, str, Any, list[tuple[str, Any]],
                               bool]]) -> None:
    """A command with actions (``vmagent wal verify`` ...)."""
    group = sub.add_parser(name, help=text).add_subparsers(
        dest=f"{name}_command", metavar="ACTION", required=True)
    for action, help_text, func, arguments, config in actions:
        sp = group.add_parser(action, help=help_text)
        for flag, options in arguments:
            sp.add_argument(flag, **options)
        if config:
            with_config(sp)
        sp.set_defaults(func=func)


def _pull_command(sub: Any) -> None:
    pull = sub.add_parser("pull", help="pull, verify and print records "
                          "(the reference collector)")
    pull.add_argument("url", metavar="URL", help="e.g. http://127.0.0.1:9740")
    pull.add_argument("--consumer", required=True, metavar="NAME")
    pull.add_argument("--token-file", metavar="F",
                      help="a file holding the bearer token (or use --cert)")
    pull.add_argument("--after", type=int, metavar="SEQ",
                      help="start after this seq (default: the ack)")
    pull.add_argument("--ack", action="store_true",
                      help="ack what was printed")
    pull.add_argument("--follow", action="store_true",
                      help="keep pulling (long-poll) until interrupted")
    pull.add_argument("--json", action="store_true",
                      help="one JSON object per record")
    pull.add_argument("--pubkey", metavar="F",
                      help="the host's public key (raw or hex); without it "
                           "signatures are not checked")
    pull.add_argument("--cacert", metavar="F",
                      help="CA certificate to verify an https:// agent")
    pull.add_argument("--cert", metavar="F",
                      help="client certificate for mutual TLS (its CN is the "
                           "consumer)")
    pull.add_argument("--key", metavar="F",
                      help="the client certificate's key")
    pull.set_defaults(func=cmd_pull)


def _acct_command(sub: Any) -> None:
    acct = sub.add_parser("acct", help="report process accounting records "
                          "(acct(5)), oneacct-like")
    acct.add_argument("file", metavar="FILE")
    acct.add_argument("--format", choices=("linux", "freebsd"),
                      help="override the detected format")
    acct.add_argument("-s", "--start", metavar="START",
                      help="only runs that end at or after START (ISO 8601, "
                           "or month/day/year hour:minute:second local)")
    acct.add_argument("-e", "--end", metavar="END",
                      help="only runs that start at or before END")
    acct.add_argument("-u", "--user", metavar="USER", help="name or uid")
    acct.add_argument("--vms", action="store_true",
                      help="only hypervisor processes (QEMU, bhyve, ...)")
    out = acct.add_mutually_exclusive_group()
    for flag in ("--json", "--csv", "--xml"):
        out.add_argument(flag, action="store_true")
    acct.set_defaults(func=cmd_acct)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    log.configure()
    try:
        return int(args.func(args))
    except ConfigError as err:  # key None: the file itself is unusable
        what = "bad configuration:" if err.key is not None else "config"
        print(f"vmagent: {what} {err}", file=sys.stderr)
        return EXIT_CONFIG
    except VmagentError as err:
        print(f"vmagent: {err}", file=sys.stderr)
        return EXIT_FAILURE
    except BrokenPipeError:  # `vmagent vms | head`: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as err:  # the environment, not a bug: say what and where
        where = f" ({err.filename})" if err.filename else ""
        print(f"vmagent: {err.strerror or err}{where}", file=sys.stderr)
        return EXIT_FAILURE


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config)
    print(f"{cfg.source}: OK")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from vmagent.daemon import Agent

    cfg = config_mod.load(args.config)
    return Agent(cfg, args.config).run()


def cmd_status(args: argparse.Namespace) -> int:
    from vmagent.api.control import SOCKET_NAME, query_status

    cfg = config_mod.load(args.config)
    try:
        doc = query_status(cfg.agent.state_dir)
    except (OSError, ValueError) as err:
        sock = cfg.agent.state_dir / SOCKET_NAME
        reason = getattr(err, "strerror", None) or str(err)
        print(f"vmagent is not running (no answer on {sock}: {reason})",
              file=sys.stderr)
        if args.json:  # a document either way, for scripts and monitoring
            print(json.dumps({"running": False, "control_socket": str(sock),
                              "error": reason}, indent=2))
        return EXIT_NOT_RUNNING
    if args.json:
        print(json.dumps({"running": True, **doc}, indent=2))
    else:
        print(format_status(doc))
    return 0 if doc["health"]["state"] == "healthy" else EXIT_FAILURE


def format_status(doc: dict[str, Any]) -> str:
    """``vmagent status`` for a person."""
    health = doc["health"]
    lines = [f"vmagent {doc['version']} on {doc['host']}: {health['state']}"]
    lines += [f"  - {r}" for r in health["reasons"]]
    s, wal = doc.get("last_sweep") or {}, doc["wal"]
    per_vm = f", {s['us_per_vm']:.0f} µs/VM" if s.get("us_per_vm") else ""
    lines.append(f"uptime {doc['uptime_s']:.0f} s, interval "
                 f"{doc['interval_s']:g} s, {doc['vms']} VMs, last sweep "
                 f"{s.get('duration_s', 0) * 1000:.1f} ms{per_vm}")
    lines.append("probes: KVM debugfs " + ("readable" if
                 doc["probes"]["kvm_debugfs"] else "not readable"))
    lines.append(f"WAL {wal['wal_id']}: {wal['segments']} segments, "
                 f"{human_bytes(wal['bytes'])}, seqs {wal['first_seq']}-"
                 f"{wal['durable_seq']}" + (", COALESCING" if
                                            wal["coalescing"] else ""))
    for name, lag in sorted(doc["consumers"].items()):
        lines.append(f"consumer {name}: acked {lag['acked_seq']}, "
                     f"{lag['lag_records']} records / {lag['lag_s']:.0f} s "
                     "behind")
    for e in doc["errors"][-5:]:
        lines.append(f"error: {e['event']}: {e['message']}")
    return "\n".join(lines)


def cmd_consumer_drop(args: argparse.Namespace) -> int:
    from vmagent.api.control import ask
    from vmagent.tokens import load_dropped, save_dropped

    cfg = config_mod.load(args.config)
    try:
        reply = ask(cfg.agent.state_dir, f"drop {args.name}")
    except OSError:  # not running: recorded for the next start
        state = cfg.agent.state_dir
        save_dropped(state, load_dropped(state) | {args.name})
        print(f"vmagent is not running: {args.name} is dropped from the "
              "next start on")
        return 0
    if "error" in reply:
        raise StateError(reply["error"])
    print(f"dropped consumer {args.name}: it no longer holds WAL data")
    return 0


def cmd_acct(args: argparse.Namespace) -> int:
    from vmagent.acct import report
    from vmagent.acct.records import read_file

    try:
        start = report.parse_time(args.start) if args.start else None
        end = report.parse_time(args.end) if args.end else None
        uid = report.parse_user(args.user) if args.user else None
    except report.UsageError as err:
        print(f"vmagent acct: {err}", file=sys.stderr)
        return EXIT_USAGE
    parsed = read_file(Path(args.file), args.format)
    if parsed.skipped:
        print(f"vmagent acct: warning: {parsed.skipped} records that are not "
              f"valid {parsed.format} records were skipped", file=sys.stderr)
    size = Path(args.file).stat().st_size
    if size > parsed.consumed:
        print(f"vmagent acct: warning: {size - parsed.consumed} bytes at the "
              "end are not a whole record (a write in progress?)",
              file=sys.stderr)
    records = report.select(parsed.records, start, end, uid, args.vms)
    writer = (report.to_json if args.json else report.to_csv if args.csv
              else report.to_xml if args.xml else report.to_table)
    text = writer(records)
    print(text, end="" if text.endswith("\n") else "\n")
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    from vmagent.pull import pull

    return pull(args)


def cmd_key_show(args: argparse.Namespace) -> int:
    from vmagent.keys import HostKey

    cfg = config_mod.load(args.config)
    print(HostKey.load_or_create(cfg.agent.state_dir).public.hex())
    return 0


def _wal_dir(arg: str) -> Path:
    """DIR of ``wal verify``/``wal dump``: a directory holding segments."""
    from vmagent.wal.scan import list_segments

    path = Path(arg)
    if not path.is_dir():
        raise StateError(f"{path}: not a directory")
    if not list_segments(path):
        hint = f"; there is one in {path / 'wal'}" \
            if list_segments(path / "wal") else ""
        raise StateError(f"{path}: no WAL here (no segment files "
                         f"<seq>.seg){hint}")
    return path


def cmd_wal_verify(args: argparse.Namespace) -> int:
    from vmagent.keys import PUBLIC_FILE, load_public_key
    from vmagent.wal.verify import verify

    directory = _wal_dir(args.dir)
    key_path = Path(args.pubkey) if args.pubkey else \
        directory.resolve().parent / PUBLIC_FILE
    report = verify(directory, load_public_key(key_path))
    for p in report.problems:
        print(f"{'explained' if p.explained else 'PROBLEM'}: {p}")
    bad = sum(not p.explained for p in report.problems)
    print(f"{directory}: {report.frames} frames, {report.records} records: "
          + ("OK" if report.ok else f"{bad} unexplained problems"))
    return 0 if report.ok else EXIT_FAILURE


def cmd_wal_dump(args: argparse.Namespace) -> int:
    from vmagent.show import record_line
    from vmagent.wal.verify import served_records

    for rec in served_records(_wal_dir(args.dir)):
        print(record_line(rec, args.json))
    return 0


def cmd_vms(args: argparse.Namespace) -> int:
    from vmagent.probes import Prober  # the native extension loads here

    cfg = config_mod.load(args.config)
    host_id = cfg.agent.host_id or load_or_create_host_id(cfg.agent.state_dir)
    if os.geteuid() != 0:
        print("vmagent: warning: not running as root, so the VMs of other "
              "users cannot be seen", file=sys.stderr)
    with Prober(host_id, cfg.probes) as prober:
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
    return columns(lines)


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
