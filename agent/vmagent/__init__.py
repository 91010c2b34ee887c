"""vmagent: per-VM metering straight from the kernel, for KVM and bhyve hosts.

Importing the package checks the native probes, so a missing or stale build
fails here with a message that says what to do.
"""

from vmagent._version import __version__
from vmagent.probes import _native  # noqa: F401 - imported for its check

__all__ = ["__version__"]
