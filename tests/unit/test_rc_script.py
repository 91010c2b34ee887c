"""rc.d/vmagent: valid sh, the rc.subr variables the FreeBSD issue asks
for, and every rc.conf knob documented in the header comment."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
SCRIPT = ROOT / "rc.d/vmagent"
TEXT = SCRIPT.read_text()


@pytest.mark.parametrize("shell", ["sh", "dash", "busybox"])
def test_script_parses(shell):
    if shutil.which(shell) is None:
        pytest.skip(f"no {shell}")
    cmd = [shell, "sh", "-n", str(SCRIPT)] if shell == "busybox" else \
        [shell, "-n", str(SCRIPT)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_rcorder_keywords():
    assert re.search(r"^# PROVIDE: vmagent$", TEXT, re.M)
    assert re.search(r"^# REQUIRE: .*\bLOGIN\b", TEXT, re.M)
    assert re.search(r"^# KEYWORD: shutdown$", TEXT, re.M)


def test_rc_subr_variables():
    assert ". /etc/rc.subr" in TEXT
    assert 'name="vmagent"' in TEXT and 'rcvar="vmagent_enable"' in TEXT
    assert ': ${vmagent_enable:="NO"}' in TEXT
    assert "load_rc_config $name" in TEXT
    assert 'command="/usr/sbin/daemon"' in TEXT
    args = re.search(r'command_args="([^"]*)"', TEXT, re.S).group(1)
    assert "-P ${pidfile}" in args and "-r" in args.split()
    assert "vmagent run" in args and "${vmagent_flags}" in args
    assert 'start_precmd="vmagent_precmd"' in TEXT
    precmd = TEXT[TEXT.index("vmagent_precmd()"):]
    assert "install -d -m 0750" in precmd and "${vmagent_state_dir}" in precmd
    assert 'run_rc_command "$1"' in TEXT


def test_every_knob_is_documented_in_the_header():
    header = TEXT[:TEXT.index(". /etc/rc.subr")]
    knobs = re.findall(r"^: \$\{(vmagent_\w+):=", TEXT, re.M)
    assert {"vmagent_enable", "vmagent_config", "vmagent_flags"} <= set(knobs)
    for knob in knobs:
        assert re.search(rf"^# {knob} \(", header, re.M), knob


def test_the_port_installs_the_script_and_a_sample_config():
    port = ROOT / "packaging/freebsd"
    assert (port / "files/vmagent.in").resolve() == SCRIPT.resolve()
    make = (port / "Makefile").read_text()
    assert "USE_RC_SUBR=\tvmagent" in make
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
