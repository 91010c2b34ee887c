"""The packages.  Debian (packaging/debian, ``make deb``): built from this
tree with dpkg-buildpackage, lintian clean of errors, and the packaged agent
and collector run on Debian's own Python and Python libraries (bookworm's
cryptography 38, structlog 22.3...), not the venv's.  RPM (packaging/rpm,
``make rpm``): built with rpmbuild --nodeps and inspected; it cannot be
installed on Debian."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from integration.agent_process import AgentProcess
from integration.conftest import wait_until
from integration.test_collector import CollectorProcess
from needs import require

ROOT = Path(__file__).resolve().parents[2]
PYTHON = "/usr/bin/python3"  # Debian's, as the package's scripts say
LIBS = ("cffi", "cryptography", "h11", "msgpack", "psutil",
        "structlog")


@pytest.fixture(scope="module")
def deb(tmp_path_factory) -> Path:
    require("dpkg-buildpackage", "dh", "dh_python3", "lintian")
    imports = subprocess.run([PYTHON, "-c", f"import {', '.join(LIBS)}"],
                             capture_output=True, text=True)
    if imports.returncode:
        pytest.skip(f"Debian's python3 lacks a library "
                    f"({imports.stderr.strip().splitlines()[-1]}): apt-get "
                    f"install {' '.join('python3-' + n for n in LIBS)}")
    return build("build-deb", tmp_path_factory.mktemp("deb"))


def build(script: str, out: Path) -> Path:
    """packaging/<script> OUTDIR: the package file it printed."""
    built = subprocess.run(["sh", str(ROOT / "packaging" / script),
                            str(out)], capture_output=True, text=True,
                           timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    return Path(built.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def unpacked(deb, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("root")
    subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
    return root


def packaged(root: Path, command: str, *args: str,
             **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, str(root / "usr/bin" / command), *args],
                          env=packaged_env(root), capture_output=True,
                          text=True, timeout=60, **kw)


def packaged_env(root: Path) -> dict[str, str]:
    site = root / "usr/lib/python3/dist-packages"
    return {"PATH": os.environ["PATH"], "PYTHONPATH": str(site),
            "PYTHONNOUSERSITE": "1"}


def test_package_holds_both_commands_units_conffile_and_extension(deb):
    info = subprocess.run(["dpkg-deb", "-f", str(deb), "Depends",
                           "Architecture"], capture_output=True, text=True,
                          check=True).stdout
    for lib in ("python3-cryptography", "python3-structlog",
                "python3-cffi-backend", "python3-h11"):
        assert lib in info
    files = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True,
                           text=True, check=True).stdout
    for path in ("./usr/bin/vmagent", "./usr/bin/vmcollector",
                 "./lib/systemd/system/vmagent.service",
                 "./lib/systemd/system/vmcollector.service",
                 "./etc/vmagent/vmagent.toml",
                 "./usr/share/doc/vmagent/README.md"):
        assert path in files, path
    assert "dist-packages/vmagent/_vmprobe.cpython-" in files


def test_agent_enabled_collector_not_and_config_is_a_conffile(deb, tmp_path):
    subprocess.run(["dpkg-deb", "-e", str(deb), str(tmp_path / "c")],
                   check=True)
    assert (tmp_path / "c/conffiles").read_text().split() == \
        ["/etc/vmagent/vmagent.toml"]
    postinst = (tmp_path / "c/postinst").read_text()
    assert "deb-systemd-helper enable 'vmagent.service'" in postinst
    # the collector's enable only runs where an admin had enabled it
    block = postinst[postinst.index("'vmcollector.service'"):]
    assert "was-enabled 'vmcollector.service'" in block


def test_units_run_the_packaged_commands(unpacked):
    for unit in ("vmagent", "vmcollector"):
        text = (unpacked / f"lib/systemd/system/{unit}.service").read_text()
        assert f"ExecStart=/usr/bin/{unit} run" in text
        assert "/usr/local" not in text


def test_lintian_finds_no_errors(deb):
    out = subprocess.run(["lintian", str(deb)], capture_output=True,
                         text=True, timeout=300)
    errors = [line for line in out.stdout.splitlines()
              if line.startswith("E:")]
    assert not errors, errors


def test_conffile_lists_every_default_and_each_is_valid(unpacked, tmp_path):
    conf = unpacked / "etc/vmagent/vmagent.toml"
    assert packaged(unpacked, "vmagent", "check-config", "-c",
                    str(conf)).returncode == 0
    lines = conf.read_text().splitlines()
    keys = [line[2:] for line in lines if line.startswith("# ") and
            " = " in line.split("#")[1]]
    uncommented = tmp_path / "all.toml"  # every default, uncommented
    uncommented.write_text("\n".join(
        line[2:] if line[2:] in keys else line for line in lines))
    out = packaged(unpacked, "vmagent", "check-config", "-c",
                   str(uncommented))
    assert out.returncode == 0, out.stderr
    # the same keys as the configuration reference documents
    reference = (ROOT / "docs/configuration.md").read_text()
    for key in keys:
        assert f"\n{key.split(' = ')[0]} = " in reference, key


def test_packaged_agent_and_collector_run_on_debians_python(unpacked,
                                                           tmp_path):
    """Sign, serve, pull and verify, store: cryptography 38, structlog
    22.3, h11, msgpack and the extension built for Debian's python3."""
    agent = AgentProcess(tmp_path / "agent", fake_vms=1, interval=0.5)
    log = open(tmp_path / "agent.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([PYTHON, str(unpacked / "usr/bin/vmagent"),
                             "run", "-c", str(agent.config)],
                            env=packaged_env(unpacked), stdout=log,
                            stderr=log)
    log.close()
    try:
        wait_until(lambda: sweeps(agent) >= 2)
        token = tmp_path / "token"
        token.write_text(agent.token())
        pulled = packaged(unpacked, "vmagent", "pull", "--consumer",
                          "default", "--token-file", str(token), "--after",
                          "0", "--json", "--pubkey",
                          str(agent.state / "host.pub"), agent.url)
        assert pulled.returncode == 0, pulled.stderr
        kinds = [json.loads(line)["kind"]
                 for line in pulled.stdout.splitlines()]
        assert kinds[:2] == ["agent_start", "vm_start"] and \
            "sample" in kinds
        collector = CollectorProcess(tmp_path / "collector", [
            ("hv1", agent, agent.public_key())], interval="1s")
        stored = collector_stores(unpacked, collector)
        assert stored >= len(kinds)
    finally:
        proc.terminate()
        assert proc.wait(timeout=60) == 0
    assert "Traceback" not in (tmp_path / "agent.log").read_text()


