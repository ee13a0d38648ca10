"""The program vocabulary: the operations of an ``execute()`` program, and the one table of them.

A program is an ordered sequence of these; a backend runs it atomically with respect to other
users of the same backend and returns one result per *reading* operation (:class:`In` gives an
int, :class:`MemRead` gives bytes, :class:`Poll` gives the last value read, :class:`DevState` a
:class:`DeviceState`, :class:`IrqState` and :class:`WaitIrq` an :class:`IrqLines`). One program is
one round trip on a link, which is why the driver layer builds whole programming sequences as
one program. Operations validate themselves on construction, so a bad program is refused before
anything touches hardware.

Operations are behaviourless dataclasses, so everything that must know *which* operation it has
asks :data:`TABLE` rather than switching over the classes: what an op reads, which port and
memory it touches, whether it is a device op, how long it may wait, and its encoding on the agent
wire. The wire part (opcode, request and reply :class:`struct.Struct`) lives in the same row
although only :mod:`hil.agent.protocol` frames it, because it is as much a property of the op as
its fields are: with one row per op, the codec and every size planned from it (the agent client's
frames, the agent's reply budget) cannot drift apart, and a new op is one row here plus the
backends that run it. The framing, status codes and the loop over a program stay in the
protocol module. This module is the bottom layer: it imports nothing of ``hil`` but the errors
and the port map.
"""

from __future__ import annotations

import enum
import struct
import typing
from collections.abc import Callable, Sequence
from dataclasses import field
from typing import Any

from hil.errors import InvalidAccessError, InvalidPortError, InvalidWidthError, ValueWidthError
from hil.ports import CHANNELS
from hil.records import dataclass

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
        if isinstance(self.data, memoryview) and (self.data.itemsize != 1 or self.data.ndim != 1):
            # len() of such a view counts items, not bytes: the write would not be the length
            # every check (and the agent's size table) takes it for
            raise InvalidAccessError(f"memory write data must be bytes; a memoryview of {self.data.format!r} "
                                     f"items in {self.data.ndim} dimension(s) is not (use .cast('B'))")
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
    compares, with :meth:`met`), so that a poll inside a program never aborts the rest of it.
    Beware the flip-flop: polling an address or count port toggles it on every read.
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

    def met(self, value: int) -> bool:
        """Whether ``value`` (the result) satisfies the poll's condition."""
        return value & self.mask == self.expect


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
        if type(self.channel) is not int or self.channel not in CHANNELS:
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


# --- interrupt lines (capability ``irq``): observed in programs too, so that waiting for an IRQ
# --- is one round trip on a link, and the state of every line can ride along with a program

IRQ_LINES = 16  #: ISA IRQ 0-15 (docs/reference/8259.md §1)


def _check_line(line: object) -> int:
    if type(line) is not int or not 0 <= line < IRQ_LINES:
        raise InvalidAccessError(f"IRQ line {line!r}: ISA interrupt lines are 0-{IRQ_LINES - 1}")
    return line


@dataclass(frozen=True, slots=True)
class IrqState:
    """Read the level and rising-edge count of every IRQ line (an :class:`IrqLines`)."""


@dataclass(frozen=True, slots=True)
class WaitIrq:
    """Wait until IRQ ``line`` is at ``level`` or ``timeout_us`` passes (virtual time in the sim).

    The result is the :class:`IrqLines` after the wait; a timeout is not an error at this level
    (:meth:`reached` says which it was), for the same reason as a :class:`Poll`'s."""

    line: int
    level: bool = True
    timeout_us: float = 1e6

    def __post_init__(self) -> None:
        _check_line(self.line)
        if type(self.level) is not bool:
            raise InvalidAccessError(f"wait_irq level {self.level!r} must be true or false")
        if not isinstance(self.timeout_us, (int, float)) or self.timeout_us < 0:
            raise InvalidAccessError(f"wait_irq timeout {self.timeout_us!r} us must be a non-negative number")

    def reached(self, lines: IrqLines) -> bool:
        """Whether the wait ended at the level (a wait that times out ends at the other one)."""
        return lines.level(self.line) == self.level


