"""``hil doctor URL``: why a backend cannot reach its target, and what to change.

Hardware access fails in a handful of ways that look alike from user space (docs/reference/hil-lessons.md
§1.2, §2.5, §3.20): a missing node (kernel option off), EACCES (the node's mode), EPERM for a
missing capability, EPERM from a locked-down kernel (Secure Boot, even as root), EPERM from
/dev/mem's STRICT_DEVMEM rules on the memory window. Each gets its own explanation and fix
here; backends raise the same :class:`~hil.errors.DiagnosedError` subclasses when opening.

Checks are registered per URL scheme (:func:`register_checks`, ``"module:function"`` strings
imported only when used, like the backend registry), so later backends add theirs: agent+serial
(device node permissions, dialout/plugdev group, ftdi_sio ``latency_timer``), qemu (binary
present, version). A scheme without its own checks gets :func:`generic_checks`: the URL is
valid and the backend opens and closes. Kernel status files are parameters, so tests point
them at fixtures.
"""

from __future__ import annotations

import enum
import errno as E
import importlib
import os
import re
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from hil.errors import (
    DeviceMissingError,
    DevicePermissionError,
    DiagnosedError,
    HilError,
    KernelLockdownError,
    MemoryWindowError,
    StrictDevmemError,
)

LOCKDOWN_PATH = "/sys/kernel/security/lockdown"
PROC_STATUS_PATH = "/proc/self/status"
IOMEM_PATH = "/proc/iomem"
CAP_SYS_RAWIO = 17  #: linux/capability.h; /dev/port and /dev/mem check it on open
LOW_MEMORY = 1 << 20

_DEVICES = {
    # device kind -> (what it is, kernel option that provides it)
    "port": ("I/O port device", "CONFIG_DEVPORT"),
    "mem": ("physical memory device", "CONFIG_DEVMEM"),
}


# --- results --------------------------------------------------------------------------------


class Status(enum.Enum):
    OK = "ok"
    WARN = "warn"  #: works, but something is likely to bite; does not fail the run
    FAIL = "fail"
    SKIP = "skip"  #: could not be checked here (not applicable, or not visible to this user)


@dataclass(frozen=True)
class CheckResult:
    check: str
    status: Status
    message: str
    fix: str = ""

    def to_json(self) -> dict[str, str]:
        return {"check": self.check, "status": self.status.value, "message": self.message,
                **({"fix": self.fix} if self.fix else {})}


def ok(check: str, message: str) -> CheckResult:
    return CheckResult(check, Status.OK, message)


def fail(check: str, message: str, fix: str = "") -> CheckResult:
    return CheckResult(check, Status.FAIL, message, fix)


def from_error(check: str, error: HilError) -> CheckResult:
    if isinstance(error, DiagnosedError):
        return fail(check, error.problem, error.fix)
    return fail(check, str(error))


@dataclass
class DoctorReport:
    url: str
    results: list[CheckResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(r.status is Status.FAIL for r in self.results)

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def format(self) -> str:
        width = max((len(r.check) for r in self.results), default=0)
        lines = [f"hil doctor {self.url}"]
        for r in self.results:
            mark = r.status.value.upper() if r.status is not Status.OK else "ok"
            lines.append(f"  {mark:4}  {r.check:{width}}  {r.message}")
            if r.fix:
                lines.append(f"        {'':{width}}  fix: {r.fix}")
        problems = sum(r.status is Status.FAIL for r in self.results)
        lines.append("all checks passed" if not problems else f"{problems} problem{'s' if problems > 1 else ''} found")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "ok": self.ok, "checks": [r.to_json() for r in self.results]}


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


def _errname(err: OSError) -> str:
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
    where = f"{path}: {os.strerror(code) if code else err} ({_errname(err)})"
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
    where = f"{path}: mapping window {span} failed: {os.strerror(code) if code else err} ({_errname(err)})"
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


# --- the registry ---------------------------------------------------------------------------

CheckProvider = Callable[[Any, Any], Awaitable[list[CheckResult]]]  #: (BackendURL, env) -> results

_CHECKS: dict[str, str | CheckProvider] = {
    "sim": "hil.doctor:generic_checks",
    "devport": "hil.doctor:devport_checks",
    "agent+serial": "hil.agent.doctor:agent_checks",
    "agent+tcp": "hil.agent.doctor:agent_checks",
    "agent+ftdi": "hil.agent.doctor:agent_checks",
}


def register_checks(scheme: str, provider: str | CheckProvider) -> None:
    """Register ``provider`` (a coroutine function or ``"module:function"``) for ``scheme``.

    It is called as ``await provider(parsed_url, env)``: ``env`` is None on a real machine and a
    backend-specific stand-in in tests (devport: a :class:`hil.backends.devport.Host`).
    """
    _CHECKS[scheme.lower()] = provider


def _resolve(entry: str | CheckProvider) -> CheckProvider:
    if callable(entry):
        return entry
    module, _, attr = entry.partition(":")
    return getattr(importlib.import_module(module), attr)


async def run_doctor(url: str, env: Any = None) -> DoctorReport:
    """Run every check registered for ``url``'s scheme; never raises for a HilError."""
    from hil.backends import BackendURL

    report = DoctorReport(url)
    try:
        parsed = BackendURL.parse(url)
    except HilError as e:
        report.results.append(from_error("url", e))
        return report
    default: str | CheckProvider = "hil.agent.doctor:agent_checks" if parsed.scheme.startswith("agent+") else generic_checks
    provider = _resolve(_CHECKS.get(parsed.scheme, default))
    report.results.extend(await provider(parsed, env))
    return report


