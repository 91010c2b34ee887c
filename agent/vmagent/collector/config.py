"""``vmcollector``'s configuration: TOML -> frozen dataclasses
(docs/collector.md).  Every error names the file and the key, in one line
(exit 78).

This slice reads ``[collector]`` state_dir, store (``sqlite`` or a
``postgresql://`` URL), pull_interval, instance, lease, listen,
read_timeout (an extension: how long a reply may take beyond the
long-poll's wait), auto_close, calendar, grace (ledger/close.py) and
``[[hosts]]``.
"""

from __future__ import annotations

import re
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmagent.config import load_file, parse_duration, text_value, toml_doc
from vmagent.errors import ConfigError, StateError
from vmagent.keys import load_public_key
from vmagent.ledger.periods import GRAINS, PeriodError, zone

DEFAULT_PATH = Path("/usr/local/etc/vmagent/collector.toml"
                    if sys.platform.startswith("freebsd")
                    else "/etc/vmagent/collector.toml")
BUILTIN = "built-in defaults"
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class HostConfig:
    name: str
    url: str
    consumer: str = "default"
    token_file: Path | None = None
    pubkey: bytes = b""  # 32 bytes, pinned
    cacert: Path | None = None
    cert: Path | None = None  # mutual TLS: the client certificate (PEM)
    key: Path | None = None  # and its private key (PEM)


@dataclass(frozen=True)
class CollectorConfig:
    state_dir: Path = Path("/var/lib/vmcollector")
    store: str = "sqlite"
    pull_interval_s: float = 10.0
    instance: str = ""  # the lease owner's name; "" = the hostname
    lease_s: float = 30.0
    read_timeout_s: float = 30.0  # a reply's time beyond the long-poll
    listen: tuple[str, int] | None = ("127.0.0.1", 9741)  # None: off
    auto_close: tuple[str, ...] = ("month",)  # grains closed by `run`
    calendar: str = "UTC"  # IANA zone of the auto_close periods
    grace_s: float = 3600.0  # closed when period end + grace has passed
    hosts: tuple[HostConfig, ...] = ()
    source: str = BUILTIN

    @property
    def db_path(self) -> Path:
        return self.state_dir / "collector.db"

    @property
    def instance_name(self) -> str:
        return self.instance or socket.gethostname()


def load(path: Path | str | None = None) -> CollectorConfig:
    """The config at ``path``; without one, the default path if it exists,
    else built-in defaults.  Raises ConfigError naming file and key."""
    return load_file(path, DEFAULT_PATH, parse, CollectorConfig())


def parse(text: str, source: str = "<string>") -> CollectorConfig:
    """A CollectorConfig from TOML text; ``source`` names it in errors."""
    doc = toml_doc(text, source)
    unknown = set(doc) - {"collector", "hosts"}
    if unknown:
        raise ConfigError(source, sorted(unknown)[0], "unknown section; "
                          "expected collector or [[hosts]]")
    section = doc.get("collector", {})
    if not isinstance(section, dict):
        raise ConfigError(source, "collector", "expected a table")
    fields = _collector(source, section)
    hosts = doc.get("hosts", [])
    if not isinstance(hosts, list):
        raise ConfigError(source, "hosts", "expected [[hosts]] tables")
    built = tuple(_host(source, i, h) for i, h in enumerate(hosts))
    names = [h.name for h in built]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(source, f"hosts[{i}].name",
                              f"{name!r} is given twice")
    return CollectorConfig(hosts=built, source=source, **fields)


