"""Operations of an ``execute()`` program.

A program is an ordered sequence of these; a backend runs it atomically with respect to other
users of the same backend and returns one result per *reading* operation (:class:`In` gives an
int, :class:`MemRead` gives bytes, :class:`Poll` gives the last value read). One program is one
round trip on a link, which is why the driver layer builds whole programming sequences as one
program. Operations validate themselves on construction, so a bad program is refused before
anything touches hardware.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hil.errors import InvalidAccessError, InvalidPortError, InvalidWidthError, ValueWidthError

WIDTHS = (8, 16)


def check_port(port: object, width: int = 8) -> int:
    if type(port) is not int or not 0 <= port <= 0xFFFF or (width == 16 and port == 0xFFFF):
        raise InvalidPortError(port)
    return port


def check_width(width: object) -> int:
    if width not in WIDTHS:
        raise InvalidWidthError(width)
    return width


def check_value(value: object, width: int, port: int | None = None) -> int:
    if type(value) is not int or not 0 <= value < (1 << width):
        raise ValueWidthError(value, width, port)
    return value


def _check_addr(addr: object, length: object) -> None:
    if type(addr) is not int or addr < 0:
        raise InvalidAccessError(f"memory address {addr!r} must be a non-negative integer")
    if type(length) is not int or length < 0:
        raise InvalidAccessError(f"memory length {length!r} must be a non-negative integer")


@dataclass(frozen=True, slots=True)
class Out:
    port: int
    value: int
    width: int = 8

    def __post_init__(self) -> None:
        check_width(self.width)
        check_port(self.port, self.width)
        check_value(self.value, self.width, self.port)


@dataclass(frozen=True, slots=True)
class In:
    port: int
    width: int = 8

    def __post_init__(self) -> None:
        check_width(self.width)
        check_port(self.port, self.width)


@dataclass(frozen=True, slots=True)
class MemWrite:
    addr: int
    data: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.data, (bytes, bytearray, memoryview)):
            raise InvalidAccessError(f"memory write data must be bytes, not {type(self.data).__name__}")
        _check_addr(self.addr, len(self.data))


@dataclass(frozen=True, slots=True)
class MemRead:
    addr: int
    length: int

    def __post_init__(self) -> None:
        _check_addr(self.addr, self.length)


@dataclass(frozen=True, slots=True)
class MemFill:
    addr: int
    length: int
    value: int = 0

    def __post_init__(self) -> None:
        _check_addr(self.addr, self.length)
        check_value(self.value, 8)


@dataclass(frozen=True, slots=True)
class Delay:
    """Let ``us`` microseconds pass (virtual time in the simulator, wall time on hardware)."""

    us: float

    def __post_init__(self) -> None:
        if not isinstance(self.us, (int, float)) or self.us < 0:
            raise InvalidAccessError(f"delay {self.us!r} us must be a non-negative number")


@dataclass(frozen=True, slots=True)
class Poll:
    """Read ``port`` until ``value & mask == expect`` or ``timeout_us`` passes.

    The result is the last value read; a timeout is not an error at this level (the caller
    compares), so that a poll inside a program never aborts the rest of it. Beware the
    flip-flop: polling an address or count port toggles it on every read.
    """

    port: int
    mask: int
    expect: int
    timeout_us: float
    interval_us: float = 10.0
    width: int = 8

    def __post_init__(self) -> None:
        check_width(self.width)
        check_port(self.port, self.width)
        check_value(self.mask, self.width, self.port)
        check_value(self.expect, self.width, self.port)
        if self.timeout_us < 0 or self.interval_us <= 0:
            raise InvalidAccessError("poll timeout must be >= 0 and interval > 0 microseconds")


@dataclass(frozen=True, slots=True)
class Settle:
    """Run until no DMA activity can progress (virtual time in the sim; polling on hardware)."""

    timeout_us: float = 10e6


# --- simulated devices (capability ``devices``): device control travels in programs too, so a
# --- simulator behind an agent link is driven exactly like one in process


@dataclass(frozen=True, slots=True)
class DevAttach:
    """Attach a ``source`` (``data`` to memory) or a ``sink`` (collects up to ``capacity``)."""

    channel: int
    kind: str
    data: bytes = b""
    dreq: bool = True
    capacity: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("source", "sink"):
            raise InvalidAccessError(f"device kind {self.kind!r}: use source or sink")
        if type(self.channel) is not int or self.channel not in range(8):
            raise InvalidAccessError(f"device channel {self.channel!r} is not 0-7")


@dataclass(frozen=True, slots=True)
class DevAppend:
    """More data for a source attached earlier (how large sources cross a frame-sized link)."""

    channel: int
    data: bytes


@dataclass(frozen=True, slots=True)
class DevDreq:
    channel: int
    level: bool


@dataclass(frozen=True, slots=True)
class DevState:
    """Read a device's counters and what a sink received (the first ``max_bytes`` of it)."""

    channel: int
    max_bytes: int = 4096


@dataclass(frozen=True, slots=True)
class PowerReset:
    """Simulated power loss of both controllers (what suspend to RAM does to a chipset)."""


@dataclass(frozen=True, slots=True)
class DeviceState:
    kind: str  #: "source", "sink" or "none"
    tc_count: int = 0
    moved: int = 0  #: bytes sent (source) or received (sink)
    underruns: int = 0
    overruns: int = 0
    digest: str = ""  #: sha256 of everything a sink received
    head: bytes = b""  #: the first bytes a sink received


Op = Out | In | MemWrite | MemRead | MemFill | Delay | Poll | Settle | DevAttach | DevAppend | DevDreq | DevState | PowerReset
Result = int | bytes | DeviceState
READING_OPS = (In, MemRead, Poll, DevState)
ALL_OPS = (Out, In, MemWrite, MemRead, MemFill, Delay, Poll, Settle, DevAttach, DevAppend, DevDreq, DevState, PowerReset)
DEVICE_OPS = (DevAttach, DevAppend, DevDreq, DevState, PowerReset)


def check_program(ops: Sequence[object]) -> None:
    for i, op in enumerate(ops):
        if not isinstance(op, ALL_OPS):
            raise InvalidAccessError(f"program step {i}: {op!r} is not an operation")
