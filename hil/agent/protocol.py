"""The agent wire protocol, version 1: framing, messages, and the codec of ``execute()`` programs.

docs/agent-protocol.md is the normative text; this module implements it for both ends. Design
choices and why:

* **COBS framing with a 0x00 delimiter**: a receiver that sees garbage, a truncated frame or a
  frame it cannot parse throws bytes away up to the next 0x00 and is in sync again. No escape
  state can be lost, unlike SLIP after a dropped byte.
* **CRC-32 over the header and payload**: a corrupted frame is dropped, never executed.
* **Sequence numbers and a replay cache** make execution exactly-once: the host retries only a
  frame it has no reply for, and the agent answers a sequence number it has already executed
  from its cache instead of executing again (8237 writes are not idempotent).
* **One frame carries a whole program**, validated completely (syntax, allow-list) before the
  first operation runs, so a refused program has no effect at all.
"""

from __future__ import annotations

import enum
import re
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import field

from hil.agent import cobs_fallback
from hil.errors import (
    InvalidAccessError,
    ProtocolError as ProtocolError,  # defined there; importable from here as before
)
from hil.ops import (
    BY_OPCODE,
    DEVICE_OPS,
    IRQ_OPS,
    DevState,
    In,
    IrqLines,
    IrqState,
    MemFill,
    Op,
    Opcode as Opcode,  # the opcodes are rows of hil.ops.TABLE; named here too, next to Status
    Poll,
    Result,
    Settle,
    WaitIrq,
    Wire,
    result_size,
    wait_us,
    wire_of,
)
from hil.records import dataclass

VERSION = 1
HEADER = struct.Struct("<BBHH")  #: version, type, seq, payload length
CRC = struct.Struct("<I")
OVERHEAD = HEADER.size + CRC.size
DEFAULT_MAX_PAYLOAD = 4096
#: the payload both ends offer on TCP, where a frame costs no line time and a lost byte is
#: TCP's to resend: a 1 MiB read is 18 frames, not 256 (a UART keeps DEFAULT_MAX_PAYLOAD, where
#: a frame must arrive whole between line errors). HELLO takes the smaller of the two offers,
#: so a peer that offers 4 KiB gets 4 KiB frames.
TCP_MAX_PAYLOAD = 0xF000
MAX_PAYLOAD_LIMIT = 0xFFFF


class MsgType(enum.IntEnum):
    HELLO = 0x01
    EXEC = 0x02
    PING = 0x03
    HELLO_REPLY = 0x81
    EXEC_REPLY = 0x82
    PONG = 0x83
    ERROR = 0xFF


class Status(enum.IntEnum):
    """Per-program (per failing op) status codes of EXEC_REPLY and ERROR."""

    OK = 0x00
    BAD_FRAME = 0x01  #: payload length or structure wrong
    BAD_OP = 0x02  #: unknown opcode or truncated operands
    PORT_DENIED = 0x03  #: outside the agent's port allow-list
    MEM_DENIED = 0x04  #: outside the agent's memory window
    TOO_LARGE = 0x05  #: program or reply would exceed the advertised sizes
    IO_ERROR = 0x06  #: the I/O layer failed while executing (ops before `index` ran)
    NO_SESSION = 0x07  #: EXEC before a successful HELLO (e.g. the agent restarted)
    AUTH = 0x08  #: HELLO without the token the agent requires
    VERSION = 0x09  #: protocol version not supported
    UNSUPPORTED = 0x0A  #: a known op the agent does not offer (feature bit clear)
    BUSY = 0x0B  #: another client holds the link


