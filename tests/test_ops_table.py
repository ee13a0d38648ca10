"""The op table (hil/ops.py): it covers exactly the ``Op`` union, and the codec and every size
the agent client plans with are derived from it, so they agree for random programs of every op.

The byte layouts themselves are pinned by tests/test_agent_protocol.py and docs/agent-protocol.md;
here the property is self-consistency: planned request and reply sizes equal the encoded ones,
``decode(encode(p)) == p``, and frames are planned as full as the limits allow.
"""

from __future__ import annotations

import ast
import dataclasses
import itertools
import typing
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import hil.backends.ops as compat_ops
from hil import ops
from hil.agent import client as agent_client
from hil.agent.protocol import (
    REPLY_HEADER,
    ExecReply,
    Limits,
    ProtocolError,
    Status,
    decode_program,
    encode_program,
    reply_size,
)
from hil.errors import InvalidAccessError
from hil.ops import (
    ALL_OPS,
    TABLE,
    Delay,
    DevAppend,
    DevAttach,
    DevDreq,
    DeviceState,
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
    table_gaps,
)

ROOT = Path(__file__).resolve().parent.parent
PROPS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

u8, u16, u32 = st.integers(0, 0xFF), st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF)
widths = st.sampled_from([8, 16])
channels = st.integers(0, 7)
small_data = st.binary(max_size=40)
#: u32 addresses, with room above for what a frame split adds (an agent's window is far below this)
addrs = st.integers(0, 0xFFFF0000)


@st.composite
def _out(draw: st.DrawFn) -> Out:
    width = draw(widths)
    return Out(draw(st.integers(0, 0xFFFE)), draw(st.integers(0, (1 << width) - 1)), width)


@st.composite
def _poll(draw: st.DrawFn) -> Poll:
    width = draw(widths)
    value = st.integers(0, (1 << width) - 1)
    # durations in whole microseconds: the wire carries u32 µs (docs/agent-protocol.md)
    return Poll(draw(st.integers(0, 0xFFFE)), draw(value), draw(value), draw(u32), draw(st.integers(1, 0xFFFFFFFF)),
                width)


#: one strategy per op class: a new op without one fails test_every_op_has_a_strategy
STRATEGIES: dict[type, st.SearchStrategy[Op]] = {
    Out: _out(),
    In: st.builds(In, st.integers(0, 0xFFFE), widths),
    MemWrite: st.builds(MemWrite, addrs, small_data),
    MemRead: st.builds(MemRead, addrs, st.integers(0, 300)),
    MemFill: st.builds(MemFill, addrs, u32, u8),
    Delay: st.builds(Delay, u32),
    Poll: _poll(),
    Settle: st.builds(Settle, u32),
    DevAttach: st.builds(DevAttach, channels, st.sampled_from(["source", "sink"]), small_data, st.booleans(),
                         st.none() | st.integers(0, 0xFFFFFFFE)),
    DevAppend: st.builds(DevAppend, u8, small_data),
    DevDreq: st.builds(DevDreq, u8, st.booleans()),
    DevState: st.builds(DevState, u8, st.integers(0, 100)),
    PowerReset: st.just(PowerReset()),
    IrqState: st.just(IrqState()),
    WaitIrq: st.builds(WaitIrq, st.integers(0, 15), st.booleans(), u32),
}


@st.composite
def programs(draw: st.DrawFn) -> list[Op]:
    """Every op kind at least once, plus random others, in random order."""
    ops_ = [draw(STRATEGIES[cls]) for cls in ALL_OPS]
    ops_ += draw(st.lists(st.one_of(*STRATEGIES.values()), max_size=30))
    return list(draw(st.permutations(ops_)))


