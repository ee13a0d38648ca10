"""The reference agent: serves one link, executes programs on an I/O backend (sim or devport).

:class:`AgentCore` is transport-independent (frames in, frames out) so firmware authors can read
it next to docs/agent-protocol.md. :func:`serve_link` drives it over any :class:`~hil.agent.links.Link`;
:func:`serve` listens on ``tcp://``, ``serial://`` or a fresh ``pty``. The agent survives garbage,
oversized and truncated frames and client disconnects; it never restarts itself, so its boot nonce
changes only when the process really starts again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import ipaddress
import os
import secrets
import sys
import threading
import tty
from collections import OrderedDict, deque
from collections.abc import Callable, Coroutine
from dataclasses import field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from hil import __version__, oserrors
from hil.agent.limits import (  # defined apart for the command line, kept importable here
    DEFAULT_HELLO_TIMEOUT as DEFAULT_HELLO_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT as DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_OP_US as DEFAULT_MAX_OP_US,
    DEFAULT_MAX_PROGRAM_US as DEFAULT_MAX_PROGRAM_US,
)
from hil.agent.links import READ_CHUNK, FdLink, Link, LinkError, PushProtocol, StreamLink
from hil.agent.protocol import (
    DEFAULT_MAX_PAYLOAD,
    SECRET_SIZE,
    TCP_MAX_PAYLOAD,
    ErrorReply,
    ExecReply,
    Feature,
    Frame,
    FrameReader,
    Hello,
    HelloFlag,
    HelloReply,
    Limit,
    Limits,
    MsgType,
    ProtocolError,
    ReplyLayout,
    Status,
    decode_program,
    encode_frame,
    op_duration_us,
    reply_size,
    replying_wires,
)
from hil.allowlist import AllowList
from hil.backends.base import DEVICE_CAPABILITIES, Backend, Capability
from hil.errors import AccessDeniedError, HilError, MemoryRangeError, UndecodedPortError
from hil.log import get_logger
from hil.ops import IrqState, Op, Poll, Result, Wire, is_device_op, is_irq_op, memory_access, row_of, wait_us
from hil.records import dataclass

if TYPE_CHECKING:
    import serial  # pyserial, imported where a serial line is opened

    from hil.backends.sim import SimBackend

log = get_logger("hil.agent")
#: looked up once (an Enum member by class attribute is slow on Python 3.11: docs/reference/hil-lessons.md §1.15)
_EXEC, _EXEC_REPLY = MsgType.EXEC, MsgType.EXEC_REPLY


@dataclass
class AgentStats:
    frames_in: int = 0
    frames_out: int = 0
    executed: int = 0
    replayed: int = 0
    refused: int = 0
    hellos: int = 0


@dataclass(eq=False)
class Connection:
    """One client link as the agent sees it. A session belongs to the connection that
    authenticated it: frames on any other connection are refused before anything runs."""

    name: str
    #: drops the connection (its session was resumed on another one); None: it cannot be dropped (serial)
    kick: Callable[[], None] | None = None
    authenticated: bool = False
    #: the largest payload this link offers at HELLO (TCP: TCP_MAX_PAYLOAD); None: the core's max_payload
    max_payload: int | None = None


@dataclass(eq=False)
class Session:
    """A host's session: its replay cache, hold buffer and next sequence number live and die with it."""

    host_nonce: int
    secret: bytes  #: what the same host presents (HELLO flag RESUME) to resume it on a new connection
    conn: Connection | None  #: the connection it belongs to; None while detached (host gone, may resume)
    next: int  #: the sequence number to execute next (programs run in order, once)
    cache: OrderedDict[int, bytes] = field(default_factory=OrderedDict)  #: seq -> encoded reply frame
    held: dict[int, Frame] = field(default_factory=dict)  #: frames that arrived ahead of a lost one


class Later(enum.Enum):
    """:meth:`AgentCore.answer_now`'s "not at once": the frame goes to :meth:`AgentCore.handle`."""

    LATER = "later"


LATER = Later.LATER

VALIDATED_PROGRAMS = 256  #: programs (by payload) an agent keeps validated; see AgentCore._validate
VALIDATED_PAYLOAD = 4096  #: only programs up to this many payload bytes are kept


def _waits(ops: list[Op]) -> bool:
    """Whether a program may wait (a delay, poll, settle or IRQ wait with a time)."""
    return any(row_of(op).times and wait_us(op) for op in ops)


@dataclass(frozen=True)
class _Validated:
    ops: list[Op]
    replying: list[tuple[Op, Wire]]  #: the ops the reply carries results of, with their wire forms
    waits: bool  #: _waits(ops)
    #: its OK reply in one pack, when every replying op's reply has a fixed size
    layout: ReplyLayout | None = None
    polls: bool = False  #: it has a Poll (whose reply says whether its condition was met)
    #: the ops before its last, when that is an IrqState (every tracking host's program ends so)
    body: list[Op] | None = None
    quick: bool = False  #: AgentCore._quick(ops, waits), worked out once