class Feature(enum.IntFlag):
    POLL = 0x01
    MEM_FILL = 0x02
    DEVICES = 0x04  #: simulated devices and DREQ lines (DEV_* ops, POWER_RESET): agents on a simulator
    SETTLE = 0x08
    VIRTUAL_TIME = 0x10  #: the agent's I/O runs on virtual time (a simulator): delays are not wall time
    SESSION_RESET = 0x20  #: a new session starts on freshly opened I/O unless HELLO sets KEEP
    INFO = 0x40  #: HELLO_REPLY ends with the info block (key=value pairs: io, profile)
    LIMITS = 0x80  #: HELLO_REPLY carries max_op_us and max_program_us; longer programs are refused
    SESSION_SECRET = 0x100  #: HELLO_REPLY carries the session secret a reconnecting host resumes with
    IRQ = 0x200  #: the agent's I/O observes IRQ lines (IRQ_STATE, WAIT_IRQ): agents on a simulator or QEMU


#: the feature bit an agent must advertise to run an op class (absent: every agent runs it); a
#: host refuses an op its agent did not advertise before sending anything
OP_FEATURES: dict[type, Feature] = {
    Poll: Feature.POLL,
    MemFill: Feature.MEM_FILL,
    Settle: Feature.SETTLE,
    **dict.fromkeys(DEVICE_OPS, Feature.DEVICES),
    **dict.fromkeys(IRQ_OPS, Feature.IRQ),
}


class HelloFlag(enum.IntFlag):
    """HELLO's optional ``flags`` byte (absent: 0)."""

    KEEP = 0x01  #: a new session keeps the I/O state earlier sessions left (no SESSION_RESET)
    RESUME = 0x02  #: the session secret follows: resume that session (its replay cache) on this link


SECRET_SIZE = 16  #: bytes of a session secret (feature SESSION_SECRET, HELLO flag RESUME)


STATE_FIXED = result_size(DevState(0, 0))  #: DEV_STATE reply bytes before the head
REPLY_HEADER = struct.Struct("<BHB")  #: EXEC_REPLY: status, index, reason length (the reason follows)
#: looked up once: on Python 3.11 an Enum member looked up by class attribute costs about 0.15 us
#: (docs/reference/hil-lessons.md §1.15), and a reply is coded per round trip
_OK = Status.OK


# --- CRC and COBS ---------------------------------------------------------------------------


def crc32(data: bytes) -> int:
    """CRC-32/ISO-HDLC (zlib, Ethernet): poly 0x04C11DB7 reflected, init and xorout 0xFFFFFFFF."""
    return zlib.crc32(data) & 0xFFFFFFFF


#: CRC-32/ISO-HDLC of any data followed by its own CRC (little-endian): the one value of the 2^32
#: the four appended bytes can make it, so a frame's CRC is checked over the whole decoded frame
#: without cutting the CRC off first (tests/test_agent_tcp_fastpath.py)
CRC_RESIDUE = 0x2144DF1C


try:  # the cobs package's C extension; its pure-Python fallback is slower than ours
    from cobs.cobs import _cobs_ext as _cobs  # type: ignore[import-untyped]  # the package ships no type hints
except ImportError:  # no C compiler at install: hil.agent.cobs_fallback
    _cobs = None


def _encode_c(data: bytes) -> bytes:
    """COBS by the ``cobs`` package's C extension (a small frame 20x, a 60 KiB one 3x faster
    than :mod:`hil.agent.cobs_fallback`). That encoder leaves out the final block's code when
    the data ends in a full 254-byte block; §1 of docs/agent-protocol.md writes it always
    (``0x01``), so it is added here: the wire bytes are the protocol's, whoever encodes them."""
    if type(data) is not bytes:
        data = bytes(data)
    wire = _cobs.encode(data)
    tail = len(data) - data.rfind(0) - 1  # the non-zero bytes after the last zero
    if tail and tail % 254 == 0:
        return wire + b"\x01"
    return wire


#: COBS-encode a frame (tested against a byte-by-byte encoder of §1: tests/test_agent_wire_properties.py)
cobs_encode = cobs_fallback.encode if _cobs is None else _encode_c
_decode = cobs_fallback.decode if _cobs is None else _cobs.decode
_DECODE_ERRORS = (ValueError,) if _cobs is None else (_cobs.DecodeError, ValueError)  #: the codecs' refusals


