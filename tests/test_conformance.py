"""The backend contract: the same programs on every backend, results and exception types pinned.

Backends: the simulator in both profiles, an agent on loopback serving a simulator (in-process,
as the agent tests run it), ``devport:`` on stand-in files (tests/test_devport.py), ``qemu:``
and a :class:`~hil.backends.mock.MockBackend` whose handler is a plain byte store. A refusal is
pinned by its exact class (``type(err) is X``): one refusal is one class on every backend (the
table in README.md, "Errors"); only the message may say how a backend refuses. Where backends
legitimately differ, each one's value is pinned with the reference that documents it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import pytest

from hil.agent.server import AgentCore, start
from hil.allowlist import AllowList
from hil.backends import Backend, open_backend
from hil.backends.base import Capability
from hil.backends.mock import MockBackend
from hil.backends.ops import (
    Delay,
    DevAttach,
    In,
    IrqLines,
    IrqState,
    MemFill,
    MemRead,
    MemWrite,
    Op,
    Out,
    Poll,
    Result,
    Settle,
    WaitIrq,
)
from hil.backends.qemu import qemu_available
from hil.errors import (
    BackendClosedError,
    BackendNotOpenError,
    InvalidAccessError,
    InvalidPortError,
    InvalidWidthError,
    MemoryRangeError,
    UnsupportedOperationError,
    ValueWidthError,
    WideAccessError,
)
from hil.testing import require

Make = Callable[[], contextlib.AbstractAsyncContextManager[Backend]]  #: the fixture: a fresh unopened backend
BACKENDS = ["sim", "sim:?profile=qemu", "agent", "devport", "qemu", "mock"]
TOP = 16 << 20  #: every backend here reaches at most the low 16 MiB (devport: a window inside it)
WINDOW = range(0x10000, 0x90000)  #: devport's stand-in window, as in tests/test_devport.py


class ByteStore:
    """The mock's handler: ports and memory as bytes that keep what was written, nothing more
    (no controller behind the ports): the same semantics as devport's stand-in files."""

    OPS = (Out, In, MemWrite, MemRead, MemFill, Delay, Poll, Settle)  #: no simulated devices

    def __init__(self) -> None:
        self.ports = bytearray(0x10000)
        self.memory = bytearray(TOP)

    def __call__(self, op: Op) -> Result | None:
        match op:
            case Out(port=port, value=value, width=width):
                self.ports[port : port + width // 8] = value.to_bytes(width // 8, "little")
            case In(port=port, width=width) | Poll(port=port, width=width):
                return int.from_bytes(self.ports[port : port + width // 8], "little")
            case MemWrite(addr=addr, data=data):
                self.memory[addr : addr + len(data)] = data
            case MemRead(addr=addr, length=length):
                return bytes(self.memory[addr : addr + length])
            case MemFill(addr=addr, length=length, value=value):
                self.memory[addr : addr + length] = bytes([value]) * length
        return None


@pytest.fixture(params=BACKENDS)
def kind(request: pytest.FixtureRequest) -> str:
    if request.param == "qemu":
        ok, why = qemu_available()
        require(ok, "qemu-system-x86_64 (QEMU 7.2 or later)", why)
    return str(request.param)


@pytest.fixture
def make(kind: str, tmp_path: Path) -> Make:
    """``async with make() as be``: a fresh, *unopened* backend of this kind, with whatever it
    needs around it (the agent's server and simulator, devport's files); closed afterwards."""

    @contextlib.asynccontextmanager
    async def unopened() -> AsyncIterator[Backend]:
        async with contextlib.AsyncExitStack() as stack:
            match kind:
                case "sim" | "sim:?profile=qemu":
                    be = open_backend(kind)
                case "agent":
                    io = await stack.enter_async_context(open_backend("sim"))
                    core = AgentCore(io, AllowList.default([range(0, TOP)]))
                    listener = await start(core, "tcp://127.0.0.1:0")
                    stack.callback(listener.close)
                    stack.push_async_callback(core.aclose)
                    be = open_backend(f"agent+{listener.address}")
                case "devport":
                    port, mem = tmp_path / "port", tmp_path / "mem"
                    port.write_bytes(bytes(0x10000))
                    mem.write_bytes(bytes(0x100000))
                    be = open_backend(f"devport:?port={port}&mem={mem}&window=0x{WINDOW.start:X}-0x{WINDOW.stop:X}")
                case "qemu":
                    be = open_backend("qemu:")
                case _:
                    be = MockBackend(ByteStore(), ops=ByteStore.OPS, memory_window=(0, TOP))
            try:
                yield be
            finally:
                await be.close()

    return unopened


@contextlib.asynccontextmanager
async def opened(make: Make) -> AsyncIterator[Backend]:
    async with make() as be:
        await be.open()
        yield be


async def run(make: Make, program: Sequence[Op]) -> list[Result]:
    async with opened(make) as be:
        return await be.execute(program)


# --- refusals: the same class on every backend -------------------------------------------------


async def test_bad_port(make: Make) -> None:
    async with opened(make) as be:
        with pytest.raises(InvalidPortError) as err:
            await be.outb(0x10000, 0)
        assert type(err.value) is InvalidPortError and err.value.port == 0x10000


async def test_bad_width(make: Make) -> None:
    async with opened(make) as be:
        with pytest.raises(InvalidWidthError) as err:
            await be.execute([In(0x81, 32)])
        assert type(err.value) is InvalidWidthError and err.value.width == 32


async def test_value_too_wide(make: Make) -> None:
    async with opened(make) as be:
        with pytest.raises(ValueWidthError) as err:
            await be.outb(0x81, 0x100)
        assert type(err.value) is ValueWidthError and (err.value.value, err.value.width) == (0x100, 8)


async def test_not_an_operation(make: Make) -> None:
    async with opened(make) as be:
        with pytest.raises(InvalidAccessError) as err:
            await be.execute([Out(0x81, 1), "outb 0x81 2"])  # type: ignore[list-item]  # the point
        assert type(err.value) is InvalidAccessError
        assert await be.inb(0x81) == 0  # refused whole: the first op did not run


async def test_memory_outside_the_window(make: Make) -> None:
    """Past the end of memory on sim and qemu (16 MiB), outside devport's window, the agent's
    advertised window and the mock's: MemoryRangeError everywhere, with the access in its fields."""
    async with opened(make) as be:
        with pytest.raises(MemoryRangeError) as err:
            await be.execute([Out(0x81, 0x77), MemWrite(TOP - 2, b"\x11" * 4)])
        assert type(err.value) is MemoryRangeError
        assert (err.value.addr, err.value.length) == (TOP - 2, 4)
        assert await be.inb(0x81) == 0  # refused before the Out ran


#: a 16-bit access to a DMA port: the simulator (and the agent serving it, and the byte store)
#: split it into two byte cycles as the bus does (docs/reference/hil-lessons.md §1.3); devport
#: cannot (/dev/port is byte-serial: docs/reference/hil-lessons.md §1.2) and qemu will not (QEMU
#: hands a word access to the first port's owner: docs/reference/qemu-qtest.md §3.5)
WIDE_REFUSED = {"devport", "qemu"}


async def test_16_bit_access_to_a_dma_port(make: Make, kind: str) -> None:
    async with opened(make) as be:
        program: list[Op] = [Out(0x0C, 0), Out(0x04, 0x1234, 16)]
        if kind in WIDE_REFUSED:
            with pytest.raises(WideAccessError) as err:
                await be.execute(program)
            assert type(err.value) is WideAccessError and (err.value.port, err.value.width) == (0x04, 16)
        else:
            assert await be.execute(program) == []


#: simulated devices: the simulator's own ops (and so the agent serving one); devport and qemu
#: have none, and the byte store was made without them
DEVICES = {"sim", "sim:?profile=qemu", "agent"}


async def test_unsupported_operation(make: Make, kind: str) -> None:
    async with opened(make) as be:
        program: list[Op] = [Out(0x81, 0x77), DevAttach(1, "source", b"x")]
        if kind in DEVICES:
            assert await be.execute(program) == []
        else:
            with pytest.raises(UnsupportedOperationError) as err:
                await be.execute(program)
            assert type(err.value) is UnsupportedOperationError
            assert await be.inb(0x81) == 0


async def test_use_before_open(make: Make) -> None:
    async with make() as be:
        for use in (be.inb(0x81), be.execute([Out(0x81, 1)]), be.settle()):
            with pytest.raises(BackendNotOpenError) as err:
                await use
            assert type(err.value) is BackendNotOpenError and err.value.url == be.url
        await be.open()  # and then it works
        await be.outb(0x81, 0x42)
        assert await be.inb(0x81) == 0x42


async def test_close_twice_is_harmless_and_use_after_close_is_refused(make: Make) -> None:
    async with opened(make) as be:
        await be.outb(0x81, 0x42)
        await be.close()
        await be.close()
        assert be.closed
        with pytest.raises(BackendClosedError) as err:
            await be.inb(0x81)
        assert type(err.value) is BackendClosedError


# --- normal programs ------------------------------------------------------------------------------

#: channel 1's base address written through the flip-flop, then read back through it: a
#: controller returns the two bytes written (docs/reference/8237.md §2.1, §2.2; QEMU too, as both
#: bytes were written: docs/reference/8237.md §5, "Lone LSB write"). Devport's stand-in file and
#: the byte store keep only the last byte written to port 0x02 (no flip-flop behind a file:
#: docs/reference/hil-lessons.md §1.2, offset = port), so both reads see 0x12.
FLIP_FLOP: list[Op] = [Out(0x0C, 0), Out(0x02, 0x34), Out(0x02, 0x12), Out(0x0C, 0), In(0x02), In(0x02)]
FLIP_FLOP_RESULT = {"devport": [0x12, 0x12], "mock": [0x12, 0x12]}


async def test_base_address_reads_back_through_the_flip_flop(make: Make, kind: str) -> None:
    assert await run(make, FLIP_FLOP) == FLIP_FLOP_RESULT.get(kind, [0x34, 0x12])


async def test_memory_write_fill_read(make: Make) -> None:
    data = bytes(range(256)) + b"\x5a" * 44
    program: list[Op] = [MemWrite(0x20000, data), MemFill(0x20010, 4, 0xAA), MemRead(0x20000, 300), MemRead(0x2012C, 0)]
    expected = data[:0x10] + b"\xaa" * 4 + data[0x14:]
    assert await run(make, program) == [expected, b""]


async def test_poll_returns_the_value_that_matched(make: Make) -> None:
    """A page register keeps what is written (docs/reference/8237.md §1.3): the poll matches at once."""
    program: list[Op] = [Out(0x81, 0x5A), Poll(0x81, 0xF0, 0x50, 100_000), In(0x81)]
    assert await run(make, program) == [0x5A, 0x5A]


async def test_poll_that_times_out_returns_the_last_value(make: Make) -> None:
    """A timeout is not an error: the result is the last value read (hil.backends.ops.Poll)."""
    program: list[Op] = [Out(0x81, 0x5A), Poll(0x81, 0xFF, 0x00, 2_000, 500)]
    assert await run(make, program) == [0x5A]


# --- interrupt lines (capability ``irq``) ---------------------------------------------------------

#: backends that observe IRQ lines: the simulator, an agent serving it (feature IRQ) and QEMU's
#: qtest interception (docs/reference/qemu-qtest.md §3.2); devport and the byte store cannot
IRQ = {"sim", "sim:?profile=qemu", "agent", "qemu"}
NO_IRQ = IrqLines(0, (0,) * 16)


async def test_irq_capability_and_a_fresh_machine(make: Make, kind: str) -> None:
    """No device has raised a line yet: every line low, no edge counted (qemu: IRQ 0 is the PIT,
    which the halt firmware leaves running, so lines 1-15 only)."""
    async with opened(make) as be:
        assert (Capability.IRQ in be.capabilities) == (kind in IRQ)
        if kind not in IRQ:
            for call in (lambda: be.irq_level(6), lambda: be.irq_count(6)):
                with pytest.raises(UnsupportedOperationError) as err:
                    call()
                assert type(err.value) is UnsupportedOperationError
            return
        lines = 1 if kind == "qemu" else 0
        assert [be.irq_count(n) for n in range(lines, 16)] == [0] * (16 - lines)
        assert not any(be.irq_level(n) for n in range(lines, 16))
        [state] = await be.execute([IrqState()])
        assert isinstance(state, IrqLines) and state.counts[lines:] == NO_IRQ.counts[lines:]


async def test_wait_irq_that_times_out(make: Make, kind: str) -> None:
    """Nothing raises IRQ 6: the wait ends at its timeout and says so (False), not an error; on
    the simulator in virtual time, so a 5 s timeout returns at once (an agent refuses longer
    than its 10 s per op, like a DELAY)."""
    async with opened(make) as be:
        if kind not in IRQ:
            with pytest.raises(UnsupportedOperationError) as err:
                await be.execute([Out(0x81, 0x77), WaitIrq(6, True, 1000)])
            assert type(err.value) is UnsupportedOperationError
            assert await be.inb(0x81) == 0  # refused before the Out ran
            with pytest.raises(UnsupportedOperationError):
                await be.wait_irq(6, timeout=0.01)
            return
        timeout = 0.05 if kind == "qemu" else 5.0
        t0 = time.perf_counter()
        assert await be.wait_irq(6, timeout=timeout) is False
        assert time.perf_counter() - t0 < 2.0
        [lines] = await be.execute([WaitIrq(6, True, 1000)])
        assert isinstance(lines, IrqLines) and not lines.level(6) and lines.count(6) == 0
        assert await be.wait_irq(6, level=False, timeout=0) is True  # already low
