"""The ``vmcollector`` command (docs/collector.md).

Exit codes: 0 success (``status``: every host current), 1 failure
(``status``: a host is not current), 2 usage error, 3 store unreachable
(``status``), 78 bad configuration.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vmagent import log
from vmagent._version import __version__
from vmagent.cli import with_config
from vmagent.collector import config as config_mod
from vmagent.collector.client import TlsError, read_pem, tls_context
from vmagent.collector.store import (
    MIGRATIONS,
    HostRow,
    SqlStore,
    StoreError,
    connect,
    open_store,
)
from vmagent.errors import ConfigError, StateError, VmagentError
from vmagent.keys import HostKey
from vmagent.ledger import book as ledger_book
from vmagent.ledger import cli as ledger_cli
from vmagent.ledger import close
from vmagent.sdnotify import Notifier

SILENT_AFTER_S = 180.0  # no inventory record with a t this recent: silent

EXIT_FAILURE, EXIT_USAGE, EXIT_STORE, EXIT_CONFIG = 1, 2, 3, 78


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vmcollector",
        description="Pull, verify and store a fleet's vmagent evidence.")
    p.add_argument("--version", action="version",
                   version=f"vmcollector {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, text, func in (
            ("run", "pull every host into the store, in the foreground",
             cmd_run),
            ("check-config", "validate the configuration and exit",
             cmd_check_config),
            ("migrate", "create or upgrade the store's schema", cmd_migrate),
            ("status", "each host's state; exit 0 when every host is "
             "current, 1 otherwise, 3 store unreachable", cmd_status)):
        sp = _with_config(sub.add_parser(name, help=text, description=text))
        if name == "status":
            sp.add_argument("--json", action="store_true",
                            help="the whole status document")
        sp.set_defaults(func=func)
    _hosts_command(sub)
    ledger_cli.register(sub)  # usage, history, rebuild (ledger/cli.py)
    key = sub.add_parser("key", help="this instance's Ed25519 key") \
        .add_subparsers(dest="key_command", metavar="ACTION", required=True)
    show = _with_config(key.add_parser(
        "show", help="print the public key in hex (generated once, in "
        "state_dir)"))
    show.set_defaults(func=cmd_key_show)
    return p


def _with_config(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
    return with_config(sp, config_mod.DEFAULT_PATH)


def _hosts_command(sub: Any) -> None:
    group = sub.add_parser("hosts", help="the hosts in the store") \
        .add_subparsers(dest="hosts_command", metavar="ACTION", required=True)
    add = _with_config(group.add_parser("add", help="add or replace a host "
                                        "(the token's value is stored)"))
    add.add_argument("name", metavar="NAME")
    add.add_argument("url", metavar="URL")
    add.add_argument("--pubkey", required=True, metavar="F|HEX",
                     help="the host's public key: a file (raw or hex) or "
                          "64 hex digits; pinned")
    add.add_argument("--token-file", metavar="F",
                     help="the consumer's bearer token (its value is stored)")
    add.add_argument("--cert", metavar="F", help="mutual TLS: the client "
                     "certificate, PEM (stored, with --key)")
    add.add_argument("--key", metavar="F", help="mutual TLS: the client "
                     "certificate's private key, PEM")
    add.add_argument("--consumer", default="default", metavar="NAME")
    add.add_argument("--cacert", metavar="F",
                     help="CA certificate for an https:// agent")
    add.set_defaults(func=cmd_hosts_add)
    lst = _with_config(group.add_parser("list", help="list the hosts"))
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=cmd_hosts_list)
    rm = _with_config(group.add_parser("remove", help="forget a host's "
                                       "settings (its evidence stays)"))
    rm.add_argument("name", metavar="NAME")
    rm.set_defaults(func=cmd_hosts_remove)
    retire = _with_config(group.add_parser(
        "retire", help="a host gone for good: no longer pulled, never "
        "blocking (its evidence stays)"))
    retire.add_argument("name", metavar="NAME")
    retire.add_argument("--at", metavar="TIME", type=_rfc3339_arg,
                        help="when its evidence ends, RFC 3339 "
                             "(default now)")
    retire.set_defaults(func=cmd_hosts_retire)


def _rfc3339_arg(text: str) -> float:
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an RFC 3339 time, got {text!r}") from None
    if when.tzinfo is None or "T" not in text.upper():
        raise argparse.ArgumentTypeError(
            f"expected an RFC 3339 time with an offset or Z, got {text!r}")
    return when.timestamp()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    log.configure()
    try:
        return int(args.func(args))
    except ConfigError as err:
        what = "bad configuration:" if err.key is not None else "config"
        print(f"vmcollector: {what} {err}", file=sys.stderr)
        return EXIT_CONFIG
    except StoreError as err:
        print(f"vmcollector: store unreachable: {err}", file=sys.stderr)
        return EXIT_STORE if args.command == "status" else EXIT_FAILURE
    except VmagentError as err:
        print(f"vmcollector: {err}", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as err:
        where = f" ({err.filename})" if err.filename else ""
        print(f"vmcollector: {err.strerror or err}{where}", file=sys.stderr)
        return EXIT_FAILURE


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config)
    _read_credentials(cfg)
    print(f"{cfg.source}: OK ({len(cfg.hosts)} hosts)")
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config)
    store = connect(cfg.state_dir, cfg.store)
    try:
        before = store.version()
        after = store.migrate()
        where = store.describe()
    finally:
        store.close()
    print(f"{where}: schema version {after}"
          + (f" (was {before})" if before != after else " (up to date)"))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from vmagent.collector.folder import LedgerWorker, store_spec
    from vmagent.collector.ingest import Ingest
    from vmagent.collector.metrics import Metrics

    cfg = config_mod.load(args.config)
    creds = _read_credentials(cfg)
    key = HostKey.load_or_create(cfg.state_dir)
    store = open_store(cfg.state_dir, cfg.store)
    store.bound_waits(cfg.lease_s)
    store.put_instance_key(cfg.instance_name, key.public, key.key_id.hex())
    _put_hosts(store, cfg, creds)
    stop, reload = threading.Event(), threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: reload.set())
    metrics = Metrics()
    ledger = LedgerWorker(store_spec(store), cfg.lease_s, metrics)
    ingest = Ingest(store, cfg.pull_interval_s, cfg.instance_name,
                    cfg.lease_s, cfg.read_timeout_s, metrics, ledger)
    logger = log.get_logger()
    monitor = _monitor(cfg, store, metrics)
    try:
        ledger.start()
        logger.info("collector_started", store=store.describe(),
                    instance=cfg.instance_name, lease_s=cfg.lease_s,
                    hosts=len(store.hosts()), ledger_worker=ledger.pid)
        ingest.start()
        service = _Service(args.config, cfg, store, ingest, reload)
        ingest.run(stop, service.between)
        service.notifier.send(stopping="1")
        logger.info("collector_stopping")
        ingest.shutdown()  # stores the batches in hand, then
    finally:
        ledger.stop()  # the worker folds what is left (bounded), exits
    if monitor is not None:
        monitor.close()
    store.close()
    logger.info("collector_stopped")
    return 0


def _monitor(cfg: config_mod.CollectorConfig, store: SqlStore,
             metrics: Any) -> Any:
    """The ``listen`` server, or None (off, or its address taken: ingest
    matters more than its metrics, so that is logged, not fatal)."""
    from vmagent.collector.metrics import MonitorServer

    if cfg.listen is None:
        return None
    logger = log.get_logger()
    try:
        monitor = MonitorServer(cfg.listen, metrics,
                                lambda: status_document(store, cfg)).start()
    except OSError as err:
        logger.error("monitor_listen_failed",
                     listen=f"{cfg.listen[0]}:{cfg.listen[1]}",
                     error=err.strerror or str(err))
        return None
    logger.info("monitor_listening",
                listen=f"{monitor.address[0]}:{monitor.address[1]}")
    return monitor


class _Service:
    """What ``run`` does between lease rounds: a SIGHUP's reload and the
    systemd watchdog's ping (``Type=notify``)."""

    def __init__(self, path: Path | None, cfg: config_mod.CollectorConfig,
                 store: SqlStore, ingest: Any,
                 reload: threading.Event) -> None:
        self.path, self.cfg, self.store, self.ingest = path, cfg, store, ingest
        self.reload = reload
        self.notifier = Notifier()
        self.notifier.send(ready="1",
                           status=f"pulling {len(ingest.threads)} hosts")
        self.last_ping = time.monotonic()
        self.key = HostKey.load_or_create(cfg.state_dir)

    def between(self) -> None:
        if self.reload.is_set():
            self.reload.clear()
            self.cfg = _reload(self.path, self.cfg, self.store, self.ingest)
            self.notifier.send(status="reloaded; pulling "
                               f"{len(self.ingest.threads)} hosts")
        watchdog = self.notifier.watchdog_s
        if watchdog is not None and \
                time.monotonic() - self.last_ping >= watchdog / 2:
            self.notifier.send(watchdog="1")
            self.last_ping = time.monotonic()
        self.close_periods()

    def close_periods(self) -> None:
        """``auto_close`` periods due, and corrections for late evidence;
        a store error waits for the next round."""
        try:
            close.auto_close(self.store, self.cfg.auto_close,
                             self.cfg.calendar, self.cfg.grace_s, self.key,
                             self.cfg.instance_name)
        except (VmagentError, OSError) as err:
            log.get_logger().warning("auto_close_failed", error=str(err))


