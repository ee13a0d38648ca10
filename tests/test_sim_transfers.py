"""Transfer semantics of the simulated PC/AT DMA subsystem, for both profiles.

References: docs/reference/8237.md §3 (count/TC, autoinit, wrap, modes, 16-bit channels, priority, cascade),
§5 (QEMU column), §6 (reference model); docs/reference/qemu-qtest.md §8. Expected memory contents and register
values are computed from those rules in the tests.
"""

from __future__ import annotations

import pytest

from hil.errors import DeviceError
from hil.ops import In, Out
from hil.ports import DMA1, DMA2, channel_ports
from hil.sim.devices import BusMaster, Device, Sink, Source

DATA_CHANNELS = [0, 1, 2, 3, 5, 6, 7]
LOW = [0, 1, 2, 3]
HIGH = [5, 6, 7]

SINGLE_WRITE = 0x44
SINGLE_READ = 0x48
DEMAND_WRITE = 0x04
BLOCK_WRITE = 0x84
BLOCK_READ = 0x88
AUTOINIT = 0x10
DECREMENT = 0x20


def unit(ch: int) -> int:
    return 2 if ch >= 4 else 1


def pattern(n: int, seed: int = 0) -> bytes:
    """Bytes with no zero and no short period, so misplaced data shows."""
    return bytes(((i * 73 + seed * 31 + (i >> 8) * 7) % 255) + 1 for i in range(n))


def phys_intel(ch: int, page: int, addr: int) -> int:
    """docs/reference/8237.md §6: ch0-3 page<<16|addr; ch5-7 (page & 0xFE)<<16 | addr<<1."""
    return ((page & 0xFE) << 16) | (addr << 1) if ch >= 4 else (page << 16) | addr


def phys_qemu(ch: int, page: int, addr: int) -> int:
    """docs/reference/8237.md §3.6 'Differences' [QEMU]: page<<16 | addr<<dshift, then linear."""
    return (page << 16) | (addr << (1 if ch >= 4 else 0))


class Fifo(Device):
    """A device with a refillable FIFO: DREQ is high exactly while it holds data."""

    def __init__(self) -> None:
        super().__init__(dreq=False)
        self.buf = bytearray()

    def feed(self, data: bytes) -> None:
        self.buf += data
        self.dreq = bool(self.buf)

    def supply(self, channel: int, width: int) -> int:
        size = width // 8
        chunk, self.buf[:size] = bytes(self.buf[:size]), b""
        if not self.buf:
            self.dreq = False
        return int.from_bytes(chunk, "little")


class Logged(Source):
    """A Source that appends its channel number to a shared log for every unit it supplies."""

    def __init__(self, data: bytes, log: list[int]) -> None:
        super().__init__(data)
        self.log = log

    def supply_many(self, channel: int, count: int, width: int) -> bytes:
        self.log.extend([channel] * count)
        return super().supply_many(channel, count, width)


class WordDevice(Device):
    """Supplies the 16-bit values it was given (one per unit) and records the ones it accepts."""

    def __init__(self, words: list[int] | None = None, *, dreq: bool = True) -> None:
        super().__init__(dreq=dreq)
        self.words = list(words or [])
        self.accepted: list[tuple[int, int]] = []

    def supply(self, channel: int, width: int) -> int:
        value = self.words.pop(0)
        if not self.words:
            self.dreq = False
        return value

    def accept(self, channel: int, value: int, width: int) -> None:
        self.accepted.append((value, width))


# ---------------------------------------------------------------------------------------
# §3.1 count, terminal count


