"""The one-op TCP round trip's fast paths against the general paths they shortcut (issue 16),
on seeded random programs, refused and malformed ones included.

* agent: :meth:`AgentCore.answer_now` (a program answered in the link's callback, checked once,
  run by ``SimBackend.run_inline``) against :meth:`AgentCore.handle` alone: the same reply bytes,
  statistics, session (next, replay cache, held frames) and machine afterwards;
* agent: ``serve_link`` on a link that pushes its bytes (answers in its callback, the rest in
  order in the serving task) against the read loop, on the same random byte stream;
* host: ``AgentBackend.inb`` of a remembered port read against the general one-op program
  (``Backend.inb``): the same values or refusals, link statistics, bytes on the wire, and agent;
* codec: ``FrameReader.whole`` against ``feed``, the CRC check by its residue against the CRC
  itself, the remembered reply bytes and IrqLines of a ReplyLayout against fresh ones, and the
  IRQ bus's kept lines against the lines worked out afresh.
"""

from __future__ import annotations

import asyncio
import random
import socket
import zlib
from dataclasses import asdict

import pytest

from hil.agent.client import AgentBackend
from hil.agent.links import Link, PushProtocol, StreamLink
from hil.agent.protocol import (
    CRC,
    CRC_RESIDUE,
    HEADER,
    TCP_MAX_PAYLOAD,
    ExecReply,
    Frame,
    FrameReader,
    Hello,
    MsgType,
    ReplyLayout,
    cobs_encode,
    decode_frame,
    encode_program,
    replying_wires,
)
from hil.agent.server import LATER, AgentCore, Connection, serve_link, start
from hil.allowlist import AllowList
from hil.backends import open_backend
from hil.backends.base import Backend
from hil.backends.sim import SimBackend
from hil.ops import (
    Delay,
    DevAttach,
    DevDreq,
    DevState,
    In,
    IrqLines,
    IrqState,
    MemFill,
    MemRead,
    MemWrite,
    Op,
    Out,
    Poll,
    PowerReset,
    Settle,
    WaitIrq,
)
from hil.ports import DMA1, DMA2

#: the agents' allow-list: the DMA controllers and pages, and the first MiB of memory (so that
#: programs touching other ports or memory are refused, by the agent or the host)
ALLOW = AllowList.default([range(0, 1 << 20)])
PORTS = [*DMA1.span, *DMA2.span, *range(0x80, 0x90)]
ODD_PORTS = [0x3F8, 0x60, 0x3F5, 0xFFFF]  #: outside the allow-list (and, strict, undecoded)
URLS = ["sim", "sim:?strict=1", "sim:?floppy=generate&sb16=1"]


def machine_state(be: SimBackend) -> tuple[object, ...]:
    m = be.machine
    return (m.dma1.snapshot(), m.dma2.snapshot(), bytes(m.pages), m.now_ns, m.idle,
            zlib.crc32(m.memory[: 1 << 20]), m.irq_bus.lines(), sorted(m.devices))


def random_op(rng: random.Random) -> Op:
    port = rng.choice(PORTS) if rng.random() < 0.85 else rng.choice(ODD_PORTS)
    addr = rng.randrange(0, 1 << 20) if rng.random() < 0.9 else rng.randrange(1 << 20, 1 << 24)
    match rng.randrange(16):
        case 0 | 1 | 2 | 3:
            return In(port)
        case 4 | 5 | 6:
            return Out(port, rng.randrange(256))
        case 7:
            return MemWrite(min(addr, (1 << 24) - 64), rng.randbytes(rng.randrange(1, 64)))
        case 8:
            return MemRead(min(addr, (1 << 24) - 64), rng.randrange(1, 64))
        case 9:
            return MemFill(min(addr, (1 << 24) - 64), rng.randrange(1, 64), rng.randrange(256))
        case 10:
            return Delay(rng.choice([0, 5, 100]))
        case 11:
            return Poll(port, 0xFF, rng.randrange(256), rng.choice([0, 50]), 10)
        case 12:
            return rng.choice([IrqState(), WaitIrq(rng.randrange(16), True, rng.choice([0, 10])), Settle(100)])
        case 13:
            return rng.choice([DevAttach(rng.choice([1, 2, 5]), "source", rng.randbytes(8)),
                               DevAttach(rng.choice([1, 2, 5]), "sink", capacity=64)])
        case 14:
            return rng.choice([DevDreq(rng.choice([1, 2, 5]), rng.random() < 0.5), DevState(rng.choice([1, 2, 5]), 16)])
        case _:
            return PowerReset() if rng.random() < 0.2 else In(port)


