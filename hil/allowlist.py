"""What a hardware-facing backend or agent may touch: I/O port ranges and physical memory windows.

Anything else is refused *before* it reaches the kernel or the wire (docs/reference/hil-lessons.md §3.21):
a stray write to the wrong port on a live board can hang it. The default allows the DMA
subsystem of an AT only (both controllers with DMA1's mirror, the page file); extra devices such
as a floppy controller are opt-in through a TOML file (see configs/allowlist.example.toml).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Sequence
from pathlib import Path

from hil.errors import (
    AccessDeniedError,
    AllowListError as AllowListError,  # defined there; importable from here as before
    MemoryRangeError,
)
from hil.ops import Op, memory_access, port_access
from hil.ports import DMA_LIMIT, DMA_PORT_RANGES
from hil.records import dataclass


def _fmt(r: range) -> str:
    return f"0x{r.start:X}-0x{r.stop - 1:X}"


def _fmt_window(r: range) -> str:
    return f"0x{r.start:X}-0x{r.stop:X}"


def parse_window(text: str) -> range:
    """A memory window: ``"0x10000-0x90000"`` (END exclusive, like ``Capabilities.memory_window``)
    or ``"0x10000+0x80000"`` (START+SIZE). Memory is named by where it ends; ports (below) by the
    last port, because that is how datasheets list them."""
    # a "+" in a URL query arrives as a space (form encoding), so a space means "+" too
    m = re.fullmatch(r"\s*(0x[0-9a-fA-F]+|\d+)\s*(-|\+|\s)\s*(0x[0-9a-fA-F]+|\d+)\s*", text)
    if not m:
        raise AllowListError(f"window {text!r} is not START-END or START+SIZE (e.g. 0x10000-0x90000)")
    start, second = int(m.group(1), 0), int(m.group(3), 0)
    end = second if m.group(2) == "-" else start + second
    if end <= start:
        raise AllowListError(f"window {text!r} is empty: END must be above START (END is exclusive)")
    if end > DMA_LIMIT:
        raise AllowListError(f"window {text!r} ends at 0x{end:X}, above 0x{DMA_LIMIT:X}: ISA DMA reaches only the low 16 MiB")
    return range(start, end)


def parse_range(text: str, where: str = "range") -> range:
    """A port range: ``"0x3F0-0x3F7"`` (inclusive: the last port) or a single ``"0x80"``."""
    m = re.fullmatch(r"\s*(0x[0-9a-fA-F]+|\d+)\s*(?:-\s*(0x[0-9a-fA-F]+|\d+))?\s*", text)
    if not m:
        raise AllowListError(f"{where}: {text!r} is not a range such as 0x3F0-0x3F7")
    lo = int(m.group(1), 0)
    hi = int(m.group(2), 0) if m.group(2) else lo
    if hi < lo:
        raise AllowListError(f"{where}: {text!r} ends before it starts")
    return range(lo, hi + 1)


@dataclass(frozen=True)
class AllowList:
    ports: tuple[range, ...] = DMA_PORT_RANGES
    memory: tuple[range, ...] = ()

    @classmethod
    def default(cls, memory: Iterable[range] = ()) -> AllowList:
        return cls(DMA_PORT_RANGES, tuple(memory))

    @classmethod
    def from_toml(cls, path: str | Path) -> AllowList:
        file = Path(path)
        try:
            doc = tomllib.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise AllowListError(f"{file}: allow-list file not found") from None
        except tomllib.TOMLDecodeError as e:
            raise AllowListError(f"{file}: not valid TOML: {e}") from None
        extra = set(doc) - {"ports", "memory"}
        if extra:
            raise AllowListError(f"{file}: unknown table [{sorted(extra)[0]}]; expected [ports] and [memory]")
        ports_t, mem_t = doc.get("ports", {}), doc.get("memory", {})
        for name, table, keys in (("ports", ports_t, {"dma", "extra"}), ("memory", mem_t, {"windows"})):
            if not isinstance(table, dict) or set(table) - keys:
                raise AllowListError(f"{file}: [{name}] accepts {', '.join(sorted(keys))}")
        ports: list[range] = list(DMA_PORT_RANGES) if ports_t.get("dma", True) else []
        ports += [parse_range(t, f"{file}: ports.extra") for t in _strings(ports_t.get("extra", []), file, "ports.extra")]
        try:
            mem = [parse_window(t) for t in _strings(mem_t.get("windows", []), file, "memory.windows")]
        except AllowListError as e:
            raise AllowListError(f"{file}: memory.windows: {e}") from None
        return cls(tuple(ports), tuple(mem))

    def with_memory(self, windows: Sequence[range]) -> AllowList:
        return AllowList(self.ports, tuple(windows))

    def with_ports(self, extra: Sequence[range]) -> AllowList:
        """The list with more port ranges (those of an I/O backend's devices, for ``hil agent``)."""
        return AllowList((*self.ports, *extra), self.memory)

    def port_allowed(self, port: int, width: int = 8) -> bool:
        last = port + width // 8 - 1
        return any(port in r and last in r for r in self.ports)

    def mem_allowed(self, addr: int, length: int) -> bool:
        if length == 0:
            return any(addr in r or addr == r.stop for r in self.memory)
        return any(addr in r and addr + length - 1 in r for r in self.memory)

    def check_port(self, port: int, width: int = 8, *, write: bool) -> None:
        if not self.port_allowed(port, width):
            verb = "write to" if write else "read of"
            raise AccessDeniedError(
                f"{verb} port 0x{port:04X} ({width}-bit) refused: outside the allow-list "
                f"({', '.join(_fmt(r) for r in self.ports) or 'empty'}); add it under [ports] extra"
            )

    def check_mem(self, addr: int, length: int) -> None:
        if not self.mem_allowed(addr, length):
            windows = ", ".join(_fmt_window(r) for r in self.memory) or "none configured"
            raise MemoryRangeError(
                addr, length, max((r.stop for r in self.memory), default=0), windows=self.memory,
                message=f"memory 0x{addr:X}+0x{length:X} refused: outside the allowed window(s) ({windows})",
            )

    def check(self, ops: Iterable[Op]) -> None:
        """Refuse a whole program before any of it runs."""
        for op in ops:
            if (io := port_access(op)) is not None:
                self.check_port(io.port, io.width, write=io.write)
            if (mem := memory_access(op)) is not None:
                self.check_mem(mem.addr, mem.length)

    def describe(self) -> str:
        mem = ", ".join(_fmt_window(r) for r in self.memory) or "none"
        return f"ports {', '.join(_fmt(r) for r in self.ports)}; memory {mem}"


def _strings(value: object, file: Path, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise AllowListError(f"{file}: {key} must be a list of strings such as \"0x3F0-0x3F7\"")
    return value
