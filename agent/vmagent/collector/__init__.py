"""``vmcollector``: a fleet's evidence pulled, verified and stored exactly
once (docs/collector.md), into SQLite or PostgreSQL.

The package also holds the reference pull client (``client``) that
``vmagent pull`` and the tests use; the names below are what
``vmagent.collector`` exported when it was a single module.
"""

from __future__ import annotations

from vmagent.collector.client import Client, PullError, Unreachable
from vmagent.frames import ChainState, VerifyError, unexplained, verify_batch

__all__ = ["ChainState", "Client", "PullError", "Unreachable",
           "VerifyError", "unexplained", "verify_batch"]