def sweeps(agent: AgentProcess) -> int:
    """0 until the agent answers."""
    try:
        return agent.request("/v1/status")[1]["sweeps"]
    except (OSError, KeyError):  # not listening yet, no token yet
        return 0


def collector_stores(root: Path, c: CollectorProcess) -> int:
    """Run the packaged collector until the host is current; records
    stored."""
    assert packaged(root, "vmcollector", "migrate", "-c",
                    str(c.config)).returncode == 0
    log = open(c.workdir / "collector.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([PYTHON, str(root / "usr/bin/vmcollector"),
                             "run", "-c", str(c.config)],
                            env=packaged_env(root), stdout=log, stderr=log)
    log.close()
    try:
        def current() -> dict | None:
            out = packaged(root, "vmcollector", "status", "--json", "-c",
                           str(c.config))
            doc = json.loads(out.stdout) if out.stdout else {}
            hosts = doc.get("hosts", [])
            return doc if hosts and hosts[0]["state"] == "current" else None

        doc = wait_until(current)
        time.sleep(0.5)
    finally:
        proc.terminate()
        assert proc.wait(timeout=60) == 0, \
            (c.workdir / "collector.log").read_text()[-2000:]
    held = doc["hosts"][0]["wals"][0]["held"]
    return sum(to - first + 1 for first, to in held)


@pytest.fixture(scope="module")
def rpm(tmp_path_factory) -> Path:
    require("rpmbuild")
    return build("build-rpm", tmp_path_factory.mktemp("rpm"))


def rpm_query(rpm: Path, *what: str) -> str:
    return subprocess.run(["rpm", "-qp", *what, str(rpm)],
                          capture_output=True, text=True, check=True).stdout


def test_rpm_has_the_debian_packages_contents_and_systemd_scriptlets(
        rpm, deb):
    files = rpm_query(rpm, "-l").split()
    for path in ("/usr/bin/vmagent", "/usr/bin/vmcollector",
                 "/usr/lib/systemd/system/vmagent.service",
                 "/usr/lib/systemd/system/vmcollector.service",
                 "/etc/vmagent/vmagent.toml"):
        assert path in files, path
    assert any("/site-packages/vmagent/_vmprobe.cpython-" in f
               for f in files)
    assert rpm_query(rpm, "--configfiles").split() == \
        ["/etc/vmagent/vmagent.toml"]
    scripts = rpm_query(rpm, "--scripts")
    assert "preset vmagent.service vmcollector.service" in scripts
    assert "try-restart vmagent.service" in scripts
    requires = rpm_query(rpm, "--requires")
    for lib in ("python3-cryptography >= 38", "python3-structlog >= 22.3",
                "python3-h11 >= 0.14"):
        assert lib in requires
    # the same version and Python modules as the Debian package
    version = subprocess.run(["dpkg-deb", "-f", str(deb), "Version"],
                             capture_output=True, text=True,
                             check=True).stdout.strip()
    assert rpm_query(rpm, "--qf", "%{VERSION}") == version
    deb_modules = {line.split("dist-packages/")[1] for line in
                   subprocess.run(["dpkg-deb", "-c", str(deb)],
                                  capture_output=True, text=True,
                                  check=True).stdout.split()
                   if "dist-packages/vmagent/" in line and
                   line.endswith(".py")}
    rpm_modules = {f.split("site-packages/")[1] for f in files
                   if "site-packages/vmagent/" in f and f.endswith(".py")}
    assert rpm_modules == deb_modules and len(deb_modules) > 50


def test_rpm_preset_enables_the_agent_not_the_collector(rpm, tmp_path):
    unpack = subprocess.run(
        f"rpm2cpio {rpm} | cpio -idm --quiet", shell=True, cwd=tmp_path,
        capture_output=True, text=True)
    assert unpack.returncode == 0, unpack.stderr
    preset = next(tmp_path.glob("usr/lib/systemd/system-preset/*.preset"))
    assert preset.read_text().split("\n")[:2] == \
        ["enable vmagent.service", "disable vmcollector.service"]