Credentials = tuple[str | None, str | None, str | None]  # token, cert, key


def _put_hosts(store: SqlStore, cfg: config_mod.CollectorConfig,
               creds: dict[str, Credentials]) -> None:
    for h in cfg.hosts:  # the config wins for its names
        token, cert, key = creds[h.name]
        store.put_host(HostRow(h.name, h.url, h.consumer, token, h.pubkey,
                               str(h.cacert) if h.cacert else None,
                               cert_pem=cert, key_pem=key))


_RESTART_KEYS = ("state_dir", "store", "instance", "lease_s", "listen")


def _reload(path: Path | None, old: config_mod.CollectorConfig,
            store: SqlStore, ingest: Any) -> config_mod.CollectorConfig:
    """SIGHUP: the config again.  Its ``[[hosts]]`` are written into the
    store (pulled from the next lease round) and a new ``pull_interval``
    or ``read_timeout`` restarts the pullers with it; keys that need a
    restart are logged.  A config that does not load (or a store error)
    keeps the old one, logged as ``reload_failed``."""
    logger = log.get_logger()
    try:
        new = config_mod.load(path)
        _put_hosts(store, new, _read_credentials(new))
    except (VmagentError, OSError) as err:
        logger.error("reload_failed", error=str(err),
                     kept=old.source)
        return old
    ingest.reconfigure(new.pull_interval_s, new.read_timeout_s)
    ignored = [k for k in _RESTART_KEYS if getattr(new, k) != getattr(old, k)]
    if ignored:
        logger.warning("reload_needs_restart", keys=ignored)
    logger.info("config_reloaded", source=new.source, hosts=len(new.hosts),
                pull_interval_s=new.pull_interval_s)
    return new


