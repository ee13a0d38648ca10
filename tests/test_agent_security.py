"""The agent on a network (issue 11): sessions belong to the connection that authenticated them,
idle connections lock nobody out, no frame can freeze the agent, oversized frames are refused,
and what the host can check from HELLO it checks before sending (docs/agent-protocol.md §3, §6)."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from hil.agent.client import AgentAccessDenied, AgentRefusedError
from hil.agent.protocol import (
    SECRET_SIZE,
    ErrorReply,
    ExecReply,
    Feature,
    Frame,
    FrameReader,
    Hello,
    HelloFlag,
    HelloReply,
    MsgType,
    Status,
    encode_program,
)
from hil.agent.server import AgentCore, Connection, start
from hil.allowlist import AllowList
from hil.backends import open_backend
from hil.backends.mock import MockBackend
from hil.backends.recording import RecordingBackend
from hil.errors import HilError
from hil.ops import DevState, In, MemRead, MemWrite, Out, Poll, Settle

WHOLE_MEMORY = [range(1 << 24)]
TOKEN = b"s3cret"


@contextlib.asynccontextmanager
async def tcp_agent(**kw):
    async with open_backend("sim") as io:
        rec = RecordingBackend(io)
        core = AgentCore(rec, AllowList.default(WHOLE_MEMORY), **kw)
        listener = await start(core, "tcp://127.0.0.1:0")
        try:
            yield listener.address, core, rec
        finally:
            listener.close()
            await core.aclose()


class Raw:
    """A bare TCP client speaking frames, for what a well-behaved host never sends."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.frames = reader, writer, FrameReader()
        self._got: list[Frame] = []

    @classmethod
    async def connect(cls, address: str) -> Raw:
        host, port = address[len("tcp://"):].rsplit(":", 1)
        return cls(*await asyncio.open_connection(host, int(port)))

    async def send(self, frame: Frame) -> None:
        self.writer.write(frame.encode())
        await self.writer.drain()

    async def recv(self, timeout: float = 2.0) -> Frame:
        while not self._got:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                raise EOFError("agent closed the connection")
            self._got += self.frames.feed(data)
        return self._got.pop(0)

    async def exchange(self, frame: Frame) -> Frame:
        await self.send(frame)
        return await self.recv()

    async def hello(self, nonce: int, token: bytes = TOKEN, seq: int = 0, **kw) -> Frame:
        return await self.exchange(Frame(MsgType.HELLO, seq, Hello(nonce, token=token, **kw).encode()))

    def close(self) -> None:
        self.writer.close()


def error_status(frame: Frame) -> Status:
    assert frame.type == MsgType.ERROR, frame
    return ErrorReply.decode(frame.payload).status


# --- item 1: the token cannot be bypassed --------------------------------------------------------


async def test_a_connection_that_never_said_hello_cannot_run_or_replay_after_the_host_left():
    """The old agent ran EXEC whenever any session existed and kept it after its host left."""
    async with tcp_agent(token=TOKEN) as (address, core, rec):
        async with open_backend(f"agent+{address}?token=s3cret") as be:
            await be.write_mem(0x30000, b"private")
            assert await be.read_mem(0x30000, 7) == b"private"
            seqs = be._seq
        rec.clear()
        raw = await Raw.connect(address)
        try:
            for seq in range(seqs):  # the previous host's cached replies: its memory reads
                assert error_status(await raw.exchange(Frame(MsgType.EXEC, seq, b""))) == Status.NO_SESSION
            program = encode_program([Out(0x81, 0x99), In(0x81)])
            assert error_status(await raw.exchange(Frame(MsgType.EXEC, seqs, program))) == Status.NO_SESSION
            assert error_status(await raw.exchange(Frame(MsgType.PING, 0, b"x"))) == Status.NO_SESSION
        finally:
            raw.close()
        assert rec.trace == [] and core.stats.replayed == 0


async def test_frames_on_another_connection_are_refused_while_the_host_is_connected():
    async with tcp_agent(token=TOKEN) as (address, _, rec), open_backend(f"agent+{address}?token=s3cret") as be:
        await be.outb(0x81, 0x11)
        rec.clear()
        raw = await Raw.connect(address)
        try:
            reply = await raw.exchange(Frame(MsgType.EXEC, be._seq, encode_program([Out(0x81, 0x99)])))
            assert error_status(reply) == Status.NO_SESSION
            # even with the token, another host does not get a held session: BUSY, decided after the token
            assert error_status(await raw.hello(0x1234)) == Status.BUSY
        finally:
            raw.close()
        assert rec.trace == [] and await be.inb(0x81) == 0x11


