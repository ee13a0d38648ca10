"""The agent link's fast paths against its general paths (issue 16): the direct write beside the
writer task, a round trip's timeout without ``asyncio.wait``, and the caches of prepared
programs at both ends. Each fast path must give what the general path gives."""

from __future__ import annotations

import asyncio
import random

from hypothesis import given, settings, strategies as st

from hil.agent.client import AgentBackend, LinkStatistics, _Wire
from hil.agent.links import Link
from hil.agent.protocol import ExecReply, ReplyLayout
from hil.agent.server import AgentCore, serve_link
from hil.allowlist import AllowList
from hil.backends import open_backend
from hil.ops import Delay, In, IrqState, MemRead, MemWrite, Out, Poll, PowerReset, WaitIrq


class Recorder(Link):
    """A link whose ``write_now`` takes a write at random (else the writer task's ``write``,
    which waits a loop turn or two): what reaches the line must be the order of ``send``."""

    def __init__(self, seed: int) -> None:
        super().__init__("recorder")
        self.rng = random.Random(seed)
        self.line: list[bytes] = []
        self.direct = self.queued = 0
        self._closed = asyncio.Event()

    def write_now(self, data: bytes) -> bool:
        if self.rng.random() < 0.5:
            return False
        self.line.append(data)
        self.direct += 1
        return True

    async def write(self, data: bytes) -> None:
        for _ in range(self.rng.randrange(3)):
            await asyncio.sleep(0)
        self.line.append(data)
        self.queued += 1

    async def read(self) -> bytes:
        await self._closed.wait()
        return b""

    async def close(self) -> None:
        self._closed.set()


async def test_direct_and_queued_writes_keep_the_order_of_send():
    direct = queued = 0
    for seed in range(20):
        link = Recorder(seed)
        wire = _Wire(link, lambda frame: None, lambda exc: None, LinkStatistics(), "t")
        frames = [bytes([i]) * (i + 1) for i in range(40)]
        senders = []
        for i, frame in enumerate(frames):  # bursts of concurrent senders between loop turns
            senders.append(asyncio.create_task(wire.send(frame)))
            if i % 5 == 4:
                await asyncio.sleep(0)
        await asyncio.gather(*senders)
        await wire.close()
        assert link.line == frames, seed
        direct, queued = direct + link.direct, queued + link.queued
    assert direct > 10 and queued > 10  # both paths were taken, often