@dataclass(frozen=True, slots=True)
class IrqLines:
    """The IRQ lines as a backend observes them: ``levels`` bit *n* is line *n*'s level,
    ``counts[n]`` its rising edges since reset (or since the backend opened, where it cannot
    see a reset: qemu)."""

    levels: int = 0
    counts: tuple[int, ...] = (0,) * IRQ_LINES

    def level(self, line: int) -> bool:
        return bool(self.levels >> _check_line(line) & 1)

    def count(self, line: int) -> int:
        return self.counts[_check_line(line)]


@dataclass(frozen=True, slots=True)
class DeviceState:
    kind: str  #: "source", "sink" or "none"
    tc_count: int = 0
    moved: int = 0  #: bytes sent (source) or received (sink)
    underruns: int = 0
    overruns: int = 0
    digest: str = ""  #: sha256 of everything a sink received
    head: bytes = b""  #: the first bytes a sink received


Op = (Out | In | MemWrite | MemRead | MemFill | Delay | Poll | Settle | DevAttach | DevAppend | DevDreq | DevState
      | PowerReset | IrqState | WaitIrq)
Result = int | bytes | DeviceState | IrqLines
#: every operation class, in the order of the :data:`Op` union (the table must cover exactly these)
ALL_OPS: tuple[type, ...] = typing.get_args(Op)


# --- traits -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PortAccess:
    """The I/O port an op touches."""

    port: int
    width: int
    write: bool
    value: int = 0  #: what a write writes (reads: 0)

    @property
    def last(self) -> int:
        """The highest port the access touches (a 16-bit access touches two)."""
        return self.port + self.width // 8 - 1


@dataclass(frozen=True, slots=True)
class MemoryAccess:
    """The physical memory an op touches: ``length`` bytes from ``addr``."""

    addr: int
    length: int


@dataclass(frozen=True, slots=True)
class DeviceUse:
    """How a device op relates to the device on its channel: ``attaches`` one of that kind, or
    needs one there (``feeds``: a source, which takes more data)."""

    channel: int
    attaches: str | None = None
    feeds: bool = False


# --- the wire part ------------------------------------------------------------------------


class Opcode(enum.IntEnum):
    """Agent wire opcodes (docs/agent-protocol.md); the operands are each :class:`Wire`'s structs."""

    OUT8 = 0x01  #: port:u16 value:u8
    OUT16 = 0x02  #: port:u16 value:u16
    IN8 = 0x03  #: port:u16                           -> u8
    IN16 = 0x04  #: port:u16                          -> u16
    MEM_WRITE = 0x05  #: addr:u32 len:u16 data[len]
    MEM_READ = 0x06  #: addr:u32 len:u16               -> data[len]
    MEM_FILL = 0x07  #: addr:u32 len:u32 value:u8
    DELAY = 0x08  #: us:u32
    POLL = 0x09  #: port:u16 width:u8 mask:u16 expect:u16 timeout_us:u32 interval_us:u32 -> value:u16 met:u8
    SETTLE = 0x0A  #: timeout_us:u32
    DEV_ATTACH = 0x10  #: channel:u8 kind:u8 (1 source, 2 sink) dreq:u8 capacity:u32 (0xFFFFFFFF: none) len:u16 data[len]
    DEV_APPEND = 0x11  #: channel:u8 len:u16 data[len]
    DEV_DREQ = 0x12  #: channel:u8 level:u8
    DEV_STATE = 0x13  #: channel:u8 max_bytes:u16 -> kind:u8 tc:u32 moved:u32 under:u32 over:u32 digest[32] n:u16 head[n]
    POWER_RESET = 0x14  #: (none)
    IRQ_STATE = 0x20  #: (none)                     -> levels:u16 counts:16*u16 (mod 65536)
    WAIT_IRQ = 0x21  #: line:u8 level:u8 timeout_us:u32 -> levels:u16 counts:16*u16 (mod 65536)


DEVICE_KINDS = {"source": 1, "sink": 2}
DEVICE_KIND_NAMES = {v: k for k, v in DEVICE_KINDS.items()}
NO_CAPACITY = 0xFFFFFFFF
_U32 = 0xFFFFFFFF

