"""The guest's initramfs, built from this host's own Python and the ``hil`` package.

A guest needs exactly what ``hil agent`` and ``hil doctor`` need on a real board: a Python of the
same version, the package, its dependencies, and an init. Nothing is downloaded: the interpreter,
its shared libraries (found by ``ldd``), the standard library and the package are copied from
this host to the same absolute paths inside the archive, so the interpreter's compiled-in
library path and prefix hold unchanged in the guest (docs/reference/vm.md §3).

* The standard library goes in as compiled modules in ``lib/pythonXY.zip``, the archive the
  interpreter already looks for first on ``sys.path``: a zip holds it compressed in the guest's
  RAM, about a third of the loose files, and ``zipimport`` needs no compilation at boot. Tests,
  IDLE, Tk and the other parts no program here imports stay out.
* Extension modules stay files (``lib-dynload``), each with the libraries it links.
* ``hil`` and the distributions it requires go to :data:`SITE` as source with compiled
  modules beside it, so tracebacks in the guest show lines.
* ``/init`` is :mod:`hil.vm.guest`, run by the copied interpreter.

Images are cached by a digest of every input's path, size and modification time, so the first
boot of a tree builds one (a few seconds) and later boots reuse it.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import marshal
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import field
from pathlib import Path

from hil.errors import VmImageError
from hil.log import get_logger
from hil.records import dataclass
from hil.vm.cpio import Entry, archive

log = get_logger("hil.vm.image")

BUILDER_VERSION = 1  #: bump when the image layout changes, so cached images are rebuilt
SITE = "/opt/hil/site"  #: where hil and its dependencies live in the guest (its PYTHONPATH)
GUEST_INIT = Path(__file__).with_name("guest.py")
#: parts of the standard library no guest program imports (they are most of its size)
STDLIB_EXCLUDE = frozenset({
    "test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "pydoc_data", "site-packages",
    "distutils", "venv", "unittest", "sqlite3", "dbm", "curses", "turtle.py", "pydoc.py", "__phello__",
})
#: extension modules left out: tests of the C API, and those that link libraries a guest has no use for
#: (TLS and OpenSSL's hashes: hashlib, hmac and random fall back to the built-in ones; CJK codecs,
#: decimal's C part)
DYNLOAD_EXCLUDE = re.compile(r"^(_test|_xx|xx|_tkinter|_curses|readline|_gdbm|_dbm|_sqlite3|_ctypes_test|_uuid|audioop|"
                             r"_crypt|nis|ossaudiodev|spwd|_lsprof|_ssl|_hashlib|_decimal|_codecs_|_multibytecodec|"
                             r"unicodedata|_lzma|_bz2|_multiprocessing|"
                             r"_posixshmem|_statistics|_zoneinfo)")
#: excluded extension modules whose importers carry on without them, and how (the image test
#: allows exactly these to be missing from what the agent imports on the host)
OPTIONAL_EXTENSIONS = {
    "_hashlib": "hashlib and hmac use the built-in hash modules",
    "_ssl": "asyncio imports ssl in a try: the agent speaks no TLS",
    "_uuid": "uuid computes node ids in Python",
}
#: distributions required only by extras or for testing, never in a guest
SKIP_DISTRIBUTIONS = frozenset({"pytest-asyncio", "pytest"})
REQUIREMENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
LDD_LINE = re.compile(r"(?:=>\s*)?(/\S+)\s+\(0x")


def cache_dir() -> Path:
    """``$HIL_CACHE_DIR``, else ``$XDG_CACHE_HOME/lpc-hil``, else ``~/.cache/lpc-hil``."""
    explicit = os.environ.get("HIL_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lpc-hil"


@dataclass
class Layout:
    """What goes into one image: host files copied to the same path, and made-up members."""

    files: dict[str, Path] = field(default_factory=dict)  #: guest path -> host file
    made: dict[str, bytes] = field(default_factory=dict)  #: guest path -> contents
    executable: set[str] = field(default_factory=set)  #: guest paths made mode 0755
    links: dict[str, str] = field(default_factory=dict)  #: guest path -> symlink target
    #: the standard library's sources and where their compiled zip goes (compiled by build())
    stdlib: list[Path] = field(default_factory=list)
    stdlib_zip: str = ""

    def copy(self, host: Path, guest: str | None = None, *, exe: bool = False) -> None:
        path = guest or str(host)
        self.files[path] = host
        if exe:
            self.executable.add(path)

    def inputs(self) -> Iterator[str]:
        """What the cache key covers: each host file's path, size and modification time."""
        for guest, host in sorted(self.files.items()):
            st = host.stat()
            yield f"{guest}\0{host}\0{st.st_size}\0{st.st_mtime_ns}"
        for guest, data in sorted(self.made.items()):
            yield f"{guest}\0{hashlib.sha256(data).hexdigest()}"
        yield from (f"{g}\0->{t}" for g, t in sorted(self.links.items()))
        for source in self.stdlib:
            st = source.stat()
            yield f"{self.stdlib_zip}\0{source}\0{st.st_size}\0{st.st_mtime_ns}"


