"""``qemu:`` backend: QEMU's emulated PC (``-machine pc``) driven over the qtest socket.

QEMU's i8257 (its 8237), floppy controller and Sound Blaster 16 were written by other people
and already move real bytes by DMA, which makes QEMU an independent reference to run the same
transfer scripts against (docs/reference/qemu-qtest.md). The backend starts ``qemu-system-x86_64`` itself,
listening first on a unix socket in a private directory that QEMU then connects to; it speaks
qtest over it, and stops the process it started on close, on error and when the interpreter
exits, even by a signal (the child gets ``PR_SET_PDEATHSIG``). QEMU runs in a session and
process group of its own, and the whole group is stopped, so that a ``binary=`` wrapper that
runs QEMU as its child instead of ``exec``-ing it does not leave QEMU behind.

Debian's QEMU 7.2 has no qtest accelerator (docs/reference/qemu-qtest.md §1), so a real vCPU exists. It is
kept away from the hardware by a 64 KiB firmware this module writes itself (``cli; hlt; jmp``
at the reset vector: ``cpu=halt``, the default, with the virtual clock running in real time so
that timer-driven devices such as the SB16 play), or by never starting it (``cpu=stopped``, ``-S``,
clock frozen). Either way every DMA, page and device register is in its reset state until the
client programs it.

URL options (``qemu:?floppy=generate&sb16=1``):

========== ==================================================================================
``binary`` path of ``qemu-system-x86_64`` (default ``$HIL_QEMU_BINARY``, else the one on PATH)
``mem``    guest RAM, ``16M`` (default) .. ``2G``
``cpu``    ``halt`` (default) or ``stopped``
``floppy`` ``generate`` (a 1.44 MB image where byte *i* of LBA *n* is ``(13n + i) & 0xFF``,
           in the private directory) or the path of a raw image (attached read-write)
``sb16``   ``1``: add a Sound Blaster 16 (220h, IRQ 5, DMA 1 and 5, silent audio backend)
``allow``  more ports for the allow-list, e.g. ``0x3F0-0x3F7,0x220-0x22F``
``args``   more QEMU arguments, shell-quoted (``-icount shift=0,sleep=off``); see :data:`REFUSED_ARGS`
``timeout`` seconds to wait for QEMU to connect (default 10)
``log``    file for QEMU's stdout and stderr (default: in the private directory)
``wide``   ``refuse`` (default) or ``pass``: 16-bit accesses to the DMA and page ports
========== ==================================================================================

Only the DMA controllers and page registers are reachable by default; ``floppy`` adds the FDC
ports (0x3F0-0x3F7), ``sb16`` the SB16's (0x220-0x22F), ``allow`` anything else. Ports that reset
or stop the emulated machine (0x64, 0x92, 0xCF9) are refused whatever the allow-list says.
Port accesses to the DMA and page ports are byte-wide only unless ``wide=pass``: QEMU hands a
word access at an even port to the owner of that port (docs/reference/qemu-qtest.md §3.5) and splits one at an
odd port, which no 8-bit register file on an ISA bus does. ``wide=pass`` exists to check a model
of exactly that dispatch (the simulator's ``qemu`` profile) against QEMU.
"""

from __future__ import annotations

import asyncio
import atexit
import ctypes
import functools
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from hil.allowlist import AllowList, AllowListError, parse_range
from hil.backends import BackendURL
from hil.backends.base import Backend, Capabilities, Capability
from hil.backends.ops import DEVICE_OPS, Delay, In, MemFill, MemRead, MemWrite, Op, Out, Poll, Result, Settle
from hil.backends.qtest import (
    MEM_CHUNK,
    IrqEvent,
    QemuExitedError,
    QtestClient,
    QtestError,
    fmt_b64read,
    fmt_b64write,
    fmt_in,
    fmt_memset,
    fmt_out,
    parse_b64_reply,
    parse_int_reply,
)
from hil.errors import (
    AccessDeniedError,
    BackendNotOpenError,
    BackendOptionError,
    MemoryRangeError,
    SettleTimeout,
    UnsupportedOperationError,
    WideAccessError,
)
from hil.errors import QemuNotFoundError as QemuNotFoundError  # these three were defined here
from hil.errors import QemuStartError as QemuStartError
from hil.errors import QemuVersionError as QemuVersionError
from hil.log import get_logger
from hil.ports import DMA1, DMA2, DMA_PORT_RANGES

log = get_logger("hil.qemu")

BINARY_ENV = "HIL_QEMU_BINARY"
DEFAULT_BINARY = "qemu-system-x86_64"
MIN_VERSION = (7, 2)  #: the version docs/reference/qemu-qtest.md and the sim's ``qemu`` profile were checked against
INSTALL_HINT = "install it with: apt-get install qemu-system-x86 (Debian 12 ships 7.2), or give qemu:?binary=PATH"

