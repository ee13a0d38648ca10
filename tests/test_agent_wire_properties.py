"""The agent link's fast paths against the general ones (issue 16), on seeded random programs:
programs through an agent on a loopback link (TCP, whose bytes go straight to the router, and
pyserial's socket:// link, read by a reader task) must return what the same programs return run
directly on a simulator, with the same IRQ lines after each; the one timer for all round trips
must expire each at its own deadline; a reply written by its layout must be the reply written op
by op."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence

import pytest
from hypothesis import given, settings, strategies as st

from hil.agent import cobs_fallback, protocol
from hil.agent.client import AgentBackend
from hil.agent.protocol import ExecReply, ReplyLayout, Status, replying_wires
from hil.agent.server import AgentCore, start
from hil.allowlist import AllowList
from hil.backends import open_backend
from hil.backends.base import DEVICE_PORTS, Backend, Capability
from hil.errors import AccessDeniedError, HilError, ProtocolError
from hil.ops import (
    IRQ_LINES,
    Delay,
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
    WaitIrq,
)

SIM = "sim:?floppy=generate"
MEMORY = range(0, 1 << 24)
#: 8237 registers of both controllers, page registers, and the floppy controller's DOR (a reset
#: through it raises IRQ 6: docs/reference/devices.md §2.1), MSR and data register
OUT_PORTS = [*range(0x00, 0x10), *range(0x81, 0x90), *range(0xC0, 0xE0, 2), 0x3F5]
IN_PORTS = [*range(0x00, 0x10), 0x81, 0x82, 0x87, 0x89, *range(0xC0, 0xE0, 2), 0x3F4, 0x3F5]


def _op(rng: random.Random) -> Op:
    pick = rng.random()
    if pick < 0.08:  # the floppy controller's DOR: 0x00 holds it in reset, 0x0C/0x1C let it out (IRQ 6)
        return Out(0x3F2, rng.choice([0x00, 0x0C, 0x1C]))
    if pick < 0.35:
        port = rng.choice(OUT_PORTS)
        value = 0x08 if port == 0x3F5 else rng.randrange(256)  # 0x08: SENSE INTERRUPT STATUS
        return Out(port, value)
    if pick < 0.65:
        return In(rng.choice(IN_PORTS))
    if pick < 0.72:
        data = bytes(rng.choice([0, 0, 1, 0xFF, rng.randrange(256)]) for _ in range(rng.randrange(1, 48)))
        return MemWrite(rng.randrange(0x1000, 0x9000), data)
    if pick < 0.79:
        return MemRead(rng.randrange(0x1000, 0x9000), rng.randrange(1, 64))
    if pick < 0.82:
        return MemFill(rng.randrange(0x1000, 0x9000), rng.randrange(1, 64), rng.randrange(256))
    if pick < 0.90:
        return IrqState()
    if pick < 0.93:
        return Delay(rng.randrange(0, 50))  # a program that waits runs on the agent's I/O thread
    if pick < 0.95:
        return Poll(0x08, 0x01, 0x01, rng.randrange(0, 100), 10)
    if pick < 0.97:
        return WaitIrq(6, rng.random() < 0.5, rng.randrange(0, 200))
    return PowerReset()


def _program(rng: random.Random) -> list[Op]:
    ops = [_op(rng) for _ in range(rng.randrange(0, 12))]
    if rng.random() < 0.05:
        ops.insert(rng.randrange(len(ops) + 1), In(0x3F8))  # outside the allow-list: refused whole
    if rng.random() < 0.03:
        ops.append(MemRead((1 << 24) - 8, 16))  # past the memory: refused whole
    return ops


def _programs(seed: int, n: int) -> list[Sequence[Op]]:
    """Fresh programs, repeats of earlier ones (the same object and equal copies, as a driver
    sends them: the remembered programs at both ends) and tuples (the base check skipped)."""
    rng = random.Random(seed)
    out: list[Sequence[Op]] = []
    for _ in range(n):
        roll = rng.random()
        if out and roll < 0.3:
            out.append(rng.choice(out))
        elif out and roll < 0.5:
            out.append(list(rng.choice(out)))
        elif roll < 0.6:
            out.append(tuple(_program(rng)))
        else:
            out.append(_program(rng))
    return out


def _outcome(result: object) -> object:
    return result if not isinstance(result, BaseException) else type(result).__name__


async def _run(be: Backend, ops: Sequence[Op], allow: AllowList | None) -> object:
    try:
        if allow is not None:
            allow.check(list(ops))  # the agent's allow-list, for the simulator run directly
        return await be.execute(ops)
    except (HilError, AccessDeniedError) as e:
        return e


def _lines(be: Backend) -> IrqLines:
    return IrqLines(sum(be.irq_level(n) << n for n in range(IRQ_LINES)),
                    tuple(be.irq_count(n) for n in range(IRQ_LINES)))


async def _agent_and_direct(link: str, seed: int, n: int) -> tuple[int, int, int]:
    """Run the programs both ways; return (programs compared, refused, ones where IRQ 6 rose)."""
    async with open_backend(SIM) as io, open_backend(SIM) as direct:
        allow = AllowList.default([MEMORY]).with_ports([DEVICE_PORTS[Capability.FDC]])
        listener = await start(AgentCore(io, allow), "tcp://127.0.0.1:0")
        port = listener.address.rsplit(":", 1)[1]
        url = f"agent+tcp://127.0.0.1:{port}" if link == "tcp" else f"agent+socket://127.0.0.1:{port}"
        compared = refused = rose = 0
        try:
            async with open_backend(url) as be:
                assert isinstance(be, AgentBackend)
                for i, ops in enumerate(_programs(seed, n)):
                    before = direct.irq_count(6)
                    want = await _run(direct, ops, allow)
                    got = await _run(be, ops, None)
                    assert _outcome(got) == _outcome(want), (i, ops, got, want)
                    assert _lines(be) == _lines(direct), (i, ops)
                    assert be.capabilities == be._make_capabilities()  # the cached ones are current
                    compared += 1
                    refused += isinstance(want, BaseException)
                    rose += direct.irq_count(6) > before
        finally:
            listener.close()
    return compared, refused, rose


async def test_random_programs_through_an_agent_over_tcp_equal_the_simulator_run_directly():
    compared, refused, rose = await _agent_and_direct("tcp", 1, 300)
    assert compared == 300 and refused > 5 and rose > 5  # refusals and IRQ edges were drawn


async def test_random_programs_over_a_link_read_by_a_reader_task_equal_them_too():
    compared, refused, rose = await _agent_and_direct("socket", 2, 150)
    assert compared == 150 and refused > 2 and rose > 2


async def test_one_timer_expires_every_round_trip_at_its_own_deadline_and_no_answered_one():
    """The round trips' shared timer (AgentBackend._arm) against a timer per round trip."""
    loop = asyncio.get_running_loop()
    for seed in range(5):
        rng = random.Random(seed)
        be = AgentBackend("agent+x", "x")
        woke: dict[int, float] = {}
        futures = []
        t0 = loop.time()
        for i in range(30):
            fut = loop.create_future()
            fut.add_done_callback(lambda f, i=i: woke.setdefault(i, loop.time()))
            deadline = t0 + rng.uniform(0.0, 0.08)
            be._arm(fut, ("exec", i), deadline)
            futures.append((fut, deadline, rng.random() < 0.4))
            if rng.random() < 0.3:
                await asyncio.sleep(rng.uniform(0, 0.01))
        for fut, _, answer in futures:  # answered before any deadline could pass unseen
            if answer and not fut.done():
                be._deadlines.pop(fut, None)
                fut.set_result(None)
        await asyncio.sleep(0.12)
        for i, (fut, deadline, answer) in enumerate(futures):
            assert fut.done(), (seed, i)
            if not answer or fut.result() is not None:  # expired: not before its own deadline
                assert woke[i] >= deadline - 1e-6, (seed, i, woke[i] - deadline)
        assert not be._deadlines and be._tick is None