def random_payload(rng: random.Random) -> bytes:
    """A program as a host sends it (mostly ending in an IrqState, as a tracking host's do), or
    one spoiled: a byte changed, cut short, an unknown opcode, empty."""
    ops = [random_op(rng) for _ in range(rng.choice([1, 1, 1, 2, 3, 6]))]
    if rng.random() < 0.7:
        ops.append(IrqState())
    payload = encode_program(ops)
    match rng.randrange(12):
        case 0:
            i = rng.randrange(len(payload))
            payload = payload[:i] + bytes([rng.randrange(256)]) + payload[i + 1:]
        case 1:
            payload = payload[: rng.randrange(len(payload))]
        case 2:
            payload += bytes([0x7E])
        case _:
            pass
    return payload


def hello_frame(seq: int = 0, nonce: int = 1) -> Frame:
    return Frame(MsgType.HELLO, seq, Hello(nonce, TCP_MAX_PAYLOAD).encode())


def random_frames(rng: random.Random, n: int) -> list[Frame]:
    """EXEC frames mostly in order, with retries of old ones, frames ahead of a gap, PINGs and
    a message type no host sends; a fresh HELLO now and then (a new session)."""
    frames, seq = [], 0
    for _ in range(n):
        r = rng.random()
        if r < 0.04:
            frames.append(hello_frame(seq, rng.choice([1, 2])))
            continue
        if r < 0.08:
            frames.append(Frame(MsgType.PING, seq, b"ping"))
            continue
        if r < 0.10:
            frames.append(Frame(0x44, seq, b""))
            continue
        if r < 0.18 and seq:  # a retry of one executed before
            frames.append(Frame(MsgType.EXEC, (seq - rng.randrange(1, min(seq, 20) + 1)) & 0xFFFF, random_payload(rng)))
            continue
        ahead = rng.choice([0] * 12 + [1, 2])
        frames.append(Frame(MsgType.EXEC, (seq + ahead) & 0xFFFF, random_payload(rng)))
        if not ahead:
            seq += 1
    return frames


async def _core(url: str) -> tuple[AgentCore, SimBackend]:
    io = await open_backend(url).__aenter__()
    assert isinstance(io, SimBackend)
    return AgentCore(io, ALLOW, boot_nonce=7), io


def _core_state(core: AgentCore) -> tuple[object, ...]:
    session = core.session
    sess = None if session is None else (session.next, list(session.cache.items()), sorted(session.held))
    return asdict(core.stats), sess


@pytest.mark.parametrize("url", URLS)
async def test_answer_now_is_what_handle_answers(url):
    for seed in range(12):
        rng = random.Random(seed)
        (fast, fast_io), (slow, slow_io) = await _core(url), await _core(url)
        conn_f, conn_s = Connection("f", max_payload=TCP_MAX_PAYLOAD), Connection("s", max_payload=TCP_MAX_PAYLOAD)
        answered_now = 0
        try:
            await fast.handle(hello_frame(), conn_f)
            await slow.handle(hello_frame(), conn_s)
            for frame in random_frames(rng, 120):
                if frame.type == MsgType.HELLO:  # a new session: its reply carries a random secret
                    await fast.handle(frame, conn_f)
                    await slow.handle(frame, conn_s)
                    continue
                got = fast.answer_now(frame, conn_f)
                if got is LATER:
                    got = await fast.handle(frame, conn_f)
                else:
                    answered_now += 1
                want = await slow.handle(frame, conn_s)
                assert got == want, (seed, frame)
                assert _core_state(fast) == _core_state(slow), (seed, frame)
            assert machine_state(fast_io) == machine_state(slow_io), seed
        finally:
            for core in (fast, slow):
                await core.aclose()
        assert answered_now > 20  # the fast path was taken, and compared