async def test_a_hello_with_a_wrong_token_leaves_no_usable_session():
    async with tcp_agent(token=TOKEN) as (address, _, rec):
        raw = await Raw.connect(address)
        try:
            assert (await raw.hello(7)).type == MsgType.HELLO_REPLY
            ok = await raw.exchange(Frame(MsgType.EXEC, 0, encode_program([Out(0x81, 1)])))
            assert ExecReply.decode(ok.payload, [Out(0x81, 1)]).status == Status.OK
            assert error_status(await raw.hello(7, token=b"wrong", seq=1)) == Status.AUTH
            rec.clear()
            refused = await raw.exchange(Frame(MsgType.EXEC, 1, encode_program([Out(0x81, 2)])))
            assert error_status(refused) == Status.NO_SESSION
            assert error_status(await raw.exchange(Frame(MsgType.EXEC, 0, b""))) == Status.NO_SESSION  # no replay
        finally:
            raw.close()
        assert rec.trace == []


async def test_only_the_same_host_resumes_its_session_with_its_secret():
    """Exactly once across reconnects, for the host that holds the session secret only."""
    async with open_backend("sim") as io:
        core = AgentCore(io, AllowList.default(WHOLE_MEMORY), token=TOKEN)
        a, b, c = Connection("a"), Connection("b"), Connection("c")
        hello = Hello(7, token=TOKEN)
        reply = HelloReply.decode((await _frame(core, Frame(MsgType.HELLO, 0, hello.encode()), a)).payload)
        assert Feature.SESSION_SECRET in reply.features and len(reply.secret) == SECRET_SIZE
        await _frame(core, Frame(MsgType.EXEC, 0, encode_program([Out(0x81, 0x42)])), a)
        core.detach(a)  # the host's link dropped
        # the same nonce with a wrong secret (or without one, below) is not that host
        wrong = Hello(7, token=TOKEN, flags=HelloFlag.RESUME, secret=bytes(SECRET_SIZE))
        await _frame(core, Frame(MsgType.HELLO, 1, wrong.encode()), b)
        assert core.session is not None and core.session.cache == {}  # a new session: no replies to fetch
        core.detach(b)
        other = AgentCore(io, AllowList.default(WHOLE_MEMORY), token=TOKEN)
        await _frame(other, Frame(MsgType.HELLO, 0, hello.encode()), a)
        await _frame(other, Frame(MsgType.EXEC, 0, encode_program([Out(0x81, 0x42)])), a)
        other.detach(a)
        await _frame(other, Frame(MsgType.HELLO, 1, hello.encode()), b)  # no RESUME, no secret
        assert other.session is not None and other.session.cache == {}
        # the real host, after a fresh agent session started without it: its session is gone for good
        resumed = Hello(7, token=TOKEN, flags=HelloFlag.RESUME, secret=reply.secret)
        again = HelloReply.decode((await _frame(core, Frame(MsgType.HELLO, 1, resumed.encode()), c)).payload)
        assert again.secret != reply.secret  # the host sees the session was not resumed

        # and the resume itself: a session detached from its connection continues on the new one
        core2 = AgentCore(io, AllowList.default(WHOLE_MEMORY), token=TOKEN)
        first = HelloReply.decode((await _frame(core2, Frame(MsgType.HELLO, 0, hello.encode()), a)).payload)
        await _frame(core2, Frame(MsgType.EXEC, 0, encode_program([Out(0x81, 0x43)])), a)
        core2.detach(a)
        resume = Hello(7, token=TOKEN, flags=HelloFlag.RESUME, secret=first.secret)
        kept = HelloReply.decode((await _frame(core2, Frame(MsgType.HELLO, 1, resume.encode()), c)).payload)
        assert kept.secret == first.secret
        executed = core2.stats.executed
        retry = await _frame(core2, Frame(MsgType.EXEC, 0, encode_program([Out(0x81, 0x43)])), c)
        assert retry.type == MsgType.EXEC_REPLY and core2.stats.executed == executed and core2.stats.replayed == 1


async def _frame(core: AgentCore, frame: Frame, conn: Connection) -> Frame:
    wire = await core.handle(frame, conn)
    assert wire is not None
    return next(iter(FrameReader().feed(wire)))


async def test_a_reconnecting_host_resumes_and_takes_over_its_half_open_connection():
    async with tcp_agent(token=TOKEN) as (address, core, _), open_backend(f"agent+{address}?token=s3cret") as be:
        await be.outb(0x81, 0x21)
        session = core.session
        old, be._wire = be._wire, None  # the host forgot its link (half-open); the agent still holds the connection
        assert await be.inb(0x81) == 0x21  # reconnected, resumed: no BUSY, no reset
        assert core.session is session and be.stats.resets == 0
        await old.close()


