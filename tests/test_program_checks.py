"""One refused op runs none of its ops, on every backend, wherever the op is in the program.

``Backend.execute`` decides every refusal (allow-list, port width, memory window, operations the
backend cannot run, bad values) for the whole program through one ``check(ops)`` before the
first op runs. The programs here change visible state first (unmask channel 2, write a page
register and four bytes of memory), then ``Settle``, then one op the backend must refuse: before
the fix the part before the ``Settle`` ran on backends that settle between parts (devport, and
so an agent serving devport), and the sim ran every op up to the refused one. Each test compares
the whole state before and after: the stand-in files for /dev/port and /dev/mem byte for byte,
the simulator's registers, page file, memory, devices and clock, QEMU's mask, page register and
memory read back.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from hil.agent.client import AgentRefusedError
from hil.agent.protocol import Status
from hil.allowlist import AllowList
from hil.backends import open_backend
from hil.backends.base import Backend, Capabilities
from hil.backends.devport import DevPortBackend
from hil.backends.sim import SimBackend
from hil.errors import (
    AccessDeniedError,
    DeviceError,
    HilError,
    InvalidAccessError,
    MemoryRangeError,
    UndecodedPortError,
    UnsupportedOperationError,
    WideAccessError,
)
from hil.ops import (
    Delay,
    DevAppend,
    DevAttach,
    DevDreq,
    DevState,
    In,
    MemRead,
    MemWrite,
    Op,
    Out,
    Poll,
    Result,
    Settle,
)
from hil.testing import require

ROOT = Path(__file__).resolve().parent.parent

#: visible effects first: unmask channel 2, its page register, four bytes of memory
PREFIX: tuple[Op, ...] = (Out(0x0A, 0x02), Out(0x81, 0x12), MemWrite(0x20000, b"\xde\xad\xbe\xef"), Settle(1e6))

NAN, INF = float("nan"), float("inf")


async def refuse(be: Backend, program: Sequence[object], error: type[BaseException]) -> BaseException:
    """``program`` is refused with ``error``, promptly (a ``Delay(inf)`` that ran would hang)."""
    with pytest.raises(error) as exc:
        await asyncio.wait_for(be.execute(program), 20)  # type: ignore[arg-type]
    assert "\n" not in str(exc.value)
    return exc.value


def refused_before_running(err: BaseException, expected: type[BaseException]) -> None:
    """An agent's refusal, decided before any op ran: not an I/O error part-way through. Ports
    and memory are refused as on every backend (the protocol's PORT_DENIED and MEM_DENIED carry
    no finer class), anything else as AgentRefusedError with its status."""
    assert type(err) is expected, err
    assert not (isinstance(err, AgentRefusedError) and err.status is Status.IO_ERROR), err

# --- the mechanism, on a backend that settles between the parts of a program ------------------


class Splitting(Backend):
    """Runs Settle as ``_settle`` (execute() splits at it) and refuses port 0x3F2 in ``check``."""

    scheme = "fake"
    OPS = (Out, In, MemWrite, Delay, Poll)

    def __init__(self) -> None:
        super().__init__("fake:")
        self.ran: list[object] = []
        self.checked: list[tuple[Op, ...]] = []

    def check(self, ops: Sequence[Op]) -> None:
        super().check(ops)
        self.checked.append(tuple(ops))
        for op in ops:
            if isinstance(op, Out) and op.port == 0x3F2:
                raise AccessDeniedError("write to port 0x03F2 refused")

    async def _execute(self, ops: Sequence[Op]) -> list[Result]:
        self.ran += ops
        return [0 for op in ops if isinstance(op, In)]

    async def _settle(self, timeout_s: float | None) -> None:
        self.ran.append(("settle", timeout_s))

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities("fake", "fake")


async def test_check_sees_the_whole_program_once_before_any_part_runs():
    be = Splitting()
    await be.open()
    program = [*PREFIX[:1], Settle(1000), Out(0x3F2, 0x1C)]
    with pytest.raises(AccessDeniedError):
        await be.execute(program)
    assert be.ran == [] and be.checked == [tuple(program)]
    be.checked.clear()
    assert await be.execute([Out(0x0A, 2), Settle(2000), In(0x08)]) == [0]
    assert be.checked == [(Out(0x0A, 2), Settle(2000), In(0x08))]  # once, whole, not per part
    assert be.ran == [Out(0x0A, 2), ("settle", 0.002), In(0x08)]


@pytest.mark.parametrize("bad, error", [
    (DevAttach(1, "source", b"x"), UnsupportedOperationError),  # not among this backend's OPS
    (MemRead(0, 1), UnsupportedOperationError),
    (Delay(INF), InvalidAccessError),
    (Delay(NAN), InvalidAccessError),
    (Poll(0x08, 0xFF, 0, INF), InvalidAccessError),
    (Settle(-1), InvalidAccessError),
    (Settle(NAN), InvalidAccessError),
    (Settle("1000"), InvalidAccessError),  # type: ignore[arg-type]
    ("not an op", InvalidAccessError),
])
async def test_base_refusals_come_before_the_first_op(bad, error):
    """What no backend can run is refused by the base check itself: ops the backend does not
    run, and durations that are not finite non-negative numbers (``Delay(inf)`` would sleep
    forever on hardware and overflow the simulator's clock)."""
    be = Splitting()
    await be.open()
    await refuse(be, [Out(0x0A, 0x02), Settle(1000), bad], error)
    assert be.ran == []


# --- sim -------------------------------------------------------------------------------------

MEM = 1 << 20


def sim_state(be: SimBackend) -> tuple[object, ...]:
    m = be.machine
    return (m.dma1.snapshot(), m.dma2.snapshot(), bytes(m.pages), bytes(m.memory), m.now_ns,
            {ch: type(d).__name__ for ch, d in m.devices.items()})


SIM_CASES = {
    # the three of the issue: a refused port after Settle, a trailing 16-bit access, a trailing
    # write past the end of memory
    "port": (Out(0x3F2, 0x1C), UndecodedPortError),
    "wide": (Out(0xDF, 0x1234, 16), UndecodedPortError),  # 0xDF is DMA2's, 0xE0 nobody's
    "window": (MemWrite(MEM - 2, b"\x11" * 4), MemoryRangeError),
    "read-window": (MemRead(MEM, 1), MemoryRangeError),
    "poll-undecoded": (Poll(0x3F4, 0x80, 0x80, 100), UndecodedPortError),
    "append-no-device": (DevAppend(3, b"x"), DeviceError),
    "dreq-no-device": (DevDreq(1, True), DeviceError),
    "state-no-device": (DevState(6), DeviceError),
    "cascade": (DevAttach(4, "sink"), DeviceError),
    "delay-inf": (Delay(INF), InvalidAccessError),
    "settle-nan": (Settle(NAN), InvalidAccessError),
}
#: the qemu profile decodes only the page ports of channels 0-3 and 5-7 (docs/reference/qemu-qtest.md §3.5)
SIM_QEMU_CASES = SIM_CASES | {
    "wide": (Out(0x83, 0x1234, 16), UndecodedPortError),  # channel 1's page, 0x84 nobody's
    "page": (Out(0x80, 0x01), UndecodedPortError),
}


@pytest.mark.parametrize("url, case", [(f"sim:?mem=1M&strict=1{p}", c)
                                       for p, cases in (("", SIM_CASES), ("&profile=qemu", SIM_QEMU_CASES))
                                       for c in cases])
async def test_sim_refused_op_after_settle_changes_nothing(url, case):
    bad, error = (SIM_QEMU_CASES if "qemu" in url else SIM_CASES)[case]
    async with open_backend(url) as be:
        assert isinstance(be, SimBackend)
        before = sim_state(be)
        await refuse(be, [*PREFIX, bad], error)
        assert sim_state(be) == before
        await be.execute(PREFIX)  # the same prefix alone does run: the state above could change
        assert sim_state(be) != before


async def test_sim_device_ops_are_checked_against_the_devices_the_program_attaches():
    """A device attached earlier in the same program counts; appending to a sink does not."""
    async with open_backend("sim:?mem=1M") as be:
        assert isinstance(be, SimBackend)
        await be.execute([DevAttach(1, "source", b"ab", dreq=False), DevAppend(1, b"cd"), DevDreq(1, False),
                          DevState(1)])
        await be.execute([DevAppend(1, b"ef")])  # attached by an earlier program
        before = sim_state(be)
        await refuse(be, [*PREFIX, DevAttach(1, "sink"), DevAppend(1, b"x")], DeviceError)
        assert sim_state(be) == before


async def test_sim_without_strict_still_floats_undecoded_ports():
    async with open_backend("sim") as be:
        floppy, wide = await be.execute([Out(0x3F2, 0x1C), Settle(1000), In(0x3F4), In(0xDF, 16)])
        assert floppy == 0xFF and wide >> 8 == 0xFF  # 0xE0, the high byte, floats


# --- devport on stand-in files ---------------------------------------------------------------

PORT_SIZE, MEM_SIZE, WINDOW = 0x10000, 0x100000, "0x10000-0x90000"
DEVPORT_CASES = {
    "port": (Out(0x3F2, 0x1C), AccessDeniedError),
    "wide": (Out(0x04, 0x1234, 16), WideAccessError),
    "wide-read": (In(0xC4, 16), WideAccessError),
    "wide-poll": (Poll(0x08, 0xFF, 0, 10, width=16), WideAccessError),
    "window": (MemWrite(0x8FFFE, b"\x11" * 4), MemoryRangeError),
    "outside": (MemWrite(0x90000, b"\x11" * 4), MemoryRangeError),
    "below": (MemRead(0xFFFF, 2), MemoryRangeError),
    "unsupported": (DevAttach(1, "source", b"x"), UnsupportedOperationError),
    "delay-inf": (Delay(INF), InvalidAccessError),
}


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    port, mem = tmp_path / "port", tmp_path / "mem"
    port.write_bytes(bytes(PORT_SIZE))
    mem.write_bytes(bytes(MEM_SIZE))
    return port, mem


def contents(files: tuple[Path, Path]) -> tuple[bytes, bytes]:
    return files[0].read_bytes(), files[1].read_bytes()


def devport_url(files: tuple[Path, Path]) -> str:
    return f"devport:?port={files[0]}&mem={files[1]}&window={WINDOW}"


@pytest.mark.parametrize("case", DEVPORT_CASES)
async def test_devport_refused_op_after_settle_touches_no_byte(files, case):
    bad, error = DEVPORT_CASES[case]
    before = contents(files)
    async with open_backend(devport_url(files)) as be:
        assert isinstance(be, DevPortBackend)
        await refuse(be, [*PREFIX, bad], error)
        assert contents(files) == before  # the mapping is shared: a write would show at once
        assert be.tracker.enabled == set()
    assert contents(files) == before  # and close had nothing to mask again


async def test_devport_prefix_alone_does_reach_the_files(files):
    before = contents(files)
    async with open_backend(devport_url(files)) as be:
        await be.execute(PREFIX)
        port, mem = contents(files)
        assert port[0x81] == 0x12 and mem[0x20000:0x20004] == b"\xde\xad\xbe\xef"
    assert contents(files) != before


# --- qemu ------------------------------------------------------------------------------------


def need_qemu() -> None:
    from hil.backends.qemu import qemu_available

    ok, why = qemu_available()
    require(ok, "qemu-system-x86_64 (QEMU 7.2 or later)", why)


#: DMA1's mask reads back at its request port in QEMU's i8257 (docs/reference/qemu-qtest.md §3.5)
READBACK = (In(0x09), In(0x81), MemRead(0x20000, 4))
QEMU_CASES = {
    "port": (Out(0x3F2, 0x1C), AccessDeniedError),
    "wide": (Out(0x04, 0x1234, 16), WideAccessError),
    "window": (MemWrite((16 << 20) - 2, b"\x11" * 4), MemoryRangeError),
    "reset-port": (Out(0x64, 0xFE), AccessDeniedError),
    "device": (DevAttach(1, "source", b"x"), UnsupportedOperationError),
    "delay-inf": (Delay(INF), InvalidAccessError),
}


@pytest.mark.parametrize("case", QEMU_CASES)
async def test_qemu_refused_op_after_settle_sends_nothing(case):
    need_qemu()
    bad, error = QEMU_CASES[case]
    async with open_backend("qemu:") as be:
        before = await be.execute(READBACK)
        sent = be._client.sent  # type: ignore[attr-defined]
        await refuse(be, [*PREFIX, bad], error)
        assert be._client.sent == sent  # type: ignore[attr-defined]  # not one qtest line
        assert await be.execute(READBACK) == before
        await be.execute(PREFIX)
        assert await be.execute(READBACK) != before


# --- an agent on loopback, serving sim or devport on stand-in files ---------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.asynccontextmanager
async def cli_agent(io: str) -> AsyncIterator[str]:
    """``hil agent --io IO`` as a user starts it; yields the backend URL to reach it."""
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "hil", "agent", "--io", io, "--listen",
                                                f"tcp://127.0.0.1:{port}", stdout=subprocess.PIPE,
                                                stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.strip(), "the agent did not start"
        yield f"agent+tcp://127.0.0.1:{port}"
    finally:
        proc.kill()
        await proc.wait()


@pytest.mark.parametrize("case", ["port", "wide", "window"])
async def test_agent_serving_devport_refused_op_after_settle_touches_no_byte(files, case):
    bad, _ = DEVPORT_CASES[case]
    expected = MemoryRangeError if case == "window" else AccessDeniedError  # "wide": devport's, as PORT_DENIED
    before = contents(files)
    async with cli_agent(devport_url(files)) as url, open_backend(url) as be:
        refused_before_running(await refuse(be, [*PREFIX, bad], expected), expected)
        assert contents(files) == before
        await be.execute(PREFIX)  # the same link runs the prefix alone
        assert contents(files) != before


#: the agent serves the qemu profile strictly: page port 0x80 and the 16-bit access at 0x83 pass
#: its allow-list (the whole page file) but not the simulator's decoder
AGENT_SIM_CASES = {
    "port": Out(0x80, 0x01),
    "wide": Out(0x83, 0x1234, 16),
    "window": MemWrite((16 << 20) - 2, b"\x11" * 4),
    "device": DevAppend(3, b"x"),
}


@pytest.mark.parametrize("case", AGENT_SIM_CASES)
async def test_agent_serving_sim_refused_op_after_settle_changes_nothing(case):
    async with cli_agent("sim:?profile=qemu&strict=1") as url, open_backend(url) as be:
        before = await be.execute(READBACK)
        expected = {"window": MemoryRangeError, "device": AgentRefusedError}.get(case, AccessDeniedError)
        refused_before_running(await refuse(be, [*PREFIX, AGENT_SIM_CASES[case]], expected), expected)
        assert await be.execute(READBACK) == before
        await be.execute(PREFIX)
        assert await be.execute(READBACK) != before


async def test_agent_program_of_several_frames_is_refused_before_the_first_frame():
    """A program larger than one frame: the agent refuses the frame holding 0x3F2, but frames
    before it must not have run either."""
    async with cli_agent("sim:?profile=qemu") as url, open_backend(url) as be:
        before = await be.execute(READBACK)
        await refuse(be, [*PREFIX, MemWrite(0x30000, bytes(20000)), Out(0x3F2, 0x1C)], HilError)
        assert await be.execute(READBACK) == before


async def test_recording_wrapper_checks_like_the_backend_it_wraps():
    from hil.backends.recording import RecordingBackend

    async with open_backend("sim:?mem=1M&strict=1") as inner:
        be = RecordingBackend(inner)
        with pytest.raises(UndecodedPortError):
            be.check([*PREFIX, Out(0x3F2, 0x1C)])
        await refuse(be, [*PREFIX, Out(0x3F2, 0x1C)], UndecodedPortError)
        assert be.trace == [] and await inner.inb(0x0F) == 0x0F  # all of DMA1 still masked (docs/reference/8237.md §2.9)


def test_allow_list_check_is_whole_program():
    """AllowList.check, which devport's and the agent's checks build on, refuses a late op."""
    allow = AllowList.default([range(0x10000, 0x90000)])
    with pytest.raises(AccessDeniedError, match="0x03F2"):
        allow.check([*PREFIX, Out(0x3F2, 0x1C)])
