"""Builds the Linux test guest once and caches it (docs/architecture.md,
"Tests").

The kernel is the one Debian's ``linux-image-cloud-amd64`` depends on
(``apt-get download``, ``dpkg-deb -x``); the initramfs holds static busybox,
the virtio modules in dependency order, ``sendframes`` (gcc -static) and
``init.sh``.  The cache key covers every input, so a change rebuilds.
A command it needs that is missing is a MissingTool naming the Debian
package (the tests skip with it); run it as ``cd tests && python -m
testguest.builder``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import needs

HERE = Path(__file__).parent
META_PACKAGE = "linux-image-cloud-amd64"
#: Debian's busybox-static; the variable stands in for a missing one in tests
BUSYBOX = Path(os.environ.get("VMAGENT_TESTGUEST_BUSYBOX", "/bin/busybox"))
#: What the build runs besides busybox (apt-get, dpkg-deb, gzip: Debian's own)
COMMANDS = ("apt-get", "apt-cache", "dpkg-deb", "gcc", "cpio", "gzip")
#: In dependency order (`depmod -b` on the unpacked tree shows it).
MODULES = ("virtio_ring", "virtio", "virtio_pci_legacy_dev",
           "virtio_pci_modern_dev", "virtio_pci", "failover",
           "net_failover", "virtio_net", "virtio_blk")


@dataclass(frozen=True)
class GuestImage:
    kernel: Path
    initrd: Path


class BuildError(RuntimeError):
    """The test guest could not be built; the message says which step."""


class MissingTool(BuildError):
    """A command the build needs is not installed; the message names the
    Debian package to install."""


def missing_tool() -> str | None:
    """Why the guest cannot be built here (what to install), or None."""
    if not BUSYBOX.exists():
        return f"needs {BUSYBOX} (apt-get install " \
               f"{needs.packages()['/bin/busybox']}) for the test guest"
    why = needs.missing(*COMMANDS)
    return f"{why} for the test guest" if why else None


def cache_root() -> Path:
    return Path(os.environ.get("VMAGENT_TESTGUEST_CACHE",
                               "/var/tmp/vmagent-testguest"))


def _run(*cmd: str, cwd: Path | None = None) -> str:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise BuildError(f"{' '.join(cmd)} failed: {r.stderr.strip()[-500:]}")
    return r.stdout


def kernel_package() -> str:
    """The versioned kernel package the cloud meta-package depends on."""
    for attempt in range(2):
        out = subprocess.run(["apt-cache", "depends", META_PACKAGE],
                             capture_output=True, text=True).stdout
        for line in out.splitlines():
            dep = line.strip().removeprefix("Depends: ")
            if dep.startswith("linux-image-") and dep != META_PACKAGE:
                return dep
        if attempt == 0:  # no package lists yet on a fresh machine
            _run("apt-get", "update", "-qq")
    raise BuildError(f"apt-cache knows no kernel behind {META_PACKAGE}")


def build() -> GuestImage:
    """The cached kernel and initramfs, built first if needed."""
    why = missing_tool()
    if why:
        raise MissingTool(why)
    package = kernel_package()
    key = hashlib.sha256()
    for part in (package.encode(), BUSYBOX.read_bytes(),
                 (HERE / "init.sh").read_bytes(),
                 (HERE / "sendframes.c").read_bytes(), repr(MODULES).encode()):
        key.update(hashlib.sha256(part).digest())
    out = cache_root() / key.hexdigest()[:16]
    image = GuestImage(out / "vmlinuz", out / "initrd.gz")
    if image.kernel.exists() and image.initrd.exists():
        return image
    cache_root().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_root()) as tmp:
        work = Path(tmp)
        _build_into(work, package)
        if not out.exists():  # another run may have finished first
            (work / "image").rename(out)
    return image


def _build_into(work: Path, package: str) -> None:
    _run("apt-get", "download", package, cwd=work)
    [deb] = work.glob("*.deb")
    unpacked = work / "deb"
    _run("dpkg-deb", "-x", str(deb), str(unpacked))
    [vmlinuz] = (unpacked / "boot").glob("vmlinuz-*")
    [moddir] = (unpacked / "lib/modules").iterdir()
    root = work / "root"
    for d in ("bin", "dev", "proc", "sys", "lib/modules"):
        (root / d).mkdir(parents=True)
    shutil.copy(BUSYBOX, root / "bin/busybox")
    for name in MODULES:
        [ko] = moddir.glob(f"kernel/**/{name}.ko")
        shutil.copy(ko, root / "lib/modules" / f"{name}.ko")
    _run("gcc", "-static", "-O2", "-o", str(root / "bin/sendframes"),
         str(HERE / "sendframes.c"))
    shutil.copy(HERE / "init.sh", root / "init")
    (root / "init").chmod(0o755)
    files = _run("find", ".", cwd=root)
    cpio = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=root,
                          input=files.encode(), capture_output=True)
    if cpio.returncode != 0:
        raise BuildError(f"cpio failed: {cpio.stderr.decode()[-500:]}")
    image = work / "image"
    image.mkdir()
    shutil.copy(vmlinuz, image / "vmlinuz")
    with open(image / "initrd.gz", "wb") as f:
        subprocess.run(["gzip", "-1"], input=cpio.stdout, stdout=f,
                       check=True)


if __name__ == "__main__":
    print(build())
