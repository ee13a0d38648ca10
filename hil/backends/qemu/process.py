"""The QEMU process of the ``qemu:`` backend: which binary, which version, and that it never
outlives the backend.

QEMU runs in a session and process group of its own, and the whole group is stopped, so that a
``binary=`` wrapper that runs QEMU as its child instead of ``exec``-ing it does not leave QEMU
behind; the child also gets ``PR_SET_PDEATHSIG``, and an ``atexit`` hook stops whatever a
backend that was never closed left running. Each backend works in a private directory
(``hil-qemu-*`` with the owner's PID), and directories of interpreters that died are swept.
:data:`REFUSED_ARGS` names the QEMU options ``args=`` may not add, because the backend sets
them or because they would take the machine out of its hands.
"""

from __future__ import annotations

import asyncio
import atexit
import ctypes
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from hil.errors import (
    QemuNotFoundError as QemuNotFoundError,  # the three were defined here
    QemuStartError as QemuStartError,
    QemuVersionError as QemuVersionError,
)
from hil.log import get_logger

log = get_logger("hil.qemu")

BINARY_ENV = "HIL_QEMU_BINARY"
DEFAULT_BINARY = "qemu-system-x86_64"
MIN_VERSION = (7, 2)  #: the version docs/reference/qemu-qtest.md and the sim's ``qemu`` profile were checked against
INSTALL_HINT = "install it with: apt-get install qemu-system-x86 (Debian 12 ships 7.2), or give qemu:?binary=PATH"




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


def die_with_parent(parent: int) -> None:
    """preexec_fn: the kernel sends SIGKILL to QEMU when the thread that forked it exits (the
    interpreter killed by a signal included; asyncio forks in the event loop's thread, so a
    backend must not outlive the thread running its loop). If the parent is already gone, exit."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


LIVE: dict[int, str] = {}  #: pid (= process group) -> private directory, of every QEMU started here


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


def signal_group(pgid: int, sig: int) -> None:
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
        signal_group(pgid, sig)
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
    for pid, workdir in list(LIVE.items()):
        _stop_group_now(pid)
        shutil.rmtree(workdir, ignore_errors=True)
        LIVE.pop(pid, None)


WORKDIR_PREFIX = "hil-qemu-"
OWNER_FILE = "owner.pid"


def _kill_strays(workdir: Path) -> None:
    """SIGKILL every process of ours whose command line names a file in ``workdir`` (its qtest
    or chardev socket): a QEMU whose interpreter was killed while a ``binary=`` wrapper that did
    not ``exec`` ran it (the wrapper died with the interpreter, ``PR_SET_PDEATHSIG`` does not
    reach its child)."""
    marker = f"{workdir}/".encode()
    try:
        entries = [e for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return
    for entry in entries:
        try:
            if any(marker in arg for arg in Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")):
                os.kill(int(entry), signal.SIGKILL)
                log.info("qemu_stray_killed", pid=int(entry), workdir=str(workdir))
        except OSError:
            continue


def sweep_stale_workdirs(prefix: str = WORKDIR_PREFIX) -> None:
    """Remove private directories (``prefix*``) left by interpreters that died without cleaning
    up (killed by SIGKILL or SIGTERM: their QEMU died with them, but a directory cannot),
    stopping any QEMU still using one. Only directories whose owner PID no longer exists, and
    that this user can read, are removed."""
    try:
        entries = list(Path(tempfile.gettempdir()).glob(prefix + "*"))
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


async def stop_group(pgid: int) -> None:
    """Stop what is left of the group once its leader is gone: the QEMU of a ``binary=``
    wrapper that did not ``exec`` it, which no longer has a parent we could wait on."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not _group_alive(pgid):
            return
        signal_group(pgid, sig)
        deadline = time.monotonic() + 1.0
        # nothing signals the end of a process group that is not our child: poll it
        while time.monotonic() < deadline and _group_alive(pgid):  # noqa: ASYNC110 - polled, see above
            await asyncio.sleep(0.01)
    if _group_alive(pgid):
        log.warning("qemu_group_survived", pgid=pgid)


async def stop_process(proc: asyncio.subprocess.Process) -> None:
    """Stop a QEMU this process started with ``start_new_session`` (it leads its own group):
    SIGTERM to the group, SIGKILL if it has not gone within 2 s, then whatever of the group is
    left (:func:`stop_group`), and forget it for the exit handler."""
    if proc.returncode is None:
        signal_group(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 2.0)
        except TimeoutError:
            signal_group(proc.pid, signal.SIGKILL)
            await proc.wait()
    await stop_group(proc.pid)
    LIVE.pop(proc.pid, None)


# --- arguments -----------------------------------------------------------------------------------

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