class Feeder(Link):
    """A link the test feeds: pushing its bytes to a receiver (on_data) or through read()."""

    def __init__(self, push: bool) -> None:
        super().__init__("feeder")
        self.push = push
        self.receiver = None
        self.rx: asyncio.Queue[bytes] = asyncio.Queue()
        self.out: list[bytes] = []

    def on_data(self, receiver):
        if not self.push:
            return False
        self.receiver = receiver
        return True

    def feed(self, data: bytes) -> None:
        if self.receiver is not None:
            self.receiver(data)
        elif not self.push:
            self.rx.put_nowait(data)

    async def read(self) -> bytes:
        return await self.rx.get()

    async def write(self, data: bytes) -> None:
        await asyncio.sleep(0)
        self.out.append(data)

    def write_now(self, data: bytes) -> bool:
        self.out.append(data)
        return True

    async def close(self) -> None:
        self.feed(b"")


def _replies(out: list[bytes]) -> list[tuple[int, int, bytes]]:
    """The frames written, a HELLO_REPLY without its payload (its session secret is random)."""
    frames = list(FrameReader().feed(b"".join(out)))
    return [(f.type, f.seq, b"" if f.type == MsgType.HELLO_REPLY else f.payload) for f in frames]


async def _settled(links: list[Feeder], cores: list[AgentCore]) -> None:
    for _ in range(200):  # both served everything they were given (programs in the I/O thread included)
        await asyncio.sleep(0.001 if any(c._lock.locked() for c in cores) else 0)
        if all(link.rx.empty() for link in links) and not any(c._lock.locked() for c in cores):
            await asyncio.sleep(0)
            if not any(c._lock.locked() for c in cores):
                return


@pytest.mark.parametrize("url", URLS[:2])
async def test_a_pushing_link_is_served_as_the_read_loop_serves(url):
    for seed in range(6):
        rng = random.Random(100 + seed)
        (fast, fast_io), (slow, slow_io) = await _core(url), await _core(url)
        pushing, reading = Feeder(True), Feeder(False)
        tasks = [asyncio.create_task(serve_link(fast, pushing)), asyncio.create_task(serve_link(slow, reading))]
        await asyncio.sleep(0)  # both serving: the pushing link has its receiver
        assert pushing.receiver is not None
        try:
            stream = hello_frame().encode() + b"".join(f.encode() for f in random_frames(rng, 80))
            stream = stream[:40] + b"\x13\x37garbage" + stream[40:]  # a frame behind garbage
            i = 0
            while i < len(stream):
                # mostly whole frames, as TCP reads give them; sometimes cut anywhere
                end = stream.index(0, i) + 1 if rng.random() < 0.7 else min(len(stream), i + rng.randrange(1, 40))
                for link in (pushing, reading):
                    link.feed(stream[i:end])
                i = end
                await _settled([pushing, reading], [fast, slow])
            assert _replies(pushing.out) == _replies(reading.out), seed
            assert asdict(fast.stats) == asdict(slow.stats), seed
            assert machine_state(fast_io) == machine_state(slow_io), seed
        finally:
            pushing.feed(b"")
            reading.feed(b"")
            await asyncio.gather(*tasks, return_exceptions=True)
            for core in (fast, slow):
                await core.aclose()


#: ports a script may read: allowed, outside the agent's allow-list, ill-typed or out of range
HOST_PORTS = [*PORTS[:8], 0x87, 0x3F8, -1, 0x10000, True, "0x81", 131.0]