def _interpreter() -> Path:
    """The real interpreter behind this process (a venv's ``python`` is a link to it)."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    return Path(os.path.realpath(base))


def guest_python() -> Path:
    """The interpreter's path in the guest: the same as on this host."""
    return _interpreter()


def shared_libraries(binaries: Iterable[Path]) -> set[Path]:
    """Every library ``ldd`` says the binaries load, the dynamic loader included."""
    ldd = shutil.which("ldd")
    if ldd is None:
        raise VmImageError("ldd not found: it lists the libraries the guest's Python needs (Debian package libc-bin)")
    out: set[Path] = set()
    for binary in binaries:
        try:
            text = subprocess.run([ldd, str(binary)], capture_output=True, text=True, timeout=30, check=False).stdout
        except (OSError, subprocess.SubprocessError) as e:
            raise VmImageError(f"ldd {binary}: {e}") from None
        out.update(Path(m.group(1)) for m in LDD_LINE.finditer(text))
    return out


def _pyc(source: Path) -> bytes:
    """The compiled module of ``source``: the interpreter's own cached file when it is current,
    else compiled here (an unchecked pyc: the zip holds no source to check it against)."""
    cached = Path(importlib.util.cache_from_source(str(source)))
    with_source = source.stat()
    try:
        data = cached.read_bytes()
        if int.from_bytes(data[8:12], "little") == int(with_source.st_mtime) & 0xFFFFFFFF \
                and data[:4] == importlib.util.MAGIC_NUMBER and data[4:8] == b"\0\0\0\0":
            return data
    except OSError:
        pass
    code = compile(source.read_bytes(), str(source), "exec", dont_inherit=True)
    header = importlib.util.MAGIC_NUMBER + (0).to_bytes(4, "little")
    header += (int(with_source.st_mtime) & 0xFFFFFFFF).to_bytes(4, "little")
    header += (with_source.st_size & 0xFFFFFFFF).to_bytes(4, "little")
    return header + marshal.dumps(code)


def _stdlib_modules(stdlib: Path) -> Iterator[tuple[str, Path]]:
    for root, dirs, names in os.walk(stdlib):
        rel_root = Path(root).relative_to(stdlib)
        if rel_root == Path("."):
            dirs[:] = [d for d in dirs if d not in STDLIB_EXCLUDE and not d.startswith(("config-", "lib-dynload"))]
            names = [n for n in names if n not in STDLIB_EXCLUDE]
        else:
            dirs[:] = [d for d in dirs if d not in ("__pycache__", "test", "tests", "idle_test")]
        for name in names:
            if name.endswith(".py"):
                yield str(rel_root / name)[:-3] + ".pyc", Path(root) / name


