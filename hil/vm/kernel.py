"""The kernel the VM boots: which file, and how to get Debian's without installing it.

Order (docs/reference/vm.md §1): the ``kernel=`` option, else ``$HIL_VM_KERNEL``, else the newest
``vmlinuz-*`` in the cache directory that :func:`fetch_debian_kernel` (``hil vm fetch-kernel``,
run by ``.ci/run``) fills from Debian's ``linux-image-amd64``: ``apt-get download`` of the image
package and ``dpkg-deb -x`` of it, so no install hook (initramfs-tools, bootloader updates) runs
and nothing outside the cache changes.

A bzImage decompresses itself in the guest before it runs, which under TCG costs about 3 s of a
6 s boot. A kernel built with ``CONFIG_PVH`` (Debian's is) can instead be started by QEMU as the
ELF ``vmlinux`` inside it, skipping the firmware's Linux loader and the decompressor, so the
vmlinux is extracted once here (the payload after the xz or gzip magic) and cached beside it.
"""

from __future__ import annotations

import gzip
import lzma
import os
import re
import shutil
import subprocess
import tempfile
import zlib
from pathlib import Path

from hil.errors import VmKernelError
from hil.log import get_logger
from hil.vm.image import cache_dir

log = get_logger("hil.vm.kernel")

KERNEL_ENV = "HIL_VM_KERNEL"
DEBIAN_PACKAGE = "linux-image-amd64"
FETCH_HINT = ("give kernel=PATH (any x86-64 bzImage with CONFIG_DEVPORT, CONFIG_DEVMEM and the 8250 UART built in), "
              f"set ${KERNEL_ENV}, or run `hil vm fetch-kernel` (Debian's {DEBIAN_PACKAGE}, unpacked without "
              "installing it, into the cache)")
XZ_MAGIC = b"\xfd7zXZ\x00"
GZIP_MAGIC = b"\x1f\x8b\x08"
PVH_NOTE = b"Xen\x00"  #: the ELF note owner of the PVH entry point (XEN_ELFNOTE_PHYS32_ENTRY)


def kernel_dir() -> Path:
    return cache_dir() / "kernel"


def _version_key(path: Path) -> list[int | str]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", path.name)]


def find_kernel(option: str | None = None) -> Path:
    """The bzImage to boot, or :class:`VmKernelError` with where it looked and how to get one."""
    for source, value in (("kernel=", option), (f"${KERNEL_ENV}", os.environ.get(KERNEL_ENV))):
        if value:
            path = Path(value).expanduser()
            if not path.is_file():
                raise VmKernelError(f"{source}{value}: no such file; {FETCH_HINT}")
            return path
    cached = sorted(kernel_dir().glob("vmlinuz-*"), key=_version_key)
    if cached:
        return cached[-1]
    raise VmKernelError(f"no kernel for the VM (none in {kernel_dir()}); {FETCH_HINT}")


def vmlinux_of(bzimage: Path) -> Path | None:
    """The ELF kernel inside ``bzimage``, extracted once into the cache, or None when it cannot
    be started directly (no PVH entry, or a compression this Python cannot undo): then QEMU
    boots the bzImage itself."""
    st = bzimage.stat()
    target = kernel_dir() / "elf" / f"{bzimage.name}-{st.st_size}-{st.st_mtime_ns}.vmlinux"
    if target.exists():
        return target
    data = bzimage.read_bytes()
    elf = None
    for magic, undo in ((XZ_MAGIC, _unxz), (GZIP_MAGIC, _gunzip)):
        at = data.find(magic)
        while at >= 0 and elf is None:
            elf = undo(data[at:])
            at = data.find(magic, at + 1) if elf is None else at
        if elf is not None:
            break
    if elf is None or not elf.startswith(b"\x7fELF") or PVH_NOTE not in elf:
        log.info("vm_kernel_no_pvh", kernel=str(bzimage))
        return None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".vmlinux-")
        with os.fdopen(fd, "wb") as f:
            f.write(elf)
        os.replace(tmp, target)
    except OSError as e:
        log.info("vm_kernel_elf_not_cached", kernel=str(bzimage), error=str(e))
        return None
    return target


def _unxz(data: bytes) -> bytes | None:
    try:
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data)
    except lzma.LZMAError:
        return None


def _gunzip(data: bytes) -> bytes | None:
    try:
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data)
    except (zlib.error, gzip.BadGzipFile):
        return None


def fetch_debian_kernel(dest: Path | None = None) -> Path:
    """Download Debian's current ``linux-image-amd64`` kernel package and unpack only its
    ``/boot/vmlinuz-*`` into ``dest`` (the cache), without installing anything. Blocking:
    a command-line and CI step, never called from the event loop."""
    dest = dest or kernel_dir()
    for tool in ("apt-get", "apt-cache", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise VmKernelError(f"{tool} not found: fetching Debian's kernel needs apt and dpkg; {FETCH_HINT}")
    depends = _run(["apt-cache", "depends", DEBIAN_PACKAGE])
    match = re.search(r"Depends:\s*(linux-image-\S+)", depends)
    if match is None:
        _run(["apt-get", "update", "-q"])  # a fresh machine may have no package lists yet
        match = re.search(r"Depends:\s*(linux-image-\S+)", _run(["apt-cache", "depends", DEBIAN_PACKAGE]))
    if match is None:
        raise VmKernelError(f"apt-cache does not know {DEBIAN_PACKAGE}'s kernel package; {FETCH_HINT}")
    package = match.group(1)
    cached = dest / f"vmlinuz-{package.removeprefix('linux-image-')}"
    if cached.is_file():  # this version was fetched before: the cache is the point
        log.info("vm_kernel_cached", package=package, path=str(cached))
        return cached
    with tempfile.TemporaryDirectory(prefix="hil-kernel-") as tmp:
        os.chmod(tmp, 0o755)  # apt drops to the _apt user to download where it can
        _run(["apt-get", "download", "-q", package], cwd=tmp)
        debs = list(Path(tmp).glob("*.deb"))
        if not debs:
            raise VmKernelError(f"apt-get download {package} left no .deb; {FETCH_HINT}")
        unpacked = Path(tmp) / "root"
        _run(["dpkg-deb", "-x", str(debs[0]), str(unpacked)])
        images = sorted((unpacked / "boot").glob("vmlinuz-*"))
        if not images:
            raise VmKernelError(f"{debs[0].name} has no /boot/vmlinuz-*")
        dest.mkdir(parents=True, exist_ok=True)
        target = dest / images[-1].name
        shutil.copyfile(images[-1], target)
        config = unpacked / "boot" / images[-1].name.replace("vmlinuz-", "config-")
        if config.exists():
            shutil.copyfile(config, dest / config.name)
    log.info("vm_kernel_fetched", package=package, path=str(target))
    return target


def _run(argv: list[str], cwd: str | None = None) -> str:
    try:
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600, check=False)
    except (OSError, subprocess.SubprocessError) as e:
        raise VmKernelError(f"{' '.join(argv)}: {e}") from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
        raise VmKernelError(f"{' '.join(argv)} failed (status {proc.returncode}): {tail[0]}")
    return proc.stdout