# --- item 2: idle connections lock nobody out ----------------------------------------------------


async def test_a_silent_connection_does_not_lock_out_a_host_with_the_token():
    async with tcp_agent(token=TOKEN) as (address, _, _):
        silent = await Raw.connect(address)
        try:
            async with open_backend(f"agent+{address}?token=s3cret&timeout=0.5&retries=1") as be:
                assert await be.inb(0x08) == 0
        finally:
            silent.close()


async def test_a_connection_without_hello_is_dropped_after_the_hello_timeout():
    async with tcp_agent(token=TOKEN, hello_timeout=0.3) as (address, _, _):
        silent = await Raw.connect(address)
        t0 = time.monotonic()
        with pytest.raises(EOFError):
            await silent.recv(timeout=3)
        assert time.monotonic() - t0 < 2


async def test_an_authenticated_but_silent_host_is_dropped_and_resumes():
    async with tcp_agent(idle_timeout=0.3) as (address, core, _), open_backend(f"agent+{address}") as be:
        await be.outb(0x81, 0x31)
        session = core.session
        other = await Raw.connect(address)
        try:
            await asyncio.sleep(0.8)
            assert session is not None and session.conn is None  # dropped for silence, session detached
            assert (await other.hello(99, token=b"")).type == MsgType.HELLO_REPLY  # nobody holds the agent now
        finally:
            other.close()


# --- item 3: no frame freezes the agent ----------------------------------------------------------


@pytest.mark.parametrize("op", [Poll(0x08, 0xFF, 0x55, 0xFFFFFFFF, 1), Settle(0xFFFFFFFF)], ids=["poll", "settle"])
async def test_ops_longer_than_the_advertised_limit_are_refused_before_running(op):
    async with open_backend("sim") as io:
        rec = RecordingBackend(io)
        core = AgentCore(rec, AllowList.default(WHOLE_MEMORY))
        await core.handle(Frame(MsgType.HELLO, 0, Hello(1).encode()))
        info = core.hello_reply()
        assert Feature.LIMITS in info.features and info.max_op_us == 10_000_000
        program = [Out(0x81, 1), op]
        wire = await core.handle(Frame(MsgType.EXEC, 0, encode_program(program)))
        reply = ExecReply.decode(next(iter(FrameReader().feed(wire))).payload, program)
        assert reply.status == Status.TOO_LARGE and reply.index == 1 and "max_op_us" in reply.reason
        many = [Poll(0x08, 0xFF, 0x55, 2000, 1)] * 250 + [Settle(5_000_000)] * 6  # 0.5 s + 30 s
        wire = await core.handle(Frame(MsgType.EXEC, 1, encode_program(many)))
        reply = ExecReply.decode(next(iter(FrameReader().feed(wire))).payload, many)
        assert reply.status == Status.TOO_LARGE and "max_program_us" in reply.reason
        assert rec.trace == []


async def test_the_host_refuses_what_the_agents_limits_refuse_without_sending():
    async with tcp_agent() as (address, _, _), open_backend(f"agent+{address}") as be:
        sent = be.stats.frames_sent
        with pytest.raises(AgentRefusedError, match=r"TOO_LARGE.*per op"):
            await be.execute([Poll(0x08, 0xFF, 0x55, 0xFFFFFFFF, 1)])
        with pytest.raises(AgentRefusedError, match=r"TOO_LARGE.*per program"):
            await be.execute([Settle(9e6)] * 4)
        assert be.stats.frames_sent == sent
        await be.settle()  # settle() without a timeout fits the limit


class SlowIO(RecordingBackend):
    """An I/O backend whose programs keep the CPU busy (a simulator in a long program)."""

    async def execute(self, ops):
        time.sleep(0.6)  # noqa: ASYNC251 - blocking on purpose: what a CPU-bound simulator does
        return await super().execute(ops)


async def test_a_long_program_does_not_stop_the_agent_answering():
    async with open_backend("sim") as io:
        core = AgentCore(SlowIO(io), AllowList.default(WHOLE_MEMORY))
        listener = await start(core, "tcp://127.0.0.1:0")
        try:
            async with open_backend(f"agent+{listener.address}?timeout=3") as be:
                running = asyncio.create_task(be.outb(0x81, 1))
                await asyncio.sleep(0.1)
                other = await Raw.connect(listener.address)
                t0 = time.monotonic()
                try:
                    assert error_status(await other.hello(5, token=b"")) == Status.BUSY
                finally:
                    other.close()
                assert time.monotonic() - t0 < 0.3  # answered while the program runs
                await running
        finally:
            listener.close()
            await core.aclose()


# --- item 4: frames beyond max_payload ------------------------------------------------------------