def _read_credentials(cfg: config_mod.CollectorConfig) \
        -> dict[str, Credentials]:
    """Every ``[[hosts]]``'s token or certificate and key, read (their
    values go into the store) and checked to load; ConfigError naming
    the host's key otherwise."""
    out = {}
    for i, host in enumerate(cfg.hosts):
        where = f"hosts[{i}]"
        try:
            out[host.name] = _credentials(
                host.token_file, host.cert, host.key,
                str(host.cacert) if host.cacert else None)
        except _CredentialError as err:
            raise ConfigError(cfg.source, f"{where}.{err.key}",
                              err.text) from None
    return out


class _CredentialError(VmagentError):
    def __init__(self, key: str, text: str) -> None:
        super().__init__(f"--{key.replace('_', '-')}: {text}")
        self.key, self.text = key, text


def _credentials(token_file: Path | None, cert: Path | None,
                 key: Path | None, cacert: str | None) -> Credentials:
    """(token, certificate PEM, key PEM) from their files; a certificate
    and key are checked to load together (with ``cacert``, if any)."""
    if token_file is not None:
        try:
            return token_file.read_text().strip(), None, None
        except OSError as err:
            raise _CredentialError("token_file", f"cannot read {token_file}"
                                   f": {err.strerror or err}") from None
    assert cert is not None and key is not None
    try:
        cert_pem = read_pem(str(cert), "certificate")
    except TlsError as err:
        raise _CredentialError("cert", str(err)) from None
    for name, check in (("cacert", lambda: tls_context(cacert)),
                        ("key", lambda: read_pem(str(key), "key"))):
        try:
            check()
        except TlsError as err:
            raise _CredentialError(name, str(err)) from None
    key_pem = read_pem(str(key), "key")
    try:
        tls_context(cacert, cert_pem, key_pem)
    except TlsError as err:
        raise _CredentialError("key", str(err)) from None
    return None, cert_pem, key_pem