def cobs_decode(data: bytes) -> bytes:
    """Decode with the protocol's two ways a frame is bad as :class:`ProtocolError`: a zero
    inside it, and a code that runs past its end. Both forms of a final full block, with and
    without the ``0x01`` after it, decode alike."""
    if data.find(0) >= 0:
        raise ProtocolError(Status.BAD_FRAME, "zero byte inside a COBS frame")
    try:
        return _decode(data)
    except _DECODE_ERRORS:
        raise ProtocolError(Status.BAD_FRAME, "COBS block runs past the end of the frame") from None


# --- frames ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Frame:
    type: int
    seq: int
    payload: bytes = b""

    def encode(self) -> bytes:
        """Bytes on the wire: COBS(header + payload + CRC) followed by the 0x00 delimiter."""
        return encode_frame(self.type, self.seq, self.payload)


def encode_frame(mtype: int, seq: int, payload: bytes) -> bytes:
    """``Frame(mtype, seq, payload).encode()``, for a sender that has no Frame to hand."""
    body = HEADER.pack(VERSION, mtype, seq & 0xFFFF, len(payload)) + payload
    return cobs_encode(body + CRC.pack(zlib.crc32(body))) + b"\x00"


def decode_frame(raw: bytes) -> Frame:
    """Decode the bytes between two delimiters. Raises ProtocolError (BAD_FRAME) for anything malformed."""
    body = cobs_decode(raw)
    size = len(body) - OVERHEAD
    if size < 0:
        raise ProtocolError(Status.BAD_FRAME, f"frame of {len(body)} bytes is shorter than the {OVERHEAD}-byte minimum")
    if zlib.crc32(body) != CRC_RESIDUE:  # the CRC of header|payload|crc32: that constant iff crc32 is theirs
        raise ProtocolError(Status.BAD_FRAME, "CRC mismatch")
    version, mtype, seq, length = HEADER.unpack_from(body)
    if length != size:
        raise ProtocolError(Status.BAD_FRAME, f"length field {length} does not match the {size} payload bytes")
    if version != VERSION:
        raise ProtocolError(Status.VERSION, f"protocol version {version}, expected {VERSION}")
    return Frame(mtype, seq, body[HEADER.size : -CRC.size])  # a slice of bytes: bytes


class FrameReader:
    """Splits a byte stream into frames; counts what it had to throw away.

    What it yields does not depend on how the bytes were chunked into reads: a run without a
    delimiter keeps only its last ``max_wire`` bytes (a frame cannot be longer), and a delimited
    run that does not decode is searched for the last whole frame that ends at its delimiter, so
    a frame behind garbage that swallowed the delimiter before it (line noise, a sender that did
    not lead with 0x00) is still received.
    """

    def __init__(self, max_payload: int = MAX_PAYLOAD_LIMIT) -> None:
        self._buf = bytearray()
        self.max_wire = 2 * (max_payload + OVERHEAD) + 16  #: COBS worst case, generously
        self.discarded = 0  #: bytes dropped while resynchronising
        self.bad_frames = 0

    def whole(self, data: bytes) -> Frame | None:
        """The frame ``data`` is, when it is one whole frame and delimiter with nothing buffered
        before it (the usual read on TCP): what :meth:`feed` yields for it, without the buffer
        and the generator. None: anything else (also a frame that does not decode), for :meth:`feed`."""
        if self._buf or len(data) > self.max_wire or data.find(0) != len(data) - 1 or len(data) < 2:
            return None
        try:
            return decode_frame(data[:-1])
        except ProtocolError:
            return None

    def feed(self, data: bytes) -> Iterator[Frame]:
        self._buf += data
        while True:
            end = self._buf.find(0)
            if end < 0:
                if len(self._buf) > self.max_wire:  # no frame starts before the last max_wire bytes
                    cut = len(self._buf) - self.max_wire
                    self.discarded += cut
                    del self._buf[:cut]
                return
            raw = bytes(self._buf[:end])
            del self._buf[: end + 1]
            if not raw:
                continue  # idle delimiters are allowed (and used to flush a partial frame)
            frame, used = self._decode(raw)
            if used < len(raw):
                self.discarded += len(raw) - used + (1 if frame is None else 0)
                self.bad_frames += 1
            if frame is not None:
                yield frame

    def _decode(self, raw: bytes) -> tuple[Frame | None, int]:
        """The frame ending at this delimiter and how many bytes of ``raw`` it spans."""
        if len(raw) <= self.max_wire:
            try:
                return decode_frame(raw), len(raw)
            except ProtocolError:
                pass
        tail = raw[-self.max_wire:]
        n = len(tail)
        # a frame starts with a COBS code >= 3 followed by version 1 and a known message type
        starts = [m.start() for m in _FRAME_START.finditer(tail) if m.start() > 0 or len(raw) > n]
        for i in reversed(starts[-32:]):
            j = i
            while j < n:  # the code chain from a real start lands exactly on the delimiter
                j += tail[j]
            if j != n:
                continue
            try:
                return decode_frame(tail[i:]), n - i
            except ProtocolError:
                continue
        return None, 0


