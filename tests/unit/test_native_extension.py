"""The probes refuse a missing or stale native extension; everything that
does not read the kernel works without it."""

import subprocess
import sys

import pytest

from vmagent import __version__
from vmagent.probes._native import ffi, lib


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, timeout=60)


def test_extension_reports_the_package_version():
    assert ffi.string(lib.vmprobe_version()).decode() == __version__


def test_extension_built_for_another_version_is_refused():
    r = run_python(
        "import sys, types\n"
        "sys.modules['vmagent._version'] = "
        "types.SimpleNamespace(__version__='9.9.9')\n"
        "import vmagent.probes\n")
    assert r.returncode != 0
    assert "NativeExtensionError" in r.stderr
    assert f"built for vmagent {__version__}" in r.stderr
    assert "this is vmagent 9.9.9" in r.stderr


def test_missing_extension_is_refused_with_what_to_do():
    r = run_python("import sys\nsys.modules['vmagent._vmprobe'] = None\n"
                   "import vmagent.probes\n")
    assert r.returncode != 0
    assert "native probes (vmagent._vmprobe) are not built" in r.stderr
    assert "pip install ." in r.stderr


def test_pull_and_wal_tools_work_without_the_extension(tmp_path):
    r = run_python(
        "import sys\nsys.modules['vmagent._vmprobe'] = None\n"
        "import vmagent.pull, vmagent.frames, vmagent.wal.verify\n"
        "from vmagent.cli import main\n"
        f"sys.exit(main(['wal', 'verify', {str(tmp_path)!r}]))\n")
    assert "no WAL here" in r.stderr, r.stderr  # it ran, and said why not
    assert "NativeExtensionError" not in r.stderr
    assert "vmagent._vmprobe" not in r.stderr


@pytest.mark.parametrize(("text", "value"), [
    (b"42\n", 42), (b"0", 0), (b"18446744073709551615\n", 2**64 - 1)])
def test_u64_parser(text, value):
    out = ffi.new("uint64_t *")
    assert lib.vmprobe_parse_u64(text, len(text), out) == 0
    assert out[0] == value


@pytest.mark.parametrize("text", [b"", b"\n", b"-1", b"12a",
                                  b"18446744073709551616"])
def test_u64_parser_refuses_garbage(text):
    assert lib.vmprobe_parse_u64(text, len(text), ffi.new("uint64_t *")) == -1


def test_every_project_exception_derives_from_vmagent_error():
    from vmagent.errors import VmagentError
    from vmagent.frames import VerifyError
    from vmagent.probes.bhyve import DecodeError
    from vmagent.wal.cursors import CursorError
    from vmagent.wal.format import FormatError

    for cls in (DecodeError, FormatError, VerifyError, CursorError):
        assert issubclass(cls, VmagentError), cls
    assert issubclass(FormatError, ValueError)  # callers that rely on it
    assert issubclass(DecodeError, ValueError)
