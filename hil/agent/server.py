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
import errno
import ipaddress
import os
import secrets
import tty
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

import structlog

from hil import __version__
from hil.agent.links import FdLink, Link, LinkError, StreamLink
from hil.agent.protocol import (
    DEFAULT_MAX_PAYLOAD,
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
    decode_program,
    reply_size,
)
from hil.allowlist import AllowList
from hil.backends.base import Backend, Capability
from hil.backends.ops import DEVICE_OPS, DevState, In, MemFill, MemRead, MemWrite, Poll
from hil.errors import AccessDeniedError, HilError

log = structlog.get_logger("hil.agent")


@dataclass
class AgentStats:
    frames_in: int = 0
    frames_out: int = 0
    executed: int = 0
    replayed: int = 0
    refused: int = 0
    hellos: int = 0


@dataclass
class AgentCore:
    """Session state, replay cache and execution. One instance serves one link at a time."""

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

    def __post_init__(self) -> None:
        self._session: int | None = None  #: host nonce of the current session
        self._cache: OrderedDict[int, bytes] = OrderedDict()  #: seq -> encoded reply frame
        self._cache_size = max(16, 2 * self.window)
        self._reply_payload = self.max_payload
        self._next = 0  #: the sequence number to execute next (programs run in order, once)
        self._devices = Capability.DEVICES in self.io.capabilities  #: offer the DEV_* ops
        self._held: dict[int, Frame] = {}  #: frames that arrived ahead of a lost one
        self._used = False  #: a program ran on the current I/O since it was opened

    def hello_reply(self) -> HelloReply:
        features = Feature.POLL | Feature.MEM_FILL | Feature.SETTLE
        if self._devices:
            features |= Feature.DEVICES
        if Capability.VIRTUAL_TIME in self.io.capabilities:
            features |= Feature.VIRTUAL_TIME
        if self.fresh_io is not None:
            features |= Feature.SESSION_RESET
        return HelloReply(
            self.boot_nonce, self.name, __version__, self.max_payload, self.window, self.max_ops,
            features | Feature.INFO,
            tuple((r.start, r.stop - 1) for r in self.allow.ports),
            tuple((r.start, r.stop - 1) for r in self.allow.memory),
            self.io_info(),
        )

    def io_info(self) -> tuple[tuple[str, str], ...]:
        """What the host's journal names as this agent's I/O: its scheme and, if any, its profile."""
        caps = self.io.capabilities
        info = [("io", caps.backend)]
        profile = caps.details.get("profile")
        if profile:
            info.append(("profile", str(profile)))
        return tuple(info)

    async def handle(self, frame: Frame) -> bytes | None:
        """Answer one frame; ``None`` means nothing to send (a reply-type frame from the host)."""
        self.stats.frames_in += 1
        if frame.type == MsgType.HELLO:
            return await self._hello(frame)
        if frame.type == MsgType.PING:
            return Frame(MsgType.PONG, frame.seq, frame.payload[:64]).encode()
        if frame.type != MsgType.EXEC:
            return self._error(frame.seq, Status.BAD_FRAME, f"unexpected message type 0x{frame.type:02X}")
        if self._session is None:
            return self._error(frame.seq, Status.NO_SESSION, "no session: send HELLO first (agent restarted?)")
        ahead = (frame.seq - self._next) & 0xFFFF
        if ahead >= 0x8000:  # behind: a retry of a frame we executed, answer it from the cache
            cached = self._cache.get(frame.seq)
            if cached is None:
                return self._error(frame.seq, Status.BAD_FRAME, f"seq {frame.seq} is older than the replay cache")
            self.stats.replayed += 1
            log.info("replayed", seq=frame.seq)
            return cached
        if ahead > 0:  # a gap: an earlier frame was lost; hold this one so order is kept
            if ahead < self._cache_size:
                self._held[frame.seq] = frame
            return None
        replies = [await self._run(frame)]
        while self._next in self._held:  # the gap is filled: run what was waiting behind it
            replies.append(await self._run(self._held.pop(self._next)))
        return b"".join(replies)

    async def _run(self, frame: Frame) -> bytes:
        reply = await self._execute(frame.payload)
        wire = Frame(MsgType.EXEC_REPLY, frame.seq, reply).encode()
        self._cache[frame.seq] = wire
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        self._next = (frame.seq + 1) & 0xFFFF
        return wire

    async def _hello(self, frame: Frame) -> bytes:
        self.stats.hellos += 1
        try:
            hello = Hello.decode(frame.payload)
        except ProtocolError as e:
            return self._error(frame.seq, e.status, str(e))
        if self.token and not secrets.compare_digest(hello.token, self.token):
            log.warning("hello_refused", reason="token", host=hello.name)
            return self._error(frame.seq, Status.AUTH, "this agent requires the token given with --token")
        if hello.host_nonce != self._session:  # a new host session: forget the old replies
            if self.fresh_io is not None and self._used and not hello.flags & HelloFlag.KEEP:
                try:
                    await self._reset_io()
                except HilError as e:
                    log.error("session_reset_failed", error=str(e))
                    self._session = None
                    return self._error(frame.seq, Status.IO_ERROR, f"could not reset the I/O for a new session: {e}")
            self._cache.clear()
            self._held.clear()
            self._next = frame.seq  # HELLO carries the sequence number of the host's next EXEC
        self._session = hello.host_nonce
        self._reply_payload = max(64, min(self.max_payload, hello.max_payload))
        log.info("session", host=hello.name, host_nonce=hello.host_nonce)
        return Frame(MsgType.HELLO_REPLY, frame.seq, self.hello_reply().encode()).encode()

    async def _reset_io(self) -> None:
        """A new session starts where a freshly started agent would: the I/O backend opened again
        (a simulator: power-on state, no devices, memory cleared). Open the new one first, so a
        failure leaves the old one in place."""
        assert self.fresh_io is not None
        fresh = self.fresh_io()
        await fresh.open()
        old, self.io, self._used = self.io, fresh, False
        await old.close()
        log.info("session_reset", io=fresh.url)

    async def aclose(self) -> None:
        """Close the I/O backend in use (after a session reset it is not the one passed in)."""
        await self.io.close()

    def _error(self, seq: int, status: Status, message: str) -> bytes:
        self.stats.refused += 1
        return Frame(MsgType.ERROR, seq, ErrorReply(status, message).encode()).encode()

    async def _execute(self, payload: bytes) -> bytes:
        try:
            ops = decode_program(payload, self.max_ops)
        except ProtocolError as e:
            self.stats.refused += 1
            return ExecReply(e.status, e.index, str(e)).encode([])
        for i, op in enumerate(ops):  # validate everything before anything runs
            if isinstance(op, DEVICE_OPS) and not self._devices:
                self.stats.refused += 1
                return ExecReply(Status.UNSUPPORTED, i, "this agent's I/O has no simulated devices").encode(ops)
            try:
                self.allow.check([op])
            except AccessDeniedError as e:
                self.stats.refused += 1
                status = Status.MEM_DENIED if isinstance(op, (MemRead, MemWrite, MemFill)) else Status.PORT_DENIED
                return ExecReply(status, i, str(e)).encode(ops)
        if reply_size(ops) > self._reply_payload:
            self.stats.refused += 1
            return ExecReply(Status.TOO_LARGE, 0, f"reply of {reply_size(ops)} bytes exceeds "
                                                  f"{self._reply_payload}").encode(ops)
        self._used = True
        try:
            results = await self.io.execute(ops)  # Settle runs as the I/O backend's own settle()
        except HilError as e:
            log.error("io_error", error=str(e))
            return ExecReply(Status.IO_ERROR, 0xFFFF, str(e)).encode(ops)
        self.stats.executed += 1
        reading = [op for op in ops if isinstance(op, (In, MemRead, Poll, DevState))]
        met = [(r & op.mask) == op.expect for op, r in zip(reading, results) if isinstance(op, Poll)]  # type: ignore[operator]
        return ExecReply(Status.OK, 0xFFFF, "", list(results), met).encode(ops)


