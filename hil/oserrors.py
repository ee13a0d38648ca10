"""What an OSError means: the kernel's answer to a failed open, mmap, read or connect, as a typed
:class:`~hil.errors.HilError` with one line that names the cause (and, for device access, the fix).

This is the one place where ``OSError``, pyserial's ``SerialException`` and socket errors become
the library's errors; backends, links and the agent call it instead of formatting ``errno``
themselves. It sits at the bottom layer (it imports only :mod:`hil.errors`), so the devport
backend uses it without importing the doctor, and :mod:`hil.doctor` builds its checks on it.

Hardware access fails in a handful of ways that look alike from user space (docs/reference/hil-lessons.md
§1.2, §2.5, §3.20): a missing node (kernel option off), EACCES (the node's mode), EPERM for a
missing capability, EPERM from a locked-down kernel (Secure Boot, even as root), EPERM from
/dev/mem's STRICT_DEVMEM rules on the memory window. Each gets its own
:class:`~hil.errors.DiagnosedError` subclass here. Kernel status files are parameters, so tests
point them at fixtures.
"""

from __future__ import annotations

import errno as E
import os
import re
from typing import TypeVar

from hil.errors import (
    BackendError,
    DeviceMissingError,
    DevicePermissionError,
    DiagnosedError,
    HilError,
    KernelLockdownError,
    MemoryWindowError,
    StrictDevmemError,
)
from hil.records import dataclass

LOCKDOWN_PATH = "/sys/kernel/security/lockdown"
PROC_STATUS_PATH = "/proc/self/status"
IOMEM_PATH = "/proc/iomem"
CAP_SYS_RAWIO = 17  #: linux/capability.h; /dev/port and /dev/mem check it on open
LOW_MEMORY = 1 << 20

H = TypeVar("H", bound=HilError)

_DEVICES = {
    # device kind -> (what it is, kernel option that provides it)
    "port": ("I/O port device", "CONFIG_DEVPORT"),
    "mem": ("physical memory device", "CONFIG_DEVMEM"),
}


# --- what the kernel says -------------------------------------------------------------------


def lockdown_mode(path: str = LOCKDOWN_PATH) -> str | None:
    """The active lockdown mode (``none``, ``integrity``, ``confidentiality``), or None if unknown.

    The file lists every mode and brackets the active one: ``none [integrity] confidentiality``.
    """
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    m = re.search(r"\[(\w+)\]", text)
    return m.group(1) if m else None