Operands = tuple[Any, ...]


def _no_limit(op: Any) -> str | None:
    return None


def _no_tail(op: Any, fields: Operands) -> int:
    return 0


def _no_extra(op: Any) -> int:
    return 0


@dataclass(frozen=True, slots=True)
class Wire:
    """One opcode: how its op is encoded in an EXEC program and its result in the EXEC_REPLY.

    ``request`` holds the operands after the opcode byte; an op with ``data`` carries its length
    as the struct's last field and the bytes after it. ``reply`` is the fixed part of the result
    (None: the op returns nothing); ``reply_extra`` the most bytes that follow it, and
    ``reply_tail`` how many do, once the fixed part is decoded.
    """

    opcode: Opcode
    request: struct.Struct
    operands: Callable[[Any], Operands]  #: the fixed operands, without the data length
    build: Callable[[Operands, bytes], Any]  #: operands (and data) -> the op; raises for bad ones
    data: Callable[[Any], bytes] | None = None
    #: refuses bad fixed operands before the data is read (raises like ``build``)
    check: Callable[[Operands], object] | None = None
    limit: Callable[[Any], str | None] = _no_limit  #: why an op cannot be encoded (too large), if it cannot
    reply: struct.Struct | None = None
    reply_fields: Callable[[Any, Any, bool], tuple[Operands, bytes]] | None = None  #: (op, result, met) -> fixed, tail
    reply_extra: Callable[[Any], int] = _no_extra
    reply_tail: Callable[[Any, Operands], int] = _no_tail
    result: Callable[[Any, Operands, bytes], Any] | None = None  #: (op, fixed, tail) -> the result
    met: bool = False  #: the reply also says whether the poll's condition was met

    def request_size(self, op: Any) -> int:
        return 1 + self.request.size + (len(self.data(op)) if self.data is not None else 0)

    def reply_size(self, op: Any) -> int:
        """Most bytes of the op's result in an EXEC_REPLY (exact but for a DevState's head)."""
        return 0 if self.reply is None else self.reply.size + self.reply_extra(op)


@dataclass(frozen=True, slots=True)
class OpSpec:
    """One row of :data:`TABLE`: everything about an op class that is not its fields."""

    cls: type
    wires: tuple[Wire, ...]
    pick: Callable[[Any], int] = _no_extra  #: which of ``wires`` encodes an op (Out/In: by width)
    result: type | None = None  #: reading ops: the type of their result
    port: Callable[[Any], PortAccess] | None = None
    memory: Callable[[Any], MemoryAccess] | None = None
    device: bool = False  #: a simulated-device op (capability ``devices``)
    device_use: Callable[[Any], DeviceUse] | None = None
    irq: bool = False  #: an interrupt-line op (capability ``irq``)
    #: the op's durations in µs, named for error messages; the first is how long the op may take
    times: tuple[tuple[str, Callable[[Any], float]], ...] = ()
    #: wire opcodes of this row, filled in from ``wires``
    opcodes: tuple[Opcode, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "opcodes", tuple(w.opcode for w in self.wires))

    def wire(self, op: Any) -> Wire:
        return self.wires[self.pick(op)]


def _us(value: float) -> int:
    return min(_U32, round(value))


def _by_width(op: Any) -> int:
    return 0 if op.width == 8 else 1


def _too_long(what: str) -> Callable[[Any], str | None]:
    def limit(op: Any) -> str | None:
        return what if len(op.data) > 0xFFFF else None
    return limit


def _memread_limit(op: MemRead) -> str | None:
    return "a MEM_READ op reads at most 65535 bytes; split it" if op.length > 0xFFFF else None


def _device_kind(code: int) -> str:
    if code not in DEVICE_KIND_NAMES:
        raise InvalidAccessError(f"unknown device kind {code}")
    return DEVICE_KIND_NAMES[code]


def _state_fields(op: DevState, st: DeviceState, met: bool) -> tuple[Operands, bytes]:
    kind = {"none": 0, **DEVICE_KINDS}.get(st.kind, 0)
    digest = bytes.fromhex(st.digest.split(":", 1)[1]) if st.digest else bytes(32)
    head = st.head[: op.max_bytes]
    return (kind, st.tc_count, st.moved, st.underruns, st.overruns, digest, len(head)), head