@pytest.mark.parametrize("ch", DATA_CHANNELS)
@pytest.mark.parametrize("count", [0, 1, 0xFF, 0x1234])
async def test_count_plus_one_units_then_tc(be, dma, ch, count):
    """docs/reference/8237.md §3.1/§2.2: a channel performs count+1 transfers (units: bytes on ch0-3, words on
    ch5-7), TC when the count goes 0 → 0xFFFF; afterwards the count reads 0xFFFF and the
    address base + count + 1 (mod 2^16). QEMU agrees after TC (§5, docs/reference/qemu-qtest.md §8)."""
    u = unit(ch)
    data = pattern((count + 1 + 5) * u)  # more than needed: exactly count+1 units may move
    await dma.program(ch, SINGLE_WRITE, 0x0000, count, page=0x20)
    src = Source(data)
    dma.machine.attach(ch, src)
    await be.settle()
    assert src.pos == (count + 1) * u
    assert src.tc_count == 1
    assert await be.read_mem(0x200000, (count + 1) * u + 1) == data[: (count + 1) * u] + b"\x00"
    assert await dma.count(ch) == 0xFFFF
    assert await dma.addr(ch) == (count + 1) & 0xFFFF
    assert await dma.status(ch) & 0x0F == 1 << (ch & 3)


@pytest.mark.parametrize("ch", DATA_CHANNELS)
async def test_no_tc_one_unit_short(be, dma, ch):
    """docs/reference/8237.md §3.1: TC only after count+1 transfers: with one unit missing the count reads 0
    and no TC bit is set."""
    u = unit(ch)
    await dma.program(ch, SINGLE_WRITE, 0x0000, 9, page=0x20)
    dma.machine.attach(ch, Source(pattern(9 * u)))
    await be.settle()
    assert await dma.count(ch) == 0
    assert await dma.status(ch) == 0
    dma.machine.attach(ch, Source(pattern(u, seed=9)))  # the last unit
    await be.settle()
    assert await dma.count(ch) == 0xFFFF
    assert await dma.status(ch) == 1 << (ch & 3)


@pytest.mark.parametrize("ch", DATA_CHANNELS)
async def test_mask_at_tc(be, dma, profile, ch):
    """docs/reference/8237.md §2.9 [SIO]: a channel's mask bit is set at TC unless it is in autoinit mode; §5
    'Mask set at TC (no autoinit)': QEMU no (docs/reference/qemu-qtest.md §6.1: mask stays 0xFB after ch2 TC)."""
    await dma.program(ch, SINGLE_WRITE, 0x0000, 3, page=0x20)
    assert not await dma.masked(ch)
    dma.machine.attach(ch, Source(pattern(4 * unit(ch))))
    await be.settle()
    assert await dma.masked(ch) == (profile == "intel")


@pytest.mark.parametrize("ch", DATA_CHANNELS)
async def test_autoinit_reload(be, dma, profile, ch):
    """docs/reference/8237.md §3.2: with autoinit, at TC current address and count are reloaded from base and the
    mask is not set, so the channel keeps running; the page register is not changed (§1.3).
    §5 'Autoinit reload done by controller': QEMU no — it neither reloads nor masks."""
    u = unit(ch)
    count = 7
    data = pattern((count + 1) * u * 2 + 3 * u)  # two full rounds and three more units
    await dma.program(ch, SINGLE_WRITE | AUTOINIT, 0x0100, count, page=0x22)
    src = Source(data)
    dma.machine.attach(ch, src)
    await be.settle()
    start = phys_intel(ch, 0x22, 0x0100)  # page even: both profiles agree
    n = (count + 1) * u
    if profile == "intel":
        assert src.pos == len(data)
        # the last round overwrote the first three units of the buffer
        assert await be.read_mem(start, n) == data[2 * n :] + data[n + 3 * u : 2 * n]
        assert await dma.addr(ch) == 0x0100 + 3
        assert await dma.count(ch) == count - 3
        assert not await dma.masked(ch)
        assert await dma.status(ch) & 0x0F == 1 << (ch & 3)
        assert await be.inb(channel_ports(ch).page) == 0x22
    else:
        assert src.pos == n  # stops at TC: no reload
        assert await be.read_mem(start, n) == data[:n]
        assert await dma.count(ch) == 0xFFFF
        assert await dma.addr(ch) == 0x0100 + count + 1


# ---------------------------------------------------------------------------------------
# §3.3 / §3.6 address wrap, page bit 0, word transfers