def _existing_store(cfg: config_mod.CollectorConfig) -> SqlStore:
    """The store as it is: never created or migrated by a reader."""
    if cfg.store == "sqlite" and not cfg.db_path.exists():
        raise StoreError(f"{cfg.db_path} does not exist (run `vmcollector "
                         "migrate` or `vmcollector run`)")
    store = connect(cfg.state_dir, cfg.store)
    try:
        version = store.version()
    except BaseException:
        store.close()
        raise
    if version == 0:
        store.close()
        raise StoreError(f"{store.describe()} has no schema (run "
                         "`vmcollector migrate`)")
    if version < len(MIGRATIONS):
        store.close()
        raise StoreError(f"{store.describe()} has schema version {version}, "
                         f"this vmcollector needs {len(MIGRATIONS)} (run "
                         "`vmcollector migrate`)")
    return store


def cmd_status(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config)
    store = _existing_store(cfg)
    try:
        doc = status_document(store, cfg)
    finally:
        store.close()
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(format_status(doc))
    current = all(h["state"] in ("current", "retired") for h in doc["hosts"])
    return 0 if current else EXIT_FAILURE


def status_document(store: SqlStore,
                    cfg: config_mod.CollectorConfig) -> dict[str, Any]:
    """The status document of docs/collector.md."""
    from vmagent.collector.folder import lag_by_host

    hosts = []
    leases = store.leases()
    lag = lag_by_host(store)
    now = time.time()
    for h in store.hosts():
        owner, expires = leases.get(h.name, (None, 0.0))
        lease = {"owner": owner, "expires": _rfc3339(expires)} \
            if owner else None
        wals = [{"wal": w["wal"].hex(), "held": w["held"], "gaps": w["gaps"],
                 "last_seq": w["last_seq"], "watermark": _rfc3339(
                     w["newest_t"] / 1e9 if w["newest_t"] else None)}
                for w in store.wals(h.name)]
        hosts.append({"name": h.name, "url": h.url,
                      "state": host_state(h, now),
                      "error": h.error, "lease": lease, "wals": wals,
                      "last_pull": _rfc3339(h.last_pull),
                      "behind_records": h.behind_records,
                      "clock_offset_s": h.clock_offset_s,
                      "acked_seq": h.acked_seq,
                      "ledger_lag_records": lag.get(h.name, 0),
                      "retired_at": _rfc3339(h.retired_at),
                      "last_inventory": _rfc3339(
                          h.inventory_t / 1e9 if h.inventory_t else None)})
    return {"store": store.describe(), "instance": cfg.instance_name,
            "instances": store.instances(cfg.lease_s),
            "hosts": hosts, "periods": close.periods_status(
                store, cfg.auto_close, cfg.calendar)}


def host_state(h: HostRow, now: float) -> str:
    """The host states of docs/collector.md, first match wins: retired,
    untrusted and failing as the pullers recorded them; ``silent`` when
    the host was reached
    (a pull succeeded) but no ``inventory`` record with a ``t`` in the
    last 3 minutes is stored; then lagging or current."""
    if h.state in ("retired", "untrusted", "failing"):
        return h.state
    if h.last_pull is not None and (
            h.inventory_t is None or now - h.inventory_t / 1e9 >
            SILENT_AFTER_S):
        return "silent"
    return h.state