QUICK_OPS = 64  #: the most ops of a program that may run on the agent's own loop (see AgentCore._quick)


class _IoThread:
    """One owned thread with its own event loop where the I/O backend's programs run: a simulator
    is CPU-bound, and a long program there must not stop the agent answering (BUSY, timeouts)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="hil-agent-io", daemon=True)
        self.thread.start()

    async def run(self, coro: Coroutine[Any, Any, list[Result]]) -> list[Result]:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        if not self.thread.is_alive():
            self.loop.close()




@dataclass
class AgentCore:
    """Sessions, replay caches and execution. Transport-independent: :meth:`handle` answers one
    frame received on a :class:`Connection`."""

    io: Backend
    allow: AllowList
    name: str = "hil-agent"
    token: bytes = b""
    max_payload: int = DEFAULT_MAX_PAYLOAD
    window: int = 8
    max_ops: int = 4096
    boot_nonce: int = field(default_factory=lambda: secrets.randbits(32))
    stats: AgentStats = field(default_factory=AgentStats)
    #: builds the I/O backend afresh (unopened), for a new session to start from a defined state:
    #: ``hil agent`` passes ``open_backend(--io)`` for a simulated machine. None: sessions share
    #: whatever the I/O holds (real hardware, whose state the agent does not own)
    fresh_io: Callable[[], Backend] | None = None
    max_op_us: int = DEFAULT_MAX_OP_US  #: advertised (feature LIMITS); longer ops are refused
    max_program_us: int = DEFAULT_MAX_PROGRAM_US  #: advertised (feature LIMITS); longer programs are refused
    hello_timeout: float | None = DEFAULT_HELLO_TIMEOUT  #: TCP: drop a connection that has not said HELLO by then
    idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT  #: TCP: drop an authenticated connection silent this long
    #: run programs in an owned I/O thread (None: yes, unless the backend lives on this loop, like qemu:)
    io_thread: bool | None = None

    def __post_init__(self) -> None:
        self._session: Session | None = None
        self._cache_size = max(16, 2 * self.window)
        self._reply_payload = self.max_payload
        self._request_payload = self.max_payload  #: what the current session's HELLO offered
        self._devices = Capability.DEVICES in self.io.capabilities  #: offer the DEV_* ops
        self._irq = Capability.IRQ in self.io.capabilities  #: offer IRQ_STATE and WAIT_IRQ
        self._used = False  #: a program ran on the current I/O since it was opened
        self._lock = asyncio.Lock()  #: one program or session change at a time
        self._local = Connection("local")  #: the connection of frames handed in without one
        self._validated: dict[tuple[bytes, int, int], _Validated] = {}  #: see _validate
        if self.io_thread is None:
            self.io_thread = self.io.capabilities.backend != "qemu"  # qemu: its streams live on this loop
        self._io_runner: _IoThread | None = None
        self._sim_io = self.io.capabilities.backend == "sim"  #: see _quick
        self._sim = _simulator(self.io)  #: the I/O backend if it is the simulator itself (see _io_checked, _execute_now)

    def _quick(self, ops: list[Op], waits: bool) -> bool:
        """A program the I/O thread would finish in microseconds runs on this loop instead: the
        hand-off to the thread and back (two wake-ups) was most of a one-op program's time. Only
        on the in-process simulator, whose programs do no I/O, and only a short one that waits
        for nothing (no delay, poll, settle or IRQ wait: those may take long). Programs still
        run one at a time (the core's lock), so the machine is never used from both threads."""
        return self._sim_io and len(ops) <= QUICK_OPS and not waits

    def offer(self, conn: Connection | None) -> int:
        """The payload offered at HELLO on ``conn``: its link's, if larger than the core's."""
        return max(self.max_payload, conn.max_payload or 0) if conn is not None else self.max_payload

    def hello_reply(self, secret: bytes = bytes(SECRET_SIZE)) -> HelloReply:
        features = Feature.POLL | Feature.MEM_FILL | Feature.SETTLE | Feature.LIMITS | Feature.SESSION_SECRET
        if self._devices:
            features |= Feature.DEVICES
        if self._irq:
            features |= Feature.IRQ
        if Capability.VIRTUAL_TIME in self.io.capabilities:
            features |= Feature.VIRTUAL_TIME
        if self.fresh_io is not None:
            features |= Feature.SESSION_RESET
        return HelloReply(
            self.boot_nonce, self.name, __version__, self.max_payload, self.window, self.max_ops,
            features | Feature.INFO,
            tuple((r.start, r.stop - 1) for r in self.allow.ports),
            tuple((r.start, r.stop - 1) for r in self.allow.memory),
            self.io_info(), self.max_op_us, self.max_program_us, secret,
        )

    def io_info(self) -> tuple[tuple[str, str], ...]:
        """What the host's journal names as this agent's I/O: its scheme and, if any, its profile."""
        caps = self.io.capabilities
        info = [("io", caps.backend)]
        profile = caps.details.get("profile")
        if profile:
            info.append(("profile", str(profile)))
        # the ISA devices a script may require (docs/agent-protocol.md §3 'Info block'): without
        # them a host would skip every floppy or Sound Blaster script the I/O backend could run
        devices = [c.value for c in DEVICE_CAPABILITIES if c in caps]
        if devices:
            info.append(("devices", ",".join(devices)))
        return tuple(info)

    @property
    def session(self) -> Session | None:
        return self._session

    async def handle(self, frame: Frame, conn: Connection | None = None) -> bytes | None:
        """Answer one frame received on ``conn``; ``None`` means nothing to send."""
        conn = conn or self._local
        self.stats.frames_in += 1
        if frame.type == MsgType.HELLO:
            return await self._hello(frame, conn)
        session = self._session if self._session is not None and self._session.conn is conn else None
        if session is None:  # nothing but HELLO on a connection that holds no session
            return self._error(frame.seq, Status.NO_SESSION, "no session on this connection: send HELLO first "
                                                             "(agent restarted?)")
        if frame.type == MsgType.PING:
            return Frame(MsgType.PONG, frame.seq, frame.payload[:64]).encode()
        if frame.type != MsgType.EXEC:
            return self._error(frame.seq, Status.BAD_FRAME, f"unexpected message type 0x{frame.type:02X}")
        async with self._lock:
            if self._session is not session:  # dropped or taken over while a program ran
                return self._error(frame.seq, Status.NO_SESSION, "the session moved on: send HELLO again")
            ahead = (frame.seq - session.next) & 0xFFFF
            if ahead >= 0x8000:  # behind: a retry of a frame we executed, answer it from the cache
                cached = session.cache.get(frame.seq)
                if cached is None:
                    return self._error(frame.seq, Status.BAD_FRAME, f"seq {frame.seq} is older than the replay cache")
                self.stats.replayed += 1
                log.info("replayed", seq=frame.seq)
                return cached
            if ahead > 0:  # a gap: an earlier frame was lost; hold this one so order is kept
                if ahead < self._cache_size:
                    session.held[frame.seq] = frame
                return None
            replies = [await self._run(session, frame)]
            while session.next in session.held:  # the gap is filled: run what was waiting behind it
                replies.append(await self._run(session, session.held.pop(session.next)))
            return b"".join(replies)

    def answer_now(self, frame: Frame, conn: Connection | None = None) -> bytes | Later | None:
        """What :meth:`handle` answers ``frame``, without awaiting anything, where it can: the
        program the session expects next, with nothing held behind it and no program or session
        change in progress, that the in-process simulator runs in microseconds (see
        :meth:`_execute_now`). Anything else is :data:`LATER`, untouched: :meth:`handle` it. A
        link's own callback answers with this, so the frame needs no task woken (a loop
        iteration of every round trip)."""
        if frame.type != _EXEC or self._lock.locked():
            return LATER
        session = self._session
        if session is None or session.conn is not (conn or self._local) or frame.seq != session.next or session.held:
            return LATER
        reply = self._execute_now(frame.payload)
        if reply is None:
            return LATER
        self.stats.frames_in += 1
        return self._ran(session, frame.seq, reply)

    async def _run(self, session: Session, frame: Frame) -> bytes:
        return self._ran(session, frame.seq, await self._execute(frame.payload))

    def _ran(self, session: Session, seq: int, reply: bytes) -> bytes:
        """The reply frame of program ``seq``, cached for a retry of it; ``next`` moves on."""
        wire = encode_frame(_EXEC_REPLY, seq, reply)
        cache = session.cache
        cache[seq] = wire
        if len(cache) > self._cache_size:
            cache.popitem(last=False)
        session.next = (seq + 1) & 0xFFFF
        return wire

    async def _hello(self, frame: Frame, conn: Connection) -> bytes:
        self.stats.hellos += 1
        try:
            hello = Hello.decode(frame.payload)
        except ProtocolError as e:
            return self._error(frame.seq, Status(e.status), str(e))
        old = self._session
        if self.token and not secrets.compare_digest(hello.token, self.token):
            log.warning("hello_refused", reason="token", host=hello.name, conn=conn.name)
            conn.authenticated = False
            if old is not None and old.conn is conn:  # a failed HELLO leaves no usable session behind
                self._drop_session("wrong token on its connection")
            return self._error(frame.seq, Status.AUTH, "this agent requires the token given with --token")
        # the same host: on its own connection, or on a new one with the session's secret
        resume = old is not None and hello.host_nonce == old.host_nonce and (
            old.conn is conn or bool(hello.flags & HelloFlag.RESUME and secrets.compare_digest(hello.secret, old.secret)))
        if old is not None and old.conn is not None and old.conn is not conn and not resume:
            log.info("busy", host=hello.name, conn=conn.name, holder=old.conn.name)
            return self._error(frame.seq, Status.BUSY, "another client holds this agent")
        async with self._lock:  # a program in flight ends before the session changes hands
            if self._session is not old:
                return self._error(frame.seq, Status.BUSY, "another client took this agent meanwhile")
            if resume:
                assert old is not None
                previous, old.conn = old.conn, conn
                if previous is not None and previous is not conn:
                    log.info("session_moved", host=hello.name, old=previous.name, new=conn.name)
                    if previous.kick is not None:
                        previous.kick()
                session = old
            else:  # a new host session: the old one, its replies and held frames are gone
                self._session = None
                if self.fresh_io is not None and self._used and not hello.flags & HelloFlag.KEEP:
                    try:
                        await self._reset_io()
                    except HilError as e:
                        log.error("session_reset_failed", error=str(e))
                        return self._error(frame.seq, Status.IO_ERROR,
                                           f"could not reset the I/O for a new session: {e}")
                # HELLO carries the sequence number of the host's next EXEC
                session = self._session = Session(hello.host_nonce, secrets.token_bytes(SECRET_SIZE), conn, frame.seq)
            conn.authenticated = True
            self._request_payload = self.offer(conn)
            self._reply_payload = max(64, min(self._request_payload, hello.max_payload))
        log.info("session", host=hello.name, host_nonce=hello.host_nonce, conn=conn.name, resumed=resume)
        reply = self.hello_reply(session.secret)
        if reply.max_payload == self.max_payload != self._request_payload:  # this link's larger offer
            reply = dataclasses.replace(reply, max_payload=self._request_payload)
        return Frame(MsgType.HELLO_REPLY, frame.seq, reply.encode()).encode()

    def _drop_session(self, why: str) -> None:
        log.info("session_dropped", reason=why)
        self._session = None

    def detach(self, conn: Connection) -> None:
        """``conn`` has gone: its session stays, for the same host to resume with its secret."""
        conn.authenticated = False
        if self._session is not None and self._session.conn is conn:
            self._session.conn = None
            log.info("session_detached", conn=conn.name)

    async def _reset_io(self) -> None:
        """A new session starts where a freshly started agent would: the I/O backend opened again
        (a simulator: power-on state, no devices, memory cleared). Open the new one first, so a
        failure leaves the old one in place."""
        assert self.fresh_io is not None
        fresh = self.fresh_io()
        await fresh.open()
        old, self.io, self._used = self.io, fresh, False
        self._sim = _simulator(fresh)
        await old.close()
        log.info("session_reset", io=fresh.url)

    async def aclose(self) -> None:
        """Close the I/O backend in use (after a session reset it is not the one passed in)."""
        if self._io_runner is not None:
            self._io_runner.stop()
            self._io_runner = None
        await self.io.close()

    def _error(self, seq: int, status: Status, message: str) -> bytes:
        self.stats.refused += 1
        return Frame(MsgType.ERROR, seq, ErrorReply(status, message).encode()).encode()

    def _refuse(self, status: Status, index: int, reason: str, ops: list[Op] | None = None) -> bytes:
        self.stats.refused += 1
        return ExecReply(status, index, reason).encode(ops or [])

    def limits(self) -> Limits:
        """What this agent advertises and refuses beyond (replies: the size agreed at HELLO)."""
        return Limits(self._request_payload, self._reply_payload, self.max_ops, self.max_op_us, self.max_program_us)

    async def _execute(self, payload: bytes) -> bytes:
        program = self._program_of(payload)
        if isinstance(program, bytes):
            return program  # refused
        run = self._io_checked(program)
        if isinstance(run, bytes):
            return run
        self._used = True
        try:
            results = await self._run_io(run, program.waits)  # Settle runs as the I/O backend's own settle()
            if run is not program.ops:
                results = [*results, self.io._irq_lines()]
        except HilError as e:
            return self._io_error(program, e)
        return self._ok(program, results)

    def _execute_now(self, payload: bytes) -> bytes | None:
        """:meth:`_execute` without the event loop, or None: a program that runs on this loop
        anyway (:meth:`_quick`) on an I/O that is the simulator itself and runs it without
        waiting (:meth:`~hil.backends.sim.SimBackend.run_inline`, what its ``execute`` does after
        the check made here), and any program refused before it runs."""
        program = self._program_of(payload)
        if isinstance(program, bytes):
            return program  # refused
        sim = self._sim
        if sim is None or not program.quick or not sim.runs_inline:
            return None
        run = self._io_checked(program)
        if isinstance(run, bytes):
            return run
        self._used = True
        try:
            results = sim.run_inline(run)
            if run is not program.ops:
                results.append(sim._irq_lines())
        except HilError as e:
            return self._io_error(program, e)
        return self._ok(program, results)

    def _program_of(self, payload: bytes) -> _Validated | bytes:
        """The validated program of ``payload`` (kept, see :meth:`_validate`), or its refusal."""
        key = (payload, self._request_payload, self._reply_payload)
        program = self._validated.get(key)
        if program is not None:
            return program
        checked = self._validate(payload)
        if isinstance(checked, bytes):
            return checked  # refused
        replying = replying_wires(checked)
        waits = _waits(checked)
        program = _Validated(checked, replying, waits, ReplyLayout.of_replying(replying),
                             any(isinstance(op, Poll) for op in checked),
                             checked[:-1] if checked and isinstance(checked[-1], IrqState) else None,
                             self._quick(checked, waits))
        if len(payload) <= VALIDATED_PAYLOAD:
            if len(self._validated) >= VALIDATED_PROGRAMS:
                del self._validated[next(iter(self._validated))]  # the oldest
            self._validated[key] = program
        return program

    def _io_checked(self, program: _Validated) -> list[Op] | bytes:
        """The ops the I/O backend runs for ``program`` once its own check passed, or the refusal.
        On the simulator, a closing IrqState is the machine's lines after the rest has run: the
        same call its IrqState makes (SimBackend._irq_lines), without an IRQ op in the program,
        which the I/O backend's checks would otherwise ask its capabilities about each time."""
        ops = program.ops
        lines_after = self._sim is not None and self._irq and program.body is not None and program.quick
        run = program.body if lines_after and program.body is not None else ops
        try:
            self.io.check(run)  # the I/O backend's own refusals (devport: 16-bit DMA ports), before any op runs
        except MemoryRangeError as e:
            return self._refuse(Status.MEM_DENIED, 0, str(e), ops)
        except (AccessDeniedError, UndecodedPortError) as e:
            return self._refuse(Status.PORT_DENIED, 0, str(e), ops)
        except HilError as e:
            return self._refuse(Status.UNSUPPORTED, 0, str(e), ops)
        return run

    def _io_error(self, program: _Validated, e: HilError) -> bytes:
        log.error("io_error", error=str(e))
        return ExecReply(Status.IO_ERROR, 0xFFFF, str(e)).encode(program.ops, program.replying)

    def _ok(self, program: _Validated, results: list[Result]) -> bytes:
        """The OK reply of ``program`` that gave ``results``."""
        self.stats.executed += 1
        met = [op.met(r) for op, r in zip((op for op, _ in program.replying), results)
               if isinstance(op, Poll) and isinstance(r, int)] if program.polls else []
        if program.layout is not None and len(results) == len(program.replying):
            return program.layout.encode(results, met)  # what ExecReply.encode gives, in one pack
        return ExecReply(Status.OK, 0xFFFF, "", list(results), met).encode(program.ops, program.replying)

    def _validate(self, payload: bytes) -> list[Op] | bytes:
        """The program of ``payload`` if this agent may run it, else the encoded refusal. What
        decides it (the payload, the session's sizes, the allow-list, the features) does not
        change while a session lasts, so :meth:`_execute` keeps the programs that passed; the
        I/O backend's own check, which may follow the machine's state, runs every time."""
        limits = self.limits()
        if not limits.request_fits(len(payload)):
            return self._refuse(Status.TOO_LARGE, 0xFFFF, f"a {len(payload)}-byte program exceeds the "
                                                          f"advertised max_payload {self._request_payload}")
        try:
            ops = decode_program(payload, limits.max_ops)
        except ProtocolError as e:
            return self._refuse(Status(e.status), e.index, str(e))
        total_us = 0
        for i, op in enumerate(ops):  # validate everything before anything runs
            if is_device_op(op) and not self._devices:
                return self._refuse(Status.UNSUPPORTED, i, "this agent's I/O has no simulated devices", ops)
            if is_irq_op(op) and not self._irq:
                return self._refuse(Status.UNSUPPORTED, i, "this agent's I/O cannot observe IRQ lines", ops)
            try:
                self.allow.check([op])
            except AccessDeniedError as e:
                status = Status.MEM_DENIED if memory_access(op) is not None else Status.PORT_DENIED
                return self._refuse(status, i, str(e), ops)
            us = op_duration_us(op)
            total_us += us
            match limits.time_excess(us, total_us):
                case Limit.OP_TIME:
                    return self._refuse(Status.TOO_LARGE, i, f"{type(op).__name__} of {us} us exceeds the "
                                                             f"advertised max_op_us {self.max_op_us}", ops)
                case Limit.PROGRAM_TIME:
                    return self._refuse(Status.TOO_LARGE, i, f"the program's delays and timeouts exceed the "
                                                             f"advertised max_program_us {self.max_program_us}", ops)
        if not limits.reply_fits(reply_size(ops)):
            return self._refuse(Status.TOO_LARGE, 0, f"reply of {reply_size(ops)} bytes exceeds "
                                                     f"{self._reply_payload}", ops)
        return ops

    async def _run_io(self, ops: list[Op], waits: bool) -> list[Result]:
        """``waits``: :func:`_waits` of ``ops`` (worked out once per validated program)."""
        if not self.io_thread or self._quick(ops, waits):
            return await self.io.execute(ops)
        if self._io_runner is None:
            self._io_runner = _IoThread()
        return await self._io_runner.run(self.io.execute(ops))


def _simulator(io: Backend) -> SimBackend | None:
    """``io`` if it is the simulator itself (not a backend wrapping it, which may record every
    op it runs). Not imported for this: no simulator is loaded where none was opened."""
    module = sys.modules.get("hil.backends.sim")
    return io if module is not None and isinstance(io, module.SimBackend) else None


async def serve_link(core: AgentCore, link: Link, *, stop: asyncio.Event | None = None,
                     conn: Connection | None = None, hello_timeout: float | None = None,
                     idle_timeout: float | None = None) -> None:
    """Serve ``link`` until it closes (or ``stop`` is set). Bad input is dropped, never fatal.

    ``hello_timeout``: the connection is dropped if it has not completed HELLO that many seconds
    after it opened; ``idle_timeout``: an authenticated connection silent that long is dropped
    (its session stays, for the host to resume)."""
    conn = conn or Connection(link.name)
    reader = FrameReader(core.offer(conn))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + hello_timeout if hello_timeout is not None else None
    task = asyncio.current_task()
    assert task is not None  # serve_link runs in a task
    watch = _Watch(loop, task)
    pushed = _Pushed(core, link, conn, reader, watch, stop, deadline, idle_timeout)
    try:
        if link.on_data(pushed.received):
            await pushed.serve()
        else:
            await _serve_frames(core, link, conn, reader, watch, stop, deadline, idle_timeout)
    except asyncio.CancelledError:
        if not watch.expired or task.uncancel():
            raise
        log.info("connection_dropped", conn=conn.name, reason="idle" if conn.authenticated else "no HELLO in time")
    finally:
        pushed.close()
        watch.stop()
        core.detach(conn)
        if reader.discarded:
            log.info("link_resyncs", discarded_bytes=reader.discarded, bad_frames=reader.bad_frames)


class _Watch:
    """Drops a connection whose read has waited too long (only a read: a program that runs long
    is not idle). The deadline of each read is a time noted, not a timer: the one timer fires at
    the earliest deadline it may have, finds the read in progress younger than its limit (the
    usual case) and re-arms for it. A timer rescheduled before and after every read (``wait_for``
    or ``asyncio.timeout``) cost two timer events per frame."""

    def __init__(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[None]) -> None:
        self._loop, self._task = loop, task
        self._due: float | None = None  #: when the read in progress times out; None: no read waiting
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = 0.0
        self.expired = False  #: the task was cancelled for a read that waited too long

    def reading(self, timeout: float) -> None:
        """A read begins that may wait ``timeout`` seconds."""
        due = self._loop.time() + max(0.0, timeout)
        self._due = due
        if self._timer is None or self._timer_when > due:
            self._arm(due)

    def done(self) -> None:
        """The read returned (data or not): no deadline until the next one."""
        self._due = None

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_when = self._loop.call_at(when, self._fire), when

    def _fire(self) -> None:
        self._timer = None
        due = self._due
        if due is None:  # no read waiting: the next read arms the timer again
            return
        if self._loop.time() < due:
            self._arm(due)
            return
        self.expired = True
        self._task.cancel()  # the task waits in that read (it notes done() before anything else)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


async def _serve_frames(core: AgentCore, link: Link, conn: Connection, reader: FrameReader,
                        watch: _Watch, stop: asyncio.Event | None, deadline: float | None,
                        idle_timeout: float | None) -> None:
    """serve_link's loop: only a read waits under ``watch`` (a program that runs long is not idle)."""
    loop = asyncio.get_running_loop()
    while stop is None or not stop.is_set():
        timeout = _read_timeout(conn, idle_timeout, deadline, loop)
        if timeout is None:
            data = await link.read()
        else:
            watch.reading(timeout)
            data = await link.read()
            watch.done()
        if not data:
            return
        for frame in reader.feed(data):
            reply = await core.handle(frame, conn)
            if reply is not None and not await _send_reply(core, link, reply):
                return


def _read_timeout(conn: Connection, idle_timeout: float | None, deadline: float | None,
                  loop: asyncio.AbstractEventLoop) -> float | None:
    """How long the next read may wait: the idle limit once authenticated, until then what is
    left of the time for a HELLO."""
    if conn.authenticated:
        return idle_timeout
    return None if deadline is None else deadline - loop.time()


async def _send_reply(core: AgentCore, link: Link, reply: bytes) -> bool:
    """Write one reply and count it; False when the link has gone (the connection ends)."""
    try:
        await link.write(reply)
    except LinkError as e:
        log.warning("reply_lost", error=str(e))
        return False
    core.stats.frames_out += 1
    return True


class _Pushed:
    """serve_link for a link that pushes its bytes (:meth:`Link.on_data`, TCP). A frame the core
    answers at once (:meth:`AgentCore.answer_now`: the next program, run by the simulator in
    microseconds) is answered in the link's own callback; any other frame, and everything that
    arrives behind it, waits its turn in the serving task (:meth:`serve`), which handles it as
    :func:`_serve_frames` does. Waking that task for every frame was a loop iteration of every
    round trip. Order is kept: nothing is answered in the callback while the task has work."""

    def __init__(self, core: AgentCore, link: Link, conn: Connection, reader: FrameReader, watch: _Watch,
                 stop: asyncio.Event | None, deadline: float | None, idle_timeout: float | None) -> None:
        self._core, self._link, self._conn, self._reader, self._watch = core, link, conn, reader, watch
        self._stop, self._deadline, self._idle_timeout = stop, deadline, idle_timeout
        self._loop = asyncio.get_running_loop()
        self._work: deque[Frame | bytes] = deque()  #: frames for handle() and replies to write, in order
        self._busy = False  #: the task is handling a frame or writing a reply
        self._wake: asyncio.Future[None] | None = None  #: what the idle task awaits
        self._eof = False
        self._failure: BaseException | None = None  #: a crash in the callback, raised by the task
        self._attached = False

    def received(self, data: bytes) -> None:
        """The link's callback: bytes as they arrive, ``b""`` once the far end has gone."""
        if self._eof or self._failure is not None:
            return
        if not data:
            self._eof = True
            self._poke()
            return
        try:
            work = self._work
            frame = self._reader.whole(data)
            for frame in (frame,) if frame is not None else self._reader.feed(data):
                if not work and not self._busy and (self._stop is None or not self._stop.is_set()):
                    reply = self._core.answer_now(frame, self._conn)
                    if reply is not LATER:
                        if reply is not None and not self._write_now(reply):
                            work.append(reply)  # the transport is busy: the task writes it, in turn
                        continue
                work.append(frame)
        except Exception as e:  # a crash answering: the serving task's, as in _serve_frames
            self._failure = e
        if work or self._failure is not None:
            self._poke()
        elif not self._busy:  # answered here: the next read begins (the idle and HELLO time limits)
            timeout = self._timeout()
            if timeout is not None:
                self._watch.reading(timeout)

    def _write_now(self, reply: bytes) -> bool:
        try:
            written = self._link.write_now(reply)
        except LinkError:
            return False  # the task's write meets the failure and ends the connection, as _serve_frames
        if written:
            self._core.stats.frames_out += 1
        return written

    def _poke(self) -> None:
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    def _timeout(self) -> float | None:
        return _read_timeout(self._conn, self._idle_timeout, self._deadline, self._loop)

    async def serve(self) -> None:
        self._attached = True
        core, link, work, watch = self._core, self._link, self._work, self._watch
        while True:
            if self._failure is not None:
                raise self._failure
            if work:
                self._busy = True
                try:
                    item = work.popleft()
                    reply = item if isinstance(item, bytes) else await core.handle(item, self._conn)
                    if reply is not None and not await _send_reply(core, link, reply):
                        return
                finally:
                    self._busy = False
                continue
            if self._eof or (self._stop is not None and self._stop.is_set()):
                return
            timeout = self._timeout()
            self._wake = self._loop.create_future()
            if timeout is not None:
                watch.reading(timeout)
            try:
                await self._wake
            finally:
                self._wake = None
                watch.done()

    def close(self) -> None:
        """No more bytes to this connection's callback (the serving task has ended)."""
        if self._attached:
            self._attached = False
            self._link.on_data(None)
        self._eof = True


@dataclass
class Listener:
    """A running agent: ``address`` is what clients connect to (pty slave path, TCP address)."""

    address: str
    task: asyncio.Task[None]
    close: Callable[[], None]


async def serve(core: AgentCore, listen: str, *, token_required_beyond_loopback: bool = True,
                ready: Callable[[str], None] | None = None) -> None:
    """Listen on ``tcp://HOST:PORT``, ``serial:///dev/ttyS0?baud=N`` or ``pty`` and serve forever."""
    listener = await start(core, listen, token_required_beyond_loopback=token_required_beyond_loopback)
    if ready is not None:
        ready(listener.address)
    try:
        await listener.task
    finally:
        listener.close()


async def start(core: AgentCore, listen: str, *, token_required_beyond_loopback: bool = True) -> Listener:
    if listen == "pty":
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no newline translation: the link carries binary frames
        path = os.ttyname(slave)
        link = FdLink(path, master)
        task = asyncio.create_task(_serve_forever(core, link))

        def close_pty() -> None:
            task.cancel()
            for fd in (master, slave):
                with contextlib.suppress(OSError):
                    os.close(fd)

        log.info("agent_listening", link="pty", path=path, boot_nonce=core.boot_nonce)
        return Listener(path, task, close_pty)
    if listen.startswith("tcp://"):
        parts = urlsplit(listen)
        try:
            host, port = parts.hostname or "127.0.0.1", parts.port
        except ValueError:
            port = None
        if port is None:
            raise LinkError(f"{listen}: expected tcp://HOST:PORT with a port number (0: any free port)")
        if not _loopback(host) and token_required_beyond_loopback and not core.token:
            raise LinkError(f"{listen}: listening beyond loopback requires --token (clients must present it in HELLO)")
        async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, protocol: PushProtocol) -> None:
            """Every connection is served; BUSY is decided at HELLO, after the token (AgentCore)."""
            peer = writer.get_extra_info("peername")
            log.info("client_connected", peer=str(peer))
            link = StreamLink(f"tcp {peer}", reader, writer, protocol)
            conn = Connection(f"tcp {peer}", kick=writer.close, max_payload=TCP_MAX_PAYLOAD)
            try:
                await serve_link(core, link, conn=conn, hello_timeout=core.hello_timeout,
                                 idle_timeout=core.idle_timeout)
            finally:
                await link.close()
                log.info("client_gone", peer=str(peer))

        loop = asyncio.get_running_loop()

        def connection() -> PushProtocol:  # asyncio.start_server's, with a protocol that can push its bytes
            reader = asyncio.StreamReader(limit=READ_CHUNK, loop=loop)
            protocol = PushProtocol(reader, lambda r, w: client(r, w, protocol), loop=loop)
            return protocol

        try:
            server = await loop.create_server(connection, host, port)
        except OSError as e:  # port in use, address not on this machine, privileged port
            raise oserrors.listen_error(listen, e, LinkError) from None
        sock = server.sockets[0].getsockname()
        address = f"tcp://{sock[0]}:{sock[1]}"
        log.info("agent_listening", link=address, boot_nonce=core.boot_nonce)
        task = asyncio.create_task(server.serve_forever())
        return Listener(address, task, server.close)
    if listen.startswith("serial://") or listen.startswith("/dev/"):
        path = listen[len("serial://"):] if listen.startswith("serial://") else listen
        path, _, query = path.partition("?")
        opts = dict(parse_qsl(query))
        try:
            baud = int(opts.get("baud", 115200))
        except ValueError:
            raise LinkError(f"{listen}: baud={opts['baud']!r} is not a number") from None
        tty_port = await asyncio.to_thread(_open_serial, listen, path, baud)
        link = FdLink(path, tty_port.fileno(), owner=tty_port)
        task = asyncio.create_task(_serve_forever(core, link))

        def close_serial() -> None:
            task.cancel()
            tty_port.close()

        log.info("agent_listening", link=path, boot_nonce=core.boot_nonce)
        return Listener(path, task, close_serial)
    raise LinkError(f"{listen!r}: listen on tcp://HOST:PORT, serial:///dev/ttyX?baud=N or pty")


def _open_serial(listen: str, path: str, baud: int) -> serial.Serial:
    """Open the agent's serial line; blocking (a tty open can wait on the driver), so run in a thread."""
    import serial

    if not os.path.exists(path):
        raise LinkError(f"{listen}: cannot open: {path} does not exist")
    try:
        return serial.Serial(path, baudrate=baud, timeout=0)
    except (serial.SerialException, OSError, ValueError) as e:
        raise oserrors.failure(listen, "cannot open", e, LinkError) from None


async def _serve_forever(core: AgentCore, link: Link) -> None:
    """A serial line or pty has no connections: keep serving whatever arrives, as one."""
    conn = Connection(link.name)
    while True:
        await serve_link(core, link, conn=conn)
        await asyncio.sleep(0.05)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


__all__ = ["AgentCore", "AgentStats", "Connection", "Listener", "Session", "serve", "serve_link", "start"]
