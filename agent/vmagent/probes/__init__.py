"""Per-platform probes behind one set of names (psutil style).

``Prober`` finds the host's VMs (``discover``), reads their counters
(``sample``) and closes what it holds (``close``); ``linux`` and ``freebsd``
export exactly the same public names.
"""

from __future__ import annotations

import sys

from vmagent.probes.types import (
    VM,
    Disk,
    Nic,
    Sample,
    Sweep,
    VcpuThread,
    VMRef,
)

if sys.platform.startswith("linux"):
    from vmagent.probes import linux as _platform
elif sys.platform.startswith("freebsd"):
    from vmagent.probes import freebsd as _platform
else:  # pragma: no cover - the native build refuses these platforms first
    from vmagent.errors import ProbeUnsupported

    raise ProbeUnsupported(f"vmagent has no probes for {sys.platform}")

Prober = _platform.Prober
PLATFORM = _platform.__name__.rsplit(".", 1)[-1]

__all__ = ["PLATFORM", "VM", "Disk", "Nic", "Prober", "Sample", "Sweep",
           "VMRef", "VcpuThread"]
