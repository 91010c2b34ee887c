"""The host's Ed25519 signing key (docs/protocol.md, "Verifying a batch").

``<state_dir>/host.key`` holds the 32-byte private key (mode 0600) and
``<state_dir>/host.pub`` the 32-byte public key; both are generated on first
start.  ``key_id`` is the hex of the first 8 bytes of SHA-256(public key).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from vmagent.errors import StateError
from vmagent.fsutil import write_atomically

PRIVATE_FILE, PUBLIC_FILE = "host.key", "host.pub"


def key_id(public: bytes) -> bytes:
    """The 8 bytes that name a public key (its hex is the wire ``key_id``)."""
    return hashlib.sha256(public).digest()[:8]


class HostKey:
    """Signs WAL frames with the host's private key."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.public = private.public_key().public_bytes(
            Encoding.Raw, PublicFormat.Raw)  # *_bytes_raw(): cryptography 40+
        self.key_id = key_id(self.public)

    def sign(self, data: bytes) -> bytes:
        return self._private.sign(data)

    def private_raw(self) -> bytes:
        """The 32 bytes of the private key (what ``host.key`` holds)."""
        return self._private.private_bytes(Encoding.Raw, PrivateFormat.Raw,
                                           NoEncryption())

    @classmethod
    def generate(cls) -> HostKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load_or_create(cls, state_dir: Path) -> HostKey:
        """The state dir's key, generated (once) if there is none."""
        private_path = state_dir / PRIVATE_FILE
        try:
            raw = private_path.read_bytes()
        except FileNotFoundError:
            raw = None
        except OSError as err:
            raise StateError(f"cannot read {private_path}: {err.strerror}") \
                from err
        if raw is not None:
            if len(raw) != 32:
                raise StateError(f"{private_path}: expected a 32-byte Ed25519 "
                                 f"private key, found {len(raw)} bytes")
            key = cls(Ed25519PrivateKey.from_private_bytes(raw))
        else:
            key = cls.generate()
            try:
                state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
                write_atomically(private_path, key.private_raw(), mode=0o600)
            except OSError as err:
                raise StateError(f"cannot create {private_path}: "
                                 f"{err.strerror}") from err
        public_path = state_dir / PUBLIC_FILE
        if not public_path.exists() or public_path.read_bytes() != key.public:
            write_atomically(public_path, key.public, mode=0o644)
        return key


def load_public_key(path: Path) -> bytes:
    """A 32-byte public key from a file holding it raw or as hex text."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise StateError(f"cannot read public key {path}: {err.strerror}") \
            from err
    if len(raw) != 32:
        try:
            raw = bytes.fromhex(raw.decode("ascii").strip())
        except (UnicodeDecodeError, ValueError):
            raw = b""
    if len(raw) != 32:
        raise StateError(f"{path}: expected a 32-byte Ed25519 public key, raw "
                         "or as 64 hex digits")
    return raw


def verify_signature(public: bytes, sig: bytes, data: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(sig, data)
    except (InvalidSignature, ValueError):
        return False
    return True


