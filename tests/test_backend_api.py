"""The async backend interface (hil.backends) as the sim backend implements it: bad input gives
specific hil.errors subclasses whose messages name the offending value; undecoded ports float;
execute() is atomic and returns the reading ops' results in order; settle() refuses to spin
forever.

References: hil/backends/base.py and ops.py (the interface contract), hil/backends/sim.py (URL
options), docs/reference/hil-lessons.md §1.1 (why programs must not interleave: the shared flip-flop),
docs/reference/8237.md §2.12 (undriven bus reads 0xFF) and §1.4 (what an AT decodes).
"""

from __future__ import annotations

import array
import asyncio
from collections.abc import Sequence

import pytest

from hil.backends import available_backends, connect, open_backend
from hil.backends.base import Backend, Capabilities, Capability
from hil.errors import (
    BackendClosedError,
    BackendOptionError,
    HilError,
    InvalidAccessError,
    InvalidPortError,
    InvalidWidthError,
    MemoryRangeError,
    SettleTimeout,
    UndecodedPortError,
    UnknownBackendError,
    ValueWidthError,
)
from hil.ops import Delay, DevAttach, DevState, In, MemFill, MemRead, MemWrite, Op, Out, Poll, Result
from hil.ports import DMA1, DMA2, channel_ports

# ---------------------------------------------------------------------------------------
# ports and values


@pytest.mark.parametrize("port", [0x10000, -1, 0x123456, "0x80", 1.0, None])
async def test_port_outside_io_space(be, port):
    """ops.check_port: x86 I/O ports are 0x0000..0xFFFF; anything else is InvalidPortError naming
    the port, raised before anything touches the bus."""
    with pytest.raises(InvalidPortError) as exc:
        await be.outb(port, 0)
    assert repr(port) in str(exc.value)
    assert exc.value.port == port
    with pytest.raises(InvalidPortError):
        await be.inb(port)
    with pytest.raises(InvalidPortError):
        await be.execute([In(port)])


async def test_word_access_at_top_of_io_space(be):
    """A 16-bit access at 0xFFFF would need port 0x10000."""
    with pytest.raises(InvalidPortError):
        await be.inw(0xFFFF)
    with pytest.raises(InvalidPortError):
        await be.outw(0xFFFF, 0)
    assert await be.inb(0xFFFF) == 0xFF  # the byte access itself is fine (undecoded)


@pytest.mark.parametrize(("width", "value"), [(8, 0x100), (8, -1), (16, 0x10000), (16, -1), (8, 1.5), (8, "1")])
async def test_value_not_fitting_width(be, width, value):
    """ops.check_value: the value must fit the access width; ValueWidthError names the value,
    the width and the port."""
    op = be.outb if width == 8 else be.outw
    with pytest.raises(ValueWidthError) as exc:
        await op(0x80, value)
    msg = str(exc.value)
    assert repr(value) in msg
    assert f"{width}-bit" in msg
    assert "0x0080" in msg
    assert exc.value.value == value and exc.value.width == width


async def test_unsupported_width(be):
    """ops.check_width: only 8- and 16-bit accesses exist."""
    with pytest.raises(InvalidWidthError) as exc:
        Out(0x80, 0, 32)
    assert "32" in str(exc.value)
    with pytest.raises(InvalidWidthError):
        In(0x80, 4)


async def test_bad_program_steps(be):
    """ops.check_program / MemWrite: a program holds operations only; memory data must be bytes;
    addresses and lengths are non-negative integers."""
    with pytest.raises(InvalidAccessError) as exc:
        await be.execute([Out(0x80, 1), "outb 0x80"])  # type: ignore[list-item]
    assert "step 1" in str(exc.value)
    with pytest.raises(InvalidAccessError):
        MemWrite(0x1000, "text")  # type: ignore[arg-type]
    with pytest.raises(InvalidAccessError) as exc:  # len() of a view of words counts words, not bytes
        MemWrite(0x1000, memoryview(array.array("H", [1, 2])))
    assert "cast('B')" in str(exc.value)
    assert MemWrite(0x1000, memoryview(array.array("H", [1, 2])).cast("B")).data.nbytes == 4
    with pytest.raises(InvalidAccessError):
        MemRead(-1, 4)
    with pytest.raises(InvalidAccessError):
        MemRead(0, -4)
    with pytest.raises(InvalidAccessError):
        Delay(-1)
    with pytest.raises(InvalidAccessError):
        Poll(0x08, 0x04, 0x04, timeout_us=-1)