_FRAME_START = re.compile(b"(?=[\x03-\xff]\x01[" + bytes(sorted(MsgType)) + b"])")


# --- HELLO ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hello:
    """Host -> agent. ``token`` is required by an agent listening beyond loopback."""

    host_nonce: int
    max_payload: int = DEFAULT_MAX_PAYLOAD
    token: bytes = b""
    name: str = "hil"
    flags: HelloFlag = HelloFlag(0)
    #: flag RESUME: the secret of the session to resume (from that session's HELLO_REPLY)
    secret: bytes = b""

    def encode(self) -> bytes:
        """The ``flags`` byte is sent only when a flag is set, so a plain HELLO is the same bytes
        for every version-1 agent; the secret follows it only with RESUME."""
        name = self.name.encode()[:255]
        out = (struct.pack("<BIH", VERSION, self.host_nonce, self.max_payload)
               + bytes([len(self.token)]) + self.token + bytes([len(name)]) + name)
        if not self.flags:
            return out
        out += bytes([int(self.flags)])
        if self.flags & HelloFlag.RESUME:
            if len(self.secret) != SECRET_SIZE:
                raise ProtocolError(Status.BAD_FRAME, f"a RESUME HELLO carries a {SECRET_SIZE}-byte session secret")
            out += self.secret
        return out

    @classmethod
    def decode(cls, p: bytes) -> Hello:
        r = _Reader(p)
        version = r.u8()
        if version != VERSION:
            raise ProtocolError(Status.VERSION, f"host speaks protocol {version}, agent {VERSION}")
        nonce, max_payload = r.u32(), r.u16()
        token = r.take(r.u8())
        name = r.take(r.u8()).decode(errors="replace")
        flags = HelloFlag(r.u8() & 0xFF) if not r.done() else HelloFlag(0)
        secret = r.take(SECRET_SIZE) if flags & HelloFlag.RESUME else b""
        return cls(nonce, max_payload, token, name, flags, secret)  # later fields are appended: ignore them


