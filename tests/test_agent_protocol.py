"""The agent wire protocol: the worked examples of docs/agent-protocol.md, byte for byte;
COBS/CRC framing and resynchronisation; program codec; a fuzz of the agent's frame parser."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from hil.agent.protocol import (
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
    cobs_decode,
    cobs_encode,
    crc32,
    decode_frame,
    decode_program,
    encode_program,
)
from hil.agent.server import AgentCore
from hil.allowlist import AllowList
from hil.backends import open_backend
from hil.ops import Delay, In, IrqLines, IrqState, MemFill, MemRead, MemWrite, Out, Poll, WaitIrq

DOC = (Path(__file__).resolve().parent.parent / "docs" / "agent-protocol.md").read_text(encoding="utf-8")
EXAMPLES = {m.group(1): bytes.fromhex(m.group(2)) for m in re.finditer(r"```hex example=(\w+)\n(.*?)```", DOC, re.S)}

FLOPPY = [Out(0x0A, 6), Out(0x0C, 0), Out(0x0B, 0x46), Out(0x81, 0x12), Out(0x04, 0), Out(0x04, 0x34),
          Out(0x05, 0xFF), Out(0x05, 0x23), Out(0x0A, 2)]
READ = [In(0x08), MemRead(0x12340, 4)]
WAIT_6 = WaitIrq(6, True, 500_000)
WAIT = [Out(0x3F5, 0x0F), WAIT_6, IrqState()]
IRQ6 = IrqLines(1 << 6, tuple(1 if n == 6 else 0 for n in range(16)))
REPLY_INFO = HelloReply(0xCAFEF00D, "hil-agent", "0.1.0", 4096, 8, 4096, Feature.POLL | Feature.MEM_FILL | Feature.SETTLE,
                        ((0x00, 0x1F), (0x80, 0x8F), (0xC0, 0xDF)), ((0x10000, 0x8FFFF),))

REPLY_WITH_INFO = HelloReply(0xCAFEF00D, "hil-agent", "0.1.0", 4096, 8, 4096, Feature(0x7F), REPLY_INFO.ports,
                             REPLY_INFO.memory, (("io", "sim"), ("profile", "qemu")))

REPLY_LIMITS = HelloReply(0xCAFEF00D, "hil-agent", "0.1.0", 4096, 8, 4096,
                          REPLY_INFO.features | Feature.LIMITS | Feature.SESSION_SECRET, REPLY_INFO.ports,
                          REPLY_INFO.memory, (), 10_000_000, 30_000_000, bytes(range(0xA0, 0xB0)))

EXPECTED = {
    "hello": Frame(MsgType.HELLO, 0, Hello(0x11223344, 4096, b"", "hil").encode()),
    "hello_keep": Frame(MsgType.HELLO, 0, Hello(0x11223344, 4096, b"", "hil", HelloFlag.KEEP).encode()),
    "hello_reply": Frame(MsgType.HELLO_REPLY, 0, REPLY_INFO.encode()),
    "hello_resume": Frame(MsgType.HELLO, 0, Hello(0x11223344, 4096, b"", "hil", HelloFlag.RESUME,
                                                   bytes(range(16))).encode()),
    "hello_reply_limits": Frame(MsgType.HELLO_REPLY, 0, REPLY_LIMITS.encode()),
    "hello_reply_info": Frame(MsgType.HELLO_REPLY, 0, REPLY_WITH_INFO.encode()),
    "exec_floppy": Frame(MsgType.EXEC, 0, encode_program(FLOPPY)),
    "exec_floppy_reply": Frame(MsgType.EXEC_REPLY, 0, ExecReply().encode(FLOPPY)),
    "exec_read": Frame(MsgType.EXEC, 1, encode_program(READ)),
    "exec_read_reply": Frame(MsgType.EXEC_REPLY, 1, ExecReply(results=[0x04, b"\xde\xad\xbe\xef"]).encode(READ)),
    "exec_wait_irq": Frame(MsgType.EXEC, 3, encode_program(WAIT)),
    "exec_wait_irq_reply": Frame(MsgType.EXEC_REPLY, 3, ExecReply(results=[IRQ6, IRQ6]).encode(WAIT)),
    "denied": Frame(MsgType.EXEC_REPLY, 2, ExecReply(Status.PORT_DENIED, 0, "port 0x3F0").encode([In(0x3F0)])),
    "error_no_session": Frame(MsgType.ERROR, 5, ErrorReply(Status.NO_SESSION, "no session").encode()),
}


def test_every_documented_example_is_checked():
    assert set(EXAMPLES) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_documented_example_bytes(name):
    """docs/agent-protocol.md §8: encoding gives exactly the documented bytes, and they decode back."""
    wire = EXAMPLES[name]
    assert EXPECTED[name].encode() == wire
    assert decode_frame(wire[:-1]) == EXPECTED[name]


def test_documented_messages_decode_to_their_meaning():
    assert Hello.decode(decode_frame(EXAMPLES["hello"][:-1]).payload) == Hello(0x11223344, 4096, b"", "hil")
    assert Hello.decode(decode_frame(EXAMPLES["hello_keep"][:-1]).payload).flags == HelloFlag.KEEP
    info = HelloReply.decode(decode_frame(EXAMPLES["hello_reply_info"][:-1]).payload)
    assert info == REPLY_WITH_INFO and Feature.SESSION_RESET in info.features and info.info_value("io") == "sim"
    assert HelloReply.decode(decode_frame(EXAMPLES["hello_reply"][:-1]).payload) == REPLY_INFO
    assert decode_program(decode_frame(EXAMPLES["exec_floppy"][:-1]).payload) == FLOPPY
    reply = ExecReply.decode(decode_frame(EXAMPLES["exec_read_reply"][:-1]).payload, READ)
    assert reply.status == Status.OK and reply.results == [0x04, b"\xde\xad\xbe\xef"]
    assert decode_program(decode_frame(EXAMPLES["exec_wait_irq"][:-1]).payload) == WAIT
    waited = ExecReply.decode(decode_frame(EXAMPLES["exec_wait_irq_reply"][:-1]).payload, WAIT)
    assert waited.results == [IRQ6, IRQ6] and WAIT_6.reached(IRQ6) and IRQ6.count(6) == 1
    err = ErrorReply.decode(decode_frame(EXAMPLES["error_no_session"][:-1]).payload)
    assert err == ErrorReply(Status.NO_SESSION, "no session")


def test_crc_is_crc32_iso_hdlc():
    """§1: the standard check value."""
    assert crc32(b"123456789") == 0xCBF43926


@given(st.binary(max_size=700))
def test_cobs_round_trip_has_no_zero(data):
    enc = cobs_encode(data)
    assert 0 not in enc
    assert cobs_decode(enc) == data
    assert len(enc) <= len(data) + len(data) // 254 + 1


def test_cobs_254_byte_block():
    data = bytes(range(1, 255))  # exactly 254 non-zero bytes: one 0xFF block, no implied zero
    assert cobs_encode(data) == b"\xff" + data + b"\x01"
    assert cobs_decode(cobs_encode(data + b"\x00")) == data + b"\x00"


def test_reader_resynchronises_after_garbage_truncation_and_corruption():
    good = EXPECTED["exec_read"].encode()
    corrupt = bytearray(good)
    corrupt[5] ^= 0x40
    stream = b"\x13\x37garbage\x00" + good[:7] + b"\x00" + bytes(corrupt) + good + b"\x00\x00" + good
    reader = FrameReader()
    frames = list(reader.feed(stream))
    assert frames == [EXPECTED["exec_read"], EXPECTED["exec_read"]]
    assert reader.bad_frames == 3


def test_reader_drops_oversized_runs():
    reader = FrameReader(max_payload=64)
    assert list(reader.feed(b"\x01" * 5000)) == []
    assert reader.discarded > 0
    assert list(reader.feed(b"\x00" + EXPECTED["hello"].encode())) == [EXPECTED["hello"]]


def test_length_field_must_match():
    body = bytearray(cobs_decode(EXAMPLES["hello"][:-1]))
    body[4] += 1  # length field
    body[-4:] = crc32(bytes(body[:-4])).to_bytes(4, "little")
    with pytest.raises(ProtocolError, match="length field") as err:
        decode_frame(cobs_encode(bytes(body)))
    assert err.value.status is Status.BAD_FRAME and not isinstance(err.value, ValueError)


ops_strategy = st.lists(
    st.one_of(
        st.builds(Out, st.integers(0, 0xFFFE), st.integers(0, 0xFF), st.just(8)),
        st.builds(Out, st.integers(0, 0xFFFE), st.integers(0, 0xFFFF), st.just(16)),
        st.builds(In, st.integers(0, 0xFFFE), st.sampled_from([8, 16])),
        st.builds(MemWrite, st.integers(0, 0xFFFFFF), st.binary(max_size=40)),
        st.builds(MemRead, st.integers(0, 0xFFFFFF), st.integers(0, 300)),
        st.builds(MemFill, st.integers(0, 0xFFFFFF), st.integers(0, 1 << 20), st.integers(0, 255)),
        st.builds(Delay, st.integers(0, 10**6)),
        st.builds(Poll, st.integers(0, 0xFF), st.integers(0, 0xFF), st.integers(0, 0xFF), st.integers(0, 10**6),
                  st.integers(1, 1000)),
    ),
    max_size=30,
)


@given(ops_strategy)
def test_program_codec_round_trip(ops):
    assert decode_program(encode_program(ops)) == ops


def test_bad_programs_name_the_op():
    with pytest.raises(ProtocolError) as info:
        decode_program(encode_program([Out(0x0A, 6)]) + b"\x77")
    assert info.value.status == Status.BAD_OP and info.value.index == 1
    with pytest.raises(ProtocolError) as info:
        decode_program(encode_program([Out(0x0A, 6)])[:-1])
    assert info.value.index == 0


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=12))
async def test_fuzz_agent_parser_never_fails(chunks):
    """§1: random bytes (and random well-framed payloads) never crash or wedge the agent."""
    async with open_backend("sim") as io:
        core = AgentCore(io, AllowList.default([range(0x10000, 0x20000)]))
        reader = FrameReader()
        for i, chunk in enumerate(chunks):
            for frame in reader.feed(chunk + (b"\x00" if i % 3 == 0 else b"")):
                await core.handle(frame)
            # a well-framed frame with a random payload must get exactly one reply, never raise
            reply = await core.handle(Frame(MsgType.EXEC if i % 2 else MsgType.HELLO, i, chunk))
            assert reply is None or reply.endswith(b"\x00")
        hello = await core.handle(Frame(MsgType.HELLO, 100, Hello(7).encode()))
        assert decode_frame(hello[:-1]).type == MsgType.HELLO_REPLY  # still serving after the garbage
        ok = await core.handle(Frame(MsgType.EXEC, 100, encode_program([In(0x08)])))
        assert ExecReply.decode(decode_frame(ok[:-1]).payload, [In(0x08)]).status == Status.OK


def test_resync_does_not_depend_on_read_chunking():
    """Issue 11 item 10: garbage longer than a frame can be, then a frame, in one read or two."""
    good = Frame(MsgType.EXEC, 3, encode_program([In(0x08)])).encode()
    for chunks in ([b"\x01" * 9000 + good], [b"\x01" * 9000, good], [b"\x01" * 4000, b"\x01" * 5000 + good[:5], good[5:]],
                   [b"\x05\x01\x02junk" + good]):
        reader = FrameReader(4096)
        got = [f for c in chunks for f in reader.feed(c)]
        assert got == [decode_frame(good[:-1])], chunks[0][:8]


def test_limits_and_secret_ride_on_their_feature_bits_after_the_info_block():
    limits = HelloReply.decode(decode_frame(EXAMPLES["hello_reply_limits"][:-1]).payload)
    assert (limits.max_op_us, limits.max_program_us, limits.secret) == (10_000_000, 30_000_000, bytes(range(0xA0, 0xB0)))
    both = HelloReply(**{**REPLY_WITH_INFO.__dict__, "features": REPLY_WITH_INFO.features | Feature.LIMITS,
                         "max_op_us": 5, "max_program_us": 6})
    assert HelloReply.decode(both.encode()) == both and both.encode().endswith(b"qemu\x05\x00\x00\x00\x06\x00\x00\x00")
    assert HelloReply.decode(REPLY_INFO.encode()).max_op_us == 0  # an agent without LIMITS: none known
    resume = Hello.decode(decode_frame(EXAMPLES["hello_resume"][:-1]).payload)
    assert resume.flags == HelloFlag.RESUME and resume.secret == bytes(range(16))
    with pytest.raises(ProtocolError, match="16-byte"):
        Hello(1, flags=HelloFlag.RESUME, secret=b"short").encode()
