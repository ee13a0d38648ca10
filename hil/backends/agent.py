"""``agent+…:`` backends: programs sent as frames to an agent at the far end of a link.

URLs: ``agent+serial:///dev/ttyUSB0?baud=3000000``, ``agent+tcp://127.0.0.1:7777?token=…``,
``agent+ftdi://ftdi:232h/1?baud=3000000``, and any other pyserial URL behind ``agent+``
(``agent+socket://host:port``, ``agent+rfc2217://host:port``, ``agent+loop://``). Options:
``baud``, ``timeout`` (s per round trip before a retry), ``retries``, ``window`` (frames in
flight), ``max_payload``, ``token``; anything else stays on the pyserial URL.

A program becomes as few frames as the agent's sizes allow (adjacent memory reads coalesced,
large ones split), all sent at once up to the window. The agent executes frames strictly in
sequence order and exactly once, so the host may retry any frame it has no reply for. A
changed boot nonce means the agent was restarted: the program in flight fails with
:class:`AgentResetError` and the backend's reset listeners (the driver layer's restore) run.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass

import structlog

from hil.agent.links import Link, LinkError, open_link, parse_ftdi_url, split_query
from hil.agent.protocol import (
    DEFAULT_MAX_PAYLOAD,
    STATE_FIXED,
    ErrorReply,
    ExecReply,
    Feature,
    Frame,
    FrameReader,
    Hello,
    HelloFlag,
    HelloReply,
    MsgType,
    ProtocolError,
    Status,
    encode_program,
)
from hil.backends import BackendURL
from hil.backends.base import Backend, Capabilities, Capability
from hil.backends.ops import (
    ALL_OPS,
    Delay,
    DevAppend,
    DevAttach,
    DevDreq,
    DevState,
    In,
    MemFill,
    MemRead,
    MemWrite,
    Op,
    Out,
    Poll,
    PowerReset,
    Result,
    Settle,
)
from hil.errors import AccessDeniedError, BackendError, BackendOptionError

log = structlog.get_logger("hil.agent.client")

OPTIONS = {
    "baud": "serial baud rate (default 115200)",
    "timeout": "seconds to wait for a reply before retrying (default 1.0)",
    "retries": "retransmissions of one frame before giving up (default 5)",
    "window": "frames in flight (default: the agent's window)",
    "max_payload": "largest frame payload to use (default 4096)",
    "token": "token for an agent listening beyond loopback",
    "keep": "1: keep the I/O state earlier clients left on a simulated agent (default 0: start afresh)",
}


class AgentError(BackendError):
    pass


class AgentTimeoutError(AgentError):
    pass


class AgentResetError(AgentError):
    """The agent restarted: its controller state was lost and the program in flight may not
    have run. The driver layer restores its shadow state before this reaches the caller."""


class AgentRefusedError(AgentError):
    def __init__(self, status: Status, index: int, reason: str) -> None:
        where = f" at op {index}" if index != 0xFFFF else ""
        super().__init__(f"agent refused the program{where}: {status.name}: {reason}")
        self.status, self.index, self.reason = status, index, reason


class AgentAccessDenied(AgentRefusedError, AccessDeniedError):
    pass


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


# request payload bytes of each op, and reply bytes
def _req_size(op: Op) -> int:
    if isinstance(op, Out):
        return 4 if op.width == 8 else 5
    if isinstance(op, In):
        return 3
    if isinstance(op, MemWrite):
        return 7 + len(op.data)
    if isinstance(op, MemRead):
        return 7
    if isinstance(op, MemFill):
        return 10
    if isinstance(op, (Delay, Settle)):
        return 5
    if isinstance(op, DevAttach):
        return 10 + len(op.data)
    if isinstance(op, DevAppend):
        return 4 + len(op.data)
    if isinstance(op, DevDreq):
        return 3
    if isinstance(op, DevState):
        return 4
    if isinstance(op, PowerReset):
        return 1
    return 17  # Poll


def _rep_size(op: Op) -> int:
    if isinstance(op, In):
        return op.width // 8
    if isinstance(op, MemRead):
        return op.length
    if isinstance(op, DevState):
        return STATE_FIXED + op.max_bytes
    return 3 if isinstance(op, Poll) else 0


@dataclass
class _Chunk:
    ops: list[Op]
    parts: list[list[tuple[int, int]]]  #: per reading op: (original reading index, bytes)


def plan(ops: Sequence[Op], max_request: int, max_reply: int, max_ops: int) -> list[_Chunk]:
    """Frames for ``ops``: coalesce adjacent reads, split what does not fit, keep order."""
    merged: list[tuple[Op, list[tuple[int, int]]]] = []
    reading = 0
    for op in ops:
        if isinstance(op, MemRead):
            prev = merged[-1] if merged else None
            if prev is not None and isinstance(prev[0], MemRead) and prev[0].addr + prev[0].length == op.addr:
                merged[-1] = (MemRead(prev[0].addr, prev[0].length + op.length), prev[1] + [(reading, op.length)])
            else:
                merged.append((op, [(reading, op.length)]))
            reading += 1
        elif isinstance(op, (In, Poll, DevState)):
            merged.append((op, [(reading, 0)]))
            reading += 1
        else:
            merged.append((op, []))
    chunks: list[_Chunk] = [_Chunk([], [])]
    req, rep = 0, 4

    def new_chunk() -> None:
        nonlocal req, rep
        if chunks[-1].ops:
            chunks.append(_Chunk([], []))
        req, rep = 0, 4

    for op, parts in merged:
        if isinstance(op, DevState) and 4 + STATE_FIXED + op.max_bytes > max_reply:
            op = DevState(op.channel, max(0, max_reply - 4 - STATE_FIXED))  # the digest covers the rest
        pieces: list[tuple[Op, list[tuple[int, int]]]] = [(op, parts)]
        if isinstance(op, MemRead) and 4 + op.length > max_reply:
            pieces = _split_read(op, parts, max_reply - 4)
        elif isinstance(op, MemWrite) and 7 + len(op.data) > max_request:
            step = max_request - 7
            pieces = [(MemWrite(op.addr + i, op.data[i : i + step]), []) for i in range(0, len(op.data), step)]
        elif isinstance(op, DevAttach) and 10 + len(op.data) > max_request:
            step = max_request - 10
            first = DevAttach(op.channel, op.kind, op.data[:step], op.dreq, op.capacity)
            pieces = [(first, [])] + [(DevAppend(op.channel, op.data[i : i + step]), [])
                                      for i in range(step, len(op.data), step)]
        for piece, piece_parts in pieces:
            if req + _req_size(piece) > max_request or rep + _rep_size(piece) > max_reply or len(chunks[-1].ops) >= max_ops:
                new_chunk()
            chunks[-1].ops.append(piece)
            if isinstance(piece, (In, MemRead, Poll, DevState)):
                chunks[-1].parts.append(piece_parts)
            req += _req_size(piece)
            rep += _rep_size(piece)
    return [c for c in chunks if c.ops]


def _split_read(op: MemRead, parts: list[tuple[int, int]], limit: int) -> list[tuple[Op, list[tuple[int, int]]]]:
    out: list[tuple[Op, list[tuple[int, int]]]] = []
    queue = list(parts)
    addr, left = op.addr, op.length
    while left:
        n = min(limit, left)
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
        out.append((MemRead(addr, n), piece_parts))
        addr, left = addr + n, left - n
    return out


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
        max_payload = int(opts.get("max_payload", DEFAULT_MAX_PAYLOAD))
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
        self._link: Link | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._frames = FrameReader()
        self.agent: HelloReply | None = None
        self.boot_nonce: int | None = None
        self.stats = LinkStatistics()
        self._window = asyncio.Semaphore(1)
        self._hello_lock = asyncio.Lock()
        self._generation = 0  #: bumped at every agent reset; frames of an older generation never run

    # --- life cycle ---------------------------------------------------------------------
    async def _open(self) -> None:
        try:
            await self._connect()
        except BaseException:
            await self._drop_link()  # a refused or silent agent: do not leave the link open
            raise

    async def _connect(self) -> None:
        self._link = await self._link_factory()
        self._frames = FrameReader()
        self._reader_task = asyncio.create_task(self._read_loop(self._link))
        await self._hello()

    async def _drop_link(self) -> None:
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader_task
            self._reader_task = None
        if self._link is not None:
            await self._link.close()
            self._link = None

    async def _close(self) -> None:
        log.info("link_stats", backend=self.url, **asdict(self.stats))
        await self._drop_link()
        self._fail_pending(AgentError(f"{self.url}: backend closed"))

    def _fail_pending(self, exc: BaseException, kind: str | None = None) -> None:
        for (k, _), fut in list(self._pending.items()):
            if (kind is None or k == kind) and not fut.done():
                fut.set_exception(exc)

    async def _read_loop(self, link: Link) -> None:
        while True:
            data = await link.read()
            if not data:
                log.warning("link_closed", backend=self.url)
                if self._link is link:
                    self._link = None
                return
            self.stats.bytes_in += len(data)
            for frame in self._frames.feed(data):
                self._route(frame)
            self.stats.discarded_bytes = self._frames.discarded

    #: which waiting request a reply type answers (an ERROR may answer any of them)
    _REPLY_KINDS = {MsgType.HELLO_REPLY: ("hello",), MsgType.EXEC_REPLY: ("exec",), MsgType.PONG: ("ping",),
                    MsgType.ERROR: ("exec", "hello", "ping")}

    def _route(self, frame: Frame) -> None:
        if frame.type == MsgType.ERROR and frame.payload[:1] and frame.payload[0] in (Status.AUTH, Status.VERSION, Status.BUSY):
            candidates = [k for k in self._pending if k[0] == "hello"]  # refusals of a HELLO, whatever seq
        else:
            candidates = [(kind, frame.seq) for kind in self._REPLY_KINDS.get(frame.type, ())]  # type: ignore[call-overload]
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
        if self._link is None:  # a TCP peer went away: reconnect and say HELLO again
            await self._drop_link()
            self._link = await self._link_factory()
            self._frames = FrameReader()
            self._reader_task = asyncio.create_task(self._read_loop(self._link))
            await self._hello()

    async def _round_trip(self, kind: str, frame: Frame, extra_s: float = 0.0, *, generation: int | None = None) -> Frame:
        """Send ``frame`` and return its reply, retransmitting the same bytes on silence.

        ``generation`` (EXEC frames) stops a retransmission after an agent reset: the frame was
        meant for a controller that no longer has the state it assumed.
        """
        wire = frame.encode()
        wait = self.timeout + extra_s + 2 * len(wire) * 10 / self.baud
        key = (kind, frame.seq)
        fut: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        self._pending[key] = fut
        try:
            for attempt in range(self.retries + 1):
                if attempt:
                    self.stats.retries += 1
                    log.info("retransmit", kind=kind, seq=frame.seq, attempt=attempt)
                try:
                    if kind != "hello":
                        await self._ensure_link()
                    if generation is not None and generation != self._generation:
                        raise self._reset_error()
                    if self._link is None:
                        raise LinkError(f"{self.link_url}: link down")
                    await self._link.write(wire)
                    self.stats.bytes_out += len(wire)
                    self.stats.frames_sent += 1
                except (LinkError, OSError) as e:
                    log.warning("send_failed", error=str(e))
                    self._link = None
                    await asyncio.sleep(min(wait, 0.2))
                    continue
                done, _ = await asyncio.wait((fut,), timeout=wait)  # the future outlives a timeout
                if not done:
                    continue
                reply = fut.result()
                self.stats.round_trips += 1
                return reply
            raise AgentTimeoutError(
                f"{self.url}: no reply to frame {frame.seq} after {self.retries + 1} tries of {wait:.2f} s: "
                f"is the agent running, the link right (baud {self.baud})?"
            )
        finally:
            self._pending.pop(key, None)

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
        hello = Hello(self._host_nonce, self._max_payload, self._token, "hil",
                      HelloFlag.KEEP if self.keep else HelloFlag(0))
        reply = await self._round_trip("hello", Frame(MsgType.HELLO, seq, hello.encode()))
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
            info = await self._hello_exchange(self._oldest_pending_exec())
            reset = self.boot_nonce is not None and info.boot_nonce != self.boot_nonce
            if reset:
                self.stats.resets += 1
                self._generation += 1
                log.warning("agent_reset", backend=self.url, old=self.boot_nonce, new=info.boot_nonce)
                self._fail_pending(self._reset_error(), "exec")
                self._host_nonce = secrets.randbits(32)  # a fresh session on the fresh agent
                info = await self._hello_exchange(self._seq)
            self.agent, self.boot_nonce = info, info.boot_nonce
            window = min(info.window, self._window_opt or info.window)
            self._window = asyncio.Semaphore(max(1, window))
            log.info("agent_hello", backend=self.url, agent=info.agent_name, version=info.agent_version,
                     boot_nonce=info.boot_nonce, window=window, max_payload=info.max_payload)
            return reset

    # --- the backend interface ----------------------------------------------------------
    @property
    def capabilities(self) -> Capabilities:
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
        virtual = info is not None and info.features & Feature.VIRTUAL_TIME
        caps.add(Capability.VIRTUAL_TIME if virtual else Capability.REAL_TIMING)
        return frozenset(caps)

    async def execute(self, ops: Sequence[Op]) -> list[Result]:
        try:
            return await super().execute(ops)
        except AgentResetError:
            await self._notify_reset()  # outside the backend lock: the restore runs programs
            raise

    async def _execute(self, ops: Sequence[Op]) -> list[Result]:
        info = self.agent
        assert info is not None
        limit = min(self._max_payload, info.max_payload)
        chunks = plan(ops, limit, limit, info.max_ops)
        self.stats.programs += 1
        if len(chunks) == 1:  # the common case: one frame, no tasks to spawn
            replies: list[ExecReply | BaseException] = [await self._exec_chunk(chunks[0])]
        else:  # all frames in flight at once, up to the window
            replies = await asyncio.gather(*(self._exec_chunk(c) for c in chunks), return_exceptions=True)
        for r in replies:
            if isinstance(r, BaseException):
                raise r
        results: dict[int, bytearray | Result] = {}
        for chunk, reply in zip(chunks, replies):
            for parts, value in zip(chunk.parts, reply.results):  # type: ignore[union-attr]
                if not isinstance(value, bytes):  # In, Poll, DevState: one result each
                    results[parts[0][0]] = value
                    continue
                pos = 0
                for index, count in parts:
                    buf = results.setdefault(index, bytearray())
                    buf += value[pos : pos + count]  # type: ignore[operator]
                    pos += count
        return [bytes(v) if isinstance(v, bytearray) else v for _, v in sorted(results.items())]

    async def _exec_chunk(self, chunk: _Chunk) -> ExecReply:
        extra = sum(op.us for op in chunk.ops if isinstance(op, Delay)) / 1e6
        extra += sum(op.timeout_us for op in chunk.ops if isinstance(op, (Poll, Settle))) / 1e6
        generation = self._generation
        async with self._window:
            if generation != self._generation:
                raise self._reset_error()
            frame = Frame(MsgType.EXEC, self._next_seq(), encode_program(chunk.ops))
            reply = await self._round_trip("exec", frame, extra, generation=generation)
        if reply.type == MsgType.ERROR:
            err = ErrorReply.decode(reply.payload)
            if err.status == Status.NO_SESSION:  # the agent lost our session: restarted?
                if generation != self._generation or await self._hello():
                    raise self._reset_error()
                return await self._exec_chunk(chunk)  # same agent: the frame never ran, send it again
            raise AgentRefusedError(err.status, 0xFFFF, err.message)
        try:
            result = ExecReply.decode(reply.payload, chunk.ops)
        except ProtocolError as e:
            raise AgentError(f"{self.url}: malformed reply: {e}") from None
        if result.status != Status.OK:
            cls = AgentAccessDenied if result.status in (Status.PORT_DENIED, Status.MEM_DENIED) else AgentRefusedError
            raise cls(result.status, result.index, result.reason)
        return result

    async def _settle(self, timeout_s: float | None) -> None:
        """The agent settles its own I/O (virtual time on a simulator, polling on hardware)."""
        await self._execute([Settle(10e6 if timeout_s is None else timeout_s * 1e6)])

    async def ping(self) -> float:
        """One empty round trip; returns its duration in seconds."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        async with self._lock:
            await self._round_trip("ping", Frame(MsgType.PING, self._seq, b""))  # PING does not consume a seq
        return loop.time() - t0