@dataclass(frozen=True)
class HelloReply:
    """Agent -> host: who it is, what it can do, and its boot nonce (changes on every start)."""

    boot_nonce: int
    agent_name: str
    agent_version: str
    max_payload: int  #: largest request and reply payload it accepts / sends
    window: int  #: frames the host may have in flight; the replay cache holds at least 2x this
    max_ops: int  #: most operations in one program
    features: Feature
    ports: tuple[tuple[int, int], ...]  #: inclusive port ranges it allows
    memory: tuple[tuple[int, int], ...]  #: inclusive memory windows it allows
    #: feature INFO: what serves the programs, e.g. (("io", "sim"), ("profile", "qemu"))
    info: tuple[tuple[str, str], ...] = ()
    #: feature LIMITS: the longest DELAY/POLL/SETTLE time of one op, and the sum over one program (µs)
    max_op_us: int = 0
    max_program_us: int = 0
    #: feature SESSION_SECRET: what a reconnecting host presents (HELLO flag RESUME) to keep its session
    secret: bytes = b""

    def encode(self) -> bytes:
        name, ver = self.agent_name.encode()[:255], self.agent_version.encode()[:255]
        out = bytearray(struct.pack("<BI", VERSION, self.boot_nonce))
        out += bytes([len(name)]) + name + bytes([len(ver)]) + ver
        out += struct.pack("<HBHI", self.max_payload, self.window, self.max_ops, int(self.features))
        out += bytes([len(self.ports)])
        for lo, hi in self.ports:
            out += struct.pack("<HH", lo, hi)
        out += bytes([len(self.memory)])
        for lo, hi in self.memory:
            out += struct.pack("<II", lo, hi)
        if self.features & Feature.INFO:
            out += bytes([len(self.info)])
            for key, value in self.info:
                k, v = key.encode()[:255], value.encode()[:255]
                out += bytes([len(k)]) + k + bytes([len(v)]) + v
        if self.features & Feature.LIMITS:
            out += struct.pack("<II", self.max_op_us, self.max_program_us)
        if self.features & Feature.SESSION_SECRET:
            if len(self.secret) != SECRET_SIZE:
                raise ProtocolError(Status.BAD_FRAME, f"feature SESSION_SECRET needs a {SECRET_SIZE}-byte secret")
            out += self.secret
        return bytes(out)

    def limits(self) -> Limits:
        """What this agent refuses, for the host to judge programs by before it sends them."""
        return Limits(self.max_payload, self.max_payload, self.max_ops, self.max_op_us, self.max_program_us)

    def info_value(self, key: str) -> str | None:
        return next((v for k, v in self.info if k == key), None)

    @classmethod
    def decode(cls, p: bytes) -> HelloReply:
        r = _Reader(p)
        version = r.u8()
        if version != VERSION:
            raise ProtocolError(Status.VERSION, f"agent speaks protocol {version}, host {VERSION}")
        nonce = r.u32()
        name = r.take(r.u8()).decode(errors="replace")
        ver = r.take(r.u8()).decode(errors="replace")
        max_payload, window, max_ops, features = r.u16(), r.u8(), r.u16(), r.u32()
        ports = tuple((r.u16(), r.u16()) for _ in range(r.u8()))
        memory = tuple((r.u32(), r.u32()) for _ in range(r.u8()))
        info: tuple[tuple[str, str], ...] = ()
        if features & Feature.INFO:
            info = tuple((r.take(r.u8()).decode(errors="replace"), r.take(r.u8()).decode(errors="replace"))
                         for _ in range(r.u8()))
        max_op_us = max_program_us = 0
        if features & Feature.LIMITS:
            max_op_us, max_program_us = r.u32(), r.u32()
        secret = r.take(SECRET_SIZE) if features & Feature.SESSION_SECRET else b""
        # later fields are appended behind a feature bit: bytes after the known ones are ignored
        return cls(nonce, name, ver, max_payload, window, max_ops, Feature(features), ports, memory, info,
                   max_op_us, max_program_us, secret)


@dataclass(frozen=True)
class ErrorReply:
    status: Status
    message: str

    def encode(self) -> bytes:
        msg = self.message.encode()[:255]
        return bytes([self.status, len(msg)]) + msg

    @classmethod
    def decode(cls, p: bytes) -> ErrorReply:
        r = _Reader(p)
        status = _status(r.u8())
        msg = r.take(r.u8()).decode(errors="replace")
        return cls(status, msg)


# --- programs -------------------------------------------------------------------------------


def encode_program(ops: Sequence[Op]) -> bytes:
    """The EXEC payload of ``ops``: each op's opcode, fixed operands (``hil.ops.TABLE``) and data."""
    out = bytearray()
    for op in ops:
        try:
            wire = wire_of(op)
        except InvalidAccessError:
            raise ProtocolError(Status.BAD_OP, f"{op!r} cannot be sent to an agent") from None
        why = wire.limit(op)
        if why is not None:
            raise ProtocolError(Status.TOO_LARGE, why)
        out.append(wire.opcode)
        if wire.data is None:
            out += wire.request.pack(*wire.operands(op))
        else:
            data = wire.data(op)
            out += wire.request.pack(*wire.operands(op), len(data)) + data
    return bytes(out)