def format_status(doc: dict[str, Any]) -> str:
    lines = [f"store {doc['store']}: {len(doc['hosts'])} hosts"]
    for h in doc["hosts"]:
        held = sum(b - a + 1 for w in h["wals"] for a, b in w["held"])
        gaps = sum(len(w["gaps"]) for w in h["wals"])
        lines.append(f"{h['name']}: {h['state']}, {held} records held in "
                     f"{len(h['wals'])} WALs, {gaps} missing ranges, acked "
                     f"{h['acked_seq']}, last pull {h['last_pull'] or '-'}"
                     + (f", pulled by {h['lease']['owner']}"
                        if h["lease"] else "")
                     + (f", {h['ledger_lag_records']} not yet in the ledger"
                        if h.get("ledger_lag_records") else ""))
        if h["error"]:
            lines.append(f"  error: {h['error']}")
    for p in doc.get("periods", []):
        lines.append(f"period {p['period']} ({p['grain']}, {p['tz']}): "
                     f"{p['state']}" + (f", waiting for "
                                        f"{', '.join(p['blocking'])}"
                                        if p["blocking"] else ""))
    return "\n".join(lines)


def _rfc3339(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc) \
        .isoformat(timespec="seconds").replace("+00:00", "Z")


def cmd_hosts_add(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config)
    problem = config_mod.credentials_error(
        args.token_file is not None, args.cert is not None,
        args.key is not None, args.url)
    if problem is not None:
        flag = "URL" if problem[0] == "url" else \
            "--" + problem[0].replace("_", "-")
        print(f"vmcollector: {flag}: {problem[1]}", file=sys.stderr)
        return EXIT_USAGE
    if not args.url.startswith(("http://", "https://")):
        print(f"vmcollector: URL must be http:// or https://, got "
              f"{args.url!r}", file=sys.stderr)
        return EXIT_USAGE
    try:
        key = config_mod.pubkey(args.pubkey)
    except (TypeError, ValueError) as err:
        raise StateError(f"--pubkey: {err}") from None
    cacert = str(Path(args.cacert).resolve()) if args.cacert else None
    token, cert_pem, key_pem = _credentials(
        _path(args.token_file), _path(args.cert), _path(args.key), cacert)
    store = open_store(cfg.state_dir, cfg.store)
    try:
        store.put_host(HostRow(args.name, args.url, args.consumer, token, key,
                               cacert, cert_pem=cert_pem, key_pem=key_pem))
    finally:
        store.close()
    auth = "client certificate" if cert_pem else f"consumer {args.consumer}"
    print(f"host {args.name} added ({args.url}, {auth})")
    return 0


def _path(value: str | None) -> Path | None:
    return None if value is None else Path(value)


def cmd_hosts_list(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config)
    store = _existing_store(cfg)
    try:
        keys: dict[str, list[dict[str, Any]]] = {}
        for host, key_id, pub, added in store.host_keys():
            keys.setdefault(host, []).append(
                {"key_id": key_id, "pubkey": pub.hex(),
                 "added": _rfc3339(added)})
        rows = [{"name": h.name, "url": h.url, "consumer": h.consumer,
                 "auth": "certificate" if h.cert_pem else "token",
                 "pubkey": h.pubkey.hex(), "cacert": h.cacert,
                 "keys": keys.get(h.name, []),
                 "state": host_state(h, time.time())}
                for h in store.hosts()]
    finally:
        store.close()
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{r['name']}  {r['url']}  consumer={r['consumer']}  "
                  f"{r['state']}  key={(r['pubkey'] or '')[:16]}…")
    return 0


def cmd_hosts_remove(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config)
    store = _existing_store(cfg)
    try:
        removed = store.remove_host(args.name)
    finally:
        store.close()
    if not removed:
        print(f"vmcollector: no host {args.name}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"host {args.name} removed (its evidence stays in the store)")
    return 0


def cmd_hosts_retire(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config)
    at = time.time() if args.at is None else args.at
    store = _existing_store(cfg)
    try:
        retired = store.retire_host(args.name, at)
        lost = ledger_book.retire(store, args.name) if retired else 0
    finally:
        store.close()
    if not retired:
        print(f"vmcollector: no host {args.name}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"host {args.name} retired at {_rfc3339(at)} (no longer pulled; "
          f"its evidence stays in the store; {lost} VMs still open on it "
          "closed at their last evidence as lost)")
    return 0


def cmd_key_show(args: argparse.Namespace) -> int:
    """The instance's public key, hex, on one line (a file of it is what
    ``load_public_key`` reads); generated in state_dir on first use."""
    cfg = config_mod.load(args.config)
    key = HostKey.load_or_create(cfg.state_dir)
    print(key.public.hex())
    return 0


if __name__ == "__main__":
    sys.exit(main())
