"""The agent client's failure paths and the protocol's hard paths, in process and deterministic.

The host backend and an :class:`AgentCore` on a simulator talk over in-process links with a
fault layer between them that works on whole frames from a seeded RNG (drop, duplicate,
corrupt, reorder), can cut the line after the k-th EXEC frame or detach the agent's session.
Every (re)connect opens a new link on one stand-in device that counts opens and closes, so a
leaked link or two links open at once (a serial device opened twice) is seen
(docs/agent-protocol.md §6).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from hil.agent.links import Link, LinkError
from hil.agent.protocol import SECRET_SIZE, ExecReply, Feature, Frame, HelloReply, MsgType, decode_frame
from hil.agent.server import AgentCore, Connection, serve_link
from hil.allowlist import AllowList
from hil.backends import open_backend
from hil.backends.agent import AgentBackend, AgentResetError, AgentUnsupportedError
from hil.backends.ops import In, MemFill, MemRead, MemWrite, Op, Out, Poll, Result, Settle
from hil.backends.recording import RecordingBackend
from hil.errors import UnsupportedOperationError

WHOLE_MEMORY = [range(0, 1 << 24)]


# --- the harness ---------------------------------------------------------------------------------


@dataclass
class Device:
    """A stand-in for a serial device node: how often it was opened and closed, how many opens at once."""

    opened: int = 0
    closed: int = 0
    most_open: int = 0
    links: list[PipeLink] = field(default_factory=list)

    @property
    def open_now(self) -> int:
        return self.opened - self.closed


class PipeLink(Link):
    """One end of an in-process line. ``b""`` in the receive queue is the far end hanging up;
    closing takes a while (as a pyserial port's I/O thread does), and is counted."""

    def __init__(self, name: str, rx: asyncio.Queue[bytes], send: Callable[[bytes], None],
                 device: Device | None = None, close_delay: float = 0.0) -> None:
        super().__init__(name)
        self._rx, self._send, self.device, self.close_delay = rx, send, device, close_delay
        self.closes = 0
        self.cut = False  #: the line is broken: writes fail
        self.fail_with: BaseException | None = None  #: raised by the next read that gets bytes
        self._closed = False

    async def read(self) -> bytes:
        if self._closed:
            return b""
        data = await self._rx.get()
        if data and self.fail_with is not None:
            raise self.fail_with
        return data

    async def write(self, data: bytes) -> None:
        if self._closed or self.cut:
            raise LinkError(f"{self.name}: write failed: line down")
        self._send(data)

    async def close(self) -> None:
        self.closes += 1
        if self._closed:
            return
        self._closed = True
        self._rx.put_nowait(b"")
        self._send(b"")
        await asyncio.sleep(self.close_delay)
        if self.device is not None:
            self.device.closed += 1


@dataclass
class Seen:
    """What passed the fault layer, decoded before any fault was applied."""

    exec_seqs: list[int] = field(default_factory=list)  #: host EXEC frames in order, retransmissions included
    answered: set[int] = field(default_factory=set)  #: EXEC replies delivered to the host
    most_in_flight: int = 0  #: the most EXEC seqs sent and not answered when a new one went out
    faults: dict[str, int] = field(default_factory=dict)
    hellos: int = 0


class Faults:
    """Per-frame faults between host and agent from a seeded RNG. ``rates`` maps a fault (drop,
    duplicate, corrupt, reorder) to its probability per frame; reorder holds a frame back until
    the next one in its direction has passed (or 5 ms went by)."""

    def __init__(self, seed: int, rates: dict[str, float] | None = None, *, directions: tuple[str, ...] = ("up", "down"),
                 exec_only: bool = True) -> None:
        self.rng = random.Random(seed)
        self.rates = rates or {}
        self.directions, self.exec_only = directions, exec_only
        self.seen = Seen()
        self._held: dict[str, tuple[bytes, Callable[[bytes], None]] | None] = {"up": None, "down": None}
        self.on_exec: Callable[[int], None] | None = None  #: called with the count of distinct EXEC seqs

    def _fault(self) -> str:
        r = self.rng.random()
        for name, rate in self.rates.items():
            if r < rate:
                return name
            r -= rate
        return "pass"

    def relay(self, direction: str, data: bytes, deliver: Callable[[bytes], None]) -> None:
        if not data:
            self._flush(direction)
            deliver(b"")
            return
        for piece in data.split(b"\x00")[:-1]:
            self._frame(direction, piece + b"\x00", deliver)

    def _frame(self, direction: str, wire: bytes, deliver: Callable[[bytes], None]) -> None:
        try:
            frame: Frame | None = decode_frame(wire[:-1])
        except ValueError:
            frame = None
        new_exec = False
        if frame is not None and direction == "up" and frame.type == MsgType.EXEC:
            new_exec = frame.seq not in self.seen.exec_seqs
            if new_exec:
                pending = {s for s in self.seen.exec_seqs if s not in self.seen.answered}
                oldest = min(pending, default=frame.seq)
                self.seen.most_in_flight = max(self.seen.most_in_flight, frame.seq - oldest + 1)
            self.seen.exec_seqs.append(frame.seq)
        if frame is not None and direction == "up" and frame.type == MsgType.HELLO:
            self.seen.hellos += 1
        exempt = direction not in self.directions or (self.exec_only and (
            frame is None or frame.type not in (MsgType.EXEC, MsgType.EXEC_REPLY)))
        fault = "pass" if exempt else self._fault()
        if fault != "pass":
            self.seen.faults[fault] = self.seen.faults.get(fault, 0) + 1
        match fault:
            case "drop":
                pass
            case "duplicate":
                self._deliver(direction, wire, deliver, frame)
                self._deliver(direction, wire, deliver, frame)
            case "corrupt":
                b = bytearray(wire)
                i = self.rng.randrange(len(b) - 1)
                b[i] ^= 1 << self.rng.randrange(8)
                deliver(bytes(b))
            case "reorder" if self._held[direction] is None:
                self._held[direction] = (wire, deliver)
                asyncio.get_running_loop().call_later(0.005, self._flush, direction)
            case _:
                self._deliver(direction, wire, deliver, frame)
        if new_exec and self.on_exec is not None:
            self.on_exec(len(set(self.seen.exec_seqs)))

    def _deliver(self, direction: str, wire: bytes, deliver: Callable[[bytes], None], frame: Frame | None) -> None:
        deliver(wire)
        if frame is not None and direction == "down" and frame.type == MsgType.EXEC_REPLY:
            self.seen.answered.add(frame.seq)
        self._flush(direction)

    def _flush(self, direction: str) -> None:
        held, self._held[direction] = self._held[direction], None
        if held is not None:
            wire, deliver = held
            try:
                frame: Frame | None = decode_frame(wire[:-1])
            except ValueError:
                frame = None
            self._deliver(direction, wire, deliver, frame)


class Bench:
    """An agent on a simulator that the host reaches through :class:`Faults`; every connect is a
    new line (and a new connection for the agent), opened on one :class:`Device`."""

    def __init__(self, core: AgentCore, rec: RecordingBackend, faults: Faults, close_delay: float = 0.0) -> None:
        self.core, self.rec, self.faults = core, rec, faults
        self.device = Device()
        self.close_delay = close_delay
        self.servers: list[asyncio.Task[None]] = []
        self.lines: list[tuple[PipeLink, PipeLink, Connection]] = []

    async def connect(self) -> Link:
        up: asyncio.Queue[bytes] = asyncio.Queue()
        down: asyncio.Queue[bytes] = asyncio.Queue()
        faults = self.faults
        host = PipeLink(f"host{len(self.lines)}", down, lambda d: faults.relay("up", d, up.put_nowait), self.device,
                        self.close_delay)
        agent = PipeLink(f"agent{len(self.lines)}", up, lambda d: faults.relay("down", d, down.put_nowait))
        conn = Connection(agent.name)
        self.device.opened += 1
        self.device.most_open = max(self.device.most_open, self.device.open_now)
        self.device.links.append(host)
        self.lines.append((host, agent, conn))
        self.servers.append(asyncio.create_task(serve_link(self.core, agent, conn=conn)))
        return host

    def cut(self) -> None:
        """The line breaks: both ends see the far end gone, writes fail."""
        host, agent, _ = self.lines[-1]
        host.cut = agent.cut = True
        host._rx.put_nowait(b"")
        agent._rx.put_nowait(b"")

    def backend(self, **kw: object) -> AgentBackend:
        opts: dict[str, object] = {"timeout": 0.05, "retries": 40} | kw
        return AgentBackend("agent+pipe://bench", "pipe://bench", link_factory=self.connect, **opts)  # type: ignore[arg-type]  # test options

    async def aclose(self) -> None:
        for task in self.servers:
            task.cancel()
        for task in self.servers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.core.aclose()


@contextlib.asynccontextmanager
async def bench(faults: Faults | None = None, *, core_cls: type[AgentCore] = AgentCore, close_delay: float = 0.0,
                **core_kw: object) -> AsyncIterator[Bench]:
    async with open_backend("sim") as io:
        rec = RecordingBackend(io)
        core = core_cls(rec, AllowList.default(WHOLE_MEMORY), io_thread=False, **core_kw)  # type: ignore[arg-type]  # test options
        b = Bench(core, rec, faults or Faults(0), close_delay)
        try:
            yield b
        finally:
            await b.aclose()


async def on_sim(ops: list[Op]) -> list[Result]:
    async with open_backend("sim") as be:
        return await be.execute(ops)


def assert_each_link_closed_once(device: Device) -> None:
    assert device.opened == len(device.links) and device.closed == device.opened, "a link was leaked"
    assert [link.closes for link in device.links] == [1] * len(device.links), "a link was closed twice or never"
    assert device.most_open == 1, "two links were open at once (a serial device opened twice)"


# --- item 6: the client's link failure paths -----------------------------------------------------


async def test_every_link_is_closed_once_across_reconnects_and_never_two_at_once():
    """A cut line, then a failed send: each reconnect closes the old link (once) before it opens
    the next, even when closing takes longer than the retry timeout (a pyserial port's thread)."""
    async with bench(close_delay=0.08) as b:
        be = b.backend(timeout=0.02)
        async with be:
            await be.outb(0x81, 1)
            b.cut()  # EOF at the reader
            assert await be.inb(0x81) == 1
            b.lines[-1][0].cut = True  # the next write fails
            await be.write_mem(0x40000, bytes(range(256)) * 8)  # several frames in flight
            assert await be.read_mem(0x40000, 2048) == bytes(range(256)) * 8
            assert len(b.device.links) >= 3
        assert_each_link_closed_once(b.device)
        assert be._link is None


async def test_an_exception_in_the_reply_router_surfaces_as_itself(monkeypatch):
    class RouterBug(RuntimeError):
        pass

    route, armed = AgentBackend._route, [False]

    def broken(self: AgentBackend, frame: Frame) -> None:
        if armed[0] and frame.type == MsgType.EXEC_REPLY:
            raise RouterBug(f"cannot route seq {frame.seq}")
        route(self, frame)

    monkeypatch.setattr(AgentBackend, "_route", broken)
    async with bench() as b:
        be = b.backend(timeout=0.02, retries=3)
        async with be:
            await be.outb(0x81, 1)
            armed[0] = True  # the next reply makes the router raise
            with pytest.raises(RouterBug, match="cannot route seq"):
                await be.inb(0x81)
            armed[0] = False  # repaired: the backend reconnects and goes on
            assert await be.inb(0x81) == 1
        assert_each_link_closed_once(b.device)


class ReadBug(RuntimeError):
    pass


async def test_a_reader_crash_reaches_the_awaiting_caller():
    async with bench() as b, b.backend() as be:
        b.device.links[-1].fail_with = ReadBug("link read exploded")  # at the reply to the next frame
        with pytest.raises(ReadBug, match="exploded"):
            await be.inb(0x81)
        assert await be.inb(0x81) == 0  # a new link: the backend goes on
    assert_each_link_closed_once(b.device)


async def test_a_reader_crash_with_nobody_waiting_reaches_the_next_caller_or_close():
    async with bench() as b:
        async with b.backend() as be:
            link = b.device.links[-1]
            link.fail_with = ReadBug("link read exploded")
            link._rx.put_nowait(b"noise")  # the reader crashes while no frame is waiting for a reply
            await asyncio.sleep(0.01)
            with pytest.raises(ReadBug):
                await be.inb(0x81)
            assert await be.inb(0x81) == 0  # seen once, not again
        be = b.backend()
        await be.open()
        link = b.device.links[-1]
        link.fail_with = ReadBug("link read exploded")
        link._rx.put_nowait(b"noise")
        await asyncio.sleep(0.01)
        with pytest.raises(ReadBug):
            await be.close()
        assert be._link is None
    assert_each_link_closed_once(b.device)


async def test_a_writer_failure_that_is_not_the_links_surfaces_as_itself():
    async with bench() as b:
        be = b.backend()
        async with be:
            link = b.device.links[-1]

            async def bad_write(data: bytes) -> None:
                raise TypeError("write got a bad buffer")

            link.write = bad_write  # type: ignore[method-assign]  # the injected fault
            with pytest.raises(TypeError, match="bad buffer"):
                await be.outb(0x81, 1)


async def test_close_leaves_no_task_and_no_link_behind():
    async with bench() as b:
        before = asyncio.all_tasks()
        be = b.backend()
        async with be:
            await be.write_mem(0x40000, bytes(4096))
        await asyncio.sleep(0)
        left = {t for t in asyncio.all_tasks() - before if not t.done()}
        left -= set(b.servers)
        assert left == set(), left
        assert be._link is None
        assert_each_link_closed_once(b.device)


class Modest(AgentCore):
    """An agent that advertises fewer feature bits (firmware without POLL, MEM_FILL, SETTLE)."""

    def hello_reply(self, secret: bytes = bytes(SECRET_SIZE)) -> HelloReply:
        reply = super().hello_reply(secret)
        return dataclasses.replace(reply, features=reply.features & ~(Feature.POLL | Feature.MEM_FILL | Feature.SETTLE))


@pytest.mark.parametrize(("op", "bit"), [(Poll(0x08, 0xFF, 0, 100, 10), "POLL"),
                                         (MemFill(0x40000, 16, 1), "MEM_FILL"),
                                         (Settle(1000), "SETTLE")])
async def test_an_op_the_agent_does_not_advertise_is_refused_before_anything_runs(op, bit):
    async with bench(core_cls=Modest) as b:
        be = b.backend()
        async with be:
            b.rec.clear()
            frames = b.core.stats.frames_in
            program = [Out(0x81, 7), MemWrite(0x40000, bytes(3000)), op]  # several frames before the op
            with pytest.raises(AgentUnsupportedError, match=rf"op 2.*{type(op).__name__}.*hil-agent.*{bit}") as err:
                await be.execute(program)
            assert isinstance(err.value, UnsupportedOperationError) and err.value.index == 2
            assert b.rec.trace == [] and b.core.stats.frames_in == frames  # no frame was sent
            assert await be.inb(0x81) == 0


async def test_settle_on_an_agent_without_the_bit_is_refused():
    async with bench(core_cls=Modest) as b, b.backend() as be:
        with pytest.raises(AgentUnsupportedError, match="SETTLE"):
            await be.settle(0.01)
