"""``hil doctor`` and the diagnoses behind it (docs/reference/hil-lessons.md §1.2, §2.5, §3.20).

Every failure is simulated: errno values are injected through :class:`hil.backends.devport.Host`,
and the kernel's status files (lockdown, /proc/self/status, /proc/iomem) are fixtures.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from hil import doctor
from hil.backends import BackendURL
from hil.backends.devport import Host
from hil.cli import main
from hil.doctor import (
    CheckResult,
    Status,
    explain_mmap_error,
    explain_open_error,
    has_capability,
    lockdown_mode,
    read_iomem,
    register_checks,
    run_doctor,
)
from hil.errors import (
    DeviceMissingError,
    DevicePermissionError,
    DiagnosedError,
    KernelLockdownError,
    MemoryWindowError,
    StrictDevmemError,
)

IOMEM = """\
00000000-00000fff : Reserved
00001000-0009fbff : System RAM
0009fc00-000fffff : Reserved
  000f0000-000fffff : System ROM
00100000-00ffffff : System RAM
  01000000-01ffffff : Kernel code
01000000-0100ffff : reserved
fed00000-fed003ff : HPET 0
"""


def _os_error(code: int) -> OSError:
    return OSError(code, os.strerror(code))


@pytest.fixture
def kernel(tmp_path: Path) -> dict[str, Path]:
    """Kernel status files of a well-configured target: no lockdown, root capabilities."""
    files = {"lockdown": tmp_path / "lockdown", "status": tmp_path / "status", "iomem": tmp_path / "iomem"}
    files["lockdown"].write_text("[none] integrity confidentiality\n")
    files["status"].write_text("Name:\tpython\nCapEff:\t000001ffffffffff\n")
    files["iomem"].write_text(IOMEM)
    return files


def _paths(k: dict[str, Path]) -> dict[str, str]:
    return {"lockdown_path": str(k["lockdown"]), "status_path": str(k["status"])}


# --- reading the kernel's state ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "mode"),
    [("[none] integrity confidentiality\n", "none"), ("none [integrity] confidentiality\n", "integrity"),
     ("none integrity [confidentiality]\n", "confidentiality"), ("garbage\n", None)],
)
def test_lockdown_mode(tmp_path, text, mode):
    f = tmp_path / "lockdown"
    f.write_text(text)
    assert lockdown_mode(str(f)) == mode
    assert lockdown_mode(str(tmp_path / "absent")) is None


def test_capability(tmp_path):
    f = tmp_path / "status"
    f.write_text("CapEff:\t0000000000020000\n")  # bit 17 only
    assert has_capability(17, str(f)) is True
    f.write_text("CapEff:\t000001fffffdffff\n")  # everything but bit 17
    assert has_capability(17, str(f)) is False
    assert has_capability(17, str(tmp_path / "absent")) is None


def test_iomem(tmp_path, kernel):
    entries = read_iomem(str(kernel["iomem"]))
    assert entries is not None
    top = [(e.span.start, e.span.stop, e.name) for e in entries if e.depth == 0]
    assert (0x1000, 0x9FC00, "System RAM") in top
    hidden = tmp_path / "hidden"
    hidden.write_text("00000000-00000000 : System RAM\n  00000000-00000000 : Kernel code\n")
    assert read_iomem(str(hidden)) is None, "a non-root reader sees zeros: unknown, not 'no RAM'"
    assert doctor.system_ram_overlap(range(0x10000, 0x90000), str(kernel["iomem"])) == [range(0x1000, 0x9FC00)]
    assert doctor.system_ram_overlap(range(0x1000000, 0x1010000), str(kernel["iomem"])) == []


# --- errno -> cause and fix -------------------------------------------------------------------


def test_missing_dev_port_means_no_config_devport(kernel):
    e = explain_open_error("/dev/port", _os_error(errno.ENOENT), device="port", **_paths(kernel))
    assert isinstance(e, DeviceMissingError) and e.errno == errno.ENOENT and e.path == "/dev/port"
    assert "CONFIG_DEVPORT" in e.problem and "CONFIG_DEVPORT=y" in e.fix
    e = explain_open_error("/dev/mem", _os_error(errno.ENOENT), device="mem", **_paths(kernel))
    assert "CONFIG_DEVMEM" in str(e)
    assert isinstance(explain_open_error("/dev/port", _os_error(errno.ENXIO), **_paths(kernel)), DeviceMissingError)


def test_eacces_means_not_root(kernel):
    e = explain_open_error("/dev/port", _os_error(errno.EACCES), **_paths(kernel))
    assert isinstance(e, DevicePermissionError)
    assert "EACCES" in e.problem and "root" in e.fix and "CAP_SYS_RAWIO" in e.fix


def test_eperm_under_lockdown_even_as_root(kernel):
    kernel["lockdown"].write_text("none [integrity] confidentiality\n")
    e = explain_open_error("/dev/port", _os_error(errno.EPERM), **_paths(kernel))
    assert isinstance(e, KernelLockdownError)
    assert "[integrity]" in e.problem and "even to root" in e.problem and "Secure Boot" in e.fix


def test_eperm_without_lockdown_is_the_missing_capability(kernel):
    kernel["status"].write_text("CapEff:\t0000000000000000\n")
    e = explain_open_error("/dev/port", _os_error(errno.EPERM), **_paths(kernel))
    assert isinstance(e, DevicePermissionError) and not isinstance(e, KernelLockdownError)
    assert "CAP_SYS_RAWIO" in e.problem


def test_eperm_with_nothing_explaining_it(kernel):
    e = explain_open_error("/dev/port", _os_error(errno.EPERM), **_paths(kernel))
    assert isinstance(e, DevicePermissionError) and "LSM" in e.problem


def test_mmap_eperm_on_system_ram_is_strict_devmem(kernel):
    high = explain_mmap_error("/dev/mem", _os_error(errno.EPERM), range(0x200000, 0x210000),
                              iomem_path=str(kernel["iomem"]))
    assert isinstance(high, StrictDevmemError) and "CONFIG_STRICT_DEVMEM" in high.problem
    assert "memmap=0x10000$0x200000" in high.fix
    low = explain_mmap_error("/dev/mem", _os_error(errno.EPERM), range(0x10000, 0x90000),
                             iomem_path=str(kernel["iomem"]))
    assert "low 1 MiB too" in low.problem and "memmap=0x80000$0x10000" in low.fix


def test_mmap_eperm_on_claimed_io_memory_is_io_strict_devmem(kernel):
    e = explain_mmap_error("/dev/mem", _os_error(errno.EPERM), range(0xFED00000, 0xFED00400),
                           iomem_path=str(kernel["iomem"]))
    assert isinstance(e, StrictDevmemError) and "IO_STRICT_DEVMEM" in e.problem and "iomem=relaxed" in e.fix


def test_mmap_eperm_with_iomem_hidden(kernel, tmp_path):
    e = explain_mmap_error("/dev/mem", _os_error(errno.EPERM), range(0x10000, 0x20000),
                           iomem_path=str(tmp_path / "absent"))
    assert isinstance(e, StrictDevmemError) and "memmap=" in e.fix and "iomem=relaxed" in e.fix


def test_mmap_einval_is_a_bad_window(kernel):
    e = explain_mmap_error("/dev/mem", _os_error(errno.EINVAL), range(0x10000, 0x20000), iomem_path=str(kernel["iomem"]))
    assert isinstance(e, MemoryWindowError)


def test_diagnosed_error_message_carries_the_fix():
    e = DiagnosedError("it broke", "mend it", path="/x", errno=1)
    assert str(e) == "it broke; fix: mend it"


# --- the devport: checks ---------------------------------------------------------------------------


@pytest.fixture
def stand_ins(tmp_path: Path) -> tuple[Path, Path]:
    port, mem = tmp_path / "port", tmp_path / "mem"
    port.write_bytes(bytes(0x10000))
    mem.write_bytes(bytes(0x100000))
    return port, mem


def _host(kernel: dict[str, Path], **overrides: Any) -> Host:
    return Host(lockdown_path=str(kernel["lockdown"]), proc_status_path=str(kernel["status"]),
                iomem_path=str(kernel["iomem"]), **overrides)


def _url(stand_ins: tuple[Path, Path], extra: str = "&window=0x10000-0x90000") -> str:
    return f"devport:?port={stand_ins[0]}&mem={stand_ins[1]}{extra}"


def _by_name(report: doctor.DoctorReport) -> dict[str, CheckResult]:
    return {r.check: r for r in report.results}


async def test_devport_all_good(kernel, stand_ins):
    report = await run_doctor(_url(stand_ins), _host(kernel))
    checks = _by_name(report)
    assert report.ok and report.exit_code == 0, report.format()
    assert checks["lockdown"].status is Status.OK and checks["CAP_SYS_RAWIO"].status is Status.OK
    assert checks["port device"].status is Status.OK and "stand-in" in checks["port device"].message
    assert checks["memory device"].status is Status.OK
    assert checks["reservation"].status is Status.SKIP  # a regular file has no /proc/iomem to consult
    assert "all checks passed" in report.format()


@pytest.mark.parametrize(
    ("code", "error_words"),
    [(errno.ENOENT, "CONFIG_DEVPORT"), (errno.EACCES, "EACCES")],
)
async def test_devport_port_device_failures(kernel, stand_ins, code, error_words):
    def refuse(path: str, flags: int) -> int:
        if path == str(stand_ins[0]):
            raise _os_error(code)
        return os.open(path, flags)

    report = await run_doctor(_url(stand_ins), _host(kernel, open=refuse))
    port = _by_name(report)["port device"]
    assert not report.ok and report.exit_code == 1
    assert port.status is Status.FAIL and error_words in port.message and port.fix
    assert _by_name(report)["memory device"].status is Status.OK


async def test_devport_under_lockdown(kernel, stand_ins):
    kernel["lockdown"].write_text("none integrity [confidentiality]\n")

    def refuse(path: str, flags: int) -> int:
        raise _os_error(errno.EPERM)

    report = await run_doctor(_url(stand_ins), _host(kernel, open=refuse))
    checks = _by_name(report)
    assert checks["lockdown"].status is Status.FAIL and "Secure Boot" in checks["lockdown"].fix
    assert "locked down" in checks["port device"].message and "locked down" in checks["memory device"].message


async def test_devport_without_cap_sys_rawio(kernel, stand_ins):
    kernel["status"].write_text("CapEff:\t0000000000000000\n")
    report = await run_doctor(_url(stand_ins), _host(kernel))
    assert _by_name(report)["CAP_SYS_RAWIO"].status is Status.FAIL and not report.ok


async def test_devport_strict_devmem_refuses_the_window(kernel, stand_ins):
    def refuse(fd: int, length: int, offset: int) -> Any:
        raise _os_error(errno.EPERM)

    report = await run_doctor(_url(stand_ins), _host(kernel, mmap=refuse))
    mem = _by_name(report)["memory device"]
    assert mem.status is Status.FAIL and "STRICT_DEVMEM" in mem.message and "memmap=0x80000$0x10000" in mem.fix


async def test_devport_missing_window_warns(kernel, stand_ins):
    report = await run_doctor(_url(stand_ins, ""), _host(kernel))
    window = _by_name(report)["memory window"]
    assert window.status is Status.WARN and "window=" in window.fix
    assert report.ok, "a port-only set-up still works"
    assert "memory device" not in _by_name(report)


async def test_devport_window_beyond_the_stand_in(kernel, stand_ins):
    stand_ins[1].write_bytes(bytes(0x1000))
    report = await run_doctor(_url(stand_ins), _host(kernel))
    assert _by_name(report)["memory device"].status is Status.FAIL and "ends beyond" in report.format()


async def test_devport_window_in_system_ram_on_a_real_device(kernel, stand_ins):
    """With /dev/mem a character device, /proc/iomem tells whether the window was reserved."""
    real_fstat = os.fstat

    def char_device(fd: int) -> os.stat_result:
        st = real_fstat(fd)
        return os.stat_result((stat.S_IFCHR | 0o640, *tuple(st)[1:]))

    report = await run_doctor(_url(stand_ins), _host(kernel, fstat=char_device))
    res = _by_name(report)["reservation"]
    assert res.status is Status.FAIL and "System RAM" in res.message and "memmap=0x80000$0x10000" in res.fix
    kernel["iomem"].write_text("00000000-0000ffff : Reserved\n00010000-0008ffff : Reserved\n00100000-00ffffff : System RAM\n")
    report = await run_doctor(_url(stand_ins), _host(kernel, fstat=char_device))
    assert _by_name(report)["reservation"].status is Status.OK and report.ok


async def test_devport_dry_run_skips_devices(kernel, stand_ins):
    def forbidden(*_: Any) -> Any:
        raise AssertionError("dry run checks must not open devices")

    report = await run_doctor(_url(stand_ins, "&window=0x10000-0x90000&dry_run=1"), _host(kernel, open=forbidden))
    assert _by_name(report)["devices"].status is Status.SKIP and report.ok


async def test_devport_bad_url_and_allow_file(tmp_path, kernel):
    report = await run_doctor("devport:?window=nonsense", _host(kernel))
    assert _by_name(report)["url"].status is Status.FAIL and report.exit_code == 1
    report = await run_doctor(f"devport:?allow={tmp_path / 'missing.toml'}", _host(kernel))
    assert "allow-list file not found" in _by_name(report)["url"].message


# --- other schemes and the registry -----------------------------------------------------------


async def test_sim_reports_ok():
    report = await run_doctor("sim:?profile=qemu")
    assert report.ok and [r.status for r in report.results] == [Status.OK, Status.OK]


async def test_unknown_scheme_fails():
    report = await run_doctor("nosuch:")
    assert not report.ok and "unknown scheme" in report.results[0].message


async def test_registry_is_extensible():
    seen: list[tuple[BackendURL, Any]] = []

    async def serial_checks(url: BackendURL, env: Any) -> list[CheckResult]:
        seen.append((url, env))
        return [CheckResult("latency_timer", Status.WARN, "16 ms", "echo 1 > .../latency_timer")]

    register_checks("fakeserial", serial_checks)
    try:
        report = await run_doctor("fakeserial:///dev/ttyUSB0", env="stand-in")
    finally:
        doctor._CHECKS.pop("fakeserial")
    assert seen[0][0].path == "/dev/ttyUSB0" and seen[0][1] == "stand-in"
    assert report.ok and "fix: echo 1" in report.format()


def test_report_json():
    report = doctor.DoctorReport("x", [CheckResult("a", Status.FAIL, "broken", "mend")])
    assert report.to_json() == {"url": "x", "ok": False,
                                "checks": [{"check": "a", "status": "fail", "message": "broken", "fix": "mend"}]}


# --- command line -------------------------------------------------------------------------------


def test_cli_doctor_sim(capsys):
    assert main(["doctor", "sim"]) == 0
    assert "all checks passed" in capsys.readouterr().out


def test_cli_doctor_devport_missing_node(tmp_path, capsys):
    assert main(["doctor", f"devport:?port={tmp_path / 'port'}", "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    port = next(c for c in out["checks"] if c["check"] == "port device")
    assert port["status"] == "fail" and "CONFIG_DEVPORT" in port["message"]


def test_cli_doctor_help_lists_exit_codes(capsys):
    with pytest.raises(SystemExit):
        main(["doctor", "--help"])
    assert "0 all checks passed" in capsys.readouterr().out


def test_host_is_replaceable_field_by_field():
    h = dataclasses.replace(Host(), lockdown_path="/x")
    assert h.lockdown_path == "/x" and h.open is os.open
