"""Every platform's probes module exports exactly the same public names
(psutil's contract tests): code above ``probes`` never asks which OS."""

import inspect

import pytest

from vmagent.errors import ProbeUnsupported
from vmagent.probes import freebsd, linux


def public_api(module):
    names = {n for n in dir(module) if not n.startswith("_")
             and inspect.isclass(getattr(module, n))
             and getattr(module, n).__module__ == module.__name__}
    return {n: sorted(m for m in dir(getattr(module, n))
                      if not m.startswith("_") or m in ("__enter__",
                                                        "__exit__"))
            for n in names}


def test_linux_and_freebsd_export_the_same_names():
    assert public_api(linux) == public_api(freebsd)


def test_same_method_signatures():
    for name in ("__init__", "discover", "sample", "vms", "changes", "close"):
        assert inspect.signature(getattr(linux.Prober, name)) == \
            inspect.signature(getattr(freebsd.Prober, name)), name


def test_freebsd_prober_refuses_clearly_off_freebsd():
    with pytest.raises(ProbeUnsupported, match="FreeBSD"):
        freebsd.Prober("h")