def has_capability(bit: int = CAP_SYS_RAWIO, path: str = PROC_STATUS_PATH) -> bool | None:
    """Whether the effective capability set (``CapEff`` in /proc/self/status) has ``bit``."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> bit & 1)
    except (OSError, ValueError, IndexError):
        return None
    return None


@dataclass(frozen=True)
class IomemEntry:
    span: range  #: [start, end) physical
    name: str
    depth: int  #: 0 = top level; nested entries are parts of their parent


def read_iomem(path: str = IOMEM_PATH) -> list[IomemEntry] | None:
    """/proc/iomem, or None when unreadable or when addresses are hidden (non-root sees zeros)."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    entries = []
    for line in lines:
        m = re.match(r"^(\s*)([0-9a-fA-F]+)-([0-9a-fA-F]+) : (.*)$", line)
        if m:
            start, end = int(m.group(2), 16), int(m.group(3), 16)
            entries.append(IomemEntry(range(start, end + 1), m.group(4).strip(), len(m.group(1)) // 2))
    if not entries or all(e.span.start == 0 and e.span.stop == 1 for e in entries):
        return None
    return entries


def system_ram_overlap(window: range, path: str = IOMEM_PATH) -> list[range]:
    """Top-level "System RAM" ranges that overlap ``window`` (empty if none or unknown)."""
    entries = read_iomem(path) or []
    return [e.span for e in entries if e.depth == 0 and e.name == "System RAM"
            and e.span.start < window.stop and window.start < e.span.stop]


def memmap_hint(window: range) -> str:
    """The kernel parameter reserving ``window`` (page-aligned) so the kernel never uses it."""
    start = window.start - window.start % 4096
    size = -(-(window.stop - start) // 4096) * 4096
    return f"memmap={size:#x}${start:#x}"


def errname(err: OSError) -> str:
    """The symbolic errno (``EACCES``), or the number when the platform has no name for it."""
    return E.errorcode.get(err.errno or 0, str(err.errno))


def explain_open_error(path: str, err: OSError, *, device: str = "port", lockdown_path: str = LOCKDOWN_PATH,
                       status_path: str = PROC_STATUS_PATH) -> DiagnosedError:
    """Turn a failed ``open()`` of /dev/port or /dev/mem into its cause and fix.

    The kernel's ``open_port``/``open_mem`` first check CAP_SYS_RAWIO (EPERM), then
    ``security_locked_down(LOCKDOWN_DEV_MEM)`` (EPERM again); the node's mode (root, 0640)
    gives EACCES before either runs. So EPERM needs the lockdown file to tell the two apart.
    """
    what, option = _DEVICES.get(device, ("device", "the kernel option for it"))
    code = err.errno
    where = f"{path}: {os.strerror(code) if code else err} ({errname(err)})"
    if code == E.ENOENT:
        return DeviceMissingError(
            f"{where}: the {what} does not exist; the kernel was built without {option}, or a container was "
            f"started without the device",
            f"use a kernel with {option}=y (check: grep {option} /boot/config-$(uname -r)); in a container "
            f"pass --device {path} and --cap-add SYS_RAWIO", path=path, errno=code)
    if code in (E.ENXIO, E.ENODEV):
        return DeviceMissingError(
            f"{where}: the node exists but no driver answers it (kernel without {option}, or a stale node)",
            f"use a kernel with {option}=y; check that {path} is character device 1,{4 if device == 'port' else 1}",
            path=path, errno=code)
    if code == E.EACCES:
        return DevicePermissionError(
            f"{where}: this user (uid {os.geteuid()}) may not open the {what} read-write (the node is root-only, "
            f"mode 0640 group kmem)",
            "run as root (sudo); a group or udev rule is not enough, because opening also needs CAP_SYS_RAWIO",
            path=path, errno=code)
    if code == E.EPERM:
        mode = lockdown_mode(lockdown_path)
        if mode not in (None, "none"):
            return KernelLockdownError(
                f"{where}: the kernel is locked down ([{mode}] in {lockdown_path}), which closes /dev/mem, "
                f"/dev/kmem and /dev/port even to root; Secure Boot usually turns it on",
                "disable Secure Boot in the firmware set-up (or `mokutil --disable-validation` and confirm at the "
                f"next boot) so that {lockdown_path} shows [none]; a port-I/O test machine cannot run locked down",
                path=path, errno=code)
        cap = has_capability(CAP_SYS_RAWIO, status_path)
        if cap is False:
            return DevicePermissionError(
                f"{where}: this process lacks CAP_SYS_RAWIO, which the kernel requires to open the {what}",
                "run as root (sudo), or grant CAP_SYS_RAWIO (systemd AmbientCapabilities=CAP_SYS_RAWIO; "
                "docker --cap-add SYS_RAWIO)", path=path, errno=code)
        unknown = "lockdown state unknown" if mode is None else "lockdown is [none]"
        return DevicePermissionError(
            f"{where}: the kernel refused the {what} ({unknown}; CAP_SYS_RAWIO "
            f"{'present' if cap else 'unknown'}); an LSM (SELinux, AppArmor) or a device cgroup may deny it",
            f"check `cat {lockdown_path}`, run as root, and look for a denial in `dmesg` or the audit log",
            path=path, errno=code)
    return DiagnosedError(f"{where}: cannot open the {what}", "run `hil doctor` with this URL for the checks",
                          path=path, errno=code)


def explain_mmap_error(path: str, err: OSError, window: range, *, iomem_path: str = IOMEM_PATH) -> DiagnosedError:
    """Turn a refused ``mmap`` of the memory window into its cause and fix.

    With CONFIG_STRICT_DEVMEM, /dev/mem maps no System RAM above 1 MiB, and since the 2025
    change "devmem: Block mmap access when read/write access is restricted" not even RAM in the
    low 1 MiB; CONFIG_IO_STRICT_DEVMEM also refuses I/O memory a driver has claimed.
    """
    code = err.errno
    span = f"0x{window.start:X}-0x{window.stop:X}"
    where = f"{path}: mapping window {span} failed: {os.strerror(code) if code else err} ({errname(err)})"
    if code in (E.EPERM, E.EACCES):
        ram = system_ram_overlap(window, iomem_path)
        reserve = (f"reserve the window at boot with {memmap_hint(window)} (in GRUB's config write the $ as \\$), "
                   f"so that it is not System RAM in /proc/iomem and the kernel never hands it out")
        if ram:
            low = window.stop <= LOW_MEMORY
            return StrictDevmemError(
                f"{where}: the window overlaps System RAM ({', '.join(f'0x{r.start:X}-0x{r.stop - 1:X}' for r in ram)}) "
                f"and CONFIG_STRICT_DEVMEM forbids mapping RAM the kernel owns"
                + (" (newer kernels refuse it in the low 1 MiB too)" if low else ""),
                reserve, path=path, errno=code)
        if read_iomem(iomem_path) is not None:
            return StrictDevmemError(
                f"{where}: the window is not System RAM, so a driver claims it and CONFIG_IO_STRICT_DEVMEM refuses it",
                "boot with iomem=relaxed, or unbind the driver that owns it (see /proc/iomem)", path=path, errno=code)
        return StrictDevmemError(
            f"{where}: CONFIG_STRICT_DEVMEM refuses this window (RAM the kernel owns, or memory a driver claims)",
            f"{reserve}; if a driver claims it, boot with iomem=relaxed; run `hil doctor` as root to see /proc/iomem",
            path=path, errno=code)
    if code in (E.EINVAL, E.ENXIO, E.EOVERFLOW):
        return MemoryWindowError(f"{where}: the window is not valid physical memory for {path}",
                                 "choose a window inside physical memory below 16 MiB (see /proc/iomem)",
                                 path=path, errno=code)
    return DiagnosedError(f"{where}", "run `hil doctor` with this URL for the checks", path=path, errno=code)


# --- links, sockets, ports and processes ----------------------------------------------------
# Each caller names the class the failure becomes (a link's LinkError, QEMU's start error), so
# the text is formatted here once and the class stays the caller's refusal.


def failure(where: str, action: str, err: BaseException, cls: type[H]) -> H:
    """``WHERE: ACTION: REASON`` for a stream, serial port or socket that failed mid-use or on open.

    ``err`` is an ``OSError``, pyserial's ``SerialException`` (an ``OSError`` subclass whose text
    already names the port) or the ``ValueError`` pyserial raises for a bad setting; its own
    text is the reason, because pyserial's says more than ``strerror`` alone.
    """
    return cls(f"{where}: {action}: {err}" if where else f"{action}: {err}")


def connect_error(url: str, err: OSError, cls: type[H]) -> H:
    """A TCP connect that failed: the kernel's reason (connection refused, no route to host)."""
    return cls(f"{url}: cannot connect: {err.strerror or err}")


def listen_error(listen: str, err: OSError, cls: type[H]) -> H:
    """A listening socket that could not be bound: port in use, address not on this machine,
    privileged port. A port in use most often means another agent, so that case says so."""
    why = os.strerror(err.errno).lower() if err.errno else str(err)
    hint = "; is another agent running? give another port, or 0 for any free one" \
        if err.errno == E.EADDRINUSE else ""
    return cls(f"{listen}: cannot listen: {why}{hint}")


def port_io_error(access: str, path: str, err: OSError) -> BackendError:
    """A one-byte ``pread``/``pwrite`` of /dev/port the kernel refused; ``access`` names it
    (``inb 0x0008``, ``outb 0x000A,0x05``)."""
    return BackendError(f"{access} through {path} failed: {err.strerror} (errno {err.errno})")


def start_error(what: str, action: str, err: OSError, cls: type[H]) -> H:
    """A file, socket or process a backend needs could not be made while starting: the step (which
    names its path) and the kernel's reason by name, e.g. ``qemu: /usr/bin/qemu-system-x86_64:
    cannot run /usr/bin/qemu-system-x86_64: Permission denied (EACCES)``."""
    reason = f"{os.strerror(err.errno)} ({errname(err)})" if err.errno else str(err)
    return cls(f"{what}: {action}: {reason}")


def file_reason(err: OSError) -> str:
    """Why a file the user named could not be read or written, in lower case to follow a colon
    (``no such file or directory``, ``is a directory``, ``no space left on device``)."""
    return (err.strerror or str(err)).lower()