async def generic_checks(url: Any, env: Any = None) -> list[CheckResult]:
    """Any scheme: the URL names a backend with valid options, and it opens and closes."""
    from hil.backends import open_backend

    try:
        backend = open_backend(url.raw)
    except HilError as e:
        return [from_error("url", e)]
    results = [ok("url", backend.capabilities.identity)]
    try:
        async with backend:
            pass
    except HilError as e:
        results.append(from_error("open", e))
    else:
        results.append(ok("open", "the backend opens and closes"))
    return results


# --- devport: ------------------------------------------------------------------------------


async def devport_checks(url: Any, env: Any = None) -> list[CheckResult]:
    """Lockdown, CAP_SYS_RAWIO, /dev/port, the memory window, /dev/mem and its STRICT_DEVMEM rules."""
    from hil.backends import devport

    host = env if isinstance(env, devport.Host) else devport.Host()
    try:
        be = devport.from_url(url, host)
    except HilError as e:
        return [from_error("url", e)]
    results = [ok("url", be.capabilities.identity), ok("allow-list", be.allow.describe())]
    if be.dry_run:
        results.append(CheckResult("devices", Status.SKIP, "dry_run=1 opens no device; drop it to check access"))
        results.append(_window_configured(be))
        return results
    results.append(_check_lockdown(host))
    results.append(_check_capability(host))
    results.append(_check_port(be, host))
    results.append(_window_configured(be))
    if be.window is not None:
        results.extend(_check_memory(be, host))
    return results


def _check_lockdown(host: Any) -> CheckResult:
    mode = lockdown_mode(host.lockdown_path)
    if mode is None:
        return CheckResult("lockdown", Status.SKIP, f"{host.lockdown_path} not readable (no lockdown LSM, or "
                                                    "securityfs not mounted)")
    if mode == "none":
        return ok("lockdown", "kernel not locked down ([none])")
    return fail("lockdown", f"kernel locked down ([{mode}]): /dev/port and /dev/mem are closed even to root",
                "disable Secure Boot in the firmware set-up (or `mokutil --disable-validation`), reboot, and "
                f"check that {host.lockdown_path} shows [none]")


def _check_capability(host: Any) -> CheckResult:
    cap = has_capability(CAP_SYS_RAWIO, host.proc_status_path)
    if cap is None:
        return CheckResult("CAP_SYS_RAWIO", Status.SKIP, f"cannot read CapEff from {host.proc_status_path}")
    if cap:
        return ok("CAP_SYS_RAWIO", "this process has CAP_SYS_RAWIO")
    return fail("CAP_SYS_RAWIO", "this process lacks CAP_SYS_RAWIO: opening /dev/port and /dev/mem will fail (EPERM)",
                "run as root (sudo), or grant CAP_SYS_RAWIO (systemd AmbientCapabilities=CAP_SYS_RAWIO; "
                "docker --cap-add SYS_RAWIO)")


def _check_port(be: Any, host: Any) -> CheckResult:
    try:
        fd = host.open(be.port_path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        return from_error("port device", explain_open_error(be.port_path, e, device="port",
                                                            lockdown_path=host.lockdown_path,
                                                            status_path=host.proc_status_path))
    try:
        kind = " (a regular file: test stand-in)" if stat.S_ISREG(host.fstat(fd).st_mode) else ""
    finally:
        host.close(fd)
    return ok("port device", f"{be.port_path} opens read-write{kind}")


def _window_configured(be: Any) -> CheckResult:
    if be.window is None:
        return CheckResult("memory window", Status.WARN,
                           "no memory window configured: every memory operation will be refused",
                           "add window=0x10000-0x90000 to the URL (or [memory] windows to the allow-list file) "
                           "and reserve it at boot (README: Running on a real Linux target)")
    w = be.window
    return ok("memory window", f"[0x{w.start:X}, 0x{w.stop:X}), {len(w):#x} bytes, below the 16 MiB ISA DMA limit")


def _check_memory(be: Any, host: Any) -> list[CheckResult]:
    from hil.backends.devport import map_window

    w = be.window
    try:
        fd = host.open(be.mem_path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        return [from_error("memory device", explain_open_error(be.mem_path, e, device="mem",
                                                               lockdown_path=host.lockdown_path,
                                                               status_path=host.proc_status_path))]
    try:
        regular = stat.S_ISREG(host.fstat(fd).st_mode)
        try:
            mapping, _, _ = map_window(host, fd, be.mem_path, w)
        except HilError as e:
            return [from_error("memory device", e)]
        mapping.close()
    finally:
        host.close(fd)
    results = [ok("memory device", f"{be.mem_path} maps 0x{w.start:X}-0x{w.stop:X} read-write")]
    if regular:
        results.append(CheckResult("reservation", Status.SKIP, f"{be.mem_path} is a regular file: /proc/iomem not consulted"))
        return results
    entries = read_iomem(host.iomem_path)
    if entries is None:
        results.append(CheckResult("reservation", Status.SKIP,
                                   f"{host.iomem_path} shows no addresses to this user; run as root to check"))
        return results
    ram = system_ram_overlap(w, host.iomem_path)
    if ram:
        results.append(fail(
            "reservation",
            f"the window overlaps System RAM ({', '.join(f'0x{r.start:X}-0x{r.stop - 1:X}' for r in ram)}): the kernel "
            "may hand those pages to anyone, so DMA into them corrupts memory",
            f"reserve it at boot with {memmap_hint(w)} (write the $ as \\$ in GRUB's config)"))
    else:
        names = sorted({e.name for e in entries if e.depth == 0 and e.span.start < w.stop and w.start < e.span.stop})
        results.append(ok("reservation", f"the window is not System RAM ({', '.join(names) or 'unlisted'})"))
    return results