@pytest.mark.parametrize("url", URLS[:2])
async def test_inb_of_a_remembered_read_is_the_general_one_op_program(url):
    ends, backends = [], []
    try:
        for _ in range(2):
            core, io = await _core(url)
            listener = await start(core, "tcp://127.0.0.1:0")
            ends.append((core, io, listener))
            backends.append(await open_backend(f"agent+{listener.address}").__aenter__())
        fast, slow = backends
        assert isinstance(fast, AgentBackend) and isinstance(slow, AgentBackend)
        names = [(be.url, "URL") for be in backends] + [(listener.address, "ADDR") for _, _, listener in ends]

        async def outcome(coro: object) -> tuple[str, object]:
            try:
                return "ok", await coro  # type: ignore[misc]  # a coroutine
            except Exception as e:  # the refusal is what is compared
                text = str(e)
                for name, neutral in names:
                    text = text.replace(name, neutral)
                return type(e).__name__, text

        rng = random.Random(5)
        for i in range(400):
            port = rng.choice(HOST_PORTS)
            match rng.randrange(10):
                case 0:  # a write between the reads (the flip-flop moves)
                    got = await outcome(fast.outb(0x0C, 0))
                    want = await outcome(slow.outb(0x0C, 0))
                case 1:  # inside batched(): the fast path stands aside (the write queued before goes first)
                    async with fast.batched():
                        await fast.outb(0x0C, 0)
                        got = await outcome(fast.inb(port))  # type: ignore[arg-type]  # ill-typed on purpose
                    async with slow.batched():
                        await slow.outb(0x0C, 0)
                        want = await outcome(Backend.inb(slow, port))  # type: ignore[arg-type]  # ill-typed on purpose
                case _:
                    got = await outcome(fast.inb(port))  # type: ignore[arg-type]  # ill-typed on purpose
                    want = await outcome(Backend.inb(slow, port))  # type: ignore[arg-type]  # ill-typed on purpose
            assert got == want, (i, port)
            assert asdict(fast.stats) == asdict(slow.stats), i
        assert fast._reads  # the remembered reads were used
        assert machine_state(ends[0][1]) == machine_state(ends[1][1])
        await fast.close()
        await slow.close()
        assert await outcome(fast.inb(PORTS[0])) == await outcome(Backend.inb(slow, PORTS[0]))  # closed alike
    finally:
        for be in backends:
            await be.close()
        for core, _, listener in ends:
            listener.close()
            await core.aclose()


def test_whole_is_what_feed_yields_for_one_read():
    rng = random.Random(3)
    for _ in range(3000):
        frame = Frame(rng.choice([2, 0x82, 0xFF]), rng.randrange(1 << 16), rng.randbytes(rng.randrange(0, 300)))
        data = frame.encode()
        match rng.randrange(6):
            case 0:  # a corrupted byte
                i = rng.randrange(len(data) - 1)
                data = data[:i] + bytes([rng.randrange(1, 256)]) + data[i + 1:]
            case 1:  # two frames, garbage before one, a bare delimiter
                data = rng.choice([data + data, b"\x05\x01\x02" + data, b"\x00", data[: rng.randrange(len(data))]])
            case _:
                pass
        prefix = b"\x09\x08" if rng.random() < 0.1 else b""  # something already buffered
        a, b = FrameReader(), FrameReader()
        list(a.feed(prefix))
        list(b.feed(prefix))
        fast = a.whole(data)
        fed = list(b.feed(data))
        if fast is None:
            fed_again = list(a.feed(data))  # the caller's fallback
            assert fed_again == fed
            assert (a.discarded, a.bad_frames) == (b.discarded, b.bad_frames)
        else:
            assert [fast] == fed
            assert (a.discarded, a.bad_frames, bytes(a._buf)) == (b.discarded, b.bad_frames, bytes(b._buf))


def test_the_crc_residue_accepts_exactly_the_frames_the_crc_accepts():
    rng = random.Random(4)
    for _ in range(5000):
        payload = rng.randbytes(rng.randrange(0, 80))
        body = HEADER.pack(1, 2, rng.randrange(1 << 16), len(payload)) + payload
        crc = zlib.crc32(body)
        if rng.random() < 0.5:
            crc ^= 1 << rng.randrange(32)
        framed = body + CRC.pack(crc)
        assert (zlib.crc32(framed) == CRC_RESIDUE) == (zlib.crc32(framed[:-4]) == CRC.unpack(framed[-4:])[0])
        try:
            decode_frame(cobs_encode(framed))
            accepted = True
        except Exception:
            accepted = False
        assert accepted == (crc == zlib.crc32(body))


def test_a_reply_layouts_remembered_bytes_and_lines_are_fresh_ones():
    rng = random.Random(6)
    programs = [[In(0x08), IrqState()], [IrqState()], [In(0x81), In(0x82, 16), IrqState(), In(0x83)], [], [Out(0x0C, 0)]]
    for ops in programs:
        layout = ReplyLayout.of(ops)
        assert layout is not None
        levels = rng.randrange(1 << 16)  # lines that differ only in their counts, or only in their levels
        counts = [tuple(rng.randrange(1 << 17) for _ in range(16)) for _ in range(2)]
        lines = [IrqLines(levels, counts[0]), IrqLines(levels, counts[1]), IrqLines(levels ^ 1, counts[1])]
        for _ in range(60):
            results = [rng.choice(lines) if isinstance(op, IrqState) else rng.choice([0, 1, 0xFF, 0xFFFF]) & (
                0xFF if isinstance(op, In) and op.width == 8 else 0xFFFF) for op in ops if not isinstance(op, Out)]
            got = layout.encode(results, [])
            assert got == ReplyLayout.of(ops).encode(results, [])  # type: ignore[union-attr]  # a layout, as above
            assert got == ExecReply(results=list(results)).encode(ops, replying_wires(ops))
            back = ExecReply.decode(got, ops, layout)
            assert back == ExecReply.decode(got, ops)