@pytest.mark.parametrize("ch", DATA_CHANNELS)
async def test_address_wraps_inside_page(be, dma, profile, ch):
    """docs/reference/8237.md §3.3: the 16-bit address counter wraps inside the 64 KiB page (ch0-3), 128 KiB
    block (ch5-7, §3.6); the page latch is not incremented. §5 '64K/128K wrap within page':
    QEMU accesses memory linearly and crosses into the next page."""
    u = unit(ch)
    data = pattern(32 * u)
    await dma.program(ch, SINGLE_WRITE, 0xFFF0, 31, page=0x30)
    dma.machine.attach(ch, Source(data))
    await be.settle()
    block = 0x10000 * u
    top = 0x300000 + block - 16 * u  # where the first half goes in both profiles
    assert await be.read_mem(top, 16 * u) == data[: 16 * u]
    if profile == "intel":
        assert await be.read_mem(0x300000, 16 * u) == data[16 * u :]
        assert await be.read_mem(0x300000 + block, 16 * u) == bytes(16 * u)
    else:
        assert await be.read_mem(0x300000 + block, 16 * u) == data[16 * u :]
        assert await be.read_mem(0x300000, 16 * u) == bytes(16 * u)
    assert await dma.addr(ch) == 0x0010  # the register itself wraps in both


@pytest.mark.parametrize("ch", DATA_CHANNELS)
async def test_decrement_wraps_inside_page_intel(intel, intel_dma, ch):
    """docs/reference/8237.md §3.3: decrement wraps 0x0000 → 0xFFFF within the same page."""
    u = unit(ch)
    data = pattern(8 * u)
    await intel_dma.program(ch, SINGLE_WRITE | DECREMENT, 0x0003, 7, page=0x30)
    intel_dma.machine.attach(ch, Source(data))
    await intel.settle()
    for i in range(8):
        word = (0x0003 - i) & 0xFFFF
        assert await intel.read_mem(phys_intel(ch, 0x30, word), u) == data[i * u : (i + 1) * u], i
    assert await intel.read_mem(0x300000 - u, u) == bytes(u)  # nothing below the page
    assert await intel_dma.addr(ch) == 0xFFFB


@pytest.mark.parametrize("ch", HIGH)
async def test_16bit_page_bit0(be, dma, profile, ch):
    """docs/reference/8237.md §3.6: on ch5-7 page bit 0 is ignored — physical = (page & 0xFE)<<16 | word<<1;
    QEMU ORs it in (docs/reference/qemu-qtest.md §6.3: page 3, word 0x1000 → 0x32000 in QEMU, 0x22000 on an
    AT)."""
    await dma.program(ch, SINGLE_WRITE, 0x1000, 3, page=0x03)
    data = pattern(8)
    dma.machine.attach(ch, Source(data))
    await be.settle()
    where = 0x22000 if profile == "intel" else 0x32000
    other = 0x32000 if profile == "intel" else 0x22000
    assert await be.read_mem(where, 8) == data
    assert await be.read_mem(other, 8) == bytes(8)


@pytest.mark.parametrize("ch", HIGH)
async def test_16bit_channels_move_little_endian_words(be, dma, ch):
    """docs/reference/8237.md §2.2/§3.6: ch5-7 move 16-bit words; the ISA bus is little-endian (devices.py: a
    unit is one little-endian word), so word 0x1234 lands as 34 12, and a word read from memory
    reaches the device as one 16-bit value."""
    dev = WordDevice([0x1234, 0xABCD, 0x00FF])
    await dma.program(ch, SINGLE_WRITE, 0x0800, 2, page=0x40)
    dma.machine.attach(ch, dev)
    await be.settle()
    assert await be.read_mem(0x401000, 6) == bytes([0x34, 0x12, 0xCD, 0xAB, 0xFF, 0x00])
    await be.write_mem(0x402000, bytes([0x01, 0x02, 0x03, 0x04]))
    reader = WordDevice(dreq=True)
    await dma.program(ch, SINGLE_READ, 0x1000, 1, page=0x40)
    dma.machine.attach(ch, reader)
    await be.settle()
    assert reader.accepted == [(0x0201, 16), (0x0403, 16)]


# ---------------------------------------------------------------------------------------
# §3.5 modes


