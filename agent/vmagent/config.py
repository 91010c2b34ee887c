"""Configuration: TOML -> frozen dataclasses (docs/configuration.md).

Every error names the file, the key and what was expected, in one line.
"""

from __future__ import annotations

import ipaddress
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

from vmagent import names
from vmagent.errors import ConfigError
from vmagent.names import is_consumer_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_PATH = Path("/usr/local/etc/vmagent/vmagent.toml"
                    if sys.platform.startswith("freebsd")
                    else "/etc/vmagent/vmagent.toml")
DEFAULT_ACCT_FILE = ("/var/account/acct" if sys.platform.startswith("freebsd")
                     else "/var/log/account/pacct")
BUILTIN = "built-in defaults"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")
_DURATION_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]i?B|[kKMGT]|B)?\s*$")
_SIZE_UNIT = {"B": 1, "k": 10**3, "K": 1 << 10,
              "kB": 10**3, "KB": 10**3, "MB": 10**6, "GB": 10**9,
              "TB": 10**12, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30,
              "TiB": 1 << 40, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_LISTEN = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[^:\[\]]+):(\d{1,5})$")


@dataclass(frozen=True)
class AgentConfig:
    host_id: str | None = None  # None: generated once, kept in state_dir
    state_dir: Path = Path("/var/lib/vmagent")
    interval_s: float = 10.0


@dataclass(frozen=True)
class ApiConfig:
    listen: str = "127.0.0.1:9740"
    tokens_file: Path | None = None  # None: <state_dir>/tokens
    consumers: tuple[str, ...] = ()
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    client_timeout_s: float = 10.0  # headers (or body) in time, idle limit
    vm_metrics: bool = True  # per-VM series on GET /metrics


@dataclass(frozen=True)
class WalConfig:
    max_bytes: int = 1 << 30
    segment_bytes: int = 16 << 20  # deletion happens a whole segment at a time


@dataclass(frozen=True)
class ProbesConfig:
    procfs: str = "/proc"
    sysfs: str = "/sys"
    debugfs: str = "/sys/kernel/debug"
    acct_file: str = DEFAULT_ACCT_FILE
    rescan_s: float = 60.0  # every VM's devices looked at again (hotplug)


@dataclass(frozen=True)
class Config:
    agent: AgentConfig = AgentConfig()
    api: ApiConfig = ApiConfig()
    wal: WalConfig = WalConfig()
    probes: ProbesConfig = ProbesConfig()
    source: str = BUILTIN  # the file it came from

    @property
    def tokens_file(self) -> Path:
        return self.api.tokens_file or self.agent.state_dir / "tokens"


def load(path: Path | str | None = None) -> Config:
    """The config at ``path``; without one, the default path if it exists,
    else built-in defaults.  Raises ConfigError naming file and key."""
    return load_file(path, DEFAULT_PATH, parse, Config())


T = TypeVar("T")


def load_file(path: Path | str | None, default_path: Path,
              parse_text: Callable[[str, str], T], builtin: T) -> T:
    """``parse_text(text, source)`` of the file at ``path`` (or at
    ``default_path`` if it exists, else ``builtin``); ConfigError naming the
    file when it cannot be read."""
    if path is None:
        if not default_path.exists():
            return builtin
        path = default_path
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as err:
        raise ConfigError(str(path), None, f"cannot read: "
                          f"{err.strerror or err}") from err
    except UnicodeDecodeError as err:
        raise ConfigError(str(path), "-", "not UTF-8 text") from err
    return parse_text(text, str(path))