def _collector(source: str, table: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        name = f"collector.{key}"
        try:
            if key == "state_dir":
                out["state_dir"] = Path(text_value(value))
            elif key == "store":
                out["store"] = _store(value)
            elif key == "pull_interval":
                out["pull_interval_s"] = parse_duration(value)
            elif key == "instance":
                out["instance"] = _name(value)
            elif key == "lease":
                out["lease_s"] = parse_duration(value)
                if out["lease_s"] < 1:
                    raise ValueError(f"expected at least 1s, got {value!r}")
            elif key == "listen":
                out["listen"] = _listen(value)
            elif key == "read_timeout":
                out["read_timeout_s"] = parse_duration(value)
                if out["read_timeout_s"] <= 0:
                    raise ValueError(f"expected more than 0s, got {value!r}")
            elif key in ("auto_close", "calendar", "grace"):
                out.update(_periods(key, value))
            else:
                raise ValueError("unknown key; expected one of state_dir, "
                                 "store, pull_interval, instance, lease, "
                                 "read_timeout, listen, auto_close, "
                                 "calendar, grace")
        except (TypeError, ValueError) as err:
            raise ConfigError(source, name, str(err)) from None
    return out


def _periods(key: str, value: Any) -> dict[str, Any]:
    """``auto_close`` (a list of grains), ``calendar`` (an IANA zone),
    ``grace`` (a duration)."""
    if key == "auto_close":
        if not isinstance(value, list) or \
                any(g not in GRAINS for g in value):
            raise ValueError(f"expected a list of {', '.join(GRAINS)}, got "
                             f"{value!r}")
        return {"auto_close": tuple(dict.fromkeys(value))}
    if key == "calendar":
        try:
            zone(text_value(value))
        except PeriodError as err:
            raise ValueError(str(err)) from None
        return {"calendar": value}
    return {"grace_s": parse_duration(value)}


def _listen(value: Any) -> tuple[str, int] | None:
    """``host:port`` (``[v6]:port``), or "" for none."""
    if value == "":
        return None
    text = text_value(value).strip()
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or \
            not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port (or \"\" for none), got "
                         f"{value!r}")
    return host, int(port)


def _store(value: Any) -> str:
    text = text_value(value)
    if text.startswith(("postgresql://", "postgres://")):
        if not re.match(r"^postgres(ql)?://[^/\s]*/[^/\s?]+(\?\S*)?$", text):
            raise ValueError("expected postgresql://user@host:port/db, got "
                             f"{value!r}")
        return text
    if text != "sqlite":
        raise ValueError("expected \"sqlite\" or postgresql://user@host:port"
                         f"/db, got {value!r}")
    return text


_HOST_KEYS = ("name", "url", "consumer", "token_file", "cert", "key",
              "pubkey", "cacert")


def _host(source: str, i: int, table: Any) -> HostConfig:
    where = f"hosts[{i}]"
    if not isinstance(table, dict):
        raise ConfigError(source, where, "expected a table")
    for key in table:
        if key not in _HOST_KEYS:
            raise ConfigError(source, f"{where}.{key}", "unknown key; "
                              f"expected one of {', '.join(_HOST_KEYS)}")
    for key in ("name", "url", "pubkey"):
        if key not in table:
            raise ConfigError(source, f"{where}.{key}", "missing")
    _credentials(source, where, table)
    out: dict[str, Any] = {}
    for key, value in table.items():
        try:
            out[key] = _HOST_FIELDS[key](value)
        except (TypeError, ValueError, StateError) as err:
            raise ConfigError(source, f"{where}.{key}", str(err)) from None
    return HostConfig(**out)


def credentials_error(token: bool, cert: bool, key: bool,
                      url: str) -> tuple[str, str] | None:
    """(key, problem) when the credentials are not exactly one of a token
    or a certificate with its key (over https://); None when they are.
    The one rule for ``[[hosts]]`` and ``hosts add``."""
    if token and (cert or key):
        return ("token_file", "give either token_file or cert and key "
                "(mutual TLS), not both")
    if cert != key:
        return ("key" if cert else "cert", "missing (mutual TLS needs both "
                "cert and key)")
    if not token and not cert:
        return ("token_file", "missing (or cert and key for mutual TLS)")
    if cert and not url.startswith("https://"):
        return ("url", f"mutual TLS needs an https:// URL, got {url!r}")
    return None


def _credentials(source: str, where: str, table: dict[str, Any]) -> None:
    problem = credentials_error("token_file" in table, "cert" in table,
                                "key" in table, str(table.get("url", "")))
    if problem is not None:
        raise ConfigError(source, f"{where}.{problem[0]}", problem[1])


def _name(value: Any) -> str:
    if not _NAME.match(text_value(value)):
        raise ValueError(f"expected letters, digits, '_', '.', '-', got "
                         f"{value!r}")
    return value


def _url(value: Any) -> str:
    if not text_value(value).startswith(("http://", "https://")):
        raise ValueError(f"expected an http:// or https:// URL, got "
                         f"{value!r}")
    return value


def pubkey(value: str) -> bytes:
    """A pinned key from 64 hex digits or a file holding it raw or hex."""
    text = text_value(value).strip()
    if re.fullmatch(r"[0-9a-fA-F]{64}", text):
        return bytes.fromhex(text)
    return load_public_key(Path(text))


_HOST_FIELDS = {"name": _name, "url": _url, "consumer": _name,
                "token_file": lambda v: Path(text_value(v)), "pubkey": pubkey,
                "cacert": lambda v: Path(text_value(v)),
                "cert": lambda v: Path(text_value(v)),
                "key": lambda v: Path(text_value(v))}