def decode_program(p: bytes, max_ops: int = 0xFFFF) -> list[Op]:
    """Parse a whole program; raises ProtocolError (BAD_OP with the op index) if malformed."""
    r = _Reader(p)
    ops: list[Op] = []
    limits = Limits(MAX_PAYLOAD_LIMIT, MAX_PAYLOAD_LIMIT, max_ops)
    while not r.done():
        index = len(ops)
        if not limits.ops_fit(index + 1):
            raise ProtocolError(Status.TOO_LARGE, f"more than {max_ops} operations", index)
        try:
            code = r.u8()
            wire = BY_OPCODE.get(code)
            if wire is None:
                raise ProtocolError(Status.BAD_OP, f"unknown opcode 0x{code:02X}", index)
            fields = wire.request.unpack(r.take(wire.request.size))
            data = b""
            if wire.data is not None:
                if wire.check is not None:
                    wire.check(fields)
                fields, data = fields[:-1], r.take(fields[-1])
            ops.append(wire.build(fields, data))
        except ProtocolError as e:
            raise ProtocolError(e.status, f"op {index}: {e}", index) from None
        except (ValueError, InvalidAccessError) as e:  # an op refusing its own operands (width, value range)
            raise ProtocolError(Status.BAD_OP, f"op {index}: {e}", index) from None
    return ops


def op_duration_us(op: Op) -> int:
    """The time an op may take by its operands (DELAY, POLL timeout, SETTLE timeout), in µs."""
    return round(wait_us(op))


def reply_size(ops: Sequence[Op]) -> int:
    """Payload bytes of the EXEC_REPLY to ``ops`` when everything succeeds (a DEV_STATE's head
    counted at its ``max_bytes``)."""
    return REPLY_HEADER.size + sum(result_size(op) for op in ops)


class Limit(enum.Enum):
    """Which advertised limit a frame or program exceeds."""

    REQUEST = "request payload"
    OPS = "operations"
    REPLY = "reply payload"
    OP_TIME = "time per op"
    PROGRAM_TIME = "time per program"


@dataclass(frozen=True)
class Limits:
    """The limits an agent advertises, judged the same way at both ends: the host plans frames
    and refuses programs with them before sending, the agent refuses what exceeds them."""

    max_request: int
    max_reply: int
    max_ops: int
    max_op_us: int = 0
    max_program_us: int = 0

    def request_fits(self, size: int) -> bool:
        return size <= self.max_request

    def ops_fit(self, n_ops: int) -> bool:
        return n_ops <= self.max_ops

    def reply_fits(self, size: int) -> bool:
        return size <= self.max_reply

    def frame_excess(self, n_ops: int, request: int, reply: int) -> Limit | None:
        """The first limit a frame of ``n_ops`` ops, ``request`` and ``reply`` payload bytes exceeds."""
        if not self.request_fits(request):
            return Limit.REQUEST
        if not self.ops_fit(n_ops):
            return Limit.OPS
        if not self.reply_fits(reply):
            return Limit.REPLY
        return None

    def time_excess(self, op_us: int, total_us: int) -> Limit | None:
        """Whether one op's ``op_us``, or the program's ``total_us`` so far, is over the time limits."""
        if op_us > self.max_op_us:
            return Limit.OP_TIME
        if total_us > self.max_program_us:
            return Limit.PROGRAM_TIME
        return None