FDC_PORTS = range(0x3F0, 0x3F8)
SB16_PORTS = range(0x220, 0x230)
#: ports that reset or stop the emulated PC: keyboard controller (0xFE = reset), port 92 (fast
#: reset), PIIX reset control. Refused whatever the allow-list says.
FORBIDDEN_PORTS = frozenset({0x64, 0x92, 0xCF9})
#: ports a word access must not touch: QEMU would not split it the way an ISA bus does
BYTE_ONLY_PORTS: tuple[range, ...] = DMA_PORT_RANGES

#: the operations QEMU runs: port I/O, memory, delay, poll and settle; the simulator's device
#: operations cannot run here (QEMU has its own devices)
_SIM_DEVICE_OPS: tuple[type, ...] = DEVICE_OPS
_RUNNABLE_OPS: tuple[type, ...] = (Out, In, MemWrite, MemRead, MemFill, Delay, Poll, Settle)

OPTIONS = {
    "binary": "path of qemu-system-x86_64",
    "mem": "guest RAM such as 16M (2M..2G)",
    "cpu": "halt|stopped",
    "floppy": "generate|PATH, drive A on the built-in FDC",
    "sb16": "0|1, add a Sound Blaster 16",
    "allow": "extra port ranges, e.g. 0x3F0-0x3F7,0x220-0x22F",
    "args": "extra QEMU arguments, shell-quoted",
    "timeout": "seconds to wait for QEMU to start",
    "log": "file for QEMU's stdout/stderr",
    "wide": "refuse|pass, 16-bit accesses to DMA/page ports",
}
CPU_MODES = ("halt", "stopped")
MIN_MEM, MAX_MEM = 2 << 20, 2 << 30

SETTLE_QUIET_S = 0.05  #: settle(): the counts must stay still this long (QEMU's audio timer ticks)
SETTLE_POLL_S = 0.01

FLOPPY_SECTORS = 2880  #: 1.44 MB: 80 cylinders, 2 heads, 18 sectors of 512 bytes
SECTOR = 512


# --- files the backend makes ---------------------------------------------------------------------


def halt_firmware() -> bytes:
    """A 64 KiB BIOS image: ``cli; hlt; jmp $-1`` at the reset vector (offset 0xFFF0), zero
    elsewhere (docs/reference/qemu-qtest.md §1.1). QEMU wants a non-zero multiple of 64 KiB."""
    image = bytearray(0x10000)
    image[0xFFF0:0xFFF4] = b"\xfa\xf4\xeb\xfd"
    return bytes(image)


_RAMP = bytes(range(256)) * 3


def floppy_sector(lba: int) -> bytes:
    """Sector ``lba`` of a generated image: byte i is ``(13 * lba + i) & 0xFF`` (docs/reference/qemu-qtest.md §6)."""
    start = (13 * lba) & 0xFF
    return _RAMP[start : start + SECTOR]


def floppy_image() -> bytes:
    """The whole generated 1.44 MB image."""
    return b"".join(floppy_sector(n) for n in range(FLOPPY_SECTORS))


# --- finding QEMU --------------------------------------------------------------------------------


def find_binary(binary: str | None = None) -> str | None:
    """The QEMU to use: ``binary``, else ``$HIL_QEMU_BINARY``, else ``qemu-system-x86_64`` on PATH."""
    name = binary or os.environ.get(BINARY_ENV) or DEFAULT_BINARY
    if os.sep in name:
        return name if os.path.isfile(name) and os.access(name, os.X_OK) else None
    return shutil.which(name)


_VERSIONS: dict[str, tuple[int, ...] | None] = {}
_VERSION_RE = re.compile(r"version (\d+)\.(\d+)(?:\.(\d+))?")


def _parse_version(text: str) -> tuple[int, ...] | None:
    m = _VERSION_RE.search(text)
    return tuple(int(g) for g in m.groups() if g is not None) if m else None


def _version_of(path: str) -> tuple[int, ...] | None:
    """``path --version``, blocking (for test set-up); cached per path."""
    if path not in _VERSIONS:
        try:
            out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=20,
                                 stdin=subprocess.DEVNULL, check=False).stdout
        except (OSError, subprocess.TimeoutExpired):
            return None
        _VERSIONS[path] = _parse_version(out)
    return _VERSIONS[path]