async def test_refused_program_runs_nothing(be):
    """execute() validates the whole program first: a bad step refuses it before any op runs."""
    await be.outb(0x81, 0x11)
    with pytest.raises(InvalidAccessError):
        await be.execute([Out(0x81, 0x22), object()])  # type: ignore[list-item]
    assert await be.inb(0x81) == 0x11


# ---------------------------------------------------------------------------------------
# memory


@pytest.mark.parametrize(
    ("url", "size"),
    [("sim", 16 << 20), ("sim:?mem=1M", 1 << 20), ("sim:?profile=qemu&mem=640K", 640 << 10), ("sim:?mem=0x20000", 0x20000)],
)
async def test_memory_beyond_the_model(url, size):
    """SimMachine._check_mem: accesses that end past the simulated memory raise MemoryRangeError
    naming the address and the size; the last byte itself is fine."""
    async with open_backend(url) as be:
        assert be.capabilities.memory_window == (0, size)
        await be.write_mem(size - 2, b"\x12\x34")
        assert await be.read_mem(size - 2, 2) == b"\x12\x34"
        for call in (
            be.read_mem(size - 1, 2),
            be.write_mem(size, b"x"),
            be.fill_mem(size - 4, 8, 0xAA),
            be.read_mem(size + 0x1000, 1),
        ):
            with pytest.raises(MemoryRangeError) as exc:
                await call
            assert f"0x{size:X}" in str(exc.value)
        with pytest.raises(MemoryRangeError) as exc:
            await be.read_mem(size + 0x1000, 1)
        assert f"0x{size + 0x1000:X}" in str(exc.value)
        assert exc.value.size == size


async def test_memory_round_trip(be):
    """base.Backend write_mem / fill_mem / read_mem address physical memory byte-exactly."""
    await be.write_mem(0x1234, b"hello")
    await be.fill_mem(0x1239, 3, 0x21)
    assert await be.read_mem(0x1233, 10) == b"\x00hello!!!\x00"
    assert await be.read_mem(0x1234, 0) == b""


# ---------------------------------------------------------------------------------------
# URLs and options


@pytest.mark.parametrize("url", ["nosuch:", "qemu-tcp://localhost:1234", "SIMX", "ftdi://x"])
async def test_unknown_url_scheme(url):
    """hil.backends.open_backend: an unregistered scheme is UnknownBackendError naming the URL and
    the scheme and listing the known ones."""
    with pytest.raises(UnknownBackendError) as exc:
        open_backend(url)
    msg = str(exc.value)
    assert repr(url) in msg
    assert "sim" in msg  # the known schemes are listed
    assert exc.value.url == url


@pytest.mark.parametrize("url", ["", "   "])
async def test_empty_url(url):
    """hil.backends.open_backend: an empty URL names no scheme: UnknownBackendError."""
    with pytest.raises(UnknownBackendError):
        open_backend(url)


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("sim:?bogus=1", "'bogus'"),
        ("sim:?profile=qemu&speed=fast", "'speed'"),
        ("sim:?profile=bochs", "'bochs'"),
        ("sim:?profile=", "''"),
        ("sim:?mem=lots", "'lots'"),
        ("sim:?mem=1K", "'1K'"),
        ("sim:?mem=2G", "'2G'"),
        ("sim:?mem=-1M", "'-1M'"),
        ("sim:?strict=maybe", "'maybe'"),
        ("sim:?post=later", "'later'"),
        ("sim:?mem=1M&mem=2M", "'mem'"),
    ],
)
async def test_bad_options(url, named):
    """hil.backends.sim.from_url: unknown options, unknown profiles, malformed or out-of-range
    memory sizes (64K..1G) and bad flag values are BackendOptionError naming the value."""
    with pytest.raises(BackendOptionError) as exc:
        open_backend(url)
    assert named in str(exc.value)
    assert repr(url) in str(exc.value)
    assert isinstance(exc.value, HilError)


