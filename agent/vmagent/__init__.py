"""vmagent: per-VM metering straight from the kernel, for KVM and bhyve hosts.

Only the probes need the native extension (``vmagent.probes._native``
checks it and says what to do when it is missing or stale): pulling,
verifying and reading a WAL work without it.
"""

from vmagent._version import __version__

__all__ = ["__version__"]
