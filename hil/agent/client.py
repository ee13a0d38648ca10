"""``agent+…:`` backends: programs sent as frames to an agent at the far end of a link.

URLs: ``agent+serial:///dev/ttyUSB0?baud=3000000``, ``agent+tcp://127.0.0.1:7777?token=…``,
``agent+ftdi://ftdi:232h/1?baud=3000000``, and any other pyserial URL behind ``agent+``
(``agent+socket://host:port``, ``agent+rfc2217://host:port``, ``agent+loop://``). Options:
``baud``, ``timeout`` (s per round trip before a retry), ``retries``, ``window`` (frames in
flight), ``max_payload``, ``token``; anything else stays on the pyserial URL.

A program becomes as few frames as the agent's sizes allow (adjacent memory reads coalesced,
large ones split), all sent at once up to the window. The agent executes frames strictly in
sequence order and exactly once, so the host may retry any frame it has no reply for. An op
whose feature bit the agent did not advertise (POLL, MEM_FILL, SETTLE, DEVICES, IRQ) is refused
with :class:`AgentUnsupportedError` before any frame of its program is sent. With feature IRQ,
every program ends with an :class:`~hil.ops.IrqState` the client adds and takes off the results
again: its 34 reply bytes keep ``irq_level``/``irq_count`` at the state of the end of the last
program, as on the simulator, without a round trip of their own. A
changed boot nonce means the agent was restarted: the program in flight fails with
:class:`AgentResetError` and the backend's reset listeners (the driver layer's restore) run.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, replace
from typing import ClassVar

from hil.agent.limits import DEFAULT_MAX_PROGRAM_US
from hil.agent.links import Link, LinkError, LinkKind, link_kind, open_link, parse_ftdi_url, split_query
from hil.agent.protocol import (
    DEFAULT_MAX_PAYLOAD,
    OP_FEATURES,
    REPLY_HEADER,
    STATE_FIXED,
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
    encode_frame,
    encode_program,
    op_duration_us,
    reply_size,
)
from hil.backends import BackendURL
from hil.backends.base import DEVICE_CAPABILITIES, Backend, Capabilities, Capability
from hil.errors import (  # the agent's errors were defined here; their names stay importable from here
    AccessDeniedError,
    AgentAccessDenied as AgentAccessDenied,
    AgentError as AgentError,
    AgentRefusedError as AgentRefusedError,
    AgentResetError as AgentResetError,
    AgentTimeoutError as AgentTimeoutError,
    AgentUnsupportedError as AgentUnsupportedError,
    BackendClosedError,
    BackendNotOpenError,
    BackendOptionError,
    HilError,
    MemoryRangeError,
    refusal_text,
)
from hil.log import get_logger
from hil.ops import (
    ALL_OPS,
    DevAppend,
    DevAttach,
    DevState,
    In,
    IrqLines,
    IrqState,
    MemRead,
    MemWrite,
    Op,
    PowerReset,
    Result,
    Settle,
    is_irq_op,
    is_reading,
    memory_access,
    port_access,
    request_size,
    result_size,
    wait_us,
)
from hil.records import dataclass

log = get_logger("hil.agent.client")

OPTIONS = {
    "baud": "serial baud rate (default 115200)",
    "timeout": "seconds to wait for a reply before retrying (default 1.0)",
    "retries": "retransmissions of one frame before giving up (default 5)",
    "window": "frames in flight (default: the agent's window)",
    "max_payload": "largest frame payload to offer at HELLO (default 4096; on TCP 61440)",
    "token": "token for an agent listening beyond loopback",
    "keep": "1: keep the I/O state earlier clients left on a simulated agent (default 0: start afresh)",
}


@dataclass
class LinkStatistics:
    programs: int = 0
    round_trips: int = 0  #: request frames answered
    frames_sent: int = 0  #: including retransmissions
    retries: int = 0
    bytes_out: int = 0
    bytes_in: int = 0
    resets: int = 0
    discarded_bytes: int = 0


# request payload bytes of each op, and reply bytes: both from the op table, as the codec is
_req_size = request_size
_rep_size = result_size


@dataclass
class _Chunk:
    ops: list[Op]
    parts: list[list[tuple[int, int]]]  #: per reading op: (original reading index, bytes)
    payload: bytes | None = None  #: the EXEC payload of ``ops``, once encoded (a remembered program)
    layout: ReplyLayout | None = None  #: how its reply reads in one unpack, if it can (a remembered program)
    reply_bytes: int | None = None  #: reply_size(ops), once worked out (a remembered program)
    wait_s: float | None = None  #: the longest its ops may wait, in s, once worked out (a remembered program)


PREPARED_PROGRAMS = 256  #: single-frame programs a backend remembers checked, planned and encoded


@dataclass
class _Prepared:
    """A program as sent before: valid for the agent (its HELLO_REPLY) and frame size it was planned for."""

    info: HelloReply
    size: int
    ops: list[Op]  #: with the IrqState a tracking program ends with
    chunk: _Chunk
    direct: bool = False  #: see AgentBackend._results_direct
    tracking: bool = False  #: the agent tracks IRQ lines (feature IRQ): ``ops`` ends with an IrqState


def _program_key(ops: Sequence[Op]) -> tuple[Op, ...] | None:
    """The ops as a cache key; None for a program too long to be worth hashing."""
    return None if len(ops) > 256 else tuple(ops)


def plan(ops: Sequence[Op], max_request: int | Callable[[], int], max_reply: int | Callable[[], int],
         max_ops: int) -> Iterator[_Chunk]:
    """Frames for ``ops``: coalesce adjacent reads, split what does not fit, keep order.

    Lazy: the sizes may be callables, asked again for every piece, so frames planned after the
    link turned noisy are smaller than the ones before (the adaptive frame size)."""
    req_limit = max_request if callable(max_request) else (lambda: max_request)
    rep_limit = max_reply if callable(max_reply) else (lambda: max_reply)
    merged: list[tuple[Op, list[tuple[int, int]]]] = []
    reading = 0
    for op in ops:
        prev = merged[-1][0] if merged else None
        if isinstance(op, MemRead) and isinstance(prev, MemRead) and prev.addr + prev.length == op.addr:
            merged[-1] = (MemRead(prev.addr, prev.length + op.length), merged[-1][1] + [(reading, op.length)])
            reading += 1
        elif is_reading(op):
            merged.append((op, [(reading, op.length if isinstance(op, MemRead) else 0)]))
            reading += 1
        else:
            merged.append((op, []))
    chunk = _Chunk([], [])
    req, rep = 0, REPLY_HEADER.size
    for op, parts in merged:
        for piece, piece_parts in _pieces(op, parts, req_limit, rep_limit):
            limits = Limits(req_limit(), rep_limit(), max_ops)
            piece_req, piece_rep = _req_size(piece), _rep_size(piece)
            if chunk.ops and limits.frame_excess(len(chunk.ops) + 1, req + piece_req, rep + piece_rep) is not None:
                yield chunk
                chunk, req, rep = _Chunk([], []), 0, REPLY_HEADER.size
            chunk.ops.append(piece)
            if is_reading(piece):
                chunk.parts.append(piece_parts)
            req += piece_req
            rep += piece_rep
    if chunk.ops:
        yield chunk


def _pieces(op: Op, parts: list[tuple[int, int]], req_limit: Callable[[], int],
            rep_limit: Callable[[], int]) -> Iterator[tuple[Op, list[tuple[int, int]]]]:
    """``op`` cut to the sizes in force when each piece is made (the fixed sizes from the op table)."""
    match op:
        case DevState() if REPLY_HEADER.size + _rep_size(op) > rep_limit():
            yield DevState(op.channel, max(0, rep_limit() - REPLY_HEADER.size - STATE_FIXED)), parts  # the digest covers the rest
        case MemRead() if REPLY_HEADER.size + op.length > rep_limit():
            queue = list(parts)
            addr, left = op.addr, op.length
            while left:
                n = min(rep_limit() - REPLY_HEADER.size, left)
                piece_parts, need = [], n
                while need:
                    idx, count = queue[0]
                    take = min(count, need)
                    piece_parts.append((idx, take))
                    need -= take
                    if take == count:
                        queue.pop(0)
                    else:
                        queue[0] = (idx, count - take)
                yield MemRead(addr, n), piece_parts
                addr, left = addr + n, left - n
        case MemWrite() if _req_size(op) > req_limit():
            fixed = _req_size(MemWrite(op.addr, b""))
            i = 0
            while i < len(op.data):
                step = req_limit() - fixed
                yield MemWrite(op.addr + i, op.data[i : i + step]), []
                i += step
        case DevAttach() if _req_size(op) > req_limit():
            step = req_limit() - _req_size(replace(op, data=b""))
            yield DevAttach(op.channel, op.kind, op.data[:step], op.dreq, op.capacity), []
            i = step
            while i < len(op.data):
                step = req_limit() - _req_size(DevAppend(op.channel, b""))
                yield DevAppend(op.channel, op.data[i : i + step]), []
                i += step
        case _:
            yield op, parts


#: compared and sent per frame (an enum's attribute costs a lookup)
_ERROR, _EXEC, _EXEC_REPLY = int(MsgType.ERROR), int(MsgType.EXEC), int(MsgType.EXEC_REPLY)

#: what a round trip's waiter wakes with when its timeout ran out (not a message: type 0 is none)
_EXPIRED = Frame(0, 0)


MIN_FRAME = 64  #: the adaptive frame size never goes below this many payload bytes
GROW_AFTER = 8  #: clean round trips in a row before the frame size doubles again


class FrameSizer:
    """The payload size frames are planned with, adapted to the link's observed error rate.

    A frame of ``n`` bytes on a link that loses or corrupts a fraction ``p`` of its bytes arrives
    intact with probability ``(1 - p)^n``: at 1 % that is 60 % for 50 bytes but 0.6 % for 512.
    Every retransmission halves the size (from the size of the frame that was lost), every
    ``GROW_AFTER`` clean round trips in a row double it, up to what both sides negotiated. A
    frame already sent keeps its size (a retransmission repeats it byte for byte: it may have run)."""

    def __init__(self, ceiling: int) -> None:
        self.ceiling = max(MIN_FRAME, ceiling)
        self.size = self.ceiling
        self._clean = 0
        self.shrinks = 0

    def lost(self, frame_size: int) -> None:
        self._clean = 0
        smaller = max(MIN_FRAME, min(self.size, frame_size) // 2)
        if smaller < self.size:
            self.size = smaller
            self.shrinks += 1

    def clean(self) -> None:
        self._clean += 1
        if self._clean >= GROW_AFTER and self.size < self.ceiling:
            self.size = min(self.ceiling, self.size * 2)
            self._clean = 0


class _Wire:
    """One open link and the two tasks that move its bytes, owned together.

    The reader turns bytes into frames and hands each to ``route`` (a link that pushes its bytes,
    :meth:`Link.on_data`, has no reader task: its callback does the reader's work, and its end or
    crash is handled as the reader task's would be); the writer sends queued
    frames one at a time, so two frames in flight never interleave on the line. The link going
    away (EOF, :class:`LinkError`, ``OSError``) only marks the wire ``down``: the next frame
    reconnects. Anything else is a crash and reaches someone as itself: a write's goes to the
    senders of the frames it held, the reader's (the router's included) to ``crashed``, which
    fails the frames waiting for replies with it. Either way the wire is down. The link is
    closed exactly once, by one task that :meth:`close` awaits, so a reconnect never opens the
    next link (a second open of a serial device) while the old one is still closing."""

    def __init__(self, link: Link, route: Callable[[Frame], None], crashed: Callable[[BaseException], None],
                 stats: LinkStatistics, name: str) -> None:
        self.link, self._route, self._crashed, self._stats, self._name = link, route, crashed, stats, name
        self.down = False
        self._writing = False  #: the writer task holds a frame (the direct write must wait its turn)
        self._frames = FrameReader()
        self._queue: asyncio.Queue[tuple[bytes, asyncio.Future[None]]] = asyncio.Queue()
        self._closer: asyncio.Task[None] | None = None
        self._receiving = True  #: pushed bytes are still taken (see _received)
        writer = asyncio.create_task(self._write(), name=f"{name} writer")
        if link.on_data(self._received):  # bytes come to _received as they arrive: no reader task
            self._tasks: tuple[asyncio.Task[None], ...] = (writer,)
        else:
            self._tasks = (asyncio.create_task(self._read(), name=f"{name} reader"), writer)
        for task in self._tasks:
            task.add_done_callback(self._ended)

    async def send(self, data: bytes) -> None:
        """Queue ``data`` and return once it is written; :class:`LinkError` if the link is down."""
        if self.send_now(data):
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((data, done))
        await done

    def send_now(self, data: bytes) -> bool:
        """:meth:`send`'s part that needs no wait: ``data`` written at once, with nothing queued
        ahead of it (True), or nothing done (False: :meth:`send` queues it for the writer task)."""
        if self.down:
            raise LinkError(f"{self.link.name}: link down")
        if not self._writing and not self._queue.qsize():  # nothing ahead of it: no hand-off to the writer
            try:
                return self.link.write_now(data)
            except LinkError:
                self.down = True
                raise
        return False

    async def _read(self) -> None:
        while True:
            try:
                data = await self.link.read()
            except (LinkError, OSError) as e:
                log.warning("link_read_failed", backend=self._name, error=str(e))
                data = b""
            if not data:
                log.warning("link_closed", backend=self._name)
                return
            self._stats.bytes_in += len(data)
            for frame in self._frames.feed(data):
                self._route(frame)
            self._stats.discarded_bytes = self._frames.discarded

    def _received(self, data: bytes) -> None:
        """What :meth:`_read` does with each read, for a link that pushes its bytes (on_data)."""
        if not self._receiving:
            return
        if not data:
            log.warning("link_closed", backend=self._name)
            self._stop_receiving(None)
            return
        self._stats.bytes_in += len(data)
        try:
            frame = self._frames.whole(data)
            if frame is not None:
                self._route(frame)
            else:
                for frame in self._frames.feed(data):
                    self._route(frame)
        except Exception as e:  # a crash of the router: as a reader task's crash would be
            self._stop_receiving(e)
            return
        self._stats.discarded_bytes = self._frames.discarded

    def _stop_receiving(self, exc: BaseException | None) -> None:
        """The pushed bytes ended (EOF, or ``exc`` crashed their handling): as :meth:`_ended` is for a reader task."""
        self._receiving = False
        self.link.on_data(None)
        self.down = True
        if exc is not None:
            self._crashed(exc)
        if self._closer is None:
            self._closer = asyncio.get_running_loop().create_task(self._close_link(), name=f"{self._name} close")

    async def _write(self) -> None:
        while True:
            data, done = await self._queue.get()
            if done.done():  # its sender gave up waiting
                continue
            self._writing = True
            try:
                await self.link.write(data)
            except (LinkError, OSError) as e:
                self._fail_queued(LinkError(f"{self.link.name}: write failed: {e}"), done)
                return
            except asyncio.CancelledError:
                self._fail_queued(LinkError(f"{self.link.name}: closed"), done)
                raise
            except Exception as e:  # not the link going away: its senders get it as it is
                log.error("agent_link_write_failed", backend=self._name, error=repr(e))
                self._fail_queued(e, done)
                return
            finally:
                self._writing = False
            if not done.done():
                done.set_result(None)

    def _fail_queued(self, exc: BaseException, first: asyncio.Future[None] | None = None) -> None:
        self.down = True
        waiting = [first] if first is not None else []
        while not self._queue.empty():
            waiting.append(self._queue.get_nowait()[1])
        for fut in waiting:
            if not fut.done():
                fut.set_exception(exc)

    def _ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        self.down = True
        exc = task.exception()
        if exc is not None:
            self._crashed(exc)
        if self._closer is None:  # not left open: a half-closed socket would hold the agent
            self._closer = asyncio.get_running_loop().create_task(self._close_link(), name=f"{self._name} close")

    async def _close_link(self) -> None:
        if self._receiving:
            self._receiving = False
            self.link.on_data(None)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.link.close()

    async def close(self) -> None:
        """Stop both tasks and close the link (once); return when it is closed."""
        self.down = True
        if self._closer is None:
            self._closer = asyncio.get_running_loop().create_task(self._close_link(), name=f"{self._name} close")
        await asyncio.shield(self._closer)
        self._fail_queued(LinkError(f"{self.link.name}: closed"))


def from_url(url: BackendURL) -> AgentBackend:
    raw = url.raw
    rest = raw.split(":", 1)[1] if ":" in raw else ""
    kind = url.scheme.split("+", 1)[1] if "+" in url.scheme else ""
    if not rest.strip("/") and kind:
        raise BackendOptionError(raw, f"agent+{kind}: needs a link, e.g. agent+serial:///dev/ttyUSB0?baud=3000000 "
                                      f"or agent+tcp://127.0.0.1:7777")
    if kind == "tcp":
        link_url = "tcp:" + rest
    elif kind == "serial":
        link_url = rest[2:] if rest.startswith("//") else rest  # agent+serial:///dev/x -> /dev/x
    elif kind:
        link_url = f"{kind}:{rest}"  # agent+ftdi://..., agent+socket://..., agent+loop://
    else:
        raise BackendOptionError(raw, "use agent+serial://, agent+tcp://, agent+ftdi:// or agent+<pyserial URL>")
    link_url, opts = split_query(link_url, set(OPTIONS))
    if link_url.startswith("ftdi:"):
        try:
            parse_ftdi_url(link_url)  # pyftdi's grammar, checked here: no USB device needed
        except LinkError as e:
            raise BackendOptionError(raw, str(e)) from None
    try:
        baud = int(opts.get("baud", 115200))
        timeout = float(opts.get("timeout", 1.0))
        retries = int(opts.get("retries", 5))
        window = int(opts["window"]) if "window" in opts else None
        tcp = link_kind(link_url) == LinkKind.TCP  # a larger offer at HELLO (TCP_MAX_PAYLOAD)
        max_payload = int(opts.get("max_payload", TCP_MAX_PAYLOAD if tcp else DEFAULT_MAX_PAYLOAD))
    except ValueError as e:
        raise BackendOptionError(raw, f"bad option value: {e}") from None
    if baud <= 0 or timeout <= 0 or retries < 0 or (window is not None and window < 1) or not 64 <= max_payload <= 0xFFFF:
        raise BackendOptionError(raw, "baud and timeout must be > 0, retries >= 0, window >= 1, max_payload 64..65535")
    if link_url.startswith("tcp:") and "?" not in link_url and not link_url.startswith("tcp://"):
        raise BackendOptionError(raw, "expected agent+tcp://HOST:PORT")
    keep = url.flag("keep")
    return AgentBackend(raw, link_url, baud=baud, timeout=timeout, retries=retries, window=window,
                        max_payload=max_payload, token=opts.get("token", "").encode(), keep=keep)


class AgentBackend(Backend):
    scheme = "agent"
    ROUND_TRIPS = True
    OPS = ALL_OPS  #: everything travels; the agent refuses what its I/O cannot do

    def __init__(self, url: str, link_url: str, *, baud: int = 115200, timeout: float = 1.0, retries: int = 5,
                 window: int | None = None, max_payload: int = DEFAULT_MAX_PAYLOAD, token: bytes = b"",
                 keep: bool = False, link_factory: Callable[[], Awaitable[Link]] | None = None) -> None:
        super().__init__(url)
        self.keep = keep  #: HELLO flag KEEP: a new session keeps what earlier clients left
        #: how to (re)open the link; benchmarks and tests hand in shaped or in-memory links
        self._link_factory = link_factory or (lambda: open_link(self.link_url, baud=self.baud))
        self.link_url, self.baud, self.timeout, self.retries = link_url, baud, timeout, retries
        self._window_opt, self._max_payload, self._token = window, max_payload, token
        self._host_nonce = secrets.randbits(32)
        self._seq = 0
        #: replies are routed by (kind, seq): a HELLO may share its seq with the EXEC that follows it
        self._pending: dict[tuple[str, int], asyncio.Future[Frame]] = {}
        self._wire: _Wire | None = None  #: the link and its reader and writer tasks
        #: a reader or writer crash no waiting frame took: raised by the next execute() or close()
        self._crash: BaseException | None = None
        self.agent: HelloReply | None = None
        self.boot_nonce: int | None = None
        self.stats = LinkStatistics()
        self._window_size = 1
        #: sequence numbers sent and not yet answered, oldest first: a new frame goes out only within
        #: ``window`` of the oldest, so the agent's replay cache (2 x window) still holds every reply
        #: a retransmission may ask for
        self._unanswered: list[int] = []
        self._window_open = asyncio.Condition()
        self._admitting = 0  #: programs waiting in _admit for the window to open (see _admit)
        #: the deadline of each round trip waiting for its reply, by its waiter; one timer for all
        #: of them (see _arm): a timer per round trip was a heap push and a cancel every frame
        self._deadlines: dict[asyncio.Future[Frame], tuple[float, tuple[str, int]]] = {}
        self._tick: asyncio.TimerHandle | None = None
        self._tick_when = 0.0
        self._hello_lock = asyncio.Lock()
        self._connect_lock = asyncio.Lock()  #: one reconnect for the whole backend, not one per frame
        self._secret = b""  #: the session secret from HELLO_REPLY: a reconnect resumes with it
        self.sizer = FrameSizer(max_payload)  #: the adaptive frame size (replaced at HELLO)
        self._generation = 0  #: bumped at every agent reset; frames of an older generation never run
        #: the IRQ lines at the end of the last program (feature IRQ), with counts unwrapped
        self._irq = IrqLines()
        self._prepared: dict[tuple[Op, ...], _Prepared] = {}  #: see _remember
        self._recent: tuple[tuple[Op, ...], _Prepared] | None = None  #: see _find
        #: port -> the remembered program of inb(port) (at most one per port: see inb)
        self._reads: dict[int, _Prepared] = {}
        #: the program check() found remembered, its key and entry, for _execute to take (see check)
        self._hit: tuple[Sequence[Op], tuple[Op, ...], _Prepared] | None = None
        self._capabilities: tuple[tuple[object, ...], Capabilities] | None = None  #: see capabilities

    # --- life cycle ---------------------------------------------------------------------
    async def _open(self) -> None:
        try:
            await self._connect()
        except BaseException:
            await self._drop_link()  # a refused or silent agent: do not leave the link open
            raise

    async def _connect(self) -> None:
        self._start_link(await self._link_factory())
        await self._hello()

    @property
    def _link(self) -> Link | None:
        """The link frames go out on, None while it is down (the next frame reconnects)."""
        wire = self._wire
        return wire.link if wire is not None and not wire.down else None

    def _start_link(self, link: Link) -> None:
        self._wire = _Wire(link, self._route, self._crashed, self.stats, self.url)

    async def _drop_link(self) -> None:
        wire, self._wire = self._wire, None
        if wire is not None:
            await wire.close()

    def _lose_link(self) -> None:
        """The link is gone (a send failed): the next frame reconnects, closing it first."""
        if self._wire is not None:
            self._wire.down = True

    def _crashed(self, exc: BaseException) -> None:
        """A reader or writer task died of something that is not the link going away: the frames
        waiting for replies fail with it as it is; with none waiting, the next caller gets it."""
        log.error("agent_link_task_failed", backend=self.url, error=repr(exc))
        if not self._fail_pending(exc):
            self._crash = exc

    def _raise_crash(self) -> None:
        crash, self._crash = self._crash, None
        if crash is not None:
            raise crash

    async def _close(self) -> None:
        log.info("link_stats", backend=self.url, **asdict(self.stats))
        async with self._connect_lock:  # a reconnect in progress ends before the link is dropped
            await self._drop_link()
        self._fail_pending(AgentError(f"{self.url}: backend closed"))
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None
        self._raise_crash()

    def _fail_pending(self, exc: BaseException, kind: str | None = None) -> int:
        """Fail the requests waiting for a reply (of ``kind``, or all); return how many."""
        failed = 0
        for (k, _), fut in list(self._pending.items()):
            if (kind is None or k == kind) and not fut.done():
                fut.set_exception(exc)
                failed += 1
        return failed

    #: which waiting request a reply type answers (an ERROR may answer any of them)
    _REPLY_KINDS: ClassVar[dict[int, tuple[str, ...]]] = {
        MsgType.HELLO_REPLY: ("hello",),
        MsgType.EXEC_REPLY: ("exec",),
        MsgType.PONG: ("ping",),
        MsgType.ERROR: ("exec", "hello", "ping"),
    }

    def _route(self, frame: Frame) -> None:
        if frame.type == _EXEC_REPLY:  # the usual reply: its one waiter
            fut = self._pending.get(("exec", frame.seq))
            if fut is not None and not fut.done():
                fut.set_result(frame)
            return
        if frame.type == MsgType.ERROR and frame.payload[:1] and frame.payload[0] in (Status.AUTH, Status.VERSION, Status.BUSY):
            candidates = [k for k in self._pending if k[0] == "hello"]  # refusals of a HELLO, whatever seq
        elif frame.type == MsgType.ERROR and frame.payload[:1] and frame.payload[0] == Status.NO_SESSION:
            # only an EXEC is answered so (a HELLO makes the session): after an agent restart a stale
            # EXEC's NO_SESSION can arrive while a HELLO of the same seq waits, and is not its answer
            candidates = [("exec", frame.seq)]
        else:
            candidates = [(kind, frame.seq) for kind in self._REPLY_KINDS.get(frame.type, ())]
        for key in candidates:
            fut = self._pending.get(key)
            if fut is not None and not fut.done():
                fut.set_result(frame)
                return

    # --- frames -------------------------------------------------------------------------
    def _next_seq(self) -> int:
        seq = self._seq
        self._seq = (self._seq + 1) & 0xFFFF
        return seq

    async def _ensure_link(self) -> None:
        """Reconnect once for the whole backend (every frame in flight waits for the same new
        link), closing the old one first, and prove ourselves again: HELLO with the token and the
        session secret. A changed boot nonce on the way is the agent's reset (``_hello``)."""
        if self._link is not None:
            return
        async with self._connect_lock:
            if self._link is not None:
                return
            if self._closed:
                raise BackendClosedError(self.url)
            await self._drop_link()  # the old link closed before the next one opens
            self._start_link(await self._link_factory())
            try:
                await self._hello()
            except BaseException:
                await self._drop_link()
                raise

    async def _round_trip(self, kind: str, seq: int, wire: bytes, extra_s: float = 0.0, *,
                          generation: int | None = None, size: int = 0) -> Frame:
        """Send frame ``seq`` (``wire``, its encoding) and return its reply, retransmitting the
        same bytes on silence.

        ``generation`` (EXEC frames) stops a retransmission after an agent reset: the frame was
        meant for a controller that no longer has the state it assumed. ``size`` (EXEC frames:
        the larger of its request and reply payloads) feeds the adaptive frame size.
        """
        wait = self.timeout + extra_s + 20 * len(wire) / self.baud
        key = (kind, seq)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Frame] = loop.create_future()
        self._pending[key] = fut
        stats = self.stats
        try:
            for attempt in range(self.retries + 1):
                if attempt:
                    self.stats.retries += 1
                    log.info("retransmit", kind=kind, seq=seq, attempt=attempt)
                    if size and attempt == 1:
                        self.sizer.lost(size)
                try:
                    if kind != "hello" and self._link is None:
                        await self._ensure_link()
                    if generation is not None and generation != self._generation:
                        raise self._reset_error()
                    link = self._wire
                    if link is None:
                        raise LinkError(f"{self.link_url}: link down")
                    if not link.send_now(wire):
                        await link.send(wire)
                    stats.bytes_out += len(wire)
                    stats.frames_sent += 1
                except (LinkError, OSError) as e:
                    log.warning("send_failed", error=str(e))
                    self._lose_link()
                    await asyncio.sleep(min(wait, 0.2))
                    continue
                self._arm(fut, key, loop.time() + wait)
                try:
                    reply = await fut
                finally:
                    self._deadlines.pop(fut, None)
                if reply is _EXPIRED:
                    # a reply arriving from now on lands in the fresh future; if the key was taken
                    # over meanwhile (a round trip of the same kind and seq ended), register again
                    fut = self._pending.setdefault(key, loop.create_future())
                    if not fut.done():
                        continue
                    reply = fut.result()  # it came between the timeout and this task resuming
                stats.round_trips += 1
                if size and not attempt:
                    self.sizer.clean()
                return reply
            raise AgentTimeoutError(
                f"{self.url}: no reply to frame {seq} after {self.retries + 1} tries of {wait:.2f} s: "
                f"is the agent running, the link right (baud {self.baud})?"
            )
        finally:
            pending = self._pending
            if pending.get(key) is fut:  # ours: another round trip may hold the key by now
                del pending[key]
                if fut.done() and not fut.cancelled():
                    fut.exception()  # failed by a reset while this frame was not waiting for it: seen

    def _arm(self, fut: asyncio.Future[Frame], key: tuple[str, int], when: float) -> None:
        """``fut`` expires (:meth:`_expire`) at ``when`` unless answered first. The one timer runs
        at the earliest deadline at most: one that finds nothing due re-arms for the next, so a
        stream of round trips answered in time costs a timer event per timeout, not per frame."""
        self._deadlines[fut] = (when, key)
        if self._tick is None or when < self._tick_when:
            if self._tick is not None:
                self._tick.cancel()
            self._tick, self._tick_when = asyncio.get_running_loop().call_at(when, self._on_tick), when

    def _on_tick(self) -> None:
        self._tick = None
        now = asyncio.get_running_loop().time()
        due = [(fut, key) for fut, (when, key) in self._deadlines.items() if when <= now]
        for fut, key in due:
            del self._deadlines[fut]
            self._expire(key, fut)
        if self._deadlines:
            when = min(w for w, _ in self._deadlines.values())
            self._tick, self._tick_when = asyncio.get_running_loop().call_at(when, self._on_tick), when

    def _expire(self, key: tuple[str, int], waiting: asyncio.Future[Frame]) -> None:
        """A round trip's timeout: its waiter wakes with :data:`_EXPIRED`, and a fresh future
        takes its place under the same key first, so a late reply (to this or a retransmitted
        copy: the agent answers both the same) is still received. Awaiting the future itself,
        not ``asyncio.wait`` around it, saves a loop iteration per frame."""
        if waiting.done():
            return
        if self._pending.get(key) is waiting:
            self._pending[key] = asyncio.get_running_loop().create_future()
        waiting.set_result(_EXPIRED)  # the waiter wakes whoever holds the key now: no wait without end

    def _reset_error(self) -> AgentResetError:
        return AgentResetError(
            f"{self.url}: the agent was restarted (boot nonce changed); its controller state was lost and "
            f"this program did not run there; the driver layer's state is being restored"
        )

    def _oldest_pending_exec(self) -> int:
        """The seq the agent must expect next: the oldest EXEC still waiting for a reply."""
        seqs = [seq for kind, seq in self._pending if kind == "exec"]
        return max(seqs, key=lambda s: (self._seq - s) & 0xFFFF) if seqs else self._seq

    async def _hello_exchange(self, seq: int) -> HelloReply:
        flags = HelloFlag.KEEP if self.keep else HelloFlag(0)
        if self._secret:  # we had a session: resume it (the agent keeps its replay cache for us only)
            flags |= HelloFlag.RESUME
        hello = Hello(self._host_nonce, self._max_payload, self._token, "hil", flags, self._secret)
        reply = await self._round_trip("hello", seq, encode_frame(MsgType.HELLO, seq, hello.encode()))
        if reply.type == MsgType.ERROR:
            err = ErrorReply.decode(reply.payload)
            raise AgentRefusedError(err.status, 0xFFFF, err.message)
        if reply.type != MsgType.HELLO_REPLY:
            raise AgentError(f"{self.url}: expected HELLO_REPLY, got message type 0x{reply.type:02X}")
        return HelloReply.decode(reply.payload)

    async def _hello(self) -> bool:
        """(Re)establish the session; return True when the agent turned out to be a new one."""
        async with self._hello_lock:
            # HELLO carries the seq the agent should run next; frames still in flight keep theirs
            resuming = self._secret
            info = await self._hello_exchange(self._oldest_pending_exec())
            reset = self.boot_nonce is not None and info.boot_nonce != self.boot_nonce
            # the same agent, but our session is gone (another host held it meanwhile): its I/O may
            # have been reset for that host, and our replies are gone: as good as a restart
            lost = not reset and bool(resuming) and info.features & Feature.SESSION_SECRET and info.secret != resuming
            if reset or lost:
                self.stats.resets += 1
                self._generation += 1
                log.warning("agent_reset" if reset else "agent_session_lost", backend=self.url,
                            old=self.boot_nonce, new=info.boot_nonce)
                # the programs in flight fail now, a round trip before the new session exists:
                # when they look, the backend names the new agent already (and a second HELLO
                # that fails does not count this reset again)
                self.boot_nonce = info.boot_nonce
                self._fail_pending(self._reset_error(), "exec")
                self._host_nonce = secrets.randbits(32)  # a fresh session on the fresh agent
                self._irq = IrqLines()  # its I/O starts at power-on (KEEP: known after the next program)
                self._secret = b""
                info = await self._hello_exchange(self._seq)
            self.agent, self.boot_nonce = info, info.boot_nonce
            self._secret = info.secret if info.features & Feature.SESSION_SECRET else b""
            ceiling = min(self._max_payload, info.max_payload)
            if self.sizer.ceiling != ceiling:
                self.sizer = FrameSizer(ceiling)
            self._window_size = max(1, min(info.window, self._window_opt or info.window))
            log.info("agent_hello", backend=self.url, agent=info.agent_name, version=info.agent_version,
                     boot_nonce=info.boot_nonce, window=self._window_size, max_payload=info.max_payload)
            return bool(reset or lost)

    # --- the backend interface ----------------------------------------------------------
    @property
    def capabilities(self) -> Capabilities:
        """Made once per agent session (what they say changes only at HELLO): a register dump
        asks for them every time, and building them cost more than its program's encoding."""
        key = (self.agent, self.boot_nonce, self.keep, self.link_url)
        cached = self._capabilities
        if cached is not None and cached[0] == key:
            return cached[1]
        caps = self._make_capabilities()
        self._capabilities = (key, caps)
        return caps

    def _make_capabilities(self) -> Capabilities:
        info = self.agent
        memory = (info.memory[0][0], info.memory[0][1] + 1) if info and info.memory else (0, 0)
        if info is None:
            return Capabilities("agent", f"agent via {self.link_url}", self._features(None), memory,
                                {"link": self.link_url})
        # the agent's I/O backend and profile, from its HELLO_REPLY info block: a journal of an agent
        # run says what the programs really ran on, and known-deviation lists match on the profile
        io, profile = info.info_value("io"), info.info_value("profile")
        serving = "".join(f" {k}={v}" for k, v in (("io", io), ("profile", profile)) if v)
        details: dict[str, object] = {"boot_nonce": self.boot_nonce, "link": self.link_url}
        details |= {k: v for k, v in (("io", io), ("profile", profile)) if v}
        details["session"] = ("kept" if self.keep else "fresh") if info.features & Feature.SESSION_RESET else "shared"
        return Capabilities(
            backend="agent",
            identity=f"agent {info.agent_name} {info.agent_version}{serving} via {self.link_url}",
            features=self._features(info),
            memory_window=memory,
            details=details,
        )

    @staticmethod
    def _features(info: HelloReply | None) -> frozenset[Capability]:
        """What the agent advertised, in the backend's terms."""
        caps = {Capability.RESET_DETECT}
        if info is not None and info.features & Feature.DEVICES:
            caps |= {Capability.DEVICES, Capability.DREQ}
        if info is not None and info.features & Feature.IRQ:
            caps.add(Capability.IRQ)
        if info is not None and (devices := info.info_value("devices")):  # unknown names: ignored
            known = {c.value: c for c in DEVICE_CAPABILITIES}
            caps |= {known[d] for d in devices.split(",") if d in known}
        virtual = info is not None and info.features & Feature.VIRTUAL_TIME
        caps.add(Capability.VIRTUAL_TIME if virtual else Capability.REAL_TIMING)
        return frozenset(caps)

    async def _program(self, ops: Sequence[Op]) -> list[Result]:
        try:
            return await super()._program(ops)
        except AgentResetError:
            await self._notify_reset()  # outside the backend lock: the restore runs programs
            raise

    def check(self, ops: Sequence[Op]) -> None:
        """A program sent before to the same agent at the same frame size passed this check then
        (a remembered program is kept only after it did), and the check depends on nothing else:
        it is not run again. :meth:`_execute` takes the remembered program found here."""
        info = self.agent
        key, prepared = self._find(ops) if info is not None else (None, None)
        if key is not None and prepared is not None and prepared.info is info and prepared.size == self.sizer.size:
            self._hit = (ops, key, prepared)
            return
        self._hit = None
        super().check(ops)

    def _find(self, ops: Sequence[Op]) -> tuple[tuple[Op, ...] | None, _Prepared | None]:
        """The program's cache key and what is remembered under it (None, None: it cannot be a
        key). The tuple sent last is found again by identity: hashing a tuple hashes every op
        again, 116 Python calls for a register dump's cached 58 ops looked up twice, and a
        tuple of immutable ops is the same program as long as it is the same object."""
        recent = self._recent
        if recent is not None and recent[0] is ops:
            return recent
        key = _program_key(ops)
        if key is None:
            return None, None
        try:
            prepared = self._prepared.get(key)
        except TypeError:  # unhashable data (a bytearray): not a key
            return None, None
        if prepared is not None and key is ops:
            self._recent = (key, prepared)
        return key, prepared

    def _check_queued(self, ops: Sequence[Op]) -> None:
        """A queued program is refused when it is queued, for what the agent would refuse of it."""
        super()._check_queued(ops)
        if self.agent is not None:
            self._check(ops, self.agent)

    def _fits(self, wait_us: float) -> bool:
        """Within the agent's time limit per program (its advertised one, else the default)."""
        info = self.agent
        limit = info.max_program_us if info is not None and info.features & Feature.LIMITS else DEFAULT_MAX_PROGRAM_US
        return wait_us <= limit

    async def inb(self, port: int) -> int:
        """A port read sent before (:attr:`_reads`) goes as :meth:`execute` would send it again,
        without the op, the program's key or the check that found it remembered (they were most
        of the host's time of a one-op program on TCP): the same lock, the same frame, the same
        reset notice; anything else takes the general path."""
        prepared = self._reads.get(port) if type(port) is int else None
        if (prepared is None or prepared.info is not self.agent or prepared.size != self.sizer.size
                or self._batch is not None or self._closed or not self._opened):
            return await super().inb(port)
        lock = self._lock
        try:
            await lock.acquire()  # async with, without its two coroutines
            try:
                if self._crash is not None:
                    self._raise_crash()
                results = self._results_direct(prepared, await self._exec_one(prepared.chunk), prepared.tracking)
            finally:
                lock.release()
        except AgentResetError:
            await self._notify_reset()  # as _program does
            raise
        return results[0]  # type: ignore[return-value]  # an In's result is an int

    async def _execute(self, ops: Sequence[Op]) -> list[Result]:
        if self._crash is not None:
            self._raise_crash()
        info = self.agent
        if info is None:  # execute() refuses an unopened backend; this is the link's own view
            raise BackendNotOpenError(self.url)
        sizer = self.sizer
        hit, self._hit = self._hit, None
        key: tuple[Op, ...] | None
        prepared: _Prepared | None
        if hit is not None and hit[0] is ops:  # check() found it a moment ago
            key, prepared = hit[1], hit[2]
        else:
            key, prepared = self._find(ops)
        if prepared is not None and prepared.info is info and prepared.size == sizer.size:
            if prepared.direct:
                return self._results_direct(prepared, await self._exec_one(prepared.chunk), prepared.tracking)
            ops = prepared.ops  # checked and planned before, against the same agent and frame size
            chunks: Iterator[_Chunk] = iter((prepared.chunk,))
            tracking = prepared.tracking
        else:
            tracking = bool(info.features & Feature.IRQ)
            if hit is not None and hit[0] is ops:  # the agent changed since check() skipped the base check
                Backend.check(self, ops)
            self._check(ops, info)  # before planning: a refused program sends no frame at all
            if tracking:
                ops = [*ops, IrqState()]  # the lines at the program's end ride along (taken off below)
            chunks = plan(ops, lambda: sizer.size, lambda: sizer.size, info.max_ops)
            if key is not None:
                chunks = self._remember(key, ops, chunks, info, sizer.size)
        self.stats.programs += 1
        generation = self._generation
        sent: list[_Chunk] = []
        tasks: list[asyncio.Task[ExecReply]] = []
        replies: list[ExecReply | BaseException] = []
        try:
            chunk = next(chunks, None)
            while chunk is not None:
                seq = await self._admit(generation)  # each frame is planned when it may be sent: at the size then in force
                following = next(chunks, None)
                if not tasks and following is None:  # the common case: one frame, no task to spawn
                    try:
                        replies.append(await self._exec_chunk(chunk, generation, seq))
                    finally:
                        await self._retire(seq)
                    sent.append(chunk)
                    break
                tasks.append(asyncio.create_task(self._exec_in_window(chunk, generation, seq)))
                sent.append(chunk)
                if any(t.done() and t.exception() is not None for t in tasks):
                    break  # a frame failed: send no more of the program
                chunk = following
            if tasks:
                replies = list(await asyncio.gather(*tasks, return_exceptions=True))
        finally:
            for t in tasks:
                if not t.done():
                    t.cancel()
                elif not t.cancelled():
                    t.exception()  # seen here; the first failure is raised below or above
        answered: list[ExecReply] = []
        for r in replies:
            if isinstance(r, BaseException):
                raise r
            answered.append(r)
        results: dict[int, Result] = {}
        reads: dict[int, bytearray] = {}  # a MemRead's bytes, possibly from several frames
        for chunk, reply in zip(sent, answered):
            for parts, value in zip(chunk.parts, reply.results):
                if not isinstance(value, bytes):  # In, Poll, DevState: one result each
                    results[parts[0][0]] = value
                    continue
                pos = 0
                for index, count in parts:
                    reads.setdefault(index, bytearray()).extend(value[pos : pos + count])
                    pos += count
        results.update((index, bytes(buf)) for index, buf in reads.items())
        ordered = [v for _, v in sorted(results.items())]
        if tracking:
            ordered = self._unwrap_irq(ops, ordered)
            last = ordered.pop()
            assert isinstance(last, IrqLines)  # the IrqState appended above
            self._irq = last
        return ordered

    async def _exec_one(self, chunk: _Chunk) -> ExecReply:
        """A program of one frame: admitted, sent, answered, retired (as _execute does it)."""
        self.stats.programs += 1
        generation = self._generation
        seq = self._admit_open()  # the usual case, without a coroutine for it
        if seq is None:
            seq = await self._admit(generation)
        try:
            return await self._exec_chunk(chunk, generation, seq)
        finally:
            if self._retire_now(seq):
                await self._retire_notify()

    def _results_direct(self, prepared: _Prepared, reply: ExecReply, tracking: bool) -> list[Result]:
        """The results of a remembered program whose reply holds them as they are (no coalesced
        reads to split) and, tracking IRQs, no IRQ result but the IrqState at its end: what the
        general path of :meth:`_execute` assembles and unwraps, without its per-op work."""
        ordered = list(reply.results)
        if tracking:
            last = ordered.pop()
            assert isinstance(last, IrqLines)  # the IrqState at the program's end
            irq = self._irq
            if last.counts != irq.counts:  # a line rose (equal counts unwrap to themselves)
                base = irq.counts
                self._irq = IrqLines(last.levels, tuple(b + ((c - b) & 0xFFFF) for b, c in zip(base, last.counts)))
            elif last.levels != irq.levels:
                self._irq = IrqLines(last.levels, irq.counts)
        return ordered

    def _remember(self, key: tuple[Op, ...], ops: Sequence[Op], chunks: Iterator[_Chunk], info: HelloReply,
                  size: int) -> Iterator[_Chunk]:
        """``chunks`` as they are planned; a program that planned into one frame is kept (its
        check passed, its payload encoded), so sending it again skips the check, the planning and
        the encoding: what :func:`plan` and :func:`encode_program` are for the same ops, agent
        and frame size always give (pure functions of them)."""
        first = next(chunks, None)
        if first is None:
            return
        second = next(chunks, None)
        if second is None:
            first.payload = encode_program(first.ops)
            first.layout = ReplyLayout.of(first.ops)
            first.reply_bytes = reply_size(first.ops)
            first.wait_s = sum(wait_us(op) for op in first.ops) / 1e6
            if len(self._prepared) >= PREPARED_PROGRAMS:
                del self._prepared[next(iter(self._prepared))]  # the oldest
            self._recent = None  # _find looks again: this may replace what it held
            # results as the reply holds them: one reply part per reading op, in order; and, with
            # IRQ tracking, no IRQ result or power reset before the IrqState at the end
            tracking = bool(info.features & Feature.IRQ)
            direct = all(len(p) == 1 and p[0][0] == i for i, p in enumerate(first.parts)) and (
                not tracking or not any(isinstance(op, PowerReset) or (is_irq_op(op) and is_reading(op))
                                        for op in ops[:-1]))
            self._prepared[key] = prepared = _Prepared(info, size, list(ops), first, direct, tracking)
            if direct and len(key) == 1 and type(key[0]) is In and key[0].width == 8:
                self._reads[key[0].port] = prepared  # inb(port), remembered by its port
        yield first
        if second is not None:
            yield second
            yield from chunks

    def _unwrap_irq(self, ops: Sequence[Op], results: list[Result]) -> list[Result]:
        """The wire carries IRQ counts modulo 65536: each :class:`IrqLines` result counted on from
        the one before it (a PowerReset in between starts from 0), so counts are exact while a line
        rises fewer than 65536 times between two observations."""
        base = self._irq.counts
        out: list[Result] = []
        it = iter(results)
        for op in ops:
            if isinstance(op, PowerReset):
                base = IrqLines().counts
            if not is_reading(op):
                continue
            value = next(it)
            if isinstance(value, IrqLines):
                counts = tuple(b + ((c - b) & 0xFFFF) for b, c in zip(base, value.counts))
                value = IrqLines(value.levels, counts)
                base = counts
            out.append(value)
        return out

    def _irq_lines(self) -> IrqLines:
        """As of the end of the last program (the IrqState every program ends with)."""
        return self._irq

    def _check(self, ops: Sequence[Op], info: HelloReply) -> None:
        """What the agent would refuse, refused here before any frame is planned or sent: ops
        whose feature bit it did not advertise, memory outside the window and ports outside the
        allow-list it advertised (a program of many frames would otherwise have run its first
        frames), and, with feature LIMITS, ops and programs longer than its limits."""
        total = 0
        limits = info.limits()
        for i, op in enumerate(ops):
            feature = OP_FEATURES.get(type(op))
            if feature is not None and not info.features & feature:
                raise AgentUnsupportedError(
                    refusal_text(Status.UNSUPPORTED, i, f"{type(op).__name__}: agent {info.agent_name} "
                                                        f"{info.agent_version} via {self.link_url} does not "
                                                        f"advertise feature {feature.name}"),
                    index=i, op=type(op).__name__, agent=f"{info.agent_name} {info.agent_version}",
                    feature=str(feature.name))
            if (mem := memory_access(op)) is not None:
                self._check_memory(i, mem.addr, mem.length, info)
            if (io := port_access(op)) is not None and not any(lo <= io.port and io.last <= hi for lo, hi in info.ports):
                raise AccessDeniedError(refusal_text(Status.PORT_DENIED, i, f"port 0x{io.port:04X} is outside "
                                                                            f"the agent's allow-list"), index=i)
            if not info.features & Feature.LIMITS:
                continue
            us = op_duration_us(op)
            total += us
            match limits.time_excess(us, total):
                case Limit.OP_TIME:
                    raise AgentRefusedError(Status.TOO_LARGE, i, f"{type(op).__name__} of {us / 1e6:g} s exceeds the "
                                                                 f"agent's limit of {info.max_op_us / 1e6:g} s per op")
                case Limit.PROGRAM_TIME:
                    raise AgentRefusedError(Status.TOO_LARGE, i, f"the program's delays and timeouts exceed the agent's "
                                                                 f"limit of {info.max_program_us / 1e6:g} s per program")

    @staticmethod
    def _check_memory(index: int, addr: int, length: int, info: HelloReply) -> None:
        end = addr + max(length, 1) - 1
        if not any(lo <= addr and end <= hi for lo, hi in info.memory):
            window = ", ".join(f"0x{lo:X}-0x{hi + 1:X}" for lo, hi in info.memory) or "none"
            windows = [range(lo, hi + 1) for lo, hi in info.memory]
            reason = f"{length} bytes at 0x{addr:X} are outside the agent's memory window ({window})"
            raise MemoryRangeError(addr, length, max((r.stop for r in windows), default=0), windows=windows,
                                   message=refusal_text(Status.MEM_DENIED, index, reason), index=index)

    async def _admit(self, generation: int) -> int:
        """The sequence number of the next frame, once it is within the window of the oldest
        frame still unanswered (not merely when fewer than ``window`` are in flight). After a
        reset none is taken: the new session expects the next one from a new-generation frame.
        With nothing in flight and nobody waiting the window is open: no condition to take."""
        if not self._unanswered and not self._admitting:
            if generation != self._generation:
                raise self._reset_error()
            seq = self._admit_open()
            assert seq is not None  # the window is open: checked just above
            return seq
        self._admitting += 1
        try:
            return await self._admit_waiting(generation)
        finally:
            self._admitting -= 1

    async def _admit_waiting(self, generation: int) -> int:
        async with self._window_open:
            await self._window_open.wait_for(
                lambda: not self._unanswered or ((self._seq - self._unanswered[0]) & 0xFFFF) < self._window_size)
            if generation != self._generation:
                raise self._reset_error()
            seq = self._next_seq()
            self._unanswered.append(seq)
            return seq

    def _admit_open(self) -> int | None:
        """The next frame's sequence number when the window is open (nothing in flight, nobody
        waiting), taken at once; None: :meth:`_admit` waits for it."""
        if self._unanswered or self._admitting:
            return None
        seq = self._next_seq()
        self._unanswered.append(seq)
        return seq

    async def _retire(self, seq: int) -> None:
        if self._retire_now(seq):
            await self._retire_notify()

    def _retire_now(self, seq: int) -> bool:
        """Frame ``seq`` is answered; True when someone waits for the window to move."""
        self._unanswered.remove(seq)
        return bool(self._admitting)

    async def _retire_notify(self) -> None:
        async with self._window_open:
            self._window_open.notify_all()

    async def _exec_in_window(self, chunk: _Chunk, generation: int, seq: int) -> ExecReply:
        try:
            return await self._exec_chunk(chunk, generation, seq)
        finally:
            await self._retire(seq)

    async def _exec_chunk(self, chunk: _Chunk, generation: int, seq: int) -> ExecReply:
        """One frame of a program, sent as ``seq`` (admitted by the window)."""
        extra = chunk.wait_s if chunk.wait_s is not None else sum(wait_us(op) for op in chunk.ops) / 1e6
        if generation != self._generation:
            raise self._reset_error()
        payload = chunk.payload if chunk.payload is not None else encode_program(chunk.ops)
        size = max(len(payload), reply_size(chunk.ops) if chunk.reply_bytes is None else chunk.reply_bytes)
        reply = await self._round_trip("exec", seq, encode_frame(_EXEC, seq, payload), extra, generation=generation,
                                       size=size)
        if reply.type == _ERROR:
            err = ErrorReply.decode(reply.payload)
            if err.status == Status.NO_SESSION:  # the agent lost our session: restarted?
                if generation != self._generation or await self._hello():
                    raise self._reset_error()
                # same agent, session kept: the frame never ran; the new session expects its seq
                return await self._exec_chunk(chunk, generation, seq)
            raise AgentRefusedError(err.status, 0xFFFF, err.message)
        try:
            result = ExecReply.decode(reply.payload, chunk.ops, chunk.layout)
        except ProtocolError as e:
            raise AgentError(f"{self.url}: malformed reply: {e}") from None
        if result.status:  # not OK
            raise _refusal(result, chunk.ops, self.agent)
        return result

    async def _settle(self, timeout_s: float | None) -> None:
        """The agent settles its own I/O (virtual time on a simulator, polling on hardware)."""
        info = self.agent
        longest = info.max_op_us if info is not None and info.features & Feature.LIMITS else 10e6
        await self._execute([Settle(min(10e6, longest) if timeout_s is None else timeout_s * 1e6)])

    async def ping(self) -> float:
        """One empty round trip; returns its duration in seconds."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        async with self._lock:
            await self._round_trip("ping", self._seq, encode_frame(MsgType.PING, self._seq, b""))  # PING does not consume a seq
        return loop.time() - t0

def _refusal(result: ExecReply, ops: Sequence[Op], info: HelloReply | None) -> HilError:
    """The class an agent's refusal is on every backend: ports and memory as the simulator's and
    devport's refusals are, any other status as :class:`AgentRefusedError` with its code."""
    text = refusal_text(result.status, result.index, result.reason)
    index = result.index if result.index < len(ops) else None
    match result.status:
        case Status.PORT_DENIED:
            return AccessDeniedError(text, index=index)
        case Status.MEM_DENIED:
            area = memory_access(ops[index]) if index is not None else None
            addr, length = (area.addr, area.length) if area is not None else (0, 0)
            windows = [range(lo, hi + 1) for lo, hi in info.memory] if info is not None else []
            return MemoryRangeError(addr, length, max((r.stop for r in windows), default=0), windows=windows,
                                    message=text, index=index)
    return AgentRefusedError(result.status, result.index, result.reason)