@pytest.mark.parametrize(
    ("url", "profile", "mem"),
    [
        ("sim", "intel", 16 << 20),
        ("sim:", "intel", 16 << 20),
        ("SIM:?profile=QEMU", "qemu", 16 << 20),
        ("sim:?profile=datasheet&mem=64K", "intel", 64 << 10),
        ("sim:?profile=default&mem=1M", "intel", 1 << 20),
        ("sim:?mem=0x100000&strict=0", "intel", 1 << 20),
        ("sim:?mem=2MiB", "intel", 2 << 20),
    ],
)
async def test_good_options(url, profile, mem):
    """hil.backends.sim module doc: profile aliases (intel/default/datasheet, qemu; case-insensitive
    scheme and value) and memory sizes as 64K, 1M, 0x100000 or 2MiB are accepted."""
    async with open_backend(url) as be:
        caps = be.capabilities
        assert caps.details["profile"] == profile
        assert caps.memory_window == (0, mem)
        assert caps.backend == "sim"
        assert f"profile={profile}" in caps.identity
        assert Capability.VIRTUAL_TIME in caps and Capability.DEVICES in caps


async def test_registry_lists_sim():
    """hil.backends registry: the sim scheme is always available."""
    assert "sim" in available_backends()


# ---------------------------------------------------------------------------------------
# undecoded ports, strict mode


@pytest.mark.parametrize("port", [0x3F8, 0x0022, 0x00BF, 0x00E0, 0x0480, 0xFFFF])
async def test_undecoded_port_floats(be, port):
    """docs/reference/8237.md §2.12 / §1.4: a port nothing decodes reads the floating bus 0xFF and writes to it are
    lost (they change no DMA state)."""
    before = be.machine.dma1.snapshot(), be.machine.dma2.snapshot(), bytes(be.machine.pages)
    await be.outb(port, 0x00)
    assert await be.inb(port) == 0xFF
    assert (be.machine.dma1.snapshot(), be.machine.dma2.snapshot(), bytes(be.machine.pages)) == before


@pytest.mark.parametrize("profile_url", ["sim:?strict=1", "sim:?profile=qemu&strict=1"])
async def test_strict_mode_raises_on_undecoded_ports(profile_url):
    """hil.backends.sim `strict=1`: an access to a port nothing decodes raises UndecodedPortError
    naming the port and the direction; decoded ports work as usual."""
    async with open_backend(profile_url) as be:
        with pytest.raises(UndecodedPortError) as exc:
            await be.inb(0x3F8)
        assert "0x03F8" in str(exc.value) and "read" in str(exc.value)
        assert exc.value.port == 0x3F8 and exc.value.write is False
        with pytest.raises(UndecodedPortError) as exc:
            await be.outb(0x0480, 1)
        assert "0x0480" in str(exc.value) and exc.value.write is True
        await be.outb(0x81, 0x42)
        assert await be.inb(0x81) == 0x42


async def test_strict_mode_follows_the_profile_decode():
    """docs/reference/8237.md §1.3 / docs/reference/qemu-qtest.md §8: 0x80 and the DMA1 mirror are decoded on the AT model, not
    by QEMU — so in strict mode only the qemu profile refuses them."""
    async with open_backend("sim:?strict=1") as be:
        await be.outb(0x80, 0x12)
        assert await be.inb(0x80) == 0x12
        await be.outb(0x1F, 0x05)  # write-all-mask through the DMA1 mirror
        assert await be.inb(0x1F) == 0x05
    async with open_backend("sim:?profile=qemu&strict=1") as be:
        for port in (0x80, 0x84, 0x10, 0x1F):
            with pytest.raises(UndecodedPortError):
                await be.inb(port)


# ---------------------------------------------------------------------------------------
# life cycle


async def test_closed_backend_refuses_everything():
    """base.Backend: once closed every operation raises BackendClosedError naming the backend;
    close() is idempotent."""
    be = open_backend("sim:?mem=1M")
    async with be:
        assert not be.closed
        await be.outb(0x81, 1)
    assert be.closed
    calls = [
        be.outb(0x81, 1),
        be.inb(0x81),
        be.outw(0xC4, 1),
        be.inw(0xC4),
        be.read_mem(0, 1),
        be.write_mem(0, b"x"),
        be.fill_mem(0, 1),
        be.delay(1),
        be.execute([In(0x08)]),
        be.settle(),
    ]
    for call in calls:
        with pytest.raises(BackendClosedError) as exc:
            await call
        assert "sim:?mem=1M" in str(exc.value)
    await be.close()