async def test_the_irq_buses_kept_lines_are_the_lines_worked_out_afresh():
    async with open_backend("sim:?sb16=1") as be:
        assert isinstance(be, SimBackend)
        m = be.machine
        bus = m.irq_bus
        drivers = [m.irq_line(n) for n in range(16) for _ in range(2)]
        rng = random.Random(8)
        for _ in range(2000):
            match rng.randrange(5):
                case 0 | 1:
                    rng.choice(drivers).set(rng.random() < 0.5)
                case 2:
                    m.set_irq(rng.randrange(16), rng.random() < 0.5)
                case 3:
                    bus.clear_counts() if rng.random() < 0.2 else None
                case _:
                    pass
            kept = bus.lines()
            bus._lines = None  # worked out afresh
            assert kept == bus.lines()
            assert be._irq_lines() == IrqLines(*kept)


async def test_bytes_that_arrive_before_the_agent_serves_a_connection_are_answered():
    """A host's HELLO may reach the agent's connection before its serving task asks for bytes:
    those bytes sit in the StreamReader, so the connection is served by reading, not pushed."""
    loop = asyncio.get_running_loop()
    here, there = socket.socketpair()
    there.setblocking(False)
    reader = asyncio.StreamReader()
    transport, protocol = await loop.connect_accepted_socket(lambda: PushProtocol(reader), here)
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    await loop.sock_sendall(there, hello_frame().encode())
    for _ in range(100):
        if protocol.buffered:
            break
        await asyncio.sleep(0.001)
    assert protocol.buffered
    core, io = await _core("sim")
    task = asyncio.create_task(serve_link(core, StreamLink("early", reader, writer, protocol)))
    try:
        reply = await asyncio.wait_for(loop.sock_recv(there, 4096), 5)
        [frame] = list(FrameReader().feed(reply))
        assert frame.type == MsgType.HELLO_REPLY
    finally:
        there.close()
        await asyncio.wait_for(task, 5)
        writer.close()
        await core.aclose()
        await io.close()


async def test_a_tuple_program_sent_again_is_found_by_identity(monkeypatch):
    """The tuple sent last (a register dump's cached ops) is not hashed again, op by op, and
    answers as the same program in a new list does; after the frame size changes it is planned
    afresh and still answers the same."""
    core, io = await _core("sim")
    listener = await start(core, "tcp://127.0.0.1:0")
    try:
        async with open_backend(f"agent+{listener.address}") as be:
            assert isinstance(be, AgentBackend)
            ops = (Out(0x0C, 0), *[In(p) for p in (0x00, 0x00, 0x01, 0x01, 0x08, 0x81, 0x82, 0x83)])
            first = await be.execute(ops)  # remembered
            assert await be.execute(ops) == first  # found by its ops, and kept as the last tuple
            hashed = 0
            plain_hash = In.__hash__

            def counting(op: In) -> int:
                nonlocal hashed
                hashed += 1
                return plain_hash(op)

            monkeypatch.setattr(In, "__hash__", counting)
            again = await be.execute(ops)
            assert hashed == 0  # found by identity
            assert again == await be.execute(list(ops)) == first[:1] + again[1:]
            assert hashed > 0  # a list is looked up by its ops
            be.sizer.size = max(64, be.sizer.size // 2)  # as a noisy link makes it
            assert await be.execute(ops) == again  # planned afresh: remembered anew
            assert await be.execute(ops) == again
            assert be._recent is not None and be._recent[1].size == be.sizer.size
            hashed = 0
            assert await be.execute(ops) == again and hashed == 0
    finally:
        listener.close()
        await core.aclose()
        await io.close()
