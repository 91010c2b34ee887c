"""The test setup a newcomer meets first (issue 15): ``make test`` installs
the Debian packages the tests need from one list; a test whose command is
missing skips naming the package, never errors; the real-kernel summary
counts errors apart from runs and gives every skip's reason."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import needs
from testguest import builder

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "packaging/debian-packages"


def listed(group: str) -> list[str]:
    return [line.split()[0] for line in needs.LIST.read_text().splitlines()
            if not line.startswith("#") and len(line.split()) >= 2
            and line.split()[1] == group]


# --- one list of packages ---------------------------------------------------

def test_the_list_has_what_the_tests_and_the_build_need():
    assert {"qemu-system-x86", "qemu-utils", "busybox-static", "acct", "cpio",
            "iproute2"} <= set(listed("test"))
    assert {"gcc", "make", "python3-dev", "python3-venv"} <= \
        set(listed("build"))
    assert needs.packages()["/bin/busybox"] == "busybox-static"
    assert needs.packages()["qemu-img"] == "qemu-utils"


def test_ci_and_make_read_the_list_instead_of_repeating_it():
    ci = (ROOT / ".ci/run").read_text()
    make = (ROOT / "Makefile").read_text()
    assert "packaging/debian-packages build test" in ci
    assert "packaging/debian-packages $(PACKAGE_GROUPS)" in make
    for package in listed("test") + listed("build"):
        if package != "make":
            assert package not in ci and package not in make, package


def fake_debian(tmp_path: Path, uid: int, installed: set[str]) -> dict:
    """PATH with a dpkg-query that knows ``installed``, an apt-get that logs
    its arguments and an id that says ``uid``."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    log = tmp_path / "apt.log"
    scripts = {
        "dpkg-query": f"""
            for a; do p=$a; done
            case " {' '.join(sorted(installed))} " in
                *" $p "*) printf installed ;;
                *) echo "dpkg-query: no packages found matching $p" >&2
                   exit 1 ;;
            esac""",
        "apt-get": f'echo "$*" >> {log}',
        "id": f"echo {uid}",
    }
    for name, body in scripts.items():
        (bin_ / name).write_text("#!/bin/sh\n" + textwrap.dedent(body) + "\n")
        (bin_ / name).chmod(0o755)
    return {"PATH": f"{bin_}:/usr/bin:/bin", "LOG": str(log)}