def stdlib_zip(stdlib: Path) -> bytes:
    """The standard library as compiled modules in one zip, entries sorted and dated 1980 so the
    same library gives the same bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for arcname, source in sorted(_stdlib_modules(stdlib)):
            info = zipfile.ZipInfo(arcname.removeprefix("./"), date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, _pyc(source))
    return buf.getvalue()


def _requirement_names(dist: importlib.metadata.Distribution) -> Iterator[str]:
    """Names of the distributions ``dist`` requires outside its extras. A requirement with any
    other marker (a Python version, a platform) is taken: one module too many in the guest costs
    a little space, one too few an ImportError at boot."""
    for text in dist.requires or []:
        name, _, marker = text.partition(";")
        if "extra" in marker:
            continue
        match = REQUIREMENT_NAME.match(name.strip())
        if match:
            yield match.group(0)


def _distribution_files(name: str, seen: set[str], layout: Layout) -> None:
    key = name.lower().replace("_", "-")
    if key in seen or key in SKIP_DISTRIBUTIONS:
        return
    seen.add(key)
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        raise VmImageError(f"distribution {name!r}, which hil needs in the guest, is not installed here") from None
    base = Path(str(dist.locate_file("")))
    for rel in dist.files or []:
        host = Path(str(dist.locate_file(rel)))
        parts = Path(str(rel)).parts
        if ".." in parts or not host.is_file() or host.suffix == ".pyc" or parts[0].endswith(".pth") \
                or parts[0].startswith("__editable__") or parts[0] == "bin":
            continue
        layout.copy(host, f"{SITE}/{Path(str(rel))}")
    for req in _requirement_names(dist):
        _distribution_files(req, seen, layout)
    log.debug("guest_distribution", name=dist.metadata["Name"], base=str(base))


def _package_files(package_dir: Path, layout: Layout) -> None:
    for path in sorted(package_dir.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix in (".py", ".toml", ".json", ".txt"):
            layout.copy(path, f"{SITE}/{package_dir.name}/{path.relative_to(package_dir)}")


def layout() -> Layout:
    """Everything a guest needs, found on this host."""
    import hil

    out = Layout()
    python = _interpreter()
    out.copy(python, exe=True)
    stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
    dynload = stdlib / "lib-dynload"
    extensions = [p for p in sorted(dynload.glob("*.so")) if not DYNLOAD_EXCLUDE.match(p.name)]
    for ext in extensions:
        out.copy(ext, exe=True)
    for lib in shared_libraries([python, *extensions]):
        out.copy(Path(os.path.realpath(lib)), str(lib), exe=True)
    # the interpreter identifies its prefix by this landmark; the modules themselves are in the zip
    out.made[str(stdlib / "os.py")] = b"# the standard library is in the zip beside this directory\n"
    out.stdlib_zip = str(stdlib.parent / f"python{sys.version_info.major}{sys.version_info.minor}.zip")
    out.stdlib = [source for _, source in sorted(_stdlib_modules(stdlib))]
    _package_files(Path(hil.__file__).parent, out)
    seen: set[str] = {"lpc-hil"}
    dist = None
    try:
        dist = importlib.metadata.distribution("lpc-hil")
    except importlib.metadata.PackageNotFoundError:
        pass
    names = list(_requirement_names(dist)) if dist is not None else ["pyserial", "pyftdi", "structlog"]
    for name in names:
        _distribution_files(name, seen, out)
    # the kernel execs /init itself: a script needs its interpreter on the first line
    out.made["/init"] = f"#!{python}\n".encode() + GUEST_INIT.read_bytes()
    out.executable.add("/init")
    out.made["/etc/hil-guest.json"] = json.dumps({"python": str(python), "site": SITE, "home": sys.base_prefix}).encode()
    return out


def _directories(paths: Iterable[str]) -> set[str]:
    dirs: set[str] = set()
    for path in paths:
        parent = Path(path).parent
        while str(parent) not in ("/", "."):
            dirs.add(str(parent))
            parent = parent.parent
    return dirs


def _stripped(host: Path, data: bytes, strip: str | None, scratch: Path) -> bytes:
    """``data`` without its symbol tables and debug sections when it is an ELF file and
    ``strip`` is there (libpython shrinks from 23 to 6 MB); as it is otherwise."""
    if strip is None or not data.startswith(b"\x7fELF"):
        return data
    out = scratch / host.name
    try:
        subprocess.run([strip, "--strip-unneeded", "-o", str(out), str(host)], capture_output=True, timeout=60, check=True)
        return out.read_bytes()
    except (OSError, subprocess.SubprocessError):
        return data


def _entries(lay: Layout, stdlib_zip_bytes: bytes, scratch: Path) -> Iterator[Entry]:
    every = [*lay.files, *lay.made, *lay.links, lay.stdlib_zip]
    for d in sorted(_directories(every) | {"/dev", "/proc", "/sys", "/tmp", "/run", "/root"}):
        yield Entry.directory(d)
    yield Entry.chardev("/dev/console", 5, 1)
    yield Entry.chardev("/dev/null", 1, 3, 0o666)
    strip = shutil.which("strip")
    for guest, host in lay.files.items():
        data = _stripped(host, host.read_bytes(), strip, scratch)
        yield Entry.file(guest, data, 0o755 if guest in lay.executable else 0o644)
    for guest, data in lay.made.items():
        yield Entry.file(guest, data, 0o755 if guest in lay.executable else 0o644)
    yield Entry.file(lay.stdlib_zip, stdlib_zip_bytes)
    for guest, target in lay.links.items():
        yield Entry.symlink(guest, target)


@dataclass(frozen=True)
class GuestImage:
    path: Path  #: the gzip-compressed cpio archive to hand QEMU as ``-initrd``
    digest: str
    built: bool  #: False: taken from the cache
    size: int


def build(cache: Path | None = None, *, force: bool = False) -> GuestImage:
    """The image for this host and tree, from the cache when its inputs are unchanged."""
    lay = layout()
    digest = hashlib.sha256("\n".join([f"v{BUILDER_VERSION}", *lay.inputs()]).encode()).hexdigest()[:20]
    where = (cache or cache_dir()) / "images"
    path = where / f"guest-{digest}.cpio.gz"
    if path.exists() and not force:
        return GuestImage(path, digest, False, path.stat().st_size)
    stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
    try:
        with tempfile.TemporaryDirectory(prefix="hil-vm-strip-") as scratch:
            data = archive(_entries(lay, stdlib_zip(stdlib), Path(scratch)))
    except OSError as e:
        raise VmImageError(f"cannot read a file for the guest image: {e}") from None
    try:
        where.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=where, prefix=".guest-", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(gzip.compress(data, compresslevel=6, mtime=0))
        os.replace(tmp, path)  # atomic: a concurrent builder of the same digest writes the same bytes
        for old in where.glob("guest-*.cpio.gz"):
            if old != path and old.stat().st_mtime < path.stat().st_mtime - 86400 * 7:
                old.unlink(missing_ok=True)  # images of trees a week older than this one
    except OSError as e:
        raise VmImageError(f"cannot write the guest image to {where}: {e}") from None
    log.info("vm_image_built", path=str(path), size=path.stat().st_size, members=len(lay.files))
    return GuestImage(path, digest, True, path.stat().st_size)