def _state(op: DevState, f: Operands, head: bytes) -> DeviceState:
    kind = {0: "none", **DEVICE_KIND_NAMES}.get(f[0], "none")
    return DeviceState(kind, f[1], f[2], f[3], f[4], "sha256:" + f[5].hex() if kind == "sink" else "", head)


def _lines_fields(op: Any, lines: IrqLines, met: bool) -> tuple[Operands, bytes]:
    return (lines.levels & 0xFFFF, *(c & 0xFFFF for c in lines.counts)), b""


def _lines(op: Any, f: Operands, tail: bytes) -> IrqLines:
    return IrqLines(f[0], tuple(f[1:]))


#: the wire carries counts modulo 65536; :meth:`hil.agent.client.AgentBackend` unwraps them
_IRQ_REPLY: dict[str, Any] = {"reply": struct.Struct("<H16H"), "reply_fields": _lines_fields, "result": _lines}


def _int_reply(fmt: str) -> dict[str, Any]:
    return {"reply": struct.Struct(fmt), "reply_fields": lambda op, v, met: ((v,), b""),
            "result": lambda op, f, tail: f[0]}


_S = struct.Struct

#: op class -> its row; the order is the :data:`Op` union's
TABLE: dict[type, OpSpec] = {spec.cls: spec for spec in (
    OpSpec(Out, (
        Wire(Opcode.OUT8, _S("<HB"), lambda op: (op.port, op.value), lambda f, d: Out(f[0], f[1], 8)),
        Wire(Opcode.OUT16, _S("<HH"), lambda op: (op.port, op.value), lambda f, d: Out(f[0], f[1], 16)),
    ), pick=_by_width, port=lambda op: PortAccess(op.port, op.width, True, op.value)),
    OpSpec(In, (
        Wire(Opcode.IN8, _S("<H"), lambda op: (op.port,), lambda f, d: In(f[0], 8), **_int_reply("<B")),
        Wire(Opcode.IN16, _S("<H"), lambda op: (op.port,), lambda f, d: In(f[0], 16), **_int_reply("<H")),
    ), pick=_by_width, result=int, port=lambda op: PortAccess(op.port, op.width, False)),
    OpSpec(MemWrite, (
        Wire(Opcode.MEM_WRITE, _S("<IH"), lambda op: (op.addr,), lambda f, d: MemWrite(f[0], d),
             data=lambda op: bytes(op.data), limit=_too_long("a MEM_WRITE op carries at most 65535 bytes; split it")),
    ), memory=lambda op: MemoryAccess(op.addr, len(op.data))),
    OpSpec(MemRead, (
        Wire(Opcode.MEM_READ, _S("<IH"), lambda op: (op.addr, op.length), lambda f, d: MemRead(f[0], f[1]),
             limit=_memread_limit, reply=_S("<"), reply_fields=lambda op, v, met: ((), bytes(v)),
             reply_extra=lambda op: op.length, reply_tail=lambda op, f: op.length,
             result=lambda op, f, tail: tail),
    ), result=bytes, memory=lambda op: MemoryAccess(op.addr, op.length)),
    OpSpec(MemFill, (
        Wire(Opcode.MEM_FILL, _S("<IIB"), lambda op: (op.addr, op.length, op.value),
             lambda f, d: MemFill(f[0], f[1], f[2])),
    ), memory=lambda op: MemoryAccess(op.addr, op.length)),
    OpSpec(Delay, (
        Wire(Opcode.DELAY, _S("<I"), lambda op: (_us(op.us),), lambda f, d: Delay(f[0])),
    ), times=(("delay", lambda op: op.us),)),
    OpSpec(Poll, (
        Wire(Opcode.POLL, _S("<HBHHII"),
             lambda op: (op.port, op.width, op.mask, op.expect, _us(op.timeout_us), max(1, _us(op.interval_us))),
             lambda f, d: Poll(f[0], f[2], f[3], f[4], max(1, f[5]), f[1]),
             reply=_S("<HB"), reply_fields=lambda op, v, met: ((v, 1 if met else 0), b""),
             result=lambda op, f, tail: f[0], met=True),
    ), result=int, port=lambda op: PortAccess(op.port, op.width, False),
        times=(("poll timeout", lambda op: op.timeout_us), ("poll interval", lambda op: op.interval_us))),
    OpSpec(Settle, (
        Wire(Opcode.SETTLE, _S("<I"), lambda op: (_us(op.timeout_us),), lambda f, d: Settle(f[0])),
    ), times=(("settle timeout", lambda op: op.timeout_us),)),
    OpSpec(DevAttach, (
        Wire(Opcode.DEV_ATTACH, _S("<BBBIH"),
             lambda op: (op.channel, DEVICE_KINDS[op.kind], int(op.dreq),
                         NO_CAPACITY if op.capacity is None else op.capacity),
             lambda f, d: DevAttach(f[0], _device_kind(f[1]), d, bool(f[2]), None if f[3] == NO_CAPACITY else f[3]),
             data=lambda op: bytes(op.data), check=lambda f: _device_kind(f[1]),
             limit=_too_long("DEV_ATTACH carries at most 65535 bytes; send the rest with DEV_APPEND")),
    ), device=True, device_use=lambda op: DeviceUse(op.channel, attaches=op.kind)),
    OpSpec(DevAppend, (
        Wire(Opcode.DEV_APPEND, _S("<BH"), lambda op: (op.channel,), lambda f, d: DevAppend(f[0], d),
             data=lambda op: bytes(op.data)),
    ), device=True, device_use=lambda op: DeviceUse(op.channel, feeds=True)),
    OpSpec(DevDreq, (
        Wire(Opcode.DEV_DREQ, _S("<BB"), lambda op: (op.channel, int(op.level)), lambda f, d: DevDreq(f[0], bool(f[1]))),
    ), device=True, device_use=lambda op: DeviceUse(op.channel)),
    OpSpec(DevState, (
        Wire(Opcode.DEV_STATE, _S("<BH"), lambda op: (op.channel, op.max_bytes), lambda f, d: DevState(f[0], f[1]),
             reply=_S("<BIIII32sH"), reply_fields=_state_fields, reply_extra=lambda op: op.max_bytes,
             reply_tail=lambda op, f: f[-1], result=_state),
    ), result=DeviceState, device=True, device_use=lambda op: DeviceUse(op.channel)),
    OpSpec(PowerReset, (
        Wire(Opcode.POWER_RESET, _S("<"), lambda op: (), lambda f, d: PowerReset()),
    ), device=True),
    OpSpec(IrqState, (
        Wire(Opcode.IRQ_STATE, _S("<"), lambda op: (), lambda f, d: IrqState(), **_IRQ_REPLY),
    ), result=IrqLines, irq=True),
    OpSpec(WaitIrq, (
        Wire(Opcode.WAIT_IRQ, _S("<BBI"), lambda op: (op.line, int(op.level), _us(op.timeout_us)),
             lambda f, d: WaitIrq(f[0], bool(f[1]), f[2]), **_IRQ_REPLY),
    ), result=IrqLines, irq=True, times=(("wait_irq timeout", lambda op: op.timeout_us),)),
)}