@pytest.mark.parametrize("ch", DATA_CHANNELS)
async def test_demand_mode_pauses_and_resumes(be, dma, ch):
    """docs/reference/8237.md §3.5: demand mode — transfers continue while DREQ is active; when it goes inactive
    the transfer is suspended with the registers holding the progress and resumes when DREQ
    returns. (QEMU: the device moves what it has while its request is up, same outcome.)"""
    u = unit(ch)
    data = pattern(100 * u)
    fifo = Fifo()
    await dma.program(ch, DEMAND_WRITE, 0x0000, 99, page=0x50)
    dma.machine.attach(ch, fifo)
    fifo.feed(data[: 30 * u])
    await be.settle()
    assert await dma.count(ch) == 99 - 30
    assert await dma.addr(ch) == 30
    assert await dma.status(ch) == 0  # paused: no TC, DREQ low
    fifo.feed(data[30 * u :])
    await be.settle()
    assert await dma.count(ch) == 0xFFFF
    assert await be.read_mem(0x500000, 100 * u + 1) == data + b"\x00"
    assert await dma.status(ch) == 1 << (ch & 3)


@pytest.mark.parametrize("ch", DATA_CHANNELS)
@pytest.mark.parametrize(
    ("mode", "done_at_once"),
    [(BLOCK_WRITE, True), (DEMAND_WRITE, True), (SINGLE_WRITE, False)],
    ids=["block", "demand", "single"],
)
async def test_bus_hold_block_demand_vs_single(intel, intel_dma, ch, mode, done_at_once):
    """docs/reference/8237.md §3.5: block and demand hold the bus until TC (or DREQ drops), so the CPU's next
    port access only happens after the whole run; single mode releases the bus after every
    transfer, so CPU accesses interleave with a long transfer."""
    u = unit(ch)
    await intel_dma.program(ch, mode, 0x0000, 999, page=0x50, unmask=False)
    intel_dma.machine.attach(ch, Source(pattern(1000 * u)))
    p = channel_ports(ch)
    lo, hi, status = await intel.execute(
        [Out(p.ctrl.single_mask, p.local), Out(p.ctrl.clear_ff, 0), In(p.count), In(p.count), In(p.ctrl.status)]
    )
    count = lo | (hi << 8)
    if done_at_once:
        assert count == 0xFFFF
        assert status & (1 << p.local)
    else:
        assert 999 - 20 < count < 999
        assert not status & (1 << p.local)
        await intel.settle()
        assert await intel_dma.count(ch) == 0xFFFF


@pytest.mark.parametrize("ch", DATA_CHANNELS)
async def test_block_mode_runs_to_tc_after_dreq_drops(intel, intel_dma, ch):
    """docs/reference/8237.md §3.5: block mode — once started, transfers continue until TC; DREQ need only be
    held until DACK. A Source with fewer bytes than the block drops DREQ but the block goes on
    (it drives a floating bus, 0xFF, for the rest: devices.py Source)."""
    u = unit(ch)
    data = pattern(10 * u)
    await intel_dma.program(ch, BLOCK_WRITE, 0x0000, 19, page=0x50)
    src = Source(data)
    intel_dma.machine.attach(ch, src)
    await intel.settle()
    assert await intel_dma.count(ch) == 0xFFFF
    assert await intel.read_mem(0x500000, 20 * u) == data + b"\xff" * (10 * u)
    assert src.underruns == 10 * u


@pytest.mark.parametrize("ch", DATA_CHANNELS)
@pytest.mark.parametrize("mode", [SINGLE_WRITE, DEMAND_WRITE], ids=["single", "demand"])
async def test_single_and_demand_stop_when_dreq_drops(intel, intel_dma, ch, mode):
    """docs/reference/8237.md §3.5: single and demand mode only transfer while DREQ is active: a Source with 10
    units for a 20-unit count leaves count 9 and no TC (unlike block mode)."""
    u = unit(ch)
    data = pattern(10 * u)
    await intel_dma.program(ch, mode, 0x0000, 19, page=0x50)
    intel_dma.machine.attach(ch, Source(data))
    await intel.settle()
    assert await intel_dma.count(ch) == 9
    assert await intel.read_mem(0x500000, 20 * u) == data + bytes(10 * u)
    assert await intel_dma.status(ch) == 0


