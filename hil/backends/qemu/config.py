"""The ``qemu:`` URL's options, read and checked into a :class:`QemuConfig` before anything runs."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

from hil.allowlist import AllowListError, parse_range
from hil.backends import BackendURL
from hil.backends.qemu.process import check_args
from hil.errors import BackendOptionError
from hil.ports import DMA_PORT_RANGES
from hil.records import dataclass

FDC_PORTS = range(0x3F0, 0x3F8)
SB16_PORTS = range(0x220, 0x230)

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


def parse_config(url: BackendURL) -> QemuConfig:
    """The options of ``url`` as a :class:`QemuConfig`; a bad one is a :class:`~hil.errors.BackendOptionError`."""
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
    return QemuConfig(**cfg)

