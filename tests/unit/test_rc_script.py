"""rc.d/vmagent and rc.d/vmcollector: valid sh, the rc.subr variables the
FreeBSD issue asks for, and every rc.conf knob documented in the header
comment."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
NAMES = ["vmagent", "vmcollector"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shell", ["sh", "dash", "busybox"])
def test_script_parses(shell, name):
    if shutil.which(shell) is None:
        pytest.skip(f"no {shell}")
    script = str(ROOT / "rc.d" / name)
    cmd = [shell, "sh", "-n", script] if shell == "busybox" else \
        [shell, "-n", script]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("name", NAMES)
def test_rcorder_keywords(name):
    text = (ROOT / "rc.d" / name).read_text()
    assert re.search(rf"^# PROVIDE: {name}$", text, re.M)
    assert re.search(r"^# REQUIRE: .*\bLOGIN\b", text, re.M)
    assert re.search(r"^# KEYWORD: shutdown$", text, re.M)


@pytest.mark.parametrize("name", NAMES)
def test_rc_subr_variables(name):
    text = (ROOT / "rc.d" / name).read_text()
    assert ". /etc/rc.subr" in text
    assert f'name="{name}"' in text and f'rcvar="{name}_enable"' in text
    assert f': ${{{name}_enable:="NO"}}' in text
    assert "load_rc_config $name" in text
    assert 'command="/usr/sbin/daemon"' in text
    args = re.search(r'command_args="([^"]*)"', text, re.S).group(1)
    assert "-P ${pidfile}" in args and "-r" in args.split()
    assert f"{name} run" in args and f"${{{name}_flags}}" in args
    assert f'start_precmd="{name}_precmd"' in text
    precmd = text[text.index(f"{name}_precmd()"):]
    assert "install -d -m 0750" in precmd and \
        f"${{{name}_state_dir}}" in precmd
    assert f"{name} check-config" in precmd
    assert 'run_rc_command "$1"' in text


@pytest.mark.parametrize("name", NAMES)
def test_every_knob_is_documented_in_the_header(name):
    text = (ROOT / "rc.d" / name).read_text()
    header = text[:text.index(". /etc/rc.subr")]
    knobs = re.findall(rf"^: \$\{{({name}_\w+):=", text, re.M)
    assert {f"{name}_enable", f"{name}_config", f"{name}_flags"} <= \
        set(knobs)
    for knob in knobs:
        assert re.search(rf"^# {knob} \(", header, re.M), knob


def test_the_port_installs_the_scripts_and_a_sample_config():
    port = ROOT / "packaging/freebsd"
    for name in NAMES:
        assert (port / f"files/{name}.in").resolve() == \
            (ROOT / "rc.d" / name).resolve()
    make = (port / "Makefile").read_text()
    assert "USE_RC_SUBR=\tvmagent vmcollector" in make
    assert "vmagent.toml.sample" in make
    assert (port / "files/vmagent.toml.sample").exists()
    assert "@sample etc/vmagent/vmagent.toml.sample" in \
        (port / "pkg-plist").read_text()
    assert (port / "pkg-descr").read_text().strip()


def test_sample_config_is_valid():
    from vmagent import config

    cfg = config.load(ROOT / "packaging/freebsd/files/vmagent.toml.sample")
    assert cfg.probes.acct_file == "/var/account/acct"


def test_the_port_depends_on_every_runtime_dependency():
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        import tomli as tomllib

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    needed = {re.split(r"[<>=; ]", d)[0] for d in meta["dependencies"]
              if "python_version < '3.11'" not in d}
    make = (ROOT / "packaging/freebsd/Makefile").read_text()
    run = make[make.index("RUN_DEPENDS="):make.index("USES=")]
    have = set(re.findall(r"\$\{PYTHON_PKGNAMEPREFIX\}([\w-]+)>=", run))
    assert needed | {"sqlite3"} <= have  # sqlite3: CBSD UUIDs
