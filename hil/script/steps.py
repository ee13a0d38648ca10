"""The step kinds of a transfer script, one frozen dataclass each (docs/scripts.md "Ops").

A step class is the whole description of its kind: its fields are the arguments the runner
gets, and each field's :func:`arg` metadata says which TOML keys it is read from, which value
kind checks it (range included), whether the key is required, and what it means. The loader
derives every step's allowed and required keys from these fields, and a test holds
docs/scripts.md to them, so a kind's keys are written down once. Adding a kind is an :class:`Op`
member, a class here, its case in :func:`hil.runner._run_step` and its section in the docs.

Fields that may name a buffer hold an :class:`~hil.script.expr.Expr` until binding (after the
DMA zone placed the buffers) replaces it with its value; the runner only sees bound steps.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterator
from dataclasses import field
from typing import Any, ClassVar

from hil.records import dataclass
from hil.script.expr import Expr


class Op(enum.StrEnum):
    OUT = "out"
    IN = "in"
    FILL = "fill"
    WRITE = "write"
    READ = "read"
    PROGRAM = "program"
    ENABLE = "enable"
    DISABLE = "disable"
    RESIDUE = "residue"
    WAIT_TC = "wait_tc"
    DEVICE = "device"
    DREQ = "dreq"
    DELAY = "delay"
    SETTLE = "settle"
    WAIT_IRQ = "wait_irq"
    IRQ = "irq"
    SUSPEND = "suspend"
    RESUME = "resume"
    REPEAT = "repeat"
    INCLUDE = "include"


class Kind(enum.Enum):
    """How the loader reads and checks one field; each has one reader in the loader."""

    WIDTH = "width"  #: 8 or 16
    PORT = "port"  #: 0..0xFFFF (one less for 16 bits), register name or deferred expression
    VALUE = "value"  #: 0..2^width-1, deferred expression; absent without a default: all ones
    ADDRESS = "address"  #: addr, or buffer (+ offset); also sets ``length`` and ``buffer``
    DATA = "data"  #: exactly one of hex, pattern + length, text, file; sets the ``length`` field
    SOURCE_DATA = "source_data"  #: DATA for a source device (its own ``length`` key); none for a sink
    PATTERN = "pattern"  #: non-empty hex byte pairs
    EXPECT_HEX = "expect_hex"  #: hex byte pairs, as many as the ``length`` field says
    DIGEST = "digest"  #: "sha256:<64 hex digits>"
    RECORD = "record"  #: "bytes" or "digest"
    CHANNEL = "channel"  #: 0..7; 4 (the cascade) only where ``hi`` is 7 and cascade is allowed
    MODE = "mode"  #: mode byte or table
    BOOL = "bool"
    INT = "int"  #: load-time integer 0..hi
    NUMBER = "number"  #: int or float 0..hi
    DEVICE_KIND = "device_kind"  #: "source" or "sink"
    CAPACITY = "capacity"  #: a sink's bytes 0..hi; not read for a source
    DERIVED = "derived"  #: no key of its own: set while reading another field, else its default
    STEPS = "steps"  #: a repeat's body
    PATH = "path"  #: a fragment's file name
    OUTCOME = "outcome"  #: a wait's expected end: "reached", "timeout", or "any" (None: no check)


@dataclass(frozen=True)
class Arg:
    """What :func:`arg` records on a field."""

    kind: Kind
    doc: str
    required: bool
    keys: tuple[str, ...] | None  #: the TOML keys this field reads; None: its own name
    hi: float | None
    cascade: bool  #: CHANNEL: channel 4 is allowed


def arg(kind: Kind, doc: str, *, required: bool = False, keys: tuple[str, ...] | None = None,
        hi: float | None = None, cascade: bool = False) -> dict[str, Arg]:
    """The metadata of a step field, ``field(metadata=arg(...))``. The field's default is the
    value when its key is absent; without one the key is required, or the field's reader
    computes it (an ``in`` step's ``mask``: all ones for its width)."""
    return {"arg": Arg(kind, doc, required, keys, hi, cascade)}


def step_args(cls: type[StepArgs]) -> Iterator[tuple[dataclasses.Field[Any], Arg, tuple[str, ...]]]:
    """Each field of a step class with its :class:`Arg` and the TOML keys it reads."""
    for f in dataclasses.fields(cls):
        a: Arg = f.metadata["arg"]
        yield f, a, (f.name,) if a.keys is None else a.keys


def allowed_keys(cls: type[StepArgs]) -> dict[str, bool]:
    """The TOML keys a step of ``cls`` may have (besides the common ones), each with whether it
    is required, in field order."""
    out: dict[str, bool] = {}
    for _, a, keys in step_args(cls):
        for key in keys:
            out[key] = out.get(key, False) or (a.required and len(keys) == 1)
    return out


Value = int | Expr  #: an int, or an expression naming buffers until the step is bound

ADDR_KEYS = ("addr", "buffer", "offset")
DATA_KEYS = ("hex", "pattern", "text", "file")
MAX_DATA = 16 << 20  #: bytes of one step's data, and of one data file


@dataclass(frozen=True, kw_only=True)
class StepArgs:
    """The arguments of one step kind; the subclasses are the kinds."""

    op: ClassVar[Op]

    def needs(self) -> str | None:
        """The backend capability this step needs beyond port I/O and memory, if any."""
        return None

    def moved(self) -> int:
        """Bytes this step moves (the loader's "moved bytes" limit)."""
        return 0


#: the metadata of the fields an address fills in (``fill``, ``write``, ``read``, ``program``)
ADDR = arg(Kind.ADDRESS, "addr (integer or deferred expression, 0..2^32-1), or buffer + offset", keys=ADDR_KEYS)
LENGTH = arg(Kind.DERIVED, "bytes; required with addr, the rest of the buffer with buffer", keys=("length",))
BUFFER = arg(Kind.DERIVED, "the buffer addressed, if any", keys=())


@dataclass(frozen=True, kw_only=True)
class Out(StepArgs):
    op = Op.OUT
    width: int = field(default=8, metadata=arg(Kind.WIDTH, "access width in bits"))
    port: Value = field(metadata=arg(Kind.PORT, "the port", required=True))
    value: Value = field(metadata=arg(Kind.VALUE, "the value written", required=True))


@dataclass(frozen=True, kw_only=True)
class In(StepArgs):
    op = Op.IN
    width: int = field(default=8, metadata=arg(Kind.WIDTH, "access width in bits"))
    port: Value = field(metadata=arg(Kind.PORT, "the port", required=True))
    expect: Value | None = field(default=None, metadata=arg(Kind.VALUE, "the value expected under mask"))
    mask: Value = field(metadata=arg(Kind.VALUE, "the bits compared with expect; all ones if absent"))


@dataclass(frozen=True, kw_only=True)
class Fill(StepArgs):
    op = Op.FILL
    addr: Value = field(metadata=ADDR)
    length: int = field(metadata=LENGTH)
    buffer: str | None = field(default=None, metadata=BUFFER)
    pattern: bytes = field(default=b"\x00", metadata=arg(Kind.PATTERN, "the bytes repeated"))

    def moved(self) -> int:
        return self.length


@dataclass(frozen=True, kw_only=True)
class Write(StepArgs):
    op = Op.WRITE
    addr: Value = field(metadata=ADDR)
    data: bytes = field(metadata=arg(Kind.DATA, "the bytes written", keys=DATA_KEYS))
    length: int = field(metadata=arg(Kind.DERIVED, "must match the data; with pattern, the bytes it is cut to", keys=("length",)))
    buffer: str | None = field(default=None, metadata=BUFFER)

    def moved(self) -> int:
        return len(self.data)


@dataclass(frozen=True, kw_only=True)
class Read(StepArgs):
    op = Op.READ
    addr: Value = field(metadata=ADDR)
    length: int = field(metadata=LENGTH)
    buffer: str | None = field(default=None, metadata=BUFFER)
    expect_hex: bytes | None = field(default=None, metadata=arg(Kind.EXPECT_HEX, "the bytes expected, exactly length of them"))
    expect_digest: str | None = field(default=None, metadata=arg(Kind.DIGEST, "the digest expected"))
    record: str = field(metadata=arg(Kind.RECORD, "journal the bytes or only their digest; bytes up to 4096"))

    def moved(self) -> int:
        return self.length


@dataclass(frozen=True, kw_only=True)
class Program(StepArgs):
    op = Op.PROGRAM
    addr: Value = field(metadata=ADDR)
    length: int = field(metadata=LENGTH)
    buffer: str | None = field(default=None, metadata=BUFFER)
    channel: int = field(metadata=arg(Kind.CHANNEL, "the channel, 0-3 or 5-7", required=True))
    mode: int = field(metadata=arg(Kind.MODE, "the mode byte without the channel bits", required=True))
    enable: bool = field(default=True, metadata=arg(Kind.BOOL, "unmask the channel at the end"))
    unchecked: bool = field(default=False, metadata=arg(Kind.BOOL, "skip the DMA-ISA-LPC rule checks"))


@dataclass(frozen=True, kw_only=True)
class Enable(StepArgs):
    op = Op.ENABLE
    channel: int = field(metadata=arg(Kind.CHANNEL, "the channel, 0-3 or 5-7", required=True))
    unchecked: bool = field(default=False, metadata=arg(Kind.BOOL, "skip the rule checks of what was programmed"))


@dataclass(frozen=True, kw_only=True)
class Disable(StepArgs):
    op = Op.DISABLE
    channel: int = field(metadata=arg(Kind.CHANNEL, "the channel, 0-3 or 5-7", required=True))


@dataclass(frozen=True, kw_only=True)
class Residue(StepArgs):
    op = Op.RESIDUE
    channel: int = field(metadata=arg(Kind.CHANNEL, "the channel, 0-7", required=True, cascade=True))
    expect: int | None = field(default=None, metadata=arg(Kind.INT, "the residue expected, bytes", hi=0x20000))


@dataclass(frozen=True, kw_only=True)
class WaitTc(StepArgs):
    op = Op.WAIT_TC
    channel: int = field(metadata=arg(Kind.CHANNEL, "the channel, 0-3 or 5-7", required=True))
    timeout: float = field(default=1.0, metadata=arg(Kind.NUMBER, "seconds", hi=3600))
    expect_complete: bool = field(default=True, metadata=arg(Kind.BOOL, "expect TC and residue 0"))


@dataclass(frozen=True, kw_only=True)
class Device(StepArgs):
    op = Op.DEVICE
    channel: int = field(metadata=arg(Kind.CHANNEL, "the channel, 0-3 or 5-7", required=True))
    kind: str = field(metadata=arg(Kind.DEVICE_KIND, "source or sink", required=True))
    dreq: bool = field(default=True, metadata=arg(Kind.BOOL, "attach with the request line high"))
    data: bytes = field(default=b"", metadata=arg(Kind.SOURCE_DATA, "a source's bytes", keys=(*DATA_KEYS, "length")))
    capacity: int | None = field(default=None, metadata=arg(Kind.CAPACITY, "a sink's room in bytes; unlimited if absent",
                                                            hi=MAX_DATA))

    def needs(self) -> str | None:
        return "devices"

    def moved(self) -> int:
        return len(self.data)


@dataclass(frozen=True, kw_only=True)
class Dreq(StepArgs):
    op = Op.DREQ
    channel: int = field(metadata=arg(Kind.CHANNEL, "the channel, 0-3 or 5-7", required=True))
    level: bool = field(metadata=arg(Kind.BOOL, "the request line's level", required=True))

    def needs(self) -> str | None:
        return "dreq"


@dataclass(frozen=True, kw_only=True)
class Delay(StepArgs):
    op = Op.DELAY
    us: float = field(metadata=arg(Kind.NUMBER, "microseconds", required=True, hi=3.6e9))


@dataclass(frozen=True, kw_only=True)
class Settle(StepArgs):
    op = Op.SETTLE
    timeout: float | None = field(default=None, metadata=arg(Kind.NUMBER, "seconds; the backend's default if absent", hi=3600))


IRQ_LINE = arg(Kind.INT, "the ISA IRQ line, 0-15 (2 is the AT's IRQ 9)", required=True, hi=15)


@dataclass(frozen=True, kw_only=True)
class WaitIrq(StepArgs):
    op = Op.WAIT_IRQ
    irq: int = field(metadata=IRQ_LINE)
    level: bool = field(default=True, metadata=arg(Kind.BOOL, "the level waited for"))
    timeout: float = field(default=1.0, metadata=arg(Kind.NUMBER, "seconds", hi=3600))
    expect: str | None = field(default="reached", metadata=arg(
        Kind.OUTCOME, "\"reached\" (the level came), \"timeout\" (it did not) or \"any\" (no check)"))

    def needs(self) -> str | None:
        return "irq"


@dataclass(frozen=True, kw_only=True)
class Irq(StepArgs):
    op = Op.IRQ
    irq: int = field(metadata=IRQ_LINE)
    expect_level: bool | None = field(default=None, metadata=arg(Kind.BOOL, "the level expected"))
    expect_count: int | None = field(default=None, metadata=arg(Kind.INT, "the rising edges expected since reset",
                                                                hi=0xFFFFFFFF))

    def needs(self) -> str | None:
        return "irq"


@dataclass(frozen=True, kw_only=True)
class Suspend(StepArgs):
    op = Op.SUSPEND


@dataclass(frozen=True, kw_only=True)
class Resume(StepArgs):
    op = Op.RESUME
    lose_state: bool = field(default=False, metadata=arg(Kind.BOOL, "reset the machine first, as suspend-to-RAM would"))

    def needs(self) -> str | None:
        return "devices" if self.lose_state else None


@dataclass(frozen=True, kw_only=True)
class Repeat(StepArgs):
    """Not a flat step: the loader makes a repeat node of it. Here for its keys."""

    op = Op.REPEAT
    count: int = field(metadata=arg(Kind.INT, "passes, 0..1,000,000", required=True))
    steps: tuple[Any, ...] = field(metadata=arg(Kind.STEPS, "the body: step tables", required=True))


@dataclass(frozen=True, kw_only=True)
class Include(StepArgs):
    """Not a flat step: the loader makes an include node of it. Here for its keys."""

    op = Op.INCLUDE
    file: str = field(metadata=arg(Kind.PATH, "the fragment, relative to the file holding the step", required=True))


#: every step kind, by op
KINDS: dict[Op, type[StepArgs]] = {cls.op: cls for cls in (
    Out, In, Fill, Write, Read, Program, Enable, Disable, Residue, WaitTc, Device, Dreq, Delay, Settle,
    WaitIrq, Irq, Suspend, Resume, Repeat, Include)}