async def test_connect_opens():
    """hil.backends.connect returns an opened backend (qemu profile: mask reads 0xFF at 0x09 after
    reset, docs/reference/qemu-qtest.md §8)."""
    be = await connect("sim:?profile=qemu")
    try:
        assert await be.inb(0x09) == 0xFF
    finally:
        await be.close()


# ---------------------------------------------------------------------------------------
# execute()


async def test_execute_returns_reading_results_in_order(be):
    """base.Backend.execute / ops: one result per reading op (In → int, MemRead → bytes, Poll →
    last value), in program order; writes, fills and delays give none."""
    p = channel_ports(1)
    results = await be.execute(
        [
            Out(0x81, 0x5A),
            In(0x81),
            MemWrite(0x2000, b"\x01\x02\x03"),
            MemFill(0x2003, 2, 0x09),
            MemRead(0x2000, 6),
            Delay(10),
            Out(DMA2.clear_ff, 0),
            Out(0xC4, 0x34),
            Out(0xC4, 0x12),
            Out(DMA2.clear_ff, 0),
            In(0xC4, 16),
            Poll(0x81, 0xFF, 0x5A, timeout_us=100),
            Out(p.ctrl.clear_ff, 0),
            In(p.addr),
        ]
    )
    assert results == [0x5A, b"\x01\x02\x03\x09\x09\x00", 0x1234, 0x5A, 0x00]
    assert [type(r) for r in results] == [int, bytes, int, int, int]
    assert await be.execute([]) == []


async def test_poll_waits_for_tc_and_times_out(intel):
    """ops.Poll: read until value & mask == expect or the timeout passes; the result is the last
    value read (a timeout is not an error). A single-mode transfer needs virtual time to reach TC
    (docs/reference/8237.md §3.5), which the poll's waiting provides."""
    p = channel_ports(1)
    await intel.execute(
        [Out(p.ctrl.single_mask, 5), Out(p.ctrl.clear_ff, 0), Out(p.ctrl.mode, 0x45), Out(p.page, 2),
         Out(p.addr, 0), Out(p.addr, 0), Out(p.count, 0xFF), Out(p.count, 0x00), Out(p.ctrl.single_mask, 1)]
    )
    await intel.execute([DevAttach(1, "source", bytes(range(256)))])
    (status,) = await intel.execute([Poll(DMA1.status, 0x02, 0x02, timeout_us=10_000, interval_us=20)])
    assert status & 0x02
    assert await intel.read_mem(0x20000, 256) == bytes(range(256))
    (status,) = await intel.execute([Poll(DMA1.status, 0x02, 0x02, timeout_us=100)])
    assert not status & 0x02  # the TC bit was consumed by the first poll's read


async def test_concurrent_programs_never_interleave(be):
    """base.Backend: execute() is atomic per backend, so concurrent tasks' programs never
    interleave — the flip-flop hazard of docs/reference/hil-lessons.md §1.1. Fifty tasks each write their own
    ch5 address and read it back within one program; every task must see its own value."""
    p = channel_ports(5)

    async def task(i: int) -> int:
        value = 0x0101 * (i + 1)
        await asyncio.sleep(0)
        lo, hi = await be.execute(
            [
                Out(p.ctrl.clear_ff, 0),
                Out(p.addr, value & 0xFF),
                Out(p.addr, value >> 8),
                Delay(5),
                Out(p.ctrl.clear_ff, 0),
                In(p.addr),
                In(p.addr),
            ]
        )
        return (lo | hi << 8) - value

    assert await asyncio.gather(*(task(i) for i in range(50))) == [0] * 50