@dataclass
class ExecReply:
    """``status`` for the program; on failure ``index`` is the failing op (ops before it ran) and
    ``reason`` says why. ``results`` holds the reading ops' results, in order, for the ops that ran."""

    status: Status = Status.OK
    index: int = 0xFFFF
    reason: str = ""
    results: list[Result] = field(default_factory=list)
    polls_met: list[bool] = field(default_factory=list)

    def encode(self, ops: Sequence[Op], replying: Sequence[tuple[Op, Wire]] | None = None) -> bytes:
        """``replying``: :func:`replying_wires` of ``ops``, if the caller has it already."""
        reason = self.reason.encode()[:255]
        out = bytearray(REPLY_HEADER.pack(self.status, self.index, len(reason)) + reason)
        it = iter(self.results)
        met = iter(self.polls_met)
        for op, wire in replying_wires(ops) if replying is None else replying:
            assert wire.reply is not None and wire.reply_fields is not None  # replying_wires keeps only these
            v = next(it, None)
            if v is None:
                break
            fields, tail = wire.reply_fields(op, v, next(met, False) if wire.met else False)
            out += wire.reply.pack(*fields) + tail
        return bytes(out)

    @classmethod
    def decode(cls, p: bytes, ops: Sequence[Op], layout: ReplyLayout | None = None) -> ExecReply:
        """``layout``: the :class:`ReplyLayout` of ``ops``, for a successful reply read in one unpack."""
        if layout is not None and len(p) == layout.ok_size and not p[0] and not p[3]:  # OK, no reason
            return layout.decode(p, cls(_OK, p[1] | p[2] << 8))
        r = _Reader(p)
        status, index = _status(r.u8()), r.u16()
        reason = r.take(r.u8()).decode(errors="replace")
        reply = cls(status, index, reason)
        # results come for the ops that ran: all of them (OK), the ones before `index` of an IO_ERROR
        # that names its op, none otherwise (a refusal runs nothing, even when it names an op)
        ran = len(ops) if status == Status.OK else \
            min(index, len(ops)) if status == Status.IO_ERROR and index != 0xFFFF else 0
        for op in ops[:ran]:
            wire = wire_of(op)
            if wire.reply is None or wire.result is None:
                continue
            fields = wire.reply.unpack(r.take(wire.reply.size))
            reply.results.append(wire.result(op, fields, r.take(wire.reply_tail(op, fields))))
            if wire.met:
                reply.polls_met.append(bool(fields[-1]))
        r.end()
        return reply


#: ops whose reply is their wire's fixed struct and nothing more (no data tail)
FIXED_REPLIES = (In, Poll, IrqState, WaitIrq)


_OTHER, _INT, _LINES = 0, 1, 2  #: how a ReplyLayout item's result maps to its fields