async def test_a_program_larger_than_the_advertised_max_payload_is_refused():
    async with open_backend("sim") as io:
        rec = RecordingBackend(io)
        core = AgentCore(rec, AllowList.default(WHOLE_MEMORY))
        await core.handle(Frame(MsgType.HELLO, 0, Hello(1).encode()))
        program = [MemWrite(0x30000, bytes([0xAA]) * 6000)]  # 6,007 bytes, 4,096 advertised
        wire = await core.handle(Frame(MsgType.EXEC, 0, encode_program(program)))
        reply = ExecReply.decode(next(iter(FrameReader().feed(wire))).payload, program)
        assert reply.status == Status.TOO_LARGE and "6007-byte" in reply.reason
        assert rec.trace == [] and await io.read_mem(0x30000, 1) == b"\x00"


# --- item 11: IO_ERROR names the agent's reason ---------------------------------------------------


async def test_io_error_of_a_reading_program_shows_the_agents_reason():
    """An I/O backend whose bus fails at the second op of a program, after every check passed:
    the agent answers IO_ERROR with the bus's own words."""
    seen = []

    def bus(op):
        seen.append(op)
        if isinstance(op, MemRead):
            raise HilError("the LPC bus hung")
        return 0x5A

    async with MockBackend(bus) as io:
        core = AgentCore(io, AllowList.default(WHOLE_MEMORY))
        listener = await start(core, "tcp://127.0.0.1:0")
        try:
            async with open_backend(f"agent+{listener.address}") as be:
                with pytest.raises(AgentRefusedError, match="IO_ERROR: the LPC bus hung") as err:
                    await be.execute([In(0x08), MemRead(0x30000, 4), In(0x08)])
                assert err.value.status is Status.IO_ERROR
                assert seen == [In(0x08), MemRead(0x30000, 4)]  # the third op never reached the bus
        finally:
            listener.close()
            await core.aclose()


async def test_a_device_op_on_an_empty_channel_is_refused_before_running():
    """The I/O backend's own refusals are decided before any op runs, as refusals (the sim's
    check: no device attached), not as an I/O error part-way through."""
    async with tcp_agent() as (address, _, rec), open_backend(f"agent+{address}") as be:
        with pytest.raises(AgentRefusedError, match="UNSUPPORTED: no device attached to channel 2"):
            await be.execute([Out(0x81, 0x12), MemRead(0x30000, 4), DevState(2, 16)])
        assert not [e for e in rec.trace if isinstance(e.op, Out)]


# --- item 16: huge reads are refused from the window, before planning ----------------------------


@pytest.mark.parametrize("length", [10**9, 10**12])
async def test_huge_reads_are_refused_at_once_from_the_advertised_window(length):
    async with open_backend("sim:?mem=1M") as io:
        listener = await start(AgentCore(io, AllowList.default([range(0x10000, 0x90000)])), "tcp://127.0.0.1:0")
        try:
            async with open_backend(f"agent+{listener.address}") as be:
                sent = be.stats.frames_sent
                t0 = time.monotonic()
                with pytest.raises(AgentAccessDenied, match=r"MEM_DENIED.*outside the agent's memory window"):
                    await be.read_mem(0x10000, length)
                assert time.monotonic() - t0 < 0.25 and be.stats.frames_sent == sent
        finally:
            listener.close()


def test_refusals_and_io_errors_decode_to_the_agents_reason():
    """A refusal naming op 1 of a reading program ran nothing and carries no results; an IO_ERROR
    naming op 1 carries op 0's result. Neither decodes as "malformed reply: truncated"."""
    ops = [In(0x08), In(0x3F0)]
    denied = ExecReply.decode(ExecReply(Status.PORT_DENIED, 1, "port 0x3F0").encode(ops), ops)
    assert (denied.status, denied.index, denied.reason, denied.results) == (Status.PORT_DENIED, 1, "port 0x3F0", [])
    failed = ExecReply.decode(ExecReply(Status.IO_ERROR, 1, "bus fault", [0x04]).encode(ops), ops)
    assert (failed.reason, failed.results) == ("bus fault", [0x04])
    whole = ExecReply.decode(ExecReply(Status.IO_ERROR, 0xFFFF, "lost").encode(ops), ops)
    assert (whole.reason, whole.results) == ("lost", [])


async def test_a_refusal_after_a_reading_op_shows_the_agents_reason():
    async with tcp_agent() as (address, _, _), open_backend(f"agent+{address}") as be:
        be.agent = HelloReply(**{**be.agent.__dict__, "ports": ((0, 0xFFFF),)})  # the host does not pre-check
        with pytest.raises(AgentAccessDenied, match="at op 1: PORT_DENIED: read of port 0x03F0"):
            await be.execute([In(0x08), In(0x3F0)])
