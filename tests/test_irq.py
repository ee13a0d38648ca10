"""Interrupt lines in the backend interface (capability ``irq``): ``irq_level``/``irq_count``,
``wait_irq``, the IRQ_STATE and WAIT_IRQ ops, and the ``wait_irq``/``irq`` script steps.

The device raising the line is a tiny test-only ISA card plugged into the simulator (only sim-only
tests may reach ``.machine``): writing N to its port raises IRQ 5 N microseconds later (a device
timer, virtual time); reading the port lowers it again. The 8259's view of the line is not
involved: the line is the ISA wire (docs/reference/8259.md §1)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hil.agent.client import AgentBackend
from hil.agent.protocol import ExecReply, Feature, Frame, Hello, MsgType, Status, encode_program
from hil.agent.server import AgentCore, start
from hil.allowlist import AllowList
from hil.backends import Backend, open_backend
from hil.backends.base import Capability
from hil.backends.mock import MockBackend
from hil.backends.sim import SimBackend
from hil.diff import compare
from hil.errors import ScriptCapabilityError, UnsupportedOperationError
from hil.journal import IrqObs, WaitIrqObs, read_journal
from hil.ops import In, IrqLines, IrqState, Out, PowerReset, WaitIrq
from hil.ports import DMA_PORT_RANGES
from hil.runner import run_script
from hil.script import load_script
from hil.sim.isa import IsaDevice, PortRange

PORT, LINE = 0x310, 5


class Pulser(IsaDevice):
    """Test card: ``out PORT, n`` raises IRQ 5 after n µs; ``in PORT`` lowers it (1 = it was high)."""

    def __init__(self) -> None:
        super().__init__(ports=[PortRange(PORT, 1)], irqs=[LINE], name="pulser")

    def io_read(self, port: int, width: int = 8) -> int:
        was = self.irq().level
        self.irq().lower()
        return int(was)

    def io_write(self, port: int, value: int, width: int = 8) -> None:
        self.after(value * 1000, lambda when: self.irq().raise_(), name="pulse")


def sim_with_pulser(url: str = "sim") -> SimBackend:
    be = open_backend(url)
    assert isinstance(be, SimBackend)
    be.machine.plug(Pulser())
    return be


@contextlib.asynccontextmanager
async def agent_on(io: Backend) -> AsyncIterator[Backend]:
    """An agent on loopback serving ``io`` (opened here), and the host's backend to it."""
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(io)
        core = AgentCore(io, AllowList([*DMA_PORT_RANGES, range(PORT, PORT + 1)], (range(0, 16 << 20),)))
        listener = await start(core, "tcp://127.0.0.1:0")
        stack.callback(listener.close)
        stack.push_async_callback(core.aclose)
        be = await stack.enter_async_context(open_backend(f"agent+{listener.address}"))
        yield be


@contextlib.asynccontextmanager
async def pulser_backend(kind: str) -> AsyncIterator[Backend]:
    async with clocked(kind) as (be, _):
        yield be


@contextlib.asynccontextmanager
async def clocked(kind: str) -> AsyncIterator[tuple[Backend, SimBackend]]:
    """The backend of ``kind`` and the simulator whose clock it runs on (the agent's I/O)."""
    sim = sim_with_pulser("sim" if kind == "agent" else kind)
    if kind == "agent":
        async with agent_on(sim) as be:
            yield be, sim
    else:
        async with sim as be:
            yield be, sim


KINDS = ["sim", "sim:?profile=qemu", "agent"]


@pytest.mark.parametrize("kind", KINDS)
async def test_wait_irq_reaches_the_level_in_virtual_time(kind: str) -> None:
    async with clocked(kind) as (be, sim):
        assert Capability.IRQ in be.capabilities
        assert (be.irq_level(LINE), be.irq_count(LINE)) == (False, 0)
        t0 = sim.virtual_time_ns()
        await be.outb(PORT, 200)
        assert sim.virtual_time_ns() == t0 + 1000  # the port write's 1 µs
        assert await be.wait_irq(LINE, timeout=1.0)
        assert sim.virtual_time_ns() == t0 + 201_000  # the edge, not the timeout
        assert (be.irq_level(LINE), be.irq_count(LINE)) == (True, 1)
        assert await be.inb(PORT) == 1
        assert (be.irq_level(LINE), be.irq_count(LINE)) == (False, 1)  # a program without an IRQ op
        assert await be.wait_irq(LINE, level=False, timeout=0)  # already low: no time passes
        assert not await be.wait_irq(LINE, timeout=0.002)
        assert sim.virtual_time_ns() == t0 + 202_000 + 2_000_000  # the in: 1 µs, then the whole timeout


