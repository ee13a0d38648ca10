"""hil.oserrors: the one place where OSError, pyserial and socket errors become typed HilErrors.

Each mapping is pinned through the code that uses it (a devport read the kernel refuses, a TCP
connect nobody answers, a serial device that is not there), and a static check keeps errno
formatting from growing back elsewhere in hil/.
"""

from __future__ import annotations

import ast
import dataclasses
import errno
import os
import socket
from pathlib import Path
from typing import Any

import pytest

from hil import oserrors
from hil.agent.links import LinkError, open_link
from hil.backends import BackendURL
from hil.backends.devport import DevPortBackend, Host, from_url
from hil.errors import BackendError, HilError

ROOT = Path(__file__).resolve().parent.parent


def devport(tmp_path: Path, **host: Any) -> tuple[DevPortBackend, Path]:
    port = tmp_path / "port"
    port.write_bytes(bytes(0x10000))
    stand_in = Host(lockdown_path=str(tmp_path / "no-lockdown"), proc_status_path=str(tmp_path / "no-status"),
                    iomem_path=str(tmp_path / "no-iomem"))
    return from_url(BackendURL.parse(f"devport:?port={port}"), dataclasses.replace(stand_in, **host)), port


async def test_a_port_read_the_kernel_refuses_names_the_access_and_errno(tmp_path: Path):
    def pread(fd: int, n: int, off: int) -> bytes:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    be, port = devport(tmp_path, pread=pread)
    async with be:
        with pytest.raises(BackendError) as info:
            await be.inb(0x08)
    assert str(info.value) == f"inb 0x0008 through {port} failed: Input/output error (errno 5)"


async def test_a_port_write_the_kernel_refuses_names_the_access_and_value(tmp_path: Path):
    def pwrite(fd: int, data: bytes, off: int) -> int:
        raise OSError(errno.ENXIO, os.strerror(errno.ENXIO))

    be, port = devport(tmp_path, pwrite=pwrite)
    async with be:
        with pytest.raises(BackendError) as info:
            await be.outb(0x0A, 0x05)
    assert str(info.value) == f"outb 0x000A,0x05 through {port} failed: No such device or address (errno 6)"


async def test_a_tcp_link_nobody_answers_is_one_link_error():
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(LinkError) as info:
        await open_link(f"tcp://127.0.0.1:{port}")
    message = str(info.value)
    assert message.startswith(f"tcp://127.0.0.1:{port}: cannot connect: ") and "\n" not in message
    assert "Errno" not in message  # the kernel's reason, not the repr of an OSError


async def test_a_missing_serial_device_is_one_link_error(tmp_path: Path):
    path = str(tmp_path / "ttyHIL-nope")
    with pytest.raises(LinkError) as info:
        await open_link(path)
    assert str(info.value).startswith(f"{path}: cannot open serial device: ")
    assert "No such file or directory" in str(info.value)


@pytest.mark.parametrize(("code", "expected"), [
    (errno.EADDRINUSE, "tcp://0.0.0.0:80: cannot listen: address already in use; is another agent running? "
                       "give another port, or 0 for any free one"),
    (errno.EACCES, "tcp://0.0.0.0:80: cannot listen: permission denied"),
])
def test_listen_errors_say_why_and_hint_only_at_a_port_in_use(code: int, expected: str):
    error = oserrors.listen_error("tcp://0.0.0.0:80", OSError(code, os.strerror(code)), LinkError)
    assert type(error) is LinkError and str(error) == expected


def test_a_start_step_names_the_errno_by_name_or_the_text_without_one():
    with_errno = oserrors.start_error("qemu: q", "cannot run /x/q", PermissionError(errno.EACCES, "Permission denied"),
                                      BackendError)
    assert str(with_errno) == "qemu: q: cannot run /x/q: Permission denied (EACCES)"
    without = oserrors.start_error("qemu: q", "cannot listen on /s", OSError("AF_UNIX path too long"), BackendError)
    assert str(without) == "qemu: q: cannot listen on /s: AF_UNIX path too long"


def test_the_class_is_the_callers_and_always_a_hil_error():
    for error in (oserrors.failure("/dev/x", "write failed", OSError(errno.EIO, "I/O error"), LinkError),
                  oserrors.connect_error("tcp://h:1", ConnectionRefusedError(errno.ECONNREFUSED, "refused"), LinkError),
                  oserrors.port_io_error("inb 0x0000", "/dev/port", OSError(errno.EIO, "I/O error"))):
        assert isinstance(error, HilError)
    assert str(oserrors.failure("", "qtest connection failed", OSError("reset"), BackendError)) == \
        "qtest connection failed: reset"


#: modules that still format an OSError's errno or strerror themselves, with the reason
ERRNO_FORMATTING_ALLOWED = {
    "hil/oserrors.py": "the one place",
    "hil/script/loader.py": "script file errors carry their rule field; the loader is being retyped (issue 12 item 2)",
    "hil/vm/guest.py": "the VM guest's /init: standard library only, it runs before hil can be imported",
}


def test_only_oserrors_formats_errno_or_strerror():
    offenders = []
    for path in sorted((ROOT / "hil").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel in ERRNO_FORMATTING_ALLOWED:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr in ("strerror", "errorcode"):
                offenders.append(f"{rel}:{node.lineno} .{node.attr}")
    assert offenders == [], "format OSErrors in hil/oserrors.py: " + ", ".join(offenders)