class _SlowBackend(Backend):
    """A backend whose transport yields to the event loop between operations (as a serial or
    network link would), to exercise the base class's per-backend lock."""

    scheme = "slow"

    def __init__(self) -> None:
        super().__init__("slow:")
        self.trace: list[tuple[int, int]] = []

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(backend="slow", identity="slow")

    async def _execute(self, ops: Sequence[Op]) -> list[Result]:
        out: list[Result] = []
        for op in ops:
            await asyncio.sleep(0)
            if isinstance(op, Out):
                self.trace.append((op.port, op.value))
            elif isinstance(op, In):
                out.append(0)
        return out

    async def _settle(self, timeout_s: float | None) -> None:
        await asyncio.sleep(0)


async def test_base_class_lock_serialises_programs():
    """base.Backend.execute takes a per-backend lock, so even a transport that yields between
    operations runs each program contiguously."""
    async with _SlowBackend() as be:

        async def task(i: int) -> None:
            await be.execute([Out(0x80, i), Out(0x81, i), Out(0x82, i)])

        await asyncio.gather(*(task(i) for i in range(10)))
        runs = [be.trace[k : k + 3] for k in range(0, len(be.trace), 3)]
        assert len(runs) == 10
        for run in runs:
            assert [port for port, _ in run] == [0x80, 0x81, 0x82]
            assert len({value for _, value in run}) == 1


# ---------------------------------------------------------------------------------------
# settle()


async def test_settle_returns_when_idle(be):
    """settle(): returns once no DMA activity can progress (nothing programmed: at once)."""
    await be.settle()
    await be.settle(timeout_s=0)


async def test_settle_completes_a_transfer(be):
    """settle() runs virtual time until the transfer has finished (docs/reference/8237.md §3.1: count+1 = 100
    bytes of a single-mode channel, one per bus grant, §3.5)."""
    data = bytes(range(100))
    p = channel_ports(3)
    await be.execute(
        [Out(p.ctrl.single_mask, 7), Out(p.ctrl.clear_ff, 0), Out(p.ctrl.mode, 0x47), Out(p.page, 1),
         Out(p.addr, 0), Out(p.addr, 0), Out(p.count, 99), Out(p.count, 0), Out(p.ctrl.single_mask, 3)]
    )
    await be.execute([DevAttach(3, "source", data)])
    await be.settle()
    assert await be.read_mem(0x10000, 100) == data


@pytest.mark.parametrize("ch", [1, 6])
async def test_settle_times_out_on_endless_autoinit(intel, ch):
    """An autoinit channel (docs/reference/8237.md §3.2) feeding a Sink that never fills never goes idle, so
    settle() raises SettleTimeout (naming the channel) instead of spinning forever."""
    p = channel_ports(ch)
    await intel.execute(
        [Out(p.ctrl.single_mask, 4 | p.local), Out(p.ctrl.clear_ff, 0), Out(p.ctrl.mode, 0x58 | p.local),
         Out(p.page, 2), Out(p.addr, 0), Out(p.addr, 0), Out(p.count, 0xFF), Out(p.count, 0),
         Out(p.ctrl.single_mask, p.local)]
    )
    await intel.execute([DevAttach(ch, "sink")])
    with pytest.raises(SettleTimeout) as exc:
        await intel.settle(timeout_s=0.01)
    assert str(ch) in str(exc.value)
    (sink,) = await intel.execute([DevState(ch, max_bytes=0)])
    assert sink.moved > 256 << (ch >= 4)  # it really was running round the ring
    # delay() is the way to let such a channel run: it returns
    await intel.delay(100)


async def test_settle_on_qemu_autoinit_terminates(qemu):
    """QEMU's i8257 has no autoinit reload (docs/reference/8237.md §5, docs/reference/qemu-qtest.md §8), so the same endless Sink
    is served once and settle() returns."""
    p = channel_ports(1)
    await qemu.execute(
        [Out(p.ctrl.clear_ff, 0), Out(p.ctrl.mode, 0x59), Out(p.page, 2), Out(p.addr, 0), Out(p.addr, 0),
         Out(p.count, 0xFF), Out(p.count, 0), Out(p.ctrl.single_mask, 1)]
    )
    await qemu.execute([DevAttach(1, "sink")])
    await qemu.settle(timeout_s=0.01)
    (sink,) = await qemu.execute([DevState(1, max_bytes=0)])
    assert sink.moved == 256