@st.composite
def result_for(draw: st.DrawFn, op: Op) -> tuple[object, bool] | None:
    """A result the op could have produced (None: it reads nothing), and a poll's met flag."""
    match op:
        case In(width=width):
            return draw(st.integers(0, (1 << width) - 1)), False
        case MemRead(length=n):
            return draw(st.binary(min_size=n, max_size=n)), False
        case Poll(width=width):
            return draw(st.integers(0, (1 << width) - 1)), draw(st.booleans())
        case DevState(max_bytes=n):
            kind = draw(st.sampled_from(["none", "source", "sink"]))
            digest = "sha256:" + draw(st.binary(min_size=32, max_size=32)).hex() if kind == "sink" else ""
            state = DeviceState(kind, draw(u32), draw(u32), draw(u32), draw(u32), digest,
                                draw(st.binary(min_size=n, max_size=n)))  # a full head: the planned size
            return state, False
        case IrqState() | WaitIrq():  # counts as the wire carries them: modulo 65536
            return IrqLines(draw(u16), tuple(draw(st.lists(u16, min_size=16, max_size=16)))), False
    return None


#: one fixed op per class, the largest wire forms where there are two
EXAMPLES: dict[type, Op] = {
    Out: Out(0xC0, 0x1234, 16), In: In(0x08), MemWrite: MemWrite(0x1000, b"abc"), MemRead: MemRead(0x2000, 5),
    MemFill: MemFill(0x3000, 64, 0xAA), Delay: Delay(100), Poll: Poll(0x08, 0x0F, 0x01, 5000, 10, 8),
    Settle: Settle(), DevAttach: DevAttach(2, "sink", b"", True, 512), DevAppend: DevAppend(1, b"xyz"),
    DevDreq: DevDreq(1, True), DevState: DevState(2, 16), PowerReset: PowerReset(),
    IrqState: IrqState(), WaitIrq: WaitIrq(6, True, 500_000),
}


def test_table_covers_exactly_the_op_union() -> None:
    assert set(TABLE) == set(typing.get_args(Op))
    assert ALL_OPS == typing.get_args(Op)
    assert table_gaps() == (set(), set())


def test_a_new_op_missing_from_the_table_is_caught() -> None:
    @dataclasses.dataclass(frozen=True)
    class Reboot:
        pass

    missing, extra = table_gaps(Op | Reboot)
    assert missing == {Reboot} and extra == set()
    without_out = {cls: spec for cls, spec in TABLE.items() if cls is not Out}
    assert table_gaps(Op, without_out) == ({Out}, set())


def test_every_op_has_a_strategy_and_an_example() -> None:
    assert set(STRATEGIES) == set(ALL_OPS) == set(EXAMPLES)


def test_derived_sets() -> None:
    assert ops.READING_OPS == (In, MemRead, Poll, DevState, IrqState, WaitIrq)
    assert ops.DEVICE_OPS == (DevAttach, DevAppend, DevDreq, DevState, PowerReset)
    assert ops.IRQ_OPS == (IrqState, WaitIrq)
    assert len(ops.BY_OPCODE) == 17  # OUT8/OUT16 and IN8/IN16 are two wire forms each


@pytest.mark.parametrize("cls", ALL_OPS, ids=lambda c: c.__name__)
def test_client_sizes_equal_the_encoded_sizes(cls: type) -> None:
    """Regression: ``_req_size(Poll)`` was 17 against 16 encoded bytes (and 17 the fallback for
    any op it did not know)."""
    op = EXAMPLES[cls]
    assert agent_client._req_size(op) == len(encode_program([op]))
    assert agent_client._rep_size(op) == reply_size([op]) - REPLY_HEADER.size


def test_irq_ops_refuse_bad_operands_and_wait_irq_says_whether_it_was_reached() -> None:
    for bad in (-1, 16, 2.0, None):
        with pytest.raises(InvalidAccessError, match="ISA interrupt lines are 0-15"):
            WaitIrq(bad)  # type: ignore[arg-type]  # deliberately wrong
    with pytest.raises(InvalidAccessError, match="timeout"):
        WaitIrq(6, True, -1)
    with pytest.raises(InvalidAccessError, match="level"):
        WaitIrq(6, 1)  # type: ignore[arg-type]  # an int is not a level
    lines = IrqLines(1 << 6, (0,) * 6 + (3,) + (0,) * 9)
    assert WaitIrq(6).reached(lines) and not WaitIrq(6, False).reached(lines) and WaitIrq(5, False).reached(lines)
    assert lines.level(6) and lines.count(6) == 3 and lines.count(5) == 0


