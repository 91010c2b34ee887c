"""The only importer of the compiled cffi module ``vmagent._vmprobe``.

It refuses an extension that is missing or was built for another version of
vmagent, since a stale ``.so`` would read structs with the wrong layout.
"""

from __future__ import annotations

import os

from vmagent._version import __version__
from vmagent.errors import NativeExtensionError

try:
    from vmagent._vmprobe import ffi, lib
except ImportError as err:  # pragma: no cover - depends on the install
    raise NativeExtensionError(
        "vmagent's native probes (vmagent._vmprobe) are not built: "
        f"{err}. Install the package with 'pip install .' so that the C "
        "extension in native/ is compiled."
    ) from err

_built_for = ffi.string(lib.vmprobe_version()).decode()
if _built_for != __version__:
    raise NativeExtensionError(
        f"vmagent._vmprobe was built for vmagent {_built_for}, but this is "
        f"vmagent {__version__}; reinstall with 'pip install .' to rebuild it"
    )


def os_error(path: str | None = None) -> OSError:
    """The OSError for the errno the last native call left."""
    code = ffi.errno
    return OSError(code, os.strerror(code), path)


__all__ = ["ffi", "lib", "os_error"]