#: opcode -> its wire form
BY_OPCODE: dict[int, Wire] = {w.opcode: w for spec in TABLE.values() for w in spec.wires}


def table_gaps(union: object = Op, table: dict[type, OpSpec] = TABLE) -> tuple[set[type], set[type]]:
    """(op classes of ``union`` without a row, rows for classes not in ``union``)."""
    classes = set(typing.get_args(union))
    return classes - set(table), set(table) - classes


def _check_table() -> None:
    missing, extra = table_gaps()
    if missing or extra:
        raise TypeError(f"hil.ops.TABLE does not cover the Op union: missing {sorted(c.__name__ for c in missing)}, "
                        f"extra {sorted(c.__name__ for c in extra)}")
    if len(BY_OPCODE) != sum(len(s.wires) for s in TABLE.values()):
        raise TypeError("hil.ops.TABLE: two wire forms share an opcode")


_check_table()

READING_OPS: tuple[type, ...] = tuple(cls for cls, spec in TABLE.items() if spec.result is not None)
DEVICE_OPS: tuple[type, ...] = tuple(cls for cls, spec in TABLE.items() if spec.device)
IRQ_OPS: tuple[type, ...] = tuple(cls for cls, spec in TABLE.items() if spec.irq)


def spec_of(op: object) -> OpSpec | None:
    """The row of ``op``'s class (or of the operation class it derives from); None: not an op."""
    spec = TABLE.get(type(op))
    if spec is None:
        spec = next((TABLE[k] for k in type(op).__mro__ if k in TABLE), None)
    return spec