@pytest.mark.parametrize("kind", KINDS)
async def test_sync_state_is_that_at_the_end_of_the_last_program(kind: str) -> None:
    """No IRQ op in the program, yet irq_count sees its edges: on the agent the client's appended
    IRQ_STATE carries them back (docs/agent-protocol.md "IRQ lines")."""
    async with pulser_backend(kind) as be:
        await be.execute([Out(PORT, 5), *[In(0x08)] * 10])  # 5 µs: the edge falls inside the program
        assert (be.irq_level(LINE), be.irq_count(LINE)) == (True, 1)
        lines = await be.irq_state()
        assert lines == IrqLines(1 << LINE, tuple(1 if n == LINE else 0 for n in range(16)))
        [after] = await be.execute([WaitIrq(LINE, False, 100)])  # times out: nothing lowers it
        assert isinstance(after, IrqLines) and not WaitIrq(LINE, False).reached(after)
        await be.execute([PowerReset()])  # counts start again from the reset
        assert (be.irq_level(LINE), be.irq_count(LINE)) == (False, 0)


async def test_irq_2_is_irq_9_on_the_simulator() -> None:
    """docs/reference/8259.md §1: the ISA slot's IRQ 2 pin is the AT's IRQ 9."""
    async with open_backend("sim") as be:
        assert isinstance(be, SimBackend)
        be.machine.set_irq(9, True)
        assert be.irq_level(2) and be.irq_count(2) == be.irq_count(9) == 1
        assert await be.wait_irq(2, timeout=0)


async def test_wait_irq_timeout_is_virtual_time_and_fast() -> None:
    async with open_backend("sim") as be:
        t0, wall = be.virtual_time_ns(), time.perf_counter()
        assert not await be.wait_irq(6, timeout=3600)
        assert be.virtual_time_ns() == (t0 or 0) + 3600 * 10**9
        assert time.perf_counter() - wall < 1.0


async def test_agent_counts_unwrap_across_the_16_bit_wire() -> None:
    """The wire carries counts modulo 65536 (docs/agent-protocol.md); the client counts on from
    the last observation, and from 0 after a PowerReset in the same program."""
    be = AgentBackend("agent+loop://", "loop://")
    be._irq = IrqLines(0, (65530,) + (0,) * 15)
    wire = IrqLines(1, (4,) + (0,) * 15)
    ops = [IrqState(), In(0x08), IrqState()]
    out = be._unwrap_irq(ops, [wire, 7, wire])
    assert out == [IrqLines(1, (65540,) + (0,) * 15), 7, IrqLines(1, (65540,) + (0,) * 15)]
    out = be._unwrap_irq([PowerReset(), IrqState()], [wire])
    assert out == [wire]


# --- refusals -------------------------------------------------------------------------------


async def test_a_backend_without_irq_refuses_before_anything_runs() -> None:
    seen: list[object] = []
    be = MockBackend(lambda op: seen.append(op))
    async with be:
        for call in (lambda: be.irq_level(5), lambda: be.irq_count(5)):
            with pytest.raises(UnsupportedOperationError, match="no capability 'irq'"):
                call()
        with pytest.raises(UnsupportedOperationError, match="no capability 'irq'"):
            await be.wait_irq(5)
        with pytest.raises(UnsupportedOperationError, match="cannot run WaitIrq") as err:
            await be.execute([Out(0x0A, 4), WaitIrq(5)])
        assert err.value.index == 1 and seen == [] and be.programs == []