@pytest.mark.parametrize("ch", DATA_CHANNELS)
async def test_cascade_mode_channel_moves_nothing(intel, intel_dma, ch):
    """docs/reference/8237.md §3.5: a cascade channel only relays DREQ/DACK for a bus master; it generates no
    addresses and moves nothing itself (the master gets its tenure and gives the bus back)."""
    await intel_dma.program(ch, 0xC0, 0x0000, 15, page=0x50)
    master = BusMaster(5_000)
    intel_dma.machine.attach(ch, master)
    await intel.settle()
    assert master.tenures == 1
    assert await intel_dma.count(ch) == 15
    assert await intel.read_mem(0x500000, 32) == bytes(32)


# ---------------------------------------------------------------------------------------
# §3.6 cascade gating of DMA1 through channel 4


@pytest.mark.parametrize("ch", LOW)
@pytest.mark.parametrize(
    "gate",
    [
        [Out(DMA2.single_mask, 0x04)],  # mask channel 4
        [Out(DMA2.command, 0x04)],  # disable DMA2
        [Out(DMA2.master_clear, 0)],  # master clear of DMA2 masks channel 4
        [Out(DMA2.all_mask, 0x01)],
        [Out(DMA2.mode, 0x40)],  # channel 4 no longer in cascade mode
    ],
    ids=["mask4", "disable_dma2", "master_clear_dma2", "all_mask", "ch4_not_cascade"],
)
async def test_cascade_gating(be, dma, profile, ch, gate):
    """docs/reference/8237.md §3.6 / §6: DMA1 requests the bus through DMA2 channel 4, so masking channel 4 or
    disabling DMA2 stops channels 0-3 [SIO], [PCH] (and §6: ch4 must be in cascade). §5 'Mask ch4
    blocks ch0-3' / 'Controller disable on DMA2 blocks ch0-3': QEMU no (docs/reference/qemu-qtest.md §8
    'cascade channel 4: not modelled as a gate')."""
    await be.execute(gate)
    data = pattern(16)
    await dma.program(ch, SINGLE_WRITE, 0x0000, 15, page=0x60)
    src = Source(data)
    dma.machine.attach(ch, src)
    await be.settle()
    if profile == "intel":
        assert src.pos == 0
        assert await dma.count(ch) == 15
        # DMA1 itself still sees the request (status is live, §2.3)
        assert await dma.status(ch) == 1 << (4 + ch)
        # re-open the gate the way the BIOS / i8237 resume code does: cascade mode, unmask, enable
        await be.execute([Out(DMA2.command, 0), Out(DMA2.mode, 0xC0), Out(DMA2.single_mask, 0x00)])
        await be.settle()
    assert src.pos == 16
    assert await be.read_mem(0x600000, 16) == data


@pytest.mark.parametrize("ch", HIGH)
async def test_masking_ch4_does_not_stop_dma2_channels(intel, intel_dma, ch):
    """docs/reference/8237.md §3.6: the channel-4 gate concerns DMA1 only; ch5-7 are DMA2's own channels."""
    await intel.outb(DMA2.single_mask, 0x04)
    data = pattern(8)
    await intel_dma.program(ch, SINGLE_WRITE, 0x0000, 3, page=0x60)
    intel_dma.machine.attach(ch, Source(data))
    await intel.settle()
    assert await intel.read_mem(0x600000, 8) == data


# ---------------------------------------------------------------------------------------
# §3.9 priority


async def _two_channel_race(be, dma, a: int, b: int, mode: int, n: int = 4) -> list[int]:
    """Program both channels (unmasked, no device yet), then connect both devices at the same
    instant of virtual time (attaching costs none) and let the arbiters decide."""
    log: list[int] = []
    for i, ch in enumerate((a, b)):
        await dma.program(ch, mode, 0x0000, n - 1, page=0x70 + 2 * i)
    for i, ch in enumerate((a, b)):
        dma.machine.attach(ch, Logged(pattern(n * unit(ch), seed=i), log))
    await be.settle()
    return log