async def probe_version(path: str) -> tuple[int, ...] | None:
    """``path --version`` as an asyncio subprocess; cached per path."""
    if path not in _VERSIONS:
        try:
            proc = await asyncio.create_subprocess_exec(path, "--version", stdin=subprocess.DEVNULL,
                                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            out, _ = await asyncio.wait_for(proc.communicate(), 20)
        except (TimeoutError, OSError):
            return None
        _VERSIONS[path] = _parse_version(out.decode(errors="replace"))
    return _VERSIONS[path]


def qemu_version(binary: str | None = None) -> tuple[int, ...] | None:
    """The version of the QEMU :func:`find_binary` picks, or None if there is none."""
    path = find_binary(binary)
    return _version_of(path) if path else None


def qemu_available(binary: str | None = None) -> tuple[bool, str]:
    """(usable, reason): for :func:`hil.testing.require` in the test suites."""
    path = find_binary(binary)
    if path is None:
        return False, f"{binary or os.environ.get(BINARY_ENV) or DEFAULT_BINARY} not found; {INSTALL_HINT}"
    version = _version_of(path)
    if version is None:
        return False, f"{path} --version gave no version; {INSTALL_HINT}"
    if version[:2] < MIN_VERSION:
        return False, (f"{path} is QEMU {'.'.join(map(str, version))}, older than "
                       f"{'.'.join(map(str, MIN_VERSION))}; {INSTALL_HINT}")
    return True, f"{path} (QEMU {'.'.join(map(str, version))})"


# --- no orphans ----------------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1
_prctl = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)  # libc's, resolved before any fork


