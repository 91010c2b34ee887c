"""Consumers' bearer tokens: the tokens file (docs/protocol.md,
"Transport and authentication").

One ``consumer-name:token`` per line; blank lines and ``#`` comments are
ignored.  Without a file the daemon creates one (mode 0600) holding a random
token for consumer ``default``.
"""

from __future__ import annotations

import hmac
import secrets
from pathlib import Path

from vmagent.errors import ConfigError
from vmagent.fsutil import write_atomically
from vmagent.names import is_consumer_name

DEFAULT_CONSUMER = "default"


class Tokens:
    """Token -> consumer, compared in constant time."""

    def __init__(self, by_consumer: dict[str, str]) -> None:
        self.by_consumer = dict(by_consumer)

    @property
    def consumers(self) -> list[str]:
        return sorted(self.by_consumer)

    def consumer_of(self, token: str) -> str | None:
        """The consumer a token belongs to, or None; every stored token is
        compared, each in constant time, so timing says nothing."""
        found = None
        for consumer, known in self.by_consumer.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                found = consumer
        return found


def parse(text: str, source: str) -> Tokens:
    tokens: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, token = line.partition(":")
        key = f"line {n}"
        if not sep or not is_consumer_name(name):
            raise ConfigError(source, key, "expected consumer-name:token "
                              "(names of letters, digits, '_', '.', '-')")
        if len(token) < 16 or any(c.isspace() for c in token):
            raise ConfigError(source, key, "expected a token of at least 16 "
                              "characters without spaces")
        if name in tokens:
            raise ConfigError(source, key, f"consumer {name!r} appears twice")
        tokens[name] = token
    return Tokens(tokens)


def load(path: Path) -> Tokens:
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(str(path), None, f"cannot read: "
                          f"{err.strerror or err}") from err
    return parse(text, str(path))


def load_or_create(path: Path) -> tuple[Tokens, bool]:
    """The tokens file, created with one token for ``default`` if missing;
    the flag says whether it was created."""
    if path.exists():
        return load(path), False
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    token = secrets.token_urlsafe(32)
    write_atomically(path, f"{DEFAULT_CONSUMER}:{token}\n", mode=0o600)
    return Tokens({DEFAULT_CONSUMER: token}), True


DROPPED_FILE = "dropped_consumers"


def load_dropped(state_dir: Path) -> set[str]:
    """Consumers dropped for good (``vmagent consumer drop``): they no
    longer hold WAL data.  Delete a line of the file to undo."""
    try:
        text = (state_dir / DROPPED_FILE).read_text()
    except FileNotFoundError:
        return set()
    return {line.strip() for line in text.splitlines() if line.strip()}


def save_dropped(state_dir: Path, names: set[str]) -> None:
    write_atomically(state_dir / DROPPED_FILE,
                     "".join(f"{n}\n" for n in sorted(names)), mode=0o600)