def test_as_root_the_missing_packages_are_installed_with_one_update(
        tmp_path):
    env = fake_debian(tmp_path, 0, {"gcc", "cpio"})
    r = subprocess.run(["sh", str(SCRIPT), "build", "test"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    update, install = Path(env["LOG"]).read_text().splitlines()
    assert update == "update -qq"
    want = [p for p in listed("build") + listed("test")
            if p not in ("gcc", "cpio")]
    assert install.split() == ["install", "-y", "-qq", *want]


def test_as_another_user_the_missing_packages_are_named_not_installed(
        tmp_path):
    env = fake_debian(tmp_path, 1000, set(listed("build")))
    r = subprocess.run(["sh", str(SCRIPT), "build", "test"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    assert not Path(env["LOG"]).exists()
    assert "apt-get install " + " ".join(listed("test")) in r.stderr
    assert "skip" in r.stderr


def test_as_another_user_a_missing_build_package_is_said_to_be_needed(
        tmp_path):
    env = fake_debian(tmp_path, 1000, set(listed("test")) | {"make"})
    r = subprocess.run(["sh", str(SCRIPT), "build"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not Path(env["LOG"]).exists()
    assert "the build needs gcc" in r.stderr


def test_nothing_is_done_when_everything_is_installed(tmp_path):
    env = fake_debian(tmp_path, 0, set(listed("build") + listed("test")))
    r = subprocess.run(["sh", str(SCRIPT), "build", "test"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout == r.stderr == ""
    assert not Path(env["LOG"]).exists()


# --- a missing tool is a skip naming its package ----------------------------

def test_a_missing_busybox_is_a_missing_tool_naming_its_package(
        tmp_path, monkeypatch):
    monkeypatch.setattr(builder, "BUSYBOX", tmp_path / "busybox")
    with pytest.raises(builder.MissingTool) as e:
        builder.build()
    assert "apt-get install busybox-static" in str(e.value)


def test_a_missing_command_skips_naming_its_package(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert needs.missing("qemu-img") == \
        "needs qemu-img (apt-get install qemu-utils)"
    with pytest.raises(pytest.skip.Exception, match="acct"):
        needs.require("accton")


def test_without_busybox_the_guest_tests_skip_and_none_errors(tmp_path):
    """The seven tests that errored on a fresh machine: skipped now, with
    the package to install where the machine could otherwise run them."""
    report = tmp_path / "report"
    env = {**os.environ, "VMAGENT_TESTGUEST_BUSYBOX": str(tmp_path / "none"),
           "VMAGENT_REALGUEST_REPORT": str(report)}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p",
                        "no:cacheprovider",
                        "tests/integration/test_exact_counters.py"],
                       cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-3000:]
    ran, skipped, errored = map(int, report.read_text().split("\n")[0]
                                .split())
    assert (ran, skipped, errored) == (0, 7, 0), r.stdout[-3000:]
    if os.geteuid() == 0 and os.access("/dev/kvm", os.W_OK) and \
            needs.found("qemu-system-x86_64"):
        assert "apt-get install busybox-static" in r.stdout


# --- the real-kernel summary ------------------------------------------------

def test_the_summary_counts_errors_apart_and_gives_every_skip_reason(
        tmp_path):
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nmarkers =\n    realguest\n")
    (tmp_path / "conftest.py").write_text(textwrap.dedent(f"""
        import importlib.util, sys
        sys.path.insert(0, {str(ROOT / "tests")!r})
        spec = importlib.util.spec_from_file_location(
            "vmagent_conftest", {str(ROOT / "tests/conftest.py")!r})
        real = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(real)
        real.real_guest_skip_reason = lambda: None  # as on a KVM host
        pytest_collection_modifyitems = real.pytest_collection_modifyitems
        pytest_terminal_summary = real.pytest_terminal_summary
        """))
    (tmp_path / "test_guests.py").write_text(textwrap.dedent("""
        import pytest

        pytestmark = pytest.mark.realguest

        @pytest.fixture
        def broken():
            raise RuntimeError("BuildError: no /bin/busybox")

        @pytest.fixture
        def bad_teardown():
            yield
            raise RuntimeError("teardown")

        def test_passes(): pass
        def test_fails(): assert False
        def test_ran_then_teardown_failed(bad_teardown): pass
        def test_errors(broken): pass
        ACCT = "needs accton (apt-get install acct)"
        def test_skips(): pytest.skip(ACCT)
        def test_skips_too(): pytest.skip(ACCT)
        def test_skips_without_reason(): pytest.skip("")
        """))
    (tmp_path / "test_other.py").write_text(  # no real-kernel test
        "import pytest\n\ndef test_plain(): pass\n"
        "def test_skip(): pytest.skip('elsewhere')\n")
    report = tmp_path / "report"
    r = subprocess.run([sys.executable, "-m", "pytest", "-p",
                        "no:cacheprovider", "-q", str(tmp_path)],
                       cwd=tmp_path, capture_output=True, text=True,
                       timeout=120,
                       env={**os.environ,
                            "VMAGENT_REALGUEST_REPORT": str(report)})
    assert report.read_text() == "3 3 1\n0 0 0\n0 0 0\n", r.stdout
    [line] = [x for x in r.stdout.splitlines()
              if x.startswith("real-kernel tests:")]
    assert line == ("real-kernel tests: 3 ran, 3 skipped, 1 errored (not "
                    "counted as ran) (2 x needs accton (apt-get install "
                    "acct); no reason given)")
    assert "(None)" not in r.stdout
