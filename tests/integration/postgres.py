"""A throwaway PostgreSQL cluster for the collector's tests: ``initdb`` and
``pg_ctl`` (as the ``postgres`` user when run as root) in a temporary
directory owned by that user, listening on a free loopback port; always
stopped and removed.  Missing binaries or psycopg: the test skips naming
what to install."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import needs
from integration.agent_process import free_port

INITDB = "/usr/lib/postgresql/15/bin/initdb"  # as in debian-packages.txt


def bindir() -> Path | None:
    """The newest installed PostgreSQL's bin directory, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(p.split("/")[4])
                   if p.split("/")[4].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    which = shutil.which("initdb")
    return Path(which).parent if which else None


def skip_reason() -> str | None:
    """Why PostgreSQL tests cannot run here, or None."""
    if bindir() is None:
        return needs.reason(INITDB)
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "needs psycopg 3 (pip install 'vmagent[postgresql]')"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "needs the postgres user (apt-get install postgresql)"
    return None


class Cluster:
    """One cluster; ``url(db)`` for a database in it."""

    def __init__(self) -> None:
        bins = bindir()
        assert bins is not None
        self.bin = bins
        self.dir = Path(tempfile.mkdtemp(prefix="vmagent-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.dir, user.pw_uid, user.pw_gid)
            self.prefix = ["runuser", "-u", "postgres", "--"]
        self.databases = 0

    def _run(self, *args: str, timeout: float = 120) -> None:
        out = subprocess.run([*self.prefix, *args], capture_output=True,
                             text=True, timeout=timeout, cwd=self.dir)
        if out.returncode != 0:
            log = self.dir / "log"
            tail = log.read_text(errors="replace")[-2000:] \
                if log.exists() else ""
            raise RuntimeError(f"{args[0]} failed ({out.returncode}): "
                               f"{out.stderr.strip()[-2000:]} {tail}")

    def init(self) -> Cluster:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U",
                  "postgres", "-A", "trust", "-E", "UTF8", "--no-sync",
                  "--no-instructions")
        return self.start()

    def start(self) -> Cluster:
        opts = (f"-p {self.port} -k {self.dir} "
                "-c listen_addresses=127.0.0.1 -c fsync=off "
                "-c full_page_writes=off -c max_connections=200")
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l",
                  str(self.dir / "log"), "-w", "-t", "60", "-o", opts,
                  "start")
        return self

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m",
                  mode, "-w", "-t", "60", "stop")

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def create_database(self) -> str:
        import psycopg

        self.databases += 1
        name = f"vmc{os.getpid()}x{self.databases}"
        with psycopg.connect(self.url(), autocommit=True) as db:
            db.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def destroy(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self.stop("immediate")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def wait_ready(url: str, timeout: float = 30.0) -> None:
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        try:
            psycopg.connect(url, connect_timeout=2).close()
            return
        except psycopg.Error:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