async def test_an_agent_without_the_irq_feature() -> None:
    """The host refuses what the agent does not advertise before sending a frame; the agent
    refuses it too if it comes anyway, with status UNSUPPORTED and nothing run."""
    seen: list[object] = []
    io = MockBackend(lambda op: seen.append(op))
    async with agent_on(io) as be:
        assert Capability.IRQ not in be.capabilities
        assert be.agent is not None and not be.agent.features & Feature.IRQ
        sent = be.stats.frames_sent  # type: ignore[attr-defined]  # an AgentBackend
        with pytest.raises(UnsupportedOperationError, match="no capability 'irq'"):
            await be.execute([Out(0x0A, 4), IrqState()])
        with pytest.raises(UnsupportedOperationError):
            be.irq_count(5)
        assert be.stats.frames_sent == sent and seen == []  # type: ignore[attr-defined]  # an AgentBackend
    core = AgentCore(MockBackend(lambda op: seen.append(op)), AllowList.default([range(0, 1 << 20)]))
    await core.handle(Frame(MsgType.HELLO, 0, Hello(1).encode()))
    program = [Out(0x0A, 4), WaitIrq(5)]
    raw = await core.handle(Frame(MsgType.EXEC, 0, encode_program(program)))
    assert raw is not None
    from hil.agent.protocol import FrameReader
    [frame] = list(FrameReader().feed(raw))
    reply = ExecReply.decode(frame.payload, program)
    assert (reply.status, reply.index) == (Status.UNSUPPORTED, 1) and "IRQ" in reply.reason and seen == []


async def test_devport_refuses_irq(tmp_path: Path) -> None:
    port, mem = tmp_path / "port", tmp_path / "mem"
    port.write_bytes(bytes(0x10000))
    mem.write_bytes(bytes(0x100000))
    async with open_backend(f"devport:?port={port}&mem={mem}&window=0x10000-0x90000") as be:
        assert Capability.IRQ not in be.capabilities
        with pytest.raises(UnsupportedOperationError, match="no capability 'irq'"):
            await be.execute([WaitIrq(6)])
        with pytest.raises(UnsupportedOperationError):
            be.irq_level(6)
    assert port.read_bytes() == bytes(0x10000)


# --- script steps -----------------------------------------------------------------------------

SCRIPT = """
[script]
name = "irq-steps"
requires = ["irq"]

[[step]]
op = "irq"
irq = 5
expect_level = false
expect_count = 0

[[step]]
op = "out"
port = 0x310
value = 100

[[step]]
op = "wait_irq"
name = "the pulse comes"
irq = 5
timeout = 0.5

[[step]]
op = "irq"
irq = 5
expect_level = true
expect_count = 1

[[step]]
op = "in"
port = 0x310
expect = 1

[[step]]
op = "wait_irq"
name = "no second pulse"
irq = 5
timeout = 0.001
expect = "timeout"

[[step]]
op = "irq"
irq = 5
"""


@pytest.mark.parametrize("kind", KINDS)
async def test_the_steps_run_and_journal(kind: str, tmp_path: Path) -> None:
    path = tmp_path / "irq.toml"
    path.write_text(SCRIPT, encoding="utf-8")
    journal = tmp_path / "irq.jsonl"
    async with pulser_backend(kind) as be:
        result = await run_script(load_script(path), be, journal=journal)
    assert result.status == "passed", [o.describe() for o in result.observations]
    obs = read_journal(journal).observations
    assert [type(o) for o in obs] == [IrqObs, WaitIrqObs, IrqObs, type(obs[3]), WaitIrqObs, IrqObs]
    first, came, high, _, none, last = obs
    assert isinstance(came, WaitIrqObs) and isinstance(none, WaitIrqObs)
    assert (first.level, first.count, first.expect, first.ok) == (False, 0, "level=false count=0", True)
    assert (came.irq, came.reached, came.level, came.count, came.expect, came.ok) == (5, True, True, 1, "reached", True)
    assert (high.level, high.count, high.ok) == (True, 1, True)
    assert (none.reached, none.level, none.count, none.expect, none.ok) == (False, False, 1, "timeout", True)
    assert (last.level, last.count, last.expect, last.ok) == (False, 1, None, None)
    record = next(line for line in journal.read_text().splitlines() if '"wait_irq"' in line)
    assert record.index('"irq":5') < record.index('"level":true') < record.index('"count":1') < record.index(
        '"reached":true') < record.index('"expect":"reached"')


async def test_a_failed_wait_and_a_wrong_count_fail_the_run(tmp_path: Path) -> None:
    path = tmp_path / "irq.toml"
    path.write_text('[script]\nname = "w"\n[[step]]\nop = "wait_irq"\nirq = 6\ntimeout = 0.01\n'
                    '[[step]]\nop = "irq"\nirq = 6\nexpect_count = 1\n', encoding="utf-8")
    async with open_backend("sim") as be:
        result = await run_script(load_script(path), be)
    assert result.status == "failed" and [o.ok for o in result.failures] == [False, False]
    assert result.failures[0].describe() == "wait_irq 6: timed out (level low, 0 rising edge(s)), expected reached"


