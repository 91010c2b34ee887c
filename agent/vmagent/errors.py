"""vmagent's exceptions: one root, ``VmagentError``, never raised directly."""

from __future__ import annotations


class VmagentError(Exception):
    """Root of every error vmagent raises on purpose."""


class NativeExtensionError(VmagentError, ImportError):
    """The compiled probes are missing or were built for another version."""


class ConfigError(VmagentError):
    """A configuration file or value is invalid; the message names both
    (``key`` None: the file as a whole, e.g. it cannot be read)."""

    def __init__(self, source: str, key: str | None, problem: str) -> None:
        super().__init__(f"{source}: {key}: {problem}" if key is not None
                         else f"{source}: {problem}")
        self.source = source
        self.key = key
        self.problem = problem


class ConsumerError(VmagentError):
    """A consumer that does not exist, or whose change cannot be kept."""


class StartError(VmagentError):
    """The daemon cannot start serving: the address is taken, the control
    socket cannot be made."""


class StateError(VmagentError):
    """The state directory or a file in it cannot be used."""


class ProbeError(VmagentError):
    """A kernel interface the probes need cannot be read."""


class ProbeUnsupported(ProbeError):
    """This platform has no probes (yet)."""