async def serve_link(core: AgentCore, link: Link, *, stop: asyncio.Event | None = None) -> None:
    """Serve ``link`` until it closes (or ``stop`` is set). Bad input is dropped, never fatal."""
    reader = FrameReader(core.max_payload)
    while stop is None or not stop.is_set():
        data = await link.read()
        if not data:
            break
        for frame in reader.feed(data):
            reply = await core.handle(frame)
            if reply is not None:
                try:
                    await link.write(reply)
                except LinkError as e:
                    log.warning("reply_lost", error=str(e))
                    return
                core.stats.frames_out += 1
    if reader.discarded:
        log.info("link_resyncs", discarded_bytes=reader.discarded, bad_frames=reader.bad_frames)


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
        busy = asyncio.Lock()

        async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            peer = writer.get_extra_info("peername")
            if busy.locked():
                writer.write(Frame(MsgType.ERROR, 0, ErrorReply(Status.BUSY, "another client holds this agent").encode()).encode())
                with contextlib.suppress(Exception):
                    await writer.drain()
                writer.close()
                return
            async with busy:
                log.info("client_connected", peer=str(peer))
                link = StreamLink(f"tcp {peer}", reader, writer)
                try:
                    await serve_link(core, link)
                finally:
                    await link.close()
                    log.info("client_gone", peer=str(peer))

        try:
            server = await asyncio.start_server(client, host, port)
        except OSError as e:  # port in use, address not on this machine, privileged port
            why = os.strerror(e.errno).lower() if e.errno else str(e)
            hint = "; is another agent running? give another port, or 0 for any free one" \
                if e.errno == errno.EADDRINUSE else ""
            raise LinkError(f"{listen}: cannot listen: {why}{hint}") from None
        sock = server.sockets[0].getsockname()
        address = f"tcp://{sock[0]}:{sock[1]}"
        log.info("agent_listening", link=address, boot_nonce=core.boot_nonce)
        task = asyncio.create_task(server.serve_forever())
        return Listener(address, task, server.close)
    if listen.startswith("serial://") or listen.startswith("/dev/"):
        import serial

        path = listen[len("serial://"):] if listen.startswith("serial://") else listen
        path, _, query = path.partition("?")
        opts = dict(parse_qsl(query))
        try:
            baud = int(opts.get("baud", 115200))
        except ValueError:
            raise LinkError(f"{listen}: baud={opts['baud']!r} is not a number") from None
        if not os.path.exists(path):
            raise LinkError(f"{listen}: cannot open: {path} does not exist")
        try:
            port = serial.Serial(path, baudrate=baud, timeout=0)
        except (serial.SerialException, OSError, ValueError) as e:
            raise LinkError(f"{listen}: cannot open: {e}") from None
        link = FdLink(path, port.fileno(), owner=port)
        task = asyncio.create_task(_serve_forever(core, link))
        log.info("agent_listening", link=path, boot_nonce=core.boot_nonce)
        return Listener(path, task, lambda: (task.cancel(), port.close()))
    raise LinkError(f"{listen!r}: listen on tcp://HOST:PORT, serial:///dev/ttyX?baud=N or pty")


async def _serve_forever(core: AgentCore, link: Link) -> None:
    """A serial line or pty has no connections: keep serving whatever arrives."""
    while True:
        await serve_link(core, link)
        await asyncio.sleep(0.05)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


__all__ = ["AgentCore", "AgentStats", "Listener", "serve", "serve_link", "start"]