async def test_the_steps_need_capability_irq(tmp_path: Path) -> None:
    path = tmp_path / "irq.toml"
    path.write_text('[script]\nname = "w"\n[[step]]\nop = "wait_irq"\nirq = 6\n', encoding="utf-8")
    async with MockBackend(lambda op: None) as be:
        with pytest.raises(ScriptCapabilityError, match="wait_irq needs capability 'irq'"):
            await run_script(load_script(path), be)


@pytest.mark.parametrize(("toml", "why"), [
    ("irq = 16", "irq"), ("irq = 5\nexpect = \"soon\"", "expect"), ("irq = 5\nlevel = 1", "level"),
    ("irq = 5\ntimeout = -1", "timeout"), ("", "irq"),
])
def test_the_loader_refuses_bad_keys(tmp_path: Path, toml: str, why: str) -> None:
    from hil.errors import ScriptError

    path = tmp_path / "irq.toml"
    path.write_text(f'[script]\nname = "w"\n[[step]]\nop = "wait_irq"\n{toml}\n', encoding="utf-8")
    with pytest.raises(ScriptError) as err:
        load_script(path)
    assert err.value.key == why  # type: ignore[attr-defined]  # ScriptError names the key


async def test_hil_diff_compares_irq_observations(tmp_path: Path) -> None:
    path = tmp_path / "irq.toml"
    path.write_text(SCRIPT, encoding="utf-8")
    async with pulser_backend("sim") as a:
        ra = await run_script(load_script(path), a)
    async with pulser_backend("sim:?profile=qemu") as b:
        rb = await run_script(load_script(path), b)
    assert not compare([ra, rb]).divergences
    late = next(o for o in rb.observations if isinstance(o, WaitIrqObs) and o.reached)
    late.reached, late.level = False, False
    report = compare([ra, rb])
    [d] = report.divergences
    assert "wait_irq IRQ 5" in d.what and "reached level 1 within the timeout on" in d.meaning
    last = rb.observations[-1]
    assert isinstance(last, IrqObs)
    last.count = 2
    assert any("rose 1 time(s)" in d.meaning for d in compare([ra, rb]).divergences)


# --- qemu: QEMU's floppy controller raises IRQ 6 --------------------------------------------------

#: SEEK drive 0 to cylinder 0 raises IRQ 6, SENSE INTERRUPT STATUS (two result bytes) lowers it
#: (docs/reference/qemu-qtest.md §6.1)
SEEK = [Out(0x3F2, 0x1C), Out(0x3F5, 0x0F), Out(0x3F5, 0), Out(0x3F5, 0)]
SENSE = [Out(0x3F5, 0x08), In(0x3F5), In(0x3F5)]


@pytest.mark.parametrize("via_agent", [False, True], ids=["qemu", "agent-qemu"])
async def test_qemu_wait_irq_in_one_program(via_agent: bool) -> None:
    """Start the device and wait for its interrupt in one program: one round trip over an agent."""
    from hil.backends.qemu import qemu_available
    from hil.testing import require

    ok, why = qemu_available()
    require(ok, "qemu-system-x86_64 (QEMU 7.2 or later)", why)
    qemu = open_backend("qemu:?floppy=generate")
    async with contextlib.AsyncExitStack() as stack:
        if via_agent:
            await stack.enter_async_context(qemu)
            core = AgentCore(qemu, AllowList([*DMA_PORT_RANGES, range(0x3F0, 0x3F8)], (range(0, 16 << 20),)))
            listener = await start(core, "tcp://127.0.0.1:0")
            stack.callback(listener.close)
            stack.push_async_callback(core.aclose)
            be = await stack.enter_async_context(open_backend(f"agent+{listener.address}"))
        else:
            be = await stack.enter_async_context(qemu)
        assert Capability.IRQ in be.capabilities
        trips = getattr(be, "stats", None)
        before = trips.round_trips if trips is not None else 0
        results = await be.execute([*SEEK, WaitIrq(6, True, 2e6), *SENSE, WaitIrq(6, False, 2e6)])
        if trips is not None:
            assert trips.round_trips == before + 1
        high, st0, _cyl, low = results
        assert isinstance(high, IrqLines) and isinstance(low, IrqLines)
        assert high.level(6) and high.count(6) == 1 and st0 == 0x20  # SEEK END, drive 0
        assert not low.level(6) and low.count(6) == 1
        assert (be.irq_level(6), be.irq_count(6)) == (False, 1)
