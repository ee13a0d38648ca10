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

from hil.agent.client import AgentBackend, AgentResetError, AgentUnsupportedError
from hil.agent.links import Link, LinkError
from hil.agent.protocol import SECRET_SIZE, Feature, Frame, HelloReply, MsgType, decode_frame
from hil.agent.server import AgentCore, Connection, serve_link
from hil.allowlist import AllowList
from hil.backends import open_backend
from hil.backends.ops import In, IrqState, MemFill, MemRead, MemWrite, Op, Out, Poll, Result, Settle
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


# --- item 8: multi-frame programs through faults, reconnects and lost sessions --------------------

WINDOW = 4
FRAME = 128  #: the agent's max_payload: the program below is some 36 frames


def big_program(seed: int) -> list[Op]:
    """Writes and reads of 1000 bytes each (about 9 frames apiece), between 8237 address writes
    and reads through the byte-pointer flip-flop: a frame that ran twice shifts the flip-flop
    and changes the address read back, so it shows in the results, not only in the counts."""
    rng = random.Random(seed)
    a, b = rng.randbytes(1000), rng.randbytes(1000)
    return [Out(0x0C, 0), Out(0x04, 0x34), MemWrite(0x40000, a), Out(0x04, 0x12), MemWrite(0x48000, b),
            Out(0x0C, 0), In(0x04), MemRead(0x40000, 1000), In(0x04), MemRead(0x48000, 1000),
            Out(0x81, seed & 0xFF), In(0x81)]


def mark(b: Bench) -> tuple[int, int]:
    """Where the program starts: EXEC frames seen so far, programs the agent executed so far."""
    b.rec.clear()
    return len(b.faults.seen.exec_seqs), b.core.stats.executed


def assert_ran_once_in_order(b: Bench, program: list[Op], start: tuple[int, int]) -> None:
    """Every frame the host sent ran once (no refusal, no repeat), and the ops that reached the
    agent's I/O are the program's, once each, in order (large writes in pieces)."""
    sent = set(b.faults.seen.exec_seqs[start[0]:])
    assert len(sent) >= 8, f"the program went out in {len(sent)} frames"
    assert b.core.stats.executed - start[1] == len(sent), "a frame ran twice, or not at all"
    ran = [e.op for e in b.rec.trace]
    assert [op for op in ran if isinstance(op, Out)] == [op for op in program if isinstance(op, Out)]
    written: dict[int, bytearray] = {}
    for op in ran:
        if isinstance(op, MemWrite):
            base = next(start for start, buf in written.items() if start + len(buf) == op.addr) \
                if any(start + len(buf) == op.addr for start, buf in written.items()) else None
            if base is None:
                written[op.addr] = bytearray(op.data)
            else:
                written[base] += op.data
    assert {addr: bytes(buf) for addr, buf in written.items()} == \
        {op.addr: op.data for op in program if isinstance(op, MemWrite)}, "memory written twice or in pieces lost"


@pytest.mark.parametrize(("fault", "seed"), [("drop", 1), ("duplicate", 2), ("corrupt", 3), ("reorder", 4)])
async def test_multi_frame_program_under_one_fault_kind_runs_once_and_matches_the_sim(fault, seed):
    """§6: frames in a window of 4, each fault 10 % per EXEC and EXEC_REPLY frame. A reordered
    frame is held by the agent until the gap fills, so reordering alone costs no retransmission."""
    program = big_program(seed)
    faults = Faults(seed, {fault: 0.1})
    async with bench(faults, window=WINDOW, max_payload=FRAME) as b:
        timeout = 0.5 if fault == "reorder" else 0.02  # reorder: no frame may need its timeout
        async with b.backend(timeout=timeout) as be:
            start = mark(b)
            got = await be.execute(program)
            assert got == await on_sim(program)
            assert_ran_once_in_order(b, program, start)
            assert faults.seen.faults.get(fault, 0) >= 3, faults.seen.faults
            assert faults.seen.most_in_flight <= WINDOW, "the host sent beyond its window"
            if fault == "reorder":
                assert be.stats.retries == 0, "a reordered frame was not held: it had to be retransmitted"
                assert faults.seen.most_in_flight == WINDOW, "frames did not go out a window at a time"
            if fault == "duplicate":
                assert b.core.stats.replayed > 0
        assert_each_link_closed_once(b.device)


@pytest.mark.parametrize("seed", [5, 6])
async def test_multi_frame_programs_under_all_faults_both_ways(seed):
    program = big_program(seed)
    faults = Faults(seed, {"drop": 0.05, "duplicate": 0.05, "corrupt": 0.05, "reorder": 0.05}, exec_only=False)
    async with bench(faults, window=8, max_payload=FRAME) as b, b.backend(timeout=0.02) as be:
        start = mark(b)
        assert await be.execute(program) == await on_sim(program)
        assert_ran_once_in_order(b, program, start)
        assert set(faults.seen.faults) == {"drop", "duplicate", "corrupt", "reorder"}
        assert faults.seen.most_in_flight <= 8