def _die_with_parent(parent: int) -> None:
    """preexec_fn: the kernel sends SIGKILL to QEMU when the thread that forked it exits (the
    interpreter killed by a signal included; asyncio forks in the event loop's thread, so a
    backend must not outlive the thread running its loop). If the parent is already gone, exit."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


_LIVE: dict[int, str] = {}  #: pid (= process group) -> private directory, of every QEMU started here


def _group_alive(pgid: int) -> bool:
    """Whether process group ``pgid`` still has a member that runs. Zombies do not count: a
    wrapper's QEMU is reparented to init, which may be slow to reap it (or, in a container,
    never), and a zombie holds no socket, file or CPU."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        entries = [e for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return True
    for entry in entries:
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _stop_group_now(pgid: int, timeout: float = 1.0) -> None:
    """Blocking: SIGTERM the group, SIGKILL whatever still runs after ``timeout``, and reap
    the leader if it is our child and nobody else has."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not _group_alive(pgid):
            break
        _signal_group(pgid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.waitpid(pgid, os.WNOHANG)
            except ChildProcessError:  # not ours, or reaped already (asyncio's child watcher)
                pass
            if not _group_alive(pgid):
                break
            time.sleep(0.005)


@atexit.register
def _kill_leftovers() -> None:
    """At interpreter exit, stop any QEMU a backend that was never closed left running, with
    every process in its group: SIGTERM, then SIGKILL if it has not gone within a second (QEMU
    needs about 4 ms)."""
    for pid, workdir in list(_LIVE.items()):
        _stop_group_now(pid)
        shutil.rmtree(workdir, ignore_errors=True)
        _LIVE.pop(pid, None)


WORKDIR_PREFIX = "hil-qemu-"
OWNER_FILE = "owner.pid"


def _kill_strays(workdir: Path) -> None:
    """SIGKILL every process of ours whose command line holds ``workdir``'s qtest socket: a QEMU
    whose interpreter was killed while a ``binary=`` wrapper that did not ``exec`` ran it (the
    wrapper died with the interpreter, ``PR_SET_PDEATHSIG`` does not reach its child)."""
    marker = f"unix:{workdir}/qtest.sock".encode()
    try:
        entries = [e for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return
    for entry in entries:
        try:
            if marker in Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0"):
                os.kill(int(entry), signal.SIGKILL)
                log.info("qemu_stray_killed", pid=int(entry), workdir=str(workdir))
        except OSError:
            continue


def _sweep_stale_workdirs() -> None:
    """Remove private directories left by interpreters that died without cleaning up (killed by
    SIGKILL or SIGTERM: their QEMU died with them, but a directory cannot), stopping any QEMU
    still using one. Only directories whose owner PID no longer exists, and that this user can
    read, are removed."""
    try:
        entries = list(Path(tempfile.gettempdir()).glob(WORKDIR_PREFIX + "*"))
    except OSError:
        return
    for workdir in entries:
        try:
            owner = int((workdir / OWNER_FILE).read_text())
            os.kill(owner, 0)
        except ProcessLookupError:
            _kill_strays(workdir)
            shutil.rmtree(workdir, ignore_errors=True)
            log.debug("qemu_stale_workdir_removed", workdir=str(workdir), owner=owner)
        except (OSError, ValueError):
            continue  # alive, another user's, or not ours


# --- options -------------------------------------------------------------------------------------

_SET_HERE = "is set by the backend itself"
#: QEMU options refused in ``args=``, by canonical name, with the reason. QEMU reads ``--opt``
#: as ``-opt`` and has no ``-opt=value`` form (``lookup_opt`` in softmmu/vl.c compares the
#: whole word after one or two dashes with its option table), so a token is checked by the
#: name after its dashes, and ``-opt=value`` is refused as QEMU would refuse it.
REFUSED_ARGS: dict[str, str] = {
    **dict.fromkeys(("machine", "M", "qtest", "qtest-log", "nodefaults", "display", "serial", "monitor",
                     "parallel"), _SET_HERE),
    "bios": _SET_HERE + " (the halt firmware of cpu=halt)",
    "S": _SET_HERE + "; use cpu=stopped",
    "m": _SET_HERE + "; use mem=",
    "daemonize": "would detach QEMU from the backend, which must own it to stop it",
    **dict.fromkeys(("runas", "chroot", "run-with"), "changes the user or root of the process the backend "
                                                    "must be able to stop"),
    **dict.fromkeys(("qmp", "qmp-pretty", "mon", "gdb", "s"), "opens a second control channel to the machine, "
                                                             "past the backend's allow-list"),
    **dict.fromkeys(("pflash", "readconfig"), "would replace the firmware or machine the backend sets up"),
}
_PFLASH_DRIVE = re.compile(r"(?:^|,)if=pflash(?:,|$)")


def check_args(args: Sequence[str]) -> str | None:
    """Why ``args`` may not be given to QEMU, or None. Every token that starts with a dash is
    checked as an option, also where QEMU would take it as the previous option's value: a
    refusal too many is safe, a missed ``--daemonize`` is not."""
    for i, token in enumerate(args):
        if len(token) < 2 or not token.startswith("-"):
            continue
        name = token[2:] if token.startswith("--") else token[1:]
        base, eq, _ = name.partition("=")
        if base in REFUSED_ARGS:
            return f"{token}: -{base} {REFUSED_ARGS[base]}"
        if eq:
            return f"{token}: QEMU takes an option's value as the next argument (-{base} VALUE), not after '='"
        if base == "drive" and i + 1 < len(args) and _PFLASH_DRIVE.search(args[i + 1]):
            return f"{token} {args[i + 1]}: if=pflash {REFUSED_ARGS['pflash']}"
    return None


@dataclass(frozen=True)
class QemuConfig:
    binary: str | None = None
    mem: int = 16 << 20
    cpu: str = "halt"
    floppy: str | None = None  #: "generate" or a path
    sb16: bool = False
    allow: tuple[range, ...] = ()
    args: tuple[str, ...] = ()
    timeout: float = 10.0
    log: str | None = None
    wide: bool = False  #: pass 16-bit accesses to DMA/page ports to QEMU unchanged

    def ports(self) -> tuple[range, ...]:
        ports = list(DMA_PORT_RANGES)
        if self.floppy:
            ports.append(FDC_PORTS)
        if self.sb16:
            ports.append(SB16_PORTS)
        return (*ports, *self.allow)


def _log_file_problem(value: str) -> str | None:
    """Why QEMU's log file cannot be created at ``value``, or None. Checked with the URL, so a
    bad ``log=`` is a one-line error before anything runs, not an OSError once QEMU starts."""
    if not value:
        return "needs a file path"
    path = Path(value).expanduser()
    parent = path.parent
    if path.is_dir():
        return "is a directory; give a file path"
    if not parent.is_dir():
        return f"directory {str(parent)!r} does not exist" if not parent.exists() else f"{str(parent)!r} is not a directory"
    if not os.access(path if path.exists() else parent, os.W_OK):
        return "not writable"
    return None


def from_url(url: BackendURL) -> QemuBackend:
    from hil.backends.sim import parse_size

    if url.host or url.port is not None or url.path.strip("/"):
        raise BackendOptionError(url.raw, "qemu: takes options only, e.g. qemu:?floppy=generate&sb16=1")
    opts = url.take(OPTIONS)
    cfg: dict[str, Any] = {}  # QemuConfig's fields, each checked as its option is read
    if "binary" in opts:
        if not opts["binary"]:
            raise BackendOptionError(url.raw, "option binary= needs a path")
        cfg["binary"] = opts["binary"]
    if "mem" in opts:
        try:
            mem = parse_size(opts["mem"])
        except ValueError:
            raise BackendOptionError(url.raw, f"option mem={opts['mem']!r} is not a size (e.g. 16M)") from None
        if not MIN_MEM <= mem <= MAX_MEM or mem % (1 << 20):
            raise BackendOptionError(url.raw, f"option mem={opts['mem']!r}: whole MiB from 2M to 2G")
        cfg["mem"] = mem
    if "cpu" in opts:
        if opts["cpu"] not in CPU_MODES:
            raise BackendOptionError(url.raw, f"option cpu={opts['cpu']!r}: expected halt or stopped")
        cfg["cpu"] = opts["cpu"]
    if "floppy" in opts:
        value = opts["floppy"]
        if value in ("", "none", "0"):
            pass
        elif value == "generate":
            cfg["floppy"] = value
        else:
            path = Path(value).expanduser()
            if not path.is_file():
                raise BackendOptionError(url.raw, f"option floppy={value!r}: no such image file "
                                                  f"(or use floppy=generate)")
            cfg["floppy"] = str(path.resolve())
    if "sb16" in opts:
        cfg["sb16"] = url.flag("sb16")
    if "allow" in opts:
        try:
            cfg["allow"] = tuple(parse_range(t, "option allow") for t in opts["allow"].split(",") if t.strip())
        except AllowListError as e:
            raise BackendOptionError(url.raw, str(e)) from None
    if "args" in opts:
        try:
            cfg["args"] = tuple(shlex.split(opts["args"]))
        except ValueError as e:
            raise BackendOptionError(url.raw, f"option args: {e}") from None
        why = check_args(cfg["args"])
        if why:
            raise BackendOptionError(url.raw, f"option args: {why}")
    if "timeout" in opts:
        try:
            cfg["timeout"] = float(opts["timeout"])
        except ValueError:
            raise BackendOptionError(url.raw, f"option timeout={opts['timeout']!r}: expected seconds") from None
        if not 0 < cfg["timeout"] <= 600:
            raise BackendOptionError(url.raw, "option timeout: 0..600 seconds")
    if "log" in opts:
        why = _log_file_problem(opts["log"])
        if why:
            raise BackendOptionError(url.raw, f"option log={opts['log']!r}: {why}")
        cfg["log"] = opts["log"]
    if "wide" in opts:
        if opts["wide"] not in ("refuse", "pass"):
            raise BackendOptionError(url.raw, f"option wide={opts['wide']!r}: expected refuse or pass")
        cfg["wide"] = opts["wide"] == "pass"
    return QemuBackend(url.raw, QemuConfig(**cfg))


# --- the backend ---------------------------------------------------------------------------------


class QemuBackend(Backend):
    """A QEMU PC this backend starts, owns and stops. ``.pid``, ``.floppy_path``, IRQ tracking."""

    scheme = "qemu"
    OPS = _RUNNABLE_OPS + _SIM_DEVICE_OPS  #: Settle natively; device ops reach its own, clearer refusal

    def __init__(self, url: str = "qemu:", config: QemuConfig | None = None) -> None:
        super().__init__(url)
        self.config = config or QemuConfig()
        self.allowlist = AllowList(self.config.ports(), (range(0, self.config.mem),))
        self.workdir: Path | None = None
        self.floppy_path: Path | None = None
        self.log_path: Path | None = None
        self.version: tuple[int, ...] | None = None
        self.binary: str | None = None
        self.startup_s: float | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._server: asyncio.AbstractServer | None = None
        self._client: QtestClient | None = None
        self._log_file: BinaryIO | None = None

    # --- life cycle ---------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    def command_line(self, sock: str, bios: str) -> list[str]:
        """The QEMU invocation (docs/reference/qemu-qtest.md §2)."""
        cfg = self.config
        argv = [self.binary or DEFAULT_BINARY, "-machine", "pc", "-display", "none", "-nodefaults",
                "-serial", "none", "-monitor", "none", "-parallel", "none",
                "-m", f"{cfg.mem >> 20}M", "-qtest-log", "none", "-qtest", f"unix:{sock}"]
        argv += ["-S"] if cfg.cpu == "stopped" else ["-bios", bios]
        if self.floppy_path is not None:
            image = str(self.floppy_path).replace(",", ",,")  # QEMU's option syntax: a comma is doubled
            argv += ["-drive", f"if=floppy,index=0,file={image},format=raw"]
        if cfg.sb16:
            argv += ["-audiodev", "none,id=snd0", "-device", "sb16,audiodev=snd0"]
        return argv + list(cfg.args)

    async def _open(self) -> None:
        cfg = self.config
        binary = find_binary(cfg.binary)
        if binary is None:
            raise QemuNotFoundError(f"qemu: {cfg.binary or os.environ.get(BINARY_ENV) or DEFAULT_BINARY} "
                                    f"not found; {INSTALL_HINT}")
        version = await probe_version(binary)
        if version is None:
            raise QemuNotFoundError(f"qemu: {binary} --version did not report a version; {INSTALL_HINT}")
        if version[:2] < MIN_VERSION:
            raise QemuVersionError(f"qemu: {binary} is QEMU {'.'.join(map(str, version))}; the qemu backend "
                                   f"needs {'.'.join(map(str, MIN_VERSION))} or later; {INSTALL_HINT}")
        self.binary, self.version = binary, version
        t0 = time.perf_counter()
        _sweep_stale_workdirs()
        self.workdir = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX))
        (self.workdir / OWNER_FILE).write_text(str(os.getpid()))
        try:
            await self._start(t0)
        except BaseException:
            await self._shutdown()
            raise

    def _write_files(self, workdir: Path) -> Path:
        """The firmware and the generated floppy image; blocking (1.44 MB), so run in a thread."""
        bios = workdir / "halt.bin"
        bios.write_bytes(halt_firmware())
        if self.config.floppy == "generate":
            assert self.floppy_path is not None
            self.floppy_path.write_bytes(floppy_image())
        return bios

    async def _start(self, t0: float) -> None:
        cfg = self.config
        assert self.workdir is not None
        if cfg.floppy == "generate":
            self.floppy_path = self.workdir / "floppy.img"
        elif cfg.floppy:
            self.floppy_path = Path(cfg.floppy)
        bios = await asyncio.to_thread(self._write_files, self.workdir)
        sock = str(self.workdir / "qtest.sock")
        self.log_path = Path(cfg.log) if cfg.log else self.workdir / "qemu.log"
        connected: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            asyncio.get_running_loop().create_future())

        def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if connected.done():
                writer.close()  # a second connection is not QEMU's: refuse it
                return
            connected.set_result((reader, writer))

        self._server = await asyncio.start_unix_server(on_connect, sock, limit=1 << 20)
        os.chmod(sock, 0o600)
        argv = self.command_line(sock, str(bios))
        log_file = await asyncio.to_thread(open, self.log_path, "wb")  # closed in _shutdown
        self._log_file = log_file
        parent = os.getpid()
        self._proc = await asyncio.create_subprocess_exec(
            *argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            preexec_fn=functools.partial(_die_with_parent, parent), start_new_session=True)
        _LIVE[self._proc.pid] = str(self.workdir)
        log.debug("qemu_spawned", pid=self._proc.pid, argv=" ".join(argv))
        exited = asyncio.ensure_future(self._proc.wait())
        try:
            waiting: set[asyncio.Future[Any]] = {connected, exited}
            done, _ = await asyncio.wait(waiting, timeout=cfg.timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not exited.done():
                exited.cancel()
        if connected not in done:
            why = (f"exited with status {self._proc.returncode}" if self._proc.returncode is not None
                   else f"did not connect to the qtest socket within {cfg.timeout:g} s")
            raise QemuStartError(f"qemu: {self.binary} {why}{self._log_tail()}")
        self._server.close()  # one connection only; the socket file is no longer needed
        reader, writer = connected.result()
        self._client = QtestClient(reader, writer)
        self._client.start()
        reply = await asyncio.wait_for(self._client.command("endianness\n"), cfg.timeout)
        if reply != "OK little":
            raise QemuStartError(f"qemu: unexpected answer to endianness: {reply!r}")
        await self._client.command("irq_intercept_in ioapic\n")
        self.startup_s = time.perf_counter() - t0
        log.info("qemu_started", pid=self._proc.pid, version=".".join(map(str, self.version or ())),
                 cpu=cfg.cpu, floppy=str(self.floppy_path) if self.floppy_path else None, sb16=cfg.sb16,
                 startup_s=round(self.startup_s, 4))

    def _log_tail(self, limit: int = 1500) -> str:
        try:
            text = self.log_path.read_bytes()[-limit:].decode(errors="replace").strip() if self.log_path else ""
        except OSError:
            text = ""
        return f"; QEMU said: {text}" if text else ""

    def _exit_detail(self) -> str:
        proc = self._proc
        status = f"exit status {proc.returncode}" if proc is not None and proc.returncode is not None else ""
        return (status + self._log_tail(600)).strip("; ")

    async def _close(self) -> None:
        await self._shutdown()

    async def _shutdown(self) -> None:
        """Stop what we started: socket, then the process by its PID (SIGTERM, then SIGKILL)."""
        if self._client is not None:
            await self._client.close()
            self._client = None
        if self._server is not None:
            self._server.close()
            self._server = None
        proc = self._proc
        if proc is not None:
            pgid = proc.pid  # start_new_session: the process we started leads its own group
            if proc.returncode is None:
                _signal_group(pgid, signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 2.0)
                except TimeoutError:
                    _signal_group(pgid, signal.SIGKILL)
                    await proc.wait()
            await self._stop_group(pgid)
            _LIVE.pop(proc.pid, None)
            log.debug("qemu_stopped", pid=proc.pid, status=proc.returncode)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
            if self.config.floppy == "generate":
                self.floppy_path = None

    @staticmethod
    async def _stop_group(pgid: int) -> None:
        """Stop what is left of the group once its leader is gone: the QEMU of a ``binary=``
        wrapper that did not ``exec`` it, which no longer has a parent we could wait on."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if not _group_alive(pgid):
                return
            _signal_group(pgid, sig)
            deadline = time.monotonic() + 1.0
            # nothing signals the end of a process group that is not our child: poll it
            while time.monotonic() < deadline and _group_alive(pgid):  # noqa: ASYNC110 - polled, see above
                await asyncio.sleep(0.01)
        if _group_alive(pgid):
            log.warning("qemu_group_survived", pgid=pgid)

    # --- capabilities -------------------------------------------------------------------
    @property
    def capabilities(self) -> Capabilities:
        cfg = self.config
        features = {Capability.IRQ}
        if cfg.floppy:
            features.add(Capability.FDC)
        if cfg.sb16:
            features.add(Capability.SB16)
        version = ".".join(map(str, self.version)) if self.version else "?"
        parts = [f"qemu {version if self.version else '(not started)'}", f"cpu={cfg.cpu}", f"mem={cfg.mem >> 20}MiB"]
        if cfg.floppy:
            parts.append("floppy=" + ("generated" if cfg.floppy == "generate" else Path(cfg.floppy).name))
        if cfg.sb16:
            parts.append("sb16")
        return Capabilities(
            backend="qemu",
            identity=" ".join(parts),
            features=frozenset(features),
            memory_window=(0, cfg.mem),
            details={"version": version, "cpu": cfg.cpu, "floppy": cfg.floppy, "sb16": cfg.sb16},
        )

    # --- programs -----------------------------------------------------------------------
    def check(self, ops: Sequence[Op]) -> None:
        """Refuse the whole program before anything is sent (docs/reference/qemu-qtest.md §3.3, §3.5)."""
        super().check(ops)
        mem = self.config.mem
        for op in ops:
            if _SIM_DEVICE_OPS and isinstance(op, _SIM_DEVICE_OPS):
                raise UnsupportedOperationError(f"{type(op).__name__}: the qemu backend has QEMU's own devices (FDC, SB16), "
                                  f"not the simulator's (capability 'devices')")
            if not isinstance(op, _RUNNABLE_OPS):
                raise UnsupportedOperationError(f"the qemu backend cannot run {type(op).__name__}")
            if isinstance(op, (Out, In, Poll)):
                port, width = op.port, op.width
                if width == 16 and not self.config.wide and any(p in r for r in BYTE_ONLY_PORTS for p in (port, port + 1)):
                    raise WideAccessError(port, width, isinstance(op, Out), "byte-wide only", message=(
                        f"16-bit access to port 0x{port:04X}: the qemu backend accesses the DMA and page "
                        f"ports byte-wide only (QEMU hands a word access to the owner of the first port, "
                        f"docs/reference/qemu-qtest.md §3.5); use two 8-bit accesses, or qemu:?wide=pass"))
                if isinstance(op, Out) and FORBIDDEN_PORTS & {port, port + width // 8 - 1}:
                    raise AccessDeniedError(f"write to port 0x{port:04X} refused: it resets or stops the "
                                            f"emulated PC")
                if not self.allowlist.port_allowed(port, width):
                    verb = "write to" if isinstance(op, Out) else "read of"
                    raise AccessDeniedError(
                        f"{verb} port 0x{port:04X} ({width}-bit) refused: outside the qemu backend's "
                        f"allow-list ({self._ports_text()}); attach the device (floppy=, sb16=1) or add "
                        f"the ports with qemu:?allow=0xLO-0xHI")
            elif isinstance(op, (MemRead, MemFill)):
                if op.addr + op.length > mem:
                    raise MemoryRangeError(op.addr, op.length, mem, "the QEMU guest's RAM")
            elif isinstance(op, MemWrite):
                if op.addr + len(op.data) > mem:
                    raise MemoryRangeError(op.addr, len(op.data), mem, "the QEMU guest's RAM")

    def _ports_text(self) -> str:
        return ", ".join(f"0x{r.start:X}-0x{r.stop - 1:X}" for r in self.allowlist.ports)

    def _live_client(self) -> QtestClient:
        if self._client is None:
            raise BackendNotOpenError(self.url)
        return self._client

    async def _execute(self, ops: Sequence[Op]) -> list[Result]:
        try:
            return await self._run(self._live_client(), ops)
        except QemuExitedError as e:
            raise await self._exited(e) from None

    async def _exited(self, error: QemuExitedError) -> QemuExitedError:
        """The connection is gone: say how QEMU ended (waiting briefly to learn its status)."""
        proc = self._proc
        if proc is not None and proc.returncode is None:
            try:
                await asyncio.wait_for(proc.wait(), 1.0)
            except TimeoutError:
                pass
        detail = self._exit_detail()
        log.error("qemu_gone", pid=self.pid, detail=detail)
        return QemuExitedError(f"qemu: {self.binary} (pid {self.pid}) went away: {error}" + (f"; {detail}" if detail else ""))

    async def _run(self, client: QtestClient, ops: Sequence[Op]) -> list[Result]:
        results: list[Result] = []
        lines: list[str] = []
        #: per line: None (no result), (slot, None) for an In, (slot, n) for n bytes of a MemRead
        handlers: list[tuple[int, int | None] | None] = []

        async def flush() -> None:
            if not lines:
                return
            replies = await client.pipeline(lines)
            for line, reply, handler in zip(lines, replies, handlers):
                if handler is None:
                    continue
                slot, length = handler
                if length is None:
                    results[slot] = parse_int_reply(reply, line)
                else:
                    so_far = results[slot]
                    assert isinstance(so_far, bytes)  # a MemRead's slot holds the bytes read so far
                    results[slot] = so_far + parse_b64_reply(reply, line, length)
            lines.clear()
            handlers.clear()

        for op in ops:
            match op:
                case Out():
                    lines.append(fmt_out(op.port, op.value, op.width))
                    handlers.append(None)
                case In():
                    results.append(0)
                    lines.append(fmt_in(op.port, op.width))
                    handlers.append((len(results) - 1, None))
                case MemWrite():
                    data = bytes(op.data)
                    for off in range(0, len(data), MEM_CHUNK):
                        lines.append(fmt_b64write(op.addr + off, data[off : off + MEM_CHUNK]))
                        handlers.append(None)
                case MemRead():
                    results.append(b"")
                    slot = len(results) - 1
                    for off in range(0, op.length, MEM_CHUNK):
                        n = min(MEM_CHUNK, op.length - off)
                        lines.append(fmt_b64read(op.addr + off, n))
                        handlers.append((slot, n))
                case MemFill():
                    if op.length:
                        lines.append(fmt_memset(op.addr, op.length, op.value))
                        handlers.append(None)
                case Delay():
                    await flush()
                    await asyncio.sleep(op.us / 1e6)
                case Poll():
                    await flush()
                    results.append(await self._poll(client, op))
                case Settle():
                    await flush()
                    await self._settle_on(client, op.timeout_us / 1e6)
        await flush()
        return results

    async def _poll(self, client: QtestClient, op: Poll) -> int:
        deadline = time.monotonic() + op.timeout_us / 1e6
        request = fmt_in(op.port, op.width)
        while True:
            value = parse_int_reply(await client.command(request), request)
            if value & op.mask == op.expect or time.monotonic() >= deadline:
                return value
            await asyncio.sleep(op.interval_us / 1e6)

    async def _activity(self, client: QtestClient) -> tuple[int, ...] | None:
        """Mask registers and every channel's count, read without side effects: QEMU's mask
        reads back at 0x09/0xD2, and each count port is read twice so its flip-flop ends where it
        was. None when every channel of both controllers is masked: nothing can move."""
        lines = [fmt_in(DMA1.request), fmt_in(DMA2.request)]
        for ctrl in (DMA1, DMA2):
            for local in range(4):
                lines += [fmt_in(ctrl.count(local))] * 2
        values = tuple(parse_int_reply(r, q) for q, r in zip(lines, await client.pipeline(lines)))
        if values[0] & 0x0F == 0x0F and values[1] & 0x0F == 0x0F:
            return None
        return values

    async def _settle(self, timeout_s: float | None) -> None:
        """Return once no count register moves any more (wall time; FDC transfers complete inside
        the triggering port write, SB16 playback runs at its sample rate)."""
        try:
            await self._settle_on(self._live_client(), timeout_s)
        except QemuExitedError as e:
            raise await self._exited(e) from None

    async def _settle_on(self, client: QtestClient, timeout_s: float | None) -> None:
        limit = 10.0 if timeout_s is None else timeout_s
        start = time.monotonic()
        snap = await self._activity(client)
        quiet_since = time.monotonic()
        while snap is not None:
            now = time.monotonic()
            if now - quiet_since >= SETTLE_QUIET_S:
                return
            if now - start >= limit:
                raise SettleTimeout(f"DMA still moving on {self.url} after {limit:g} s (an autoinit "
                                    f"device such as the SB16 never stops by itself; use delay instead)")
            await asyncio.sleep(SETTLE_POLL_S)
            now_snap = await self._activity(client)
            if now_snap != snap:
                quiet_since = time.monotonic()
            snap = now_snap

    # --- IRQ lines (capability ``irq``) ---------------------------------------------------
    def irq_level(self, line: int) -> bool:
        """Current level of IOAPIC input ``line`` (FDC 6, SB16 5), as last reported by QEMU."""
        return self._live_client().irq_levels.get(line, False)

    def irq_count(self, line: int) -> int:
        """How often ``line`` was raised since the backend opened."""
        return self._live_client().irq_raises[line]

    @property
    def irq_events(self) -> list[IrqEvent]:
        """Raise/lower events in arrival order (the PIT's IRQ 0 is counted but not kept)."""
        return list(self._live_client().irq_events)

    def clear_irq_events(self) -> None:
        self._live_client().irq_events.clear()

    async def wait_irq(self, line: int, level: bool = True, timeout: float = 1.0) -> bool:
        """Wait until ``line`` is at ``level``; False on timeout."""
        client = self._live_client()
        deadline = time.monotonic() + timeout
        while client.irq_levels.get(line, False) != level:
            left = deadline - time.monotonic()
            if left <= 0 or not client.alive:
                return False
            # an empty round trip makes QEMU deliver any IRQ line that is already due
            await client.command("endianness\n")
            if client.irq_levels.get(line, False) == level:
                break
            await client.wait_irq_change(min(left, 0.01))
        return True


__all__ = [
    "FDC_PORTS",
    "INSTALL_HINT",
    "MIN_VERSION",
    "SB16_PORTS",
    "QemuBackend",
    "QemuConfig",
    "QemuExitedError",
    "QemuNotFoundError",
    "QemuStartError",
    "QemuVersionError",
    "QtestError",
    "find_binary",
    "floppy_image",
    "floppy_sector",
    "from_url",
    "halt_firmware",
    "qemu_available",
    "qemu_version",
]