def test_a_reply_written_by_its_layout_is_the_reply_written_op_by_op():
    rng = random.Random(9)
    pool: list[Op] = [In(0x08), In(0x81, 16), Poll(0x08, 0x01, 0x01, 1000, 10), IrqState(), WaitIrq(6, True, 100),
                      Out(0x0A, 5), Delay(3)]
    for _ in range(3000):
        ops = [rng.choice(pool) for _ in range(rng.randrange(0, 14))]
        replying = replying_wires(ops)
        layout = ReplyLayout.of_replying(replying)
        assert layout is not None
        results: list[object] = []
        met: list[bool] = []
        for op, _ in replying:
            match op:
                case In(width=8):
                    results.append(rng.randrange(1 << 8))
                case In():
                    results.append(rng.randrange(1 << 16))
                case Poll():
                    results.append(rng.randrange(1 << 8))
                    met.append(rng.random() < 0.5)
                case _:
                    results.append(IrqLines(rng.randrange(1 << 16), tuple(rng.randrange(1 << 20) for _ in range(IRQ_LINES))))
        general = ExecReply(Status.OK, 0xFFFF, "", list(results), list(met)).encode(ops, replying)  # type: ignore[arg-type]  # results drawn per op
        assert layout.encode(results, met) == general  # type: ignore[arg-type]  # as above
        assert ExecReply.decode(general, ops, layout) == ExecReply.decode(general, ops)