async def test_line_cut_after_frame_k_reconnects_once_resumes_and_completes():
    """§6: the line breaks after the 6th frame with frames in flight; the host reconnects once,
    closes the old link first, resumes its session (HELLO RESUME): frames that ran are answered
    from the replay cache, the rest run, each once."""
    program = big_program(7)
    faults = Faults(7)
    async with bench(faults, window=WINDOW, max_payload=FRAME) as b:
        async with b.backend() as be:
            start = mark(b)
            opened = b.device.opened
            faults.on_exec = lambda n: b.cut() if n == start[0] + 6 else None
            assert await be.execute(program) == await on_sim(program)
            assert_ran_once_in_order(b, program, start)
            assert b.device.opened == opened + 1, "one reconnect for the whole backend"
            assert be.stats.resets == 0 and b.core.stats.replayed + be.stats.retries > 0
        assert_each_link_closed_once(b.device)


async def test_session_lost_mid_program_is_said_hello_again_and_completes():
    """§6: the agent detaches the session after the 6th frame (its end of a serial line hung up
    and came back): the frames after it get NO_SESSION, the host sends HELLO again, resumes
    the same session and sends them again, each runs once."""
    program = big_program(8)
    faults = Faults(8)
    async with bench(faults, window=WINDOW, max_payload=FRAME) as b:
        async with b.backend() as be:
            start, hellos = mark(b), faults.seen.hellos
            faults.on_exec = lambda n: b.core.detach(b.lines[-1][2]) if n == start[0] + 6 else None
            assert await be.execute(program) == await on_sim(program)
            assert_ran_once_in_order(b, program, start)
            assert faults.seen.hellos > hellos and b.core.stats.refused > 0  # NO_SESSION, then HELLO
            assert be.stats.resets == 0 and b.device.opened == 1  # the same line, the same session


async def test_agent_restarted_mid_program_fails_it_with_the_reset_error_never_half_silently():
    """§6: after the 6th frame the line breaks and a new agent (new boot nonce, fresh machine)
    answers the reconnect: the program fails with AgentResetError, none of its frames runs on
    the new agent, and the next program runs there."""
    program = big_program(9)
    faults = Faults(9)
    async with bench(faults, window=WINDOW, max_payload=FRAME) as b, open_backend("sim") as io2:
        rec2 = RecordingBackend(io2)
        fresh = AgentCore(rec2, AllowList.default(WHOLE_MEMORY), io_thread=False, window=WINDOW, max_payload=FRAME)

        def restart(n: int) -> None:
            if n == before + 6:
                b.cut()
                b.core = fresh

        async with b.backend() as be:
            before = len(faults.seen.exec_seqs)
            faults.on_exec = restart
            with pytest.raises(AgentResetError, match="restarted"):
                await be.execute(program)
            assert rec2.trace == [] and be.stats.resets == 1
            assert await be.execute([Out(0x81, 0x42), In(0x81)]) == [0x42]
            # and the IRQ_STATE the client ends every program with (the agent's I/O has capability irq)
            assert [e.op for e in rec2.trace] == [Out(0x81, 0x42), In(0x81), IrqState()]
        await fresh.aclose()


async def test_a_stale_execs_no_session_never_answers_a_hello_of_the_same_seq():
    """Seen over the VM's UART after a reset: the restarted agent answers a retransmitted EXEC
    with NO_SESSION while the host's HELLO of the same seq waits, the EXEC's own waiter already
    failed with the reset. NO_SESSION answers an EXEC only; the HELLO keeps waiting for its reply."""
    from hil.agent.protocol import ErrorReply, Status

    be = AgentBackend("agent+pipe://x", "pipe://x")
    loop = asyncio.get_running_loop()
    hello: asyncio.Future[Frame] = loop.create_future()
    stale: asyncio.Future[Frame] = loop.create_future()
    stale.set_exception(AgentResetError("restarted"))
    stale.exception()  # retrieved: the reset already reached its caller
    be._pending[("hello", 57)] = hello
    be._pending[("exec", 57)] = stale
    be._route(Frame(MsgType.ERROR, 57, ErrorReply(Status.NO_SESSION, "send HELLO first").encode()))
    assert not hello.done()
    exec_waiting: asyncio.Future[Frame] = loop.create_future()
    be._pending[("exec", 57)] = exec_waiting
    be._route(Frame(MsgType.ERROR, 57, ErrorReply(Status.NO_SESSION, "send HELLO first").encode()))
    assert exec_waiting.done() and not hello.done()  # an EXEC waiting for it gets it
    be._route(Frame(MsgType.ERROR, 57, ErrorReply(Status.BUSY, "another host").encode()))
    assert hello.done()  # a HELLO's own refusals still reach it


async def test_a_round_trips_timeout_wakes_its_own_waiter_whoever_holds_the_key():
    """Seen over the VM's UART: a round trip's waiter whose key another round trip of the same
    kind and seq had taken over (and then removed) never woke, so it waited without end instead
    of retransmitting. The timer wakes the waiter it was set for, and leaves another's entry alone."""
    from hil.agent.client import _EXPIRED

    be = AgentBackend("agent+pipe://x", "pipe://x")
    loop = asyncio.get_running_loop()
    mine: asyncio.Future[Frame] = loop.create_future()
    other: asyncio.Future[Frame] = loop.create_future()
    be._pending[("exec", 5)] = other
    be._expire(("exec", 5), mine)
    assert mine.done() and mine.result() is _EXPIRED
    assert be._pending[("exec", 5)] is other and not other.done()
    be._pending[("exec", 5)] = mine2 = loop.create_future()
    be._expire(("exec", 5), mine2)  # its own entry: a fresh future takes the key for a late reply
    assert mine2.result() is _EXPIRED and be._pending[("exec", 5)] is not mine2