@pytest.mark.parametrize(("a", "b"), [(0, 1), (0, 3), (2, 3), (1, 2), (5, 6), (5, 7), (6, 7), (0, 5), (3, 5), (3, 7)])
@pytest.mark.parametrize("order", ["ab", "ba"])
async def test_fixed_priority(intel, intel_dma, a, b, order):
    """docs/reference/8237.md §3.9: fixed priority (command bit 4 = 0) — channel 0 highest, 3 lowest; on the AT
    ch0-3 (through DMA2 channel 4) come before 5-7. Single mode re-arbitrates after every
    transfer (§3.5), so the higher channel completes first whichever was set up first."""
    first, second = (a, b) if order == "ab" else (b, a)
    log = await _two_channel_race(intel, intel_dma, first, second, SINGLE_WRITE)
    assert log == [a] * 4 + [b] * 4


@pytest.mark.parametrize(("a", "b"), [(0, 1), (1, 3), (5, 6), (6, 7), (1, 5)])
async def test_rotating_priority(intel, intel_dma, a, b):
    """docs/reference/8237.md §3.9: rotating priority (command bit 4) — the channel just serviced becomes lowest,
    initial order 0,1,2,3; with single-mode re-arbitration two requesting channels alternate.
    For a DMA1 and a DMA2 channel the rotation is DMA2's (channel 4 against ch5-7)."""
    await intel.outb(DMA1.command, 0x10)
    await intel.outb(DMA2.command, 0x10)
    log = await _two_channel_race(intel, intel_dma, b, a, SINGLE_WRITE)
    assert log == [a, b] * 4


async def test_rotating_priority_three_channels(intel, intel_dma):
    """docs/reference/8237.md §3.9 [MAME] priority[] = last+1, last+2, last+3, last: three requesters are
    served round-robin 1, 2, 3, 1, 2, 3 ..."""
    await intel.outb(DMA1.command, 0x10)
    log: list[int] = []
    for ch in (3, 2, 1):
        await intel_dma.program(ch, SINGLE_WRITE, 0x0000, 2, page=0x70 + ch, unmask=False)
        intel_dma.machine.attach(ch, Logged(pattern(3), log))
    await intel.outb(DMA1.clear_mask, 0)
    await intel.settle()
    assert log == [1, 2, 3] * 3


async def test_qemu_services_in_channel_order(qemu, qemu_dma):
    """docs/reference/qemu-qtest.md §8: modes and priority are not distinguished — QEMU's DMA_run walks
    controller 0 then 1, channel 0..3, and each device moves what it likes; rotating priority
    (0x10) is ignored (§2.4)."""
    await qemu.outb(DMA2.command, 0x10)
    log = await _two_channel_race(qemu, qemu_dma, 6, 1, SINGLE_WRITE)
    assert log == [1] * 4 + [6] * 4


# ---------------------------------------------------------------------------------------
# devices: Source / Sink semantics (hil.sim.devices), machine.attach


async def test_source_dreq_follows_data(intel, intel_dma):
    """devices.py Source: DREQ is high while data remains, drops by itself when empty; an empty
    source or dreq=False never requests."""
    assert Source(b"ab").dreq
    assert not Source(b"").dreq
    assert not Source(b"ab", dreq=False).dreq
    src = Source(b"abc")
    await intel_dma.program(1, SINGLE_WRITE, 0x0000, 9, page=0x10)
    intel.machine.attach(1, src)
    await intel.settle()
    assert not src.dreq and src.remaining == 0
    assert await intel.read_mem(0x100000, 4) == b"abc\x00"
    assert await intel_dma.count(1) == 9 - 3


@pytest.mark.parametrize("ch", DATA_CHANNELS)
@pytest.mark.parametrize("mode", [SINGLE_READ, 0x08], ids=["single", "demand"])
async def test_sink_without_dreq_takes_nothing_by_itself(be, dma, ch, mode):
    """devices.py Sink(dreq=False): it never requests, so a hardware-paced channel moves nothing;
    only a software request in block mode delivers to it (docs/reference/8237.md §2.6, tested in
    test_sim_registers)."""
    sink = Sink(dreq=False)
    await dma.program(ch, mode, 0x0000, 7, page=0x10)
    dma.machine.attach(ch, sink)
    await be.settle()
    assert sink.received == b""
    assert await dma.count(ch) == 7