# The traits answer for anything: what is not an operation reads, touches and waits for nothing
# (``check_program`` is where a program refuses it).
_NONE = OpSpec(object, ())


def row_of(op: object) -> OpSpec:
    """``op``'s row of :data:`TABLE`, or a row with no traits for anything that is not an op: the
    one lookup a loop over a long program makes per op before reading several traits."""
    return TABLE.get(type(op)) or spec_of(op) or _NONE


_spec = row_of


def is_reading(op: object) -> bool:
    """Whether ``op`` returns a result (one per reading op, in program order)."""
    return _spec(op).result is not None


def is_device_op(op: object) -> bool:
    return _spec(op).device


def is_irq_op(op: object) -> bool:
    return _spec(op).irq


def port_access(op: object) -> PortAccess | None:
    get = _spec(op).port
    return None if get is None else get(op)


def memory_access(op: object) -> MemoryAccess | None:
    get = _spec(op).memory
    return None if get is None else get(op)


def device_use(op: object) -> DeviceUse | None:
    get = _spec(op).device_use
    return None if get is None else get(op)


def durations(op: object) -> list[tuple[str, float]]:
    """The op's named durations in µs (a Poll has its timeout and its interval)."""
    return [(name, get(op)) for name, get in _spec(op).times]


def wait_us(op: object) -> float:
    """How long ``op`` may take by its operands (DELAY, POLL timeout, SETTLE timeout), in µs."""
    times = _spec(op).times
    return times[0][1](op) if times else 0.0


def wire_of(op: object) -> Wire:
    """``op``'s wire form; raises InvalidAccessError for what is not an operation."""
    spec = TABLE.get(type(op)) or spec_of(op)  # the dict lookup first: this is on every op's path
    if spec is None:
        raise InvalidAccessError(f"{op!r} is not an operation")
    wires = spec.wires
    return wires[0] if len(wires) == 1 else wires[spec.pick(op)]


def request_size(op: object) -> int:
    """Bytes of ``op`` in an EXEC program (its opcode included)."""
    return wire_of(op).request_size(op)


def result_size(op: object) -> int:
    """Most bytes of ``op``'s result in an EXEC_REPLY (0: it returns nothing)."""
    return wire_of(op).reply_size(op)


def check_program(ops: Sequence[object]) -> None:
    for i, op in enumerate(ops):
        if type(op) not in TABLE and spec_of(op) is None:
            raise InvalidAccessError(f"program step {i}: {op!r} is not an operation")


__all__ = [
    "ALL_OPS", "BY_OPCODE", "DEVICE_KINDS", "DEVICE_OPS", "IRQ_LINES", "IRQ_OPS", "NO_CAPACITY",
    "READING_OPS", "TABLE", "WIDTHS", "Delay", "DevAppend", "DevAttach", "DevDreq", "DevState", "DeviceState",
    "DeviceUse", "In", "IrqLines", "IrqState", "MemFill", "MemRead", "MemWrite", "MemoryAccess", "Op",
    "OpSpec", "Opcode", "Out", "Poll", "PortAccess", "PowerReset", "Result", "Settle", "WaitIrq", "Wire",
    "check_port", "check_program", "check_value", "check_width", "device_use", "durations", "is_device_op",
    "is_irq_op", "is_reading", "memory_access", "port_access", "request_size", "result_size", "spec_of",
    "table_gaps", "wait_us", "wire_of",
]