class ReplyLayout:
    """A successful EXEC_REPLY to a program whose replying ops all have fixed-size replies, read
    (host) and written (agent) with one ``struct`` (their formats joined: little-endian, no
    padding) instead of one per op. What :meth:`ExecReply.decode` and :meth:`ExecReply.encode`
    give without it (tests/test_agent_fastpaths.py, tests/test_agent_wire_properties.py)."""

    def __init__(self, replying: Sequence[tuple[Op, Wire]]) -> None:
        fmt, self.items = "<", []
        at = 0
        for op, wire in replying:
            assert wire.reply is not None
            n = len(wire.reply.unpack(bytes(wire.reply.size)))
            fmt += wire.reply.format.lstrip("<")
            kind = _INT if isinstance(op, In) else _LINES if isinstance(op, IrqState) else _OTHER
            self.items.append((op, wire, at, at + n, kind))
            at += n
        self.struct = struct.Struct(fmt)
        self.ok_size = REPLY_HEADER.size + self.struct.size  #: payload bytes of its OK reply
        #: the whole reply with status OK and no reason: the header's fields, then the results'
        self.whole = struct.Struct(REPLY_HEADER.format + fmt.lstrip("<"))
        self.met = any(wire.met for _, wire, _, _, _ in self.items)  #: it carries a poll's condition
        #: every item an In or an IrqState (a host's port reads): encode() packs their results as they are
        self._plain = tuple(kind for _, _, _, _, kind in self.items) if all(
            kind != _OTHER for _, _, _, _, kind in self.items) else None
        self._lines: tuple[IrqLines | None, tuple[int, ...]] = (None, ())  #: the last IrqLines packed, and its fields
        self._seen = IrqLines()  #: the last IrqLines decoded (immutable: handed out again while equal)
        #: the last results encoded (plain layouts) and their bytes; None: nothing encoded yet
        self._encoded: tuple[list[Result] | None, bytes] = (None, b"")

    @classmethod
    def of(cls, ops: Sequence[Op]) -> ReplyLayout | None:
        return cls.of_replying(replying_wires(ops))

    @classmethod
    def of_replying(cls, replying: Sequence[tuple[Op, Wire]]) -> ReplyLayout | None:
        """:meth:`of` the ops :func:`replying_wires` found, if all of them reply in fixed sizes."""
        if not all(isinstance(op, FIXED_REPLIES) for op, _ in replying):
            return None
        return cls(replying)

    def decode(self, p: bytes, reply: ExecReply) -> ExecReply:
        values = self.struct.unpack_from(p, REPLY_HEADER.size)
        results, met = reply.results, reply.polls_met
        for op, wire, a, b, kind in self.items:
            if kind == _INT:
                results.append(values[a])
                continue
            if kind == _LINES:  # the lines of the last reply again, most of the time: that same IrqLines
                seen = self._seen
                counts = values[a + 1 : b]
                if seen.levels != values[a] or seen.counts != counts:
                    seen = self._seen = IrqLines(values[a], counts)
                results.append(seen)
                continue
            fields = values[a:b]
            assert wire.result is not None  # a replying wire
            results.append(wire.result(op, fields, b""))
            if wire.met:
                met.append(bool(fields[-1]))
        return reply

    def encode(self, results: Sequence[Result], polls_met: Sequence[bool]) -> bytes:
        """The payload of an OK reply with these results (one per item, in order)."""
        values: list[int] = [_OK, 0xFFFF, 0]
        plain = self._plain
        if plain is not None:  # the loop below for In and IrqState only; an agent's IrqLines repeats until a line changes
            last, payload = self._encoded
            if results == last:  # the results of the last reply again (a status register polled): its bytes
                return payload
            if len(results) != len(plain):
                raise ValueError(f"{len(results)} results for a reply of {len(plain)}")
            for kind, v in zip(plain, results):
                if kind == _INT:
                    values.append(v)  # type: ignore[arg-type]  # an In's result is an int
                    continue
                seen, fields = self._lines
                if v is not seen:
                    assert isinstance(v, IrqLines)
                    fields = (v.levels & 0xFFFF, *[c & 0xFFFF for c in v.counts])
                    self._lines = (v, fields)
                values.extend(fields)
            payload = self.whole.pack(*values)
            self._encoded = (list(results), payload)
            return payload
        met = iter(polls_met)
        for (op, wire, _, _, kind), v in zip(self.items, results, strict=True):
            if kind == _INT:
                values.append(v)  # type: ignore[arg-type]  # an In's result is an int
            elif kind == _LINES:
                assert isinstance(v, IrqLines)
                values.append(v.levels & 0xFFFF)
                values.extend([c & 0xFFFF for c in v.counts])
            else:
                assert wire.reply_fields is not None  # a replying wire
                fields, _ = wire.reply_fields(op, v, next(met, False) if wire.met else False)
                values.extend(fields)
        return self.whole.pack(*values)


def replying_wires(ops: Sequence[Op]) -> list[tuple[Op, Wire]]:
    """The ops whose results an EXEC_REPLY carries, each with its wire form, in order."""
    out = []
    for op in ops:
        wire = wire_of(op)
        if wire.reply is not None and wire.reply_fields is not None:
            out.append((op, wire))
    return out


# --- helpers --------------------------------------------------------------------------------


def _status(value: int) -> Status:
    try:
        return Status(value)
    except ValueError:
        raise ProtocolError(Status.BAD_FRAME, f"unknown status 0x{value:02X}") from None


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = memoryview(data), 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ProtocolError(Status.BAD_FRAME, f"truncated: needs {n} bytes at offset {self.pos}")
        chunk = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "little")

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "little")

    def done(self) -> bool:
        return self.pos >= len(self.data)

    def end(self) -> None:
        if not self.done():
            raise ProtocolError(Status.BAD_FRAME, f"{len(self.data) - self.pos} unexpected trailing bytes")