@pytest.mark.parametrize("ch", DATA_CHANNELS)
async def test_sink_capacity_drops_dreq(be, dma, ch):
    """devices.py Sink(capacity): it requests while it has room, so a hardware-paced transfer
    stops when it is full: count+1 = 20 units offered, capacity 6 units → count reads 13."""
    u = unit(ch)
    data = pattern(20 * u)
    await be.write_mem(0x100000, data)
    sink = Sink(capacity=6 * u)
    await dma.program(ch, SINGLE_READ, 0x0000, 19, page=0x10)
    dma.machine.attach(ch, sink)
    await be.settle()
    assert bytes(sink.received) == data[: 6 * u]
    assert sink.overruns == 0
    assert await dma.count(ch) == 13


@pytest.mark.parametrize("ch", DATA_CHANNELS)
async def test_sink_overrun_counted_in_block_mode(intel, intel_dma, ch):
    """docs/reference/8237.md §3.5 block mode runs to TC whatever DREQ does; devices.py Sink counts what does not
    fit in ``overruns`` and never keeps it."""
    u = unit(ch)
    data = pattern(20 * u)
    await intel.write_mem(0x100000, data)
    sink = Sink(capacity=6 * u)
    await intel_dma.program(ch, BLOCK_READ, 0x0000, 19, page=0x10)
    intel_dma.machine.attach(ch, sink)
    await intel.settle()
    assert bytes(sink.received) == data[: 6 * u]
    assert sink.overruns == 14 * u
    assert await intel_dma.count(ch) == 0xFFFF


@pytest.mark.parametrize("ch", DATA_CHANNELS)
async def test_attach_replaces_device(be, dma, ch):
    """machine.attach connects a device to the channel's DREQ/DACK, replacing the one there."""
    first = Source(b"", dreq=False)
    second = Source(pattern(4 * unit(ch)))
    await dma.program(ch, SINGLE_WRITE, 0x0000, 3, page=0x10)
    dma.machine.attach(ch, first)
    dma.machine.attach(ch, second)
    await be.settle()
    assert dma.machine.devices[ch] is second
    assert second.pos == 4 * unit(ch)
    # the detached device no longer drives the line
    first.dreq = True
    assert await dma.status(ch) & 0xF0 == 0


@pytest.mark.parametrize("channel", [4, 8, -1, "1", None])
async def test_attach_refuses_channel_4_and_bad_channels(be, channel):
    """docs/reference/8237.md §3.6: channel 4 is the cascade input from DMA1 and cannot carry data; channels are
    0-7. Both are refused with hil.errors.DeviceError."""
    with pytest.raises(DeviceError) as exc:
        be.machine.attach(channel, Source(b"x"))
    if channel == 4:
        assert "channel 4" in str(exc.value)
    assert channel not in be.machine.devices


async def test_attach_refuses_non_device(be):
    """machine.attach only accepts hil.sim.devices.Device instances: DeviceError otherwise."""
    with pytest.raises(DeviceError):
        be.machine.attach(1, object())


@pytest.mark.parametrize("ch", DATA_CHANNELS)
async def test_device_sees_tc(be, dma, ch):
    """docs/reference/8237.md §3.1: T/C is signalled to the card during the last transfer (devices.py
    Device.terminal_count)."""
    src = Source(pattern(16 * unit(ch)))
    await dma.program(ch, SINGLE_WRITE, 0x0000, 7, page=0x10)
    dma.machine.attach(ch, src)
    await be.settle()
    assert src.tc_count == 1
    assert src.pos == 8 * unit(ch)


@pytest.mark.parametrize("ch", DATA_CHANNELS)
async def test_masked_channel_does_not_transfer_until_unmasked(be, dma, ch):
    """docs/reference/8237.md §2.7 / §6 service condition: DREQ is served only while the channel is unmasked."""
    data = pattern(4 * unit(ch))
    await dma.program(ch, SINGLE_WRITE, 0x0000, 3, page=0x10, unmask=False)
    dma.machine.attach(ch, Source(data))
    await be.settle()
    assert await be.read_mem(0x100000, len(data)) == bytes(len(data))
    p = channel_ports(ch)
    await be.outb(p.ctrl.single_mask, p.local)
    await be.settle()
    assert await be.read_mem(0x100000, len(data)) == data