class Pipe(Link):
    """One end of an in-memory link; ``hold`` delays the next write by that many seconds."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.rx: asyncio.Queue[bytes] = asyncio.Queue()
        self.peer: Pipe | None = None
        self.hold = 0.0

    async def read(self) -> bytes:
        return await self.rx.get()

    async def write(self, data: bytes) -> None:
        assert self.peer is not None
        if self.hold:
            hold, self.hold = self.hold, 0.0
            asyncio.get_running_loop().call_later(hold, self.peer.rx.put_nowait, data)
            return
        self.peer.rx.put_nowait(data)

    async def close(self) -> None:
        assert self.peer is not None
        self.peer.rx.put_nowait(b"")


async def test_a_reply_later_than_the_timeout_is_taken_and_the_program_ran_once():
    host, agent = Pipe("host"), Pipe("agent")
    host.peer, agent.peer = agent, host
    async with open_backend("sim") as io:
        core = AgentCore(io, AllowList.default([range(0, 1 << 24)]))
        server = asyncio.create_task(serve_link(core, agent))
        be = AgentBackend("agent+test", "pipe", timeout=0.2, retries=3, link_factory=lambda: _ready(host))
        try:
            await be.open()
            await be.execute([Out(0x81, 0x12)])
            executed = core.stats.executed
            agent.hold = 0.3  # the reply to the next program arrives after the first timeout
            assert await be.execute([Out(0x81, 0x34), In(0x81)]) == [0x34]
            assert be.stats.retries >= 1
            assert core.stats.executed == executed + 1  # the retransmission was answered from the cache
            assert await be.execute([MemWrite(0x1000, b"abc"), MemRead(0x1000, 3)]) == [b"abc"]
        finally:
            await be.close()
            server.cancel()


async def _ready(link: Link) -> Link:
    return link


#: programs a property test draws from: repeats hit the caches; a denied port and memory outside
#: the window are refused (the agent's allow-list below has neither); an unknown opcode is refused
POOL = [
    [In(0x08)],
    [Out(0x0A, 0x05), Out(0x0C, 0), Out(0x04, 0x34), Out(0x04, 0x12), In(0x04), In(0x04)],
    [Out(0x81, 0x12), In(0x81), In(0x08)],
    [MemWrite(0x2000, b"\x00\x01\x00\xff"), MemRead(0x2000, 4), MemRead(0x2004, 2)],
    [Out(0xC4, 0x10), In(0xC4), In(0xC4), In(0xD0)],
    [In(0x81, 16)],
    [IrqState(), Out(0x08, 0), In(0x08)],
    [PowerReset(), In(0x08), IrqState()],
    [MemRead(0x2000, 2), MemRead(0x2002, 2), In(0x08)],  # reads coalesced into one
    [In(0x3F8)],  # outside the allow-list
    [MemRead(0x3FFF0, 0x20)],  # runs past the memory window
]


def _payloads() -> list[bytes]:
    from hil.agent.protocol import encode_program

    return [encode_program(p) for p in POOL] + [b"\xee\x00", b"", encode_program([In(0x08)])[:2]]


async def test_the_agents_validated_programs_answer_as_a_fresh_validation_does():
    """Two agents on two simulators get the same random frames; one forgets every validated
    program before each frame: their reply bytes must be equal, refusals included."""
    from hil.agent.protocol import Frame, Hello, MsgType

    rng = random.Random(7)
    allow = AllowList.default([range(0, 0x40000)])
    async with open_backend("sim") as io_a, open_backend("sim") as io_b:
        cached, fresh = AgentCore(io_a, allow, boot_nonce=1), AgentCore(io_b, allow, boot_nonce=1)
        hello = Frame(MsgType.HELLO, 0, Hello(5).encode())
        for core in (cached, fresh):
            await core.handle(hello)
        payloads = _payloads()
        for seq in range(300):
            frame = Frame(MsgType.EXEC, seq, rng.choice(payloads))
            fresh._validated.clear()
            a, b = await cached.handle(frame), await fresh.handle(frame)
            assert a == b, (seq, frame.payload)
        assert cached._validated  # the cache was used
        assert cached.stats.refused == fresh.stats.refused > 0


async def test_the_hosts_prepared_programs_send_and_return_what_a_fresh_plan_does():
    """The same random programs from a backend that keeps its prepared programs and from one
    that forgets them before each: the same results, refusals and wire bytes."""
    rng = random.Random(11)
    allow = AllowList.default([range(0, 0x40000)])
    outcomes: list[list[object]] = []
    stats = []
    for forget in (False, True):
        host, agent = Pipe("host"), Pipe("agent")
        host.peer, agent.peer = agent, host
        async with open_backend("sim") as io:
            core = AgentCore(io, allow, boot_nonce=1)
            server = asyncio.create_task(serve_link(core, agent))
            be = AgentBackend("agent+test", "pipe", link_factory=lambda h=host: _ready(h))
            got: list[object] = []
            try:
                await be.open()
                for _ in range(200):
                    if forget:
                        be._prepared.clear()
                    try:
                        got.append(await be.execute(rng.choice(POOL)))
                    except Exception as e:  # a refusal: its class and text are the outcome
                        got.append((type(e).__name__, str(e)))
                if not forget:
                    assert be._prepared
                stats.append((be.stats.bytes_out, be.stats.bytes_in, be.stats.programs, be._irq))
            finally:
                await be.close()
                server.cancel()
        outcomes.append(got)
        rng = random.Random(11)
    assert outcomes[0] == outcomes[1]
    assert any(isinstance(o, tuple) for o in outcomes[0]) and any(isinstance(o, list) for o in outcomes[0])
    assert stats[0] == stats[1]


_FIXED_OPS = st.sampled_from([In(0x08), In(0x81, 16), Poll(0x08, 0x01, 0x01, 1000, 10), IrqState(),
                              WaitIrq(6, True, 1000)])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_FIXED_OPS, st.sampled_from([Out(0x0A, 5), Delay(10)])), max_size=20),
       st.data())
def test_a_reply_read_by_its_layout_is_the_reply_read_op_by_op(ops, data):
    layout = ReplyLayout.of(ops)
    assert layout is not None
    body = data.draw(st.binary(min_size=layout.struct.size, max_size=layout.struct.size))
    head = data.draw(st.sampled_from([b"\x00\xff\xff\x00", b"\x00\x03\x00\x00", b"\x06\x01\x00\x00",
                                      b"\x00\xff\xff\x02ab"]))
    cut = data.draw(st.integers(0, 2))  # sometimes a reply too short, or too long
    payload = head + (body[:-cut] if cut == 1 and body else body + b"\x00" if cut == 2 else body)

    def outcome(with_layout: bool) -> object:
        try:
            return ExecReply.decode(payload, ops, layout if with_layout else None)
        except Exception as e:  # the same refusal either way
            return type(e), str(e)

    assert outcome(True) == outcome(False)


def test_programs_with_data_replies_have_no_layout():
    assert ReplyLayout.of([In(0x08), MemRead(0, 4)]) is None
    assert ReplyLayout.of([In(0x08), Out(0x0A, 5)]) is not None


def test_random_replies_read_by_layout_and_op_by_op_agree():
    rng = random.Random(3)
    pool = [In(0x08), In(0x81, 16), Poll(0x08, 0x01, 0x01, 1000, 10), IrqState(), WaitIrq(6, True, 1000),
            Out(0x0A, 5)]
    for _ in range(2000):
        ops = [rng.choice(pool) for _ in range(rng.randrange(1, 12))]
        layout = ReplyLayout.of(ops)
        assert layout is not None
        payload = b"\x00\xff\xff\x00" + rng.randbytes(layout.struct.size)
        assert ExecReply.decode(payload, ops, layout) == ExecReply.decode(payload, ops)


def test_the_direct_results_unwrap_irq_counts_as_the_general_path_does():
    """Counts travel modulo 65536: near and past a wrap, both paths count on from the last state."""
    from hil.agent.client import _Chunk, _Prepared
    from hil.agent.protocol import Feature, HelloReply
    from hil.ops import IRQ_LINES, IrqLines

    rng = random.Random(5)
    ops = [In(0x08), IrqState()]
    info = HelloReply(1, "a", "1", 4096, 8, 4096, Feature.IRQ, (), ())
    prepared = _Prepared(info, 4096, ops, _Chunk(ops, [[(0, 0)], [(1, 0)]]), direct=True)
    for _ in range(500):
        start = IrqLines(rng.randrange(1 << 16), tuple(rng.randrange(1 << 20) for _ in range(IRQ_LINES)))
        wire = IrqLines(rng.randrange(1 << 16), tuple(rng.randrange(1 << 16) for _ in range(IRQ_LINES)))
        direct, general = AgentBackend("agent+x", "x"), AgentBackend("agent+x", "x")
        direct._irq = general._irq = start
        reply = ExecReply(results=[7, wire])
        got = direct._results_direct(prepared, reply, tracking=True)
        want = general._unwrap_irq(ops, [7, wire])
        assert got == want[:-1] and direct._irq == want[-1]