def _cobs_data(rng: random.Random) -> bytes:
    """Frames as they come: zero runs (cleared memory, IRQ counts), long runs without a zero
    (past a 254-byte block), single zeros, random bytes."""
    parts = []
    for _ in range(rng.randrange(0, 8)):
        kind = rng.random()
        if kind < 0.3:
            parts.append(bytes(rng.randrange(1, 300)))
        elif kind < 0.5:
            parts.append(bytes(rng.randrange(1, 256) for _ in range(rng.randrange(200, 600))))
        elif kind < 0.7:
            parts.append(bytes(rng.choice([0, 0, 1, 0xFF, rng.randrange(256)]) for _ in range(rng.randrange(1, 80))))
        else:
            parts.append(rng.randbytes(rng.randrange(0, 100)))
    return b"".join(parts)


def reference_encode(data: bytes) -> bytes:
    """docs/agent-protocol.md §1 byte by byte: a block of up to 254 non-zero bytes as its length
    + 1 and the bytes; a full block (0xFF) implies no zero; the final block always written."""
    out, block = bytearray(), bytearray()
    for byte in data:
        if byte == 0:
            out += bytes([len(block) + 1]) + block
            block.clear()
            continue
        block.append(byte)
        if len(block) == 254:
            out += b"\xff" + block
            block.clear()
    return bytes(out + bytes([len(block) + 1]) + block)


def reference_decode(wire: bytes) -> bytes | str:
    """The decoded bytes, or which of §1's two faults the frame has."""
    if 0 in wire:  # anywhere: the delimiter never occurs inside a frame
        return "zero"
    out, i = bytearray(), 0
    while i < len(wire):
        code = wire[i]
        if i + code > len(wire):
            return "overrun"
        out += wire[i + 1 : i + code]
        i += code
        if code != 0xFF and i < len(wire):
            out.append(0)
    return bytes(out)


@pytest.fixture(params=["extension", "fallback"])
def codec(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The protocol's codec with the C extension (as installed here) and with hil's own
    fallback (an install without a C compiler): both must give §1's bytes and refusals."""
    if request.param == "fallback":
        monkeypatch.setattr(protocol, "cobs_encode", cobs_fallback.encode)
        monkeypatch.setattr(protocol, "_decode", cobs_fallback.decode)
    else:
        assert protocol._cobs is not None, "the cobs package's C extension is not built here"
    return str(request.param)


def _decoded(wire: bytes) -> bytes | str:
    try:
        return protocol.cobs_decode(wire)
    except ProtocolError as e:
        assert e.status is Status.BAD_FRAME
        return "zero" if "zero byte" in str(e) else "overrun"


def test_the_cobs_codec_gives_the_protocols_bytes_and_refusals(codec: str) -> None:
    """The C codec and its two adjustments (§1's final code after a full block, the protocol's
    errors) against the byte-by-byte reference, damaged frames included."""
    rng = random.Random(13)
    full = bytes(range(1, 255))
    vectors = [b"", b"\x00", b"\x00\x00", b"\x11\x22\x00\x33", full, full * 2, b"\x00" + full, full + b"\x00",
               full + b"\x01", bytes(range(1, 256)) * 3]
    for n in range(3000):
        data = vectors[n] if n < len(vectors) else _cobs_data(rng)
        wire = protocol.cobs_encode(data)
        assert wire == reference_encode(data)
        assert protocol.cobs_decode(wire) == data
        if data.endswith(full):  # a peer that leaves the final code out is understood too
            assert protocol.cobs_decode(wire[:-1]) == data
        damaged = bytearray(wire)  # a damaged frame: the same bytes or the same refusal
        for _ in range(rng.randrange(1, 4)):
            if damaged:
                damaged[rng.randrange(len(damaged))] = rng.choice([0, 1, 2, 0xFF, rng.randrange(256)])
        if rng.random() < 0.3:
            damaged = damaged[: rng.randrange(len(damaged) + 1)]
        assert _decoded(bytes(damaged)) == reference_decode(bytes(damaged))


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(st.just(b"\x00"), st.binary(max_size=300), st.just(b"\x00" * 40),
                          st.binary(min_size=250, max_size=600).map(lambda b: b.replace(b"\x00", b"\x07"))),
                max_size=12).map(b"".join))
def test_cobs_matches_the_reference_on_any_bytes(data: bytes) -> None:
    for encode in (protocol.cobs_encode, cobs_fallback.encode):
        assert encode(data) == reference_encode(data)
        assert protocol.cobs_decode(encode(data)) == data == cobs_fallback.decode(encode(data))