def test_wait_irq_decodes_only_lines_0_to_15() -> None:
    """The op refuses its own operands when decoded, so a bad line from the wire is BAD_OP."""
    wire = bytearray(encode_program([WaitIrq(15)]))
    wire[1] = 16
    with pytest.raises(ProtocolError, match="op 0: IRQ line 16") as err:
        decode_program(bytes(wire))
    assert err.value.status == Status.BAD_OP


def test_plan_fills_a_frame_with_polls() -> None:
    """Four 16-byte POLLs fit a 64-byte request exactly: one frame, not two."""
    polls = [Poll(0x08, 0x01, 0x01, 1000) for _ in range(4)]
    assert len(encode_program(polls)) == 64
    chunks = list(agent_client.plan(polls, 64, 4096, 100))
    assert [c.ops for c in chunks] == [polls]


@PROPS
@given(programs())
def test_codec_roundtrip_and_request_sizes(program: list[Op]) -> None:
    wire = encode_program(program)
    assert len(wire) == sum(agent_client._req_size(op) for op in program)
    assert len(wire) == sum(ops.request_size(op) for op in program)
    assert decode_program(wire) == program


@PROPS
@given(st.data())
def test_reply_sizes_and_roundtrip(data: st.DataObject) -> None:
    program = data.draw(programs())
    drawn = [data.draw(result_for(op)) for op in program]
    results = [r[0] for r in drawn if r is not None]
    met = [r[1] for op, r in zip(program, drawn) if r is not None and isinstance(op, Poll)]
    reply = ExecReply(Status.OK, 0xFFFF, "", results, met)
    encoded = reply.encode(program)
    assert len(encoded) == reply_size(program)
    assert len(encoded) == REPLY_HEADER.size + sum(agent_client._rep_size(op) for op in program)
    back = ExecReply.decode(encoded, program)
    assert back.results == results and back.polls_met == met


@PROPS
@given(programs(), st.integers(64, 400), st.integers(64, 400), st.integers(1, 8))
def test_plan_frames_fit_and_are_full(program: list[Op], max_request: int, max_reply: int, max_ops: int) -> None:
    """Every planned frame fits the limits by its encoded sizes, and the next frame's first op would
    not have fitted in it (the sizes are not overestimated). Device data is split across frames."""
    chunks = list(agent_client.plan(program, max_request, max_reply, max_ops))
    limits = Limits(max_request, max_reply, max_ops)
    for chunk in chunks:
        assert limits.frame_excess(len(chunk.ops), len(encode_program(chunk.ops)), reply_size(chunk.ops)) is None
    for chunk, following in itertools.pairwise(chunks):
        grown = [*chunk.ops, following.ops[0]]
        assert limits.frame_excess(len(grown), len(encode_program(grown)), reply_size(grown)) is not None


def test_ops_is_the_bottom_layer() -> None:
    """hil/ops.py imports nothing of hil but the errors, the port map and the dataclass decorator;
    nothing in hil imports the compatibility module hil/backends/ops.py."""
    tree = ast.parse((ROOT / "hil" / "ops.py").read_text(encoding="utf-8"))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert {m for m in imported if m == "hil" or m.startswith("hil.")} <= {"hil.errors", "hil.ports", "hil.records"}
    users = [str(path.relative_to(ROOT)) for path in (ROOT / "hil").rglob("*.py")
             if path.name != "ops.py" or path.parent.name != "backends"
             if "hil.backends.ops" in path.read_text(encoding="utf-8")
             or "from hil.backends import ops" in path.read_text(encoding="utf-8")]
    assert users == []


def test_compatibility_module_reexports_the_vocabulary() -> None:
    for name in ops.__all__:
        assert getattr(compat_ops, name) is getattr(ops, name)
