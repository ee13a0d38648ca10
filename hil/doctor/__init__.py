"""``hil doctor URL``: why a backend cannot reach its target, and what to change.

The kernel's answers (lockdown, CAP_SYS_RAWIO, /proc/iomem, what an errno on /dev/port or
/dev/mem means) are read and explained in :mod:`hil.oserrors`, which the backends use too when
opening; this package is the doctor's registry, its checks and the report (the agent link's
checks are :mod:`hil.doctor.agent`, which opens the agent client, so they sit here above the
backends rather than in :mod:`hil.agent`). The diagnosis names
are re-exported here, so ``hil.doctor.explain_open_error`` and the rest keep working.

Checks are registered per URL scheme (:func:`register_checks`, ``"module:function"`` strings
imported only when used, like the backend registry), so later backends add theirs: agent+serial
(device node permissions, dialout/plugdev group, ftdi_sio ``latency_timer``), qemu (binary
present, version). A scheme without its own checks gets :func:`generic_checks`: the URL is
valid and the backend opens and closes. Kernel status files are parameters, so tests point
them at fixtures.
"""

from __future__ import annotations

import enum
import importlib
import os
import stat
from collections.abc import Awaitable, Callable
from dataclasses import field
from typing import Any

from hil.errors import DiagnosedError, HilError
from hil.oserrors import (
    CAP_SYS_RAWIO,
    IOMEM_PATH,
    LOCKDOWN_PATH,
    LOW_MEMORY,
    PROC_STATUS_PATH,
    IomemEntry,
    explain_mmap_error,
    explain_open_error,
    has_capability,
    lockdown_mode,
    memmap_hint,
    read_iomem,
    system_ram_overlap,
)
from hil.records import dataclass

__all__ = [  # with the kernel diagnosis from hil.oserrors, re-exported
    "CAP_SYS_RAWIO",
    "IOMEM_PATH",
    "LOCKDOWN_PATH",
    "LOW_MEMORY",
    "PROC_STATUS_PATH",
    "CheckProvider",
    "CheckResult",
    "DoctorReport",
    "IomemEntry",
    "Status",
    "devport_checks",
    "explain_mmap_error",
    "explain_open_error",
    "fail",
    "from_error",
    "generic_checks",
    "has_capability",
    "lockdown_mode",
    "memmap_hint",
    "ok",
    "read_iomem",
    "register_checks",
    "run_doctor",
    "system_ram_overlap",
]


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


# --- the registry ---------------------------------------------------------------------------

CheckProvider = Callable[[Any, Any], Awaitable[list[CheckResult]]]  #: (BackendURL, env) -> results

_CHECKS: dict[str, str | CheckProvider] = {
    "sim": "hil.doctor:generic_checks",
    "devport": "hil.doctor:devport_checks",
    "agent+serial": "hil.doctor.agent:agent_checks",
    "agent+tcp": "hil.doctor.agent:agent_checks",
    "agent+ftdi": "hil.doctor.agent:agent_checks",
    "labgrid": "hil.doctor.labgrid:labgrid_checks",
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
    default: str | CheckProvider = "hil.doctor.agent:agent_checks" if parsed.scheme.startswith("agent+") else generic_checks
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