def toml_doc(text: str, source: str) -> dict[str, Any]:
    """TOML text as a dict, or ConfigError naming ``source``."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(source, "-", f"not valid TOML: {err}") from err


def parse(text: str, source: str = "<string>") -> Config:
    """A Config from TOML text; ``source`` names it in errors."""
    doc = toml_doc(text, source)
    unknown = set(doc) - set(_SECTIONS)
    if unknown:
        raise ConfigError(source, sorted(unknown)[0],
                          f"unknown section; expected one of "
                          f"{', '.join(_SECTIONS)}")
    built = {}
    for section, (cls, fields) in _SECTIONS.items():
        table = doc.get(section, {})
        if not isinstance(table, dict):
            raise ConfigError(source, section, "expected a table")
        built[section] = cls(**_section(source, section, table, fields))
    cfg = Config(source=source, **built)
    _check_tls(cfg)
    _check_listen(cfg)
    _check_wal(cfg)
    return cfg


def _check_wal(cfg: Config) -> None:
    """Deletion frees a whole segment at a time and never the one being
    written: below two segments the cap would be reached for good."""
    wal = cfg.wal
    if wal.max_bytes < 2 * wal.segment_bytes:
        raise ConfigError(cfg.source, "wal.max_bytes", f"{wal.max_bytes} "
                          f"bytes is below two segments (2 x segment_bytes "
                          f"= {2 * wal.segment_bytes}); raise it or lower "
                          "wal.segment_bytes")


def _check_tls(cfg: Config) -> None:
    api = cfg.api
    if (api.tls_cert is None) != (api.tls_key is None):
        key = "api.tls_key" if api.tls_key is None else "api.tls_cert"
        raise ConfigError(cfg.source, key, "tls_cert and tls_key go together")
    if api.tls_client_ca is not None and api.tls_cert is None:
        raise ConfigError(cfg.source, "api.tls_client_ca", "mutual TLS needs "
                          "tls_cert and tls_key too")


def _check_listen(cfg: Config) -> None:
    """Bearer tokens in clear text only on loopback (docs/protocol.md,
    "TLS and mutual TLS")."""
    host = cfg.api.listen.rpartition(":")[0].strip("[]")
    try:
        loopback = (host == "localhost"
                    or ipaddress.ip_address(host).is_loopback)
    except ValueError:
        loopback = False
    if not loopback and cfg.api.tls_cert is None:
        raise ConfigError(cfg.source, "api.listen", f"{cfg.api.listen} is not "
                          "a loopback address: serving it needs TLS "
                          "(api.tls_cert and api.tls_key)")


_FIELD_NAMES = {"interval": "interval_s", "client_timeout": "client_timeout_s",
                "rescan": "rescan_s"}


def _section(source: str, section: str, table: dict[str, Any],
             fields: dict[str, Callable[[Any], Any]]) -> dict[str, Any]:
    out = {}
    for key, value in table.items():
        name = f"{section}.{key}"
        if key not in fields:
            raise ConfigError(source, name, f"unknown key; expected one of "
                              f"{', '.join(fields)}")
        try:
            out[_FIELD_NAMES.get(key, key)] = fields[key](value)
        except (TypeError, ValueError) as err:
            raise ConfigError(source, name, str(err)) from None
    return out


# --- value checkers: return the value or raise ValueError/TypeError -------

def text_value(value: Any) -> str:
    """A non-empty string, or TypeError saying what it got."""
    if not isinstance(value, str) or not value.strip():
        raise TypeError(f"expected a non-empty string, got {value!r}")
    return value


def boolean(value: Any) -> bool:
    """true or false (TOML booleans only: "yes" is a typo here)."""
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {value!r}")
    return value


def _path(value: Any) -> Path:
    return Path(text_value(value))


def _abs_path(value: Any) -> str:
    if not text_value(value).startswith("/"):
        raise ValueError(f"expected an absolute path, got {value!r}")
    return value


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string like ``"10s"``, ``"500ms"``,
    ``"1m"``."""
    if isinstance(value, bool):
        raise TypeError(f"expected seconds or a duration like \"10s\", "
                        f"got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _DURATION_UNIT[m.group(2)]
    else:
        raise ValueError(f"expected seconds or a duration like \"10s\", "
                         f"got {value!r}")
    if not 0 < seconds <= 86400:
        raise ValueError(f"expected a duration of more than 0 and at most "
                         f"24h, got {value!r}")
    return seconds


def parse_size(value: Any) -> int:
    """Bytes from an integer or a string like ``"1GiB"``, ``"500MB"``."""
    if isinstance(value, bool):
        raise TypeError(f"expected bytes or a size like \"1GiB\", "
                        f"got {value!r}")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (m := _SIZE.match(value)):
        size = int(m.group(1)) * _SIZE_UNIT[m.group(2) or "B"]
    else:
        raise ValueError(f"expected bytes or a size like \"1GiB\", "
                         f"got {value!r}")
    if size <= 0:
        raise ValueError(f"expected a positive size, got {value!r}")
    return size


def _segment_size(value: Any) -> int:
    size = parse_size(value)
    if size < 4096:
        raise ValueError(f"expected at least 4KiB, got {value!r}")
    return size


def _listen(value: Any) -> str:
    m = _LISTEN.match(text_value(value))
    if not m or not 0 < int(m.group(2)) < 65536:
        raise ValueError(f"expected host:port (IPv6 as [addr]:port), "
                         f"got {value!r}")
    return value


def _names(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise TypeError(f"expected a list of names, got {value!r}")
    for v in value:
        if not is_consumer_name(v):
            raise ValueError(f"expected names of {names.RULE}, got {v!r}")
    return tuple(value)


_SECTIONS: dict[str, tuple[type, dict[str, Callable[[Any], Any]]]] = {
    "agent": (AgentConfig, {"host_id": text_value, "state_dir": _path,
                            "interval": parse_duration}),
    "api": (ApiConfig, {"listen": _listen, "tokens_file": _path,
                        "consumers": _names, "tls_cert": _path,
                        "tls_key": _path, "tls_client_ca": _path,
                        "client_timeout": parse_duration,
                        "vm_metrics": boolean}),
    "wal": (WalConfig, {"max_bytes": parse_size,
                        "segment_bytes": _segment_size}),
    "probes": (ProbesConfig, {"procfs": _abs_path, "sysfs": _abs_path,
                              "debugfs": _abs_path, "acct_file": _abs_path,
                              "rescan": parse_duration}),
}
