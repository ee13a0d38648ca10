"""Register-level behaviour of the simulated PC/AT DMA subsystem, for both profiles.

References: docs/reference/8237.md §1 (port map), §2 (registers), §5 (emulator differences, QEMU column),
§6 (reference model); docs/reference/qemu-qtest.md §8 (QEMU 7.2 observations). Every expected value below is
derived from those sections, never read back from the model first.
"""

from __future__ import annotations

import pytest

from hil.ops import In, Out
from hil.ports import (
    DMA1,
    DMA2,
    PAGE_CHANNEL,
    PAGE_FILE,
    PAGE_PORT,
    POST_PORT,
    channel_ports,
    controller_of,
)
from hil.sim.devices import Sink, Source

ALL_CHANNELS = list(range(8))
DATA_CHANNELS = [0, 1, 2, 3, 5, 6, 7]

SINGLE_WRITE = 0x44  # single, increment, no autoinit, I/O -> memory (Linux DMA_MODE_READ)
SINGLE_READ = 0x48  # single, memory -> I/O (Linux DMA_MODE_WRITE)
BLOCK_WRITE = 0x84
BLOCK_READ = 0x88
VERIFY_SINGLE = 0x40


def unit(ch: int) -> int:
    return 2 if ch >= 4 else 1


def phys_intel(ch: int, page: int, addr: int) -> int:
    """docs/reference/8237.md §6: ch0-3 page<<16|addr; ch5-7 (page & 0xFE)<<16 | addr<<1."""
    return ((page & 0xFE) << 16) | (addr << 1) if ch >= 4 else (page << 16) | addr


def phys_qemu(ch: int, page: int, addr: int) -> int:
    """docs/reference/qemu-qtest.md §8 '16-bit addressing': page<<16 | word<<1 (page bit 0 OR-ed in)."""
    return (page << 16) | (addr << (1 if ch >= 4 else 0))


def phys(profile: str, ch: int, page: int, addr: int) -> int:
    return phys_intel(ch, page, addr) if profile == "intel" else phys_qemu(ch, page, addr)


def other_channel(ch: int) -> int:
    """Another channel on the same controller."""
    return (ch & 4) | ((ch + 1) & 3)


# ---------------------------------------------------------------------------------------
# §2.1 byte-pointer flip-flop


@pytest.mark.parametrize("ch", ALL_CHANNELS)
async def test_ff_shared_by_address_and_count_reads_and_writes(be, ch):
    """docs/reference/8237.md §2.1 (one FF per controller, toggled by reads and writes of every address/count
    register); docs/reference/qemu-qtest.md §8 'flip-flop': `0c←0; A←34; A←12; C←78; C←56; 0c←0` then
    `in A, A, C, C` → 34 12 78 56."""
    p = channel_ports(ch)
    c = p.ctrl
    got = await be.execute(
        [
            Out(c.clear_ff, 0),
            Out(p.addr, 0x34),
            Out(p.addr, 0x12),
            Out(p.count, 0x78),
            Out(p.count, 0x56),
            Out(c.clear_ff, 0),
            In(p.addr),
            In(p.addr),
            In(p.count),
            In(p.count),
        ]
    )
    assert got == [0x34, 0x12, 0x78, 0x56]


@pytest.mark.parametrize("ch", ALL_CHANNELS)
async def test_ff_read_toggles_so_next_write_hits_msb(be, dma, ch):
    """docs/reference/8237.md §2.1: reads toggle the FF too; docs/reference/qemu-qtest.md §8 'read then write':
    `0c←0; in A; A←AB` → address 0xAB34."""
    p = channel_ports(ch)
    await be.execute([Out(p.ctrl.clear_ff, 0), Out(p.addr, 0x34), Out(p.addr, 0x12)])
    lsb = await be.execute([Out(p.ctrl.clear_ff, 0), In(p.addr), Out(p.addr, 0xAB)])
    assert lsb == [0x34]
    assert await dma.addr(ch) == 0xAB34


@pytest.mark.parametrize("ch", ALL_CHANNELS)
async def test_ff_shared_by_all_channels_of_a_controller(be, dma, ch):
    """docs/reference/8237.md §2.1: one FF shared by *all* address and count registers of the four channels."""
    other = other_channel(ch)
    po, p = channel_ports(other), channel_ports(ch)
    await be.execute([Out(po.ctrl.clear_ff, 0), Out(po.addr, 0x00), Out(po.addr, 0x00)])
    # LSB to ch's address sets the FF, so the next byte to *another* channel is its MSB
    await be.execute([Out(p.ctrl.clear_ff, 0), Out(p.addr, 0x11), Out(po.addr, 0x22)])
    assert await dma.addr(other) == 0x2200


@pytest.mark.parametrize("ch", ALL_CHANNELS)
@pytest.mark.parametrize("how", ["clear_ff", "master_clear"])
async def test_ff_cleared_by_clear_ff_write_and_master_clear(be, dma, ch, how):
    """docs/reference/8237.md §2.1: cleared by a write of any value to 0x0C/0xD8 and by master clear
    (0x0D/0xDA); §2.10 master clear clears the byte-pointer FF."""
    p = channel_ports(ch)
    clear_port = p.ctrl.clear_ff if how == "clear_ff" else p.ctrl.master_clear
    await be.execute(
        [
            Out(p.ctrl.clear_ff, 0),
            Out(p.addr, 0x77),  # FF now 1
            Out(clear_port, 0xA5),  # any value
            Out(p.addr, 0x34),  # LSB again
            Out(p.addr, 0x12),
        ]
    )
    assert await dma.addr(ch) == 0x1234


@pytest.mark.parametrize(("a", "b"), [(1, 5), (5, 1), (3, 7), (6, 0)])
async def test_ff_independent_between_controllers(be, dma, a, b):
    """docs/reference/8237.md §2.1 [ICH4]: two byte-pointer flip-flops, one per controller, acting
    independently; clearing one (clear-FF or master clear) leaves the other alone."""
    pa, pb = channel_ports(a), channel_ports(b)
    await be.execute(
        [
            Out(DMA1.clear_ff, 0),
            Out(DMA2.clear_ff, 0),
            Out(pa.addr, 0x11),  # a's controller: FF = 1
            Out(pb.addr, 0x22),  # b's controller still at LSB
            Out(pb.addr, 0x33),
            Out(pb.ctrl.clear_ff, 0),
            Out(pb.ctrl.master_clear, 0),
            Out(pa.addr, 0x44),  # a's controller: still MSB
        ]
    )
    assert await dma.addr(b) == 0x3322
    assert await dma.addr(a) == 0x4411


@pytest.mark.parametrize("ch", ALL_CHANNELS)
async def test_ff_not_toggled_by_other_registers(be, dma, ch):
    """docs/reference/8237.md §2.1: accesses to non-address/count registers do not toggle the FF (status read,
    mode, mask, request, command, temporary, page and POST-port accesses)."""
    p = channel_ports(ch)
    c = p.ctrl
    mode = 0xC0 if ch == 4 else 0x40  # keep channel 4 in cascade
    await be.execute(
        [
            Out(c.clear_ff, 0),
            Out(p.addr, 0x34),  # FF = 1
            In(c.status),
            Out(c.mode, mode | p.local),
            Out(c.single_mask, 0x04 | p.local),
            Out(c.request, p.local),  # reset request bit: harmless
            Out(c.command, 0x00),
            In(c.temp),
            Out(PAGE_PORT[ch], 0x5A),
            Out(POST_PORT, 0x55),
            In(PAGE_PORT[ch]),
            Out(p.addr, 0x12),  # still the MSB
        ]
    )
    assert await dma.addr(ch) == 0x1234


# ---------------------------------------------------------------------------------------
# §2.2 base/current address and count


@pytest.mark.parametrize("ch", ALL_CHANNELS)
async def test_lone_lsb_write(be, dma, profile, ch):
    """docs/reference/8237.md §2.2 and §5 'Lone LSB write then read current': DS = new LSB, old MSB (base and
    current written together per byte); QEMU = the current address is unchanged until the MSB is
    written, only base changes (docs/reference/qemu-qtest.md §8 'low-byte-only write')."""
    p = channel_ports(ch)
    c = p.ctrl
    await be.execute(
        [Out(c.clear_ff, 0), Out(p.addr, 0x34), Out(p.addr, 0x12), Out(p.count, 0x78), Out(p.count, 0x56)]
    )
    await be.execute([Out(c.clear_ff, 0), Out(p.addr, 0x99)])
    await be.execute([Out(c.clear_ff, 0), Out(p.count, 0xAB)])
    assert await dma.addr(ch) == (0x1299 if profile == "intel" else 0x1234)
    # The count reads back the new LSB in both: DS writes base and current together; QEMU
    # computes the current count as base - transferred (docs/reference/linux-isa-dma.md §1.5), so the new base
    # LSB shows at once.
    assert await dma.count(ch) == 0x56AB
    # the base register took the byte in both profiles (it is what the channel restarts from)
    state = dma.machine.channel(ch)
    assert (state.base_addr, state.base_count) == (0x1299, 0x56AB)
    # completing with the MSB makes it visible everywhere: 0c←0; A←99; A←12 → 0x1299
    await be.execute([Out(c.clear_ff, 0), Out(p.addr, 0x99), Out(p.addr, 0x12)])
    assert await dma.addr(ch) == 0x1299


@pytest.mark.parametrize("ch", DATA_CHANNELS)
async def test_rewriting_one_register_msb_and_the_other_register(be, dma, profile, ch):
    """docs/reference/8237.md §5 'Writing MSB of count also rewinds current address': DS no (address and count
    are independent registers), QEMU yes; docs/reference/qemu-qtest.md §6.3 'Re-init on rewrite' (address
    0x3000, count 1023, a 512-unit partial transfer, then rewrite only the count / only the
    address)."""
    u = unit(ch)
    await dma.program(ch, SINGLE_WRITE, 0x3000, 1023, page=2)
    dma.machine.attach(ch, Source(bytes(512 * u)))
    await be.settle()
    assert (await dma.addr(ch), await dma.count(ch)) == (0x3200, 0x01FF)  # partial: no TC
    p = channel_ports(ch)
    await be.execute([Out(p.ctrl.clear_ff, 0), Out(p.count, 0xFF), Out(p.count, 0x03)])  # count only
    if profile == "intel":
        assert (await dma.addr(ch), await dma.count(ch)) == (0x3200, 0x03FF)
    else:
        assert (await dma.addr(ch), await dma.count(ch)) == (0x3000, 0x03FF)
    dma.machine.attach(ch, Source(bytes(512 * u)))
    await be.settle()
    after = 0x3400 if profile == "intel" else 0x3200
    assert (await dma.addr(ch), await dma.count(ch)) == (after, 0x01FF)
    await be.execute([Out(p.ctrl.clear_ff, 0), Out(p.addr, 0x00), Out(p.addr, 0x30)])  # address only
    if profile == "intel":
        assert (await dma.addr(ch), await dma.count(ch)) == (0x3000, 0x01FF)
    else:
        assert (await dma.addr(ch), await dma.count(ch)) == (0x3000, 0x03FF)


# ---------------------------------------------------------------------------------------
# §2.3 status register


@pytest.mark.parametrize("ch", DATA_CHANNELS)
async def test_status_request_bit_is_live_dreq_even_while_masked(be, dma, ch):
    """docs/reference/8237.md §2.3: bits 4-7 reflect the DREQ input regardless of the mask and are not cleared
    by a status read; docs/reference/qemu-qtest.md §6.3 'DREQ while masked' (status 0x40 stays)."""
    assert await dma.masked(ch)  # every data channel is masked after reset in both profiles
    src = Source(b"\x5a" * 8)
    dma.machine.attach(ch, src)
    want = 1 << (4 + (ch & 3))
    assert await dma.status(ch) == want
    assert await dma.status(ch) == want
    assert await dma.count(ch) == 0  # nothing moved while masked
    src.dreq = False
    assert await dma.status(ch) == 0


@pytest.mark.parametrize("ch", ALL_CHANNELS)
async def test_status_shows_software_request(be, dma, ch):
    """docs/reference/8237.md §2.3/§2.6 [SIO]: a request-register bit shows in status bits 4-7 (and is not
    cleared by reading status); request write with bit 2 clear resets it. docs/reference/qemu-qtest.md §8:
    `09←05` → status 0x20 on repeated reads, `09←01` clears it. Mode is left at its reset value
    (not block), so nothing is serviced."""
    p = channel_ports(ch)
    want = 1 << (4 + p.local)
    await be.outb(p.ctrl.request, 0x04 | p.local)
    assert await dma.status(ch) == want
    assert await dma.status(ch) == want
    await be.outb(p.ctrl.request, p.local)
    assert await dma.status(ch) == 0


async def test_status_two_software_requests(be):
    """docs/reference/qemu-qtest.md §8 request row: `09←07; 09←04` → status 0x90 (channels 3 and 0)."""
    await be.outb(DMA1.request, 0x07)
    await be.outb(DMA1.request, 0x04)
    assert await be.inb(DMA1.status) == 0x90


@pytest.mark.parametrize("ch", DATA_CHANNELS)
async def test_status_tc_bit_set_at_tc_and_cleared_by_read(be, dma, ch):
    """docs/reference/8237.md §2.3: bits 0-3 = reached TC since last status read; reading clears them only;
    §3.1 TC after count+1 transfers."""
    await dma.program(ch, SINGLE_WRITE, 0x0100, 3, page=1)
    dma.machine.attach(ch, Source(bytes(4 * unit(ch))))  # exactly count+1 units
    await be.settle()
    assert await dma.status(ch) == 1 << (ch & 3)
    assert await dma.status(ch) == 0


@pytest.mark.parametrize("ch", DATA_CHANNELS)
async def test_request_write_and_tc_bit(be, dma, profile, ch):
    """docs/reference/8237.md §5 'Request-register write clears TC bit': DS no, QEMU yes (docs/reference/qemu-qtest.md §8:
    `09←05` ... 'according to the source, clears TC bit 1')."""
    await dma.program(ch, SINGLE_WRITE, 0x0100, 0, page=1)
    dma.machine.attach(ch, Source(bytes(unit(ch))))
    await be.settle()
    local = ch & 3
    await be.outb(controller_of(ch).request, local)  # request bit reset (bit 2 = 0)
    assert await dma.status(ch) == (1 << local if profile == "intel" else 0)


# ---------------------------------------------------------------------------------------
# §2.4 command register


@pytest.mark.parametrize("ch", DATA_CHANNELS)
async def test_command_controller_disable(be, dma, profile, ch):
    """docs/reference/8237.md §2.4 bit 2 = controller disabled; §5 'Command reg honoured': QEMU accepts 0x04
    but never consults it (docs/reference/qemu-qtest.md §8 command row)."""
    ctrl = controller_of(ch)
    await be.outb(ctrl.command, 0x04)
    await dma.program(ch, SINGLE_WRITE, 0x0000, 7, page=3)
    src = Source(bytes(range(1, 8 * unit(ch) + 1)))
    dma.machine.attach(ch, src)
    await be.settle()
    if profile == "intel":
        assert src.pos == 0
        assert await dma.count(ch) == 7
        await be.outb(ctrl.command, 0x00)
        await be.settle()
    assert src.pos == 8 * unit(ch)
    assert await dma.count(ch) == 0xFFFF


@pytest.mark.parametrize("hold", [False, True], ids=["copy", "fill"])
async def test_command_memory_to_memory(intel, intel_dma, hold):
    """docs/reference/8237.md §3.8: command bit 0 enables ch0 → ch1 memory-to-memory, started by a software
    request on ch0; ch1's count ends it and TC is set for both; bit 1 holds the ch0 address
    (block fill); §2.11 the temporary register holds the last byte moved. Both page registers
    are set to the same value (which page a mem-to-mem cycle uses on an AT is not established)."""
    n = 0x40
    pattern = bytes((7 * i + 3) & 0xFF for i in range(n))
    await intel.write_mem(0x51000, pattern)
    await intel.outb(DMA1.command, 0x03 if hold else 0x01)
    await intel_dma.program(0, BLOCK_READ, 0x1000, n - 1, page=5)
    await intel_dma.program(1, BLOCK_WRITE, 0x2000, n - 1, page=5)
    await intel.outb(DMA1.request, 0x04)  # software request, channel 0
    await intel.settle()
    copied = await intel.read_mem(0x52000, n + 1)
    expected = bytes([pattern[0]]) * n if hold else pattern
    assert copied == expected + b"\x00"
    assert await intel.inb(DMA1.temp) == expected[-1]
    assert await intel.inb(DMA1.status) == 0x03  # TC ch0 and ch1, request cleared
    assert await intel_dma.addr(1) == 0x2000 + n
    assert await intel_dma.addr(0) == (0x1000 if hold else 0x1000 + n)
    assert await intel_dma.count(1) == 0xFFFF
    # master clear clears the temporary register (§2.10/§2.11)
    await intel.outb(DMA1.master_clear, 0)
    assert await intel.inb(DMA1.temp) == 0


@pytest.mark.parametrize("ch", DATA_CHANNELS)
async def test_command_dreq_active_low(intel, intel_dma, ch):
    """docs/reference/8237.md §2.4 bit 6: DREQ sense active low. A device holding its line high is then *not*
    requesting; one holding it low is."""
    ctrl = controller_of(ch)
    local = ch & 3
    await intel.write_mem(0x40000, bytes(range(16)))
    await intel.outb(ctrl.command, 0x40)
    await intel_dma.program(ch, SINGLE_READ, 0x0000, 15 // unit(ch), page=4)
    high = Sink(dreq=True)
    intel_dma.machine.attach(ch, high)
    await intel.settle()
    assert high.received == b""
    assert not await intel.inb(ctrl.status) & (1 << (4 + local))
    low = Sink(dreq=False)
    intel_dma.machine.attach(ch, low)  # replaces the first sink
    await intel.settle()
    assert bytes(low.received) == bytes(range(16))


@pytest.mark.parametrize("ch", DATA_CHANNELS)
async def test_command_dack_active_high_hides_dack_from_at_devices(intel, intel_dma, ch):
    """docs/reference/8237.md §2.4 bit 7 (DACK sense active high): on the AT the bus polarity is fixed, so a
    card never sees its DACK — it supplies no data and sees no T/C; the undriven bus reads 0xFF
    (§2.12). The channel still runs its cycles to TC."""
    ctrl = controller_of(ch)
    await intel.outb(ctrl.command, 0x80)
    n = 8 * unit(ch)
    await intel_dma.program(ch, SINGLE_WRITE, 0x0000, 7, page=6)
    src = Source(bytes(range(1, n + 1)))
    intel_dma.machine.attach(ch, src)
    await intel.settle()
    assert src.pos == 0
    assert src.tc_count == 0
    assert await intel.read_mem(0x60000, n) == b"\xff" * n
    assert await intel_dma.count(ch) == 0xFFFF


@pytest.mark.parametrize("value", [0x01, 0x02, 0x08, 0x10, 0x20, 0x40, 0x80, 0x14, 0xFF])
async def test_command_qemu_ignores_unsupported_values(qemu, qemu_dma, value):
    """docs/reference/8237.md §2.4 / §5: QEMU ignores the whole command write if any bit other than 0x04 is set
    (docs/reference/qemu-qtest.md §8 command row), so e.g. DREQ active-low (0x40) or DACK active-high (0x80)
    change nothing: the device is serviced and sees its DACK as usual."""
    await qemu.outb(DMA1.command, value)
    await qemu_dma.program(1, SINGLE_WRITE, 0x0000, 7, page=2)
    src = Source(bytes(range(1, 9)))
    qemu_dma.machine.attach(1, src)
    await qemu.settle()
    assert await qemu.read_mem(0x20000, 9) == bytes(range(1, 9)) + b"\x00"
    assert src.tc_count == 1
    assert qemu_dma.machine.dma1.command == 0  # the write was dropped entirely


# ---------------------------------------------------------------------------------------
# §2.5 mode register: transfer type and direction


@pytest.mark.parametrize("ch", DATA_CHANNELS)
async def test_mode_verify_no_memory_effect_but_registers_advance(be, dma, profile, ch):
    """docs/reference/8237.md §3.4: verify transfers have no memory or I/O strobes, but address, count and TC
    advance as for a real transfer; docs/reference/qemu-qtest.md §6.3 'Verify' (QEMU honours it too)."""
    n = 16 * unit(ch)
    start = phys(profile, ch, 8, 0x0010)
    await be.fill_mem(start - 0x20, 0x80, 0xEE)
    await dma.program(ch, VERIFY_SINGLE, 0x0010, 15, page=8)
    src = Source(bytes(range(n)))
    dma.machine.attach(ch, src)
    await be.settle()
    assert await be.read_mem(start - 0x20, 0x80) == b"\xee" * 0x80
    assert src.pos == 0
    assert await dma.addr(ch) == 0x0010 + 16
    assert await dma.count(ch) == 0xFFFF
    assert await dma.status(ch) & (1 << (ch & 3))


@pytest.mark.parametrize("ch", DATA_CHANNELS)
async def test_mode_write_moves_io_to_memory(be, dma, profile, ch):
    """docs/reference/8237.md §2.5 type 01 'write' = I/O → memory (Linux DMA_MODE_READ 0x44)."""
    n = 32 * unit(ch)
    data = bytes((i * 5 + 1) & 0xFF for i in range(n))
    await dma.program(ch, SINGLE_WRITE, 0x0200, 31, page=8)
    dma.machine.attach(ch, Source(data))
    await be.settle()
    start = phys(profile, ch, 8, 0x0200)
    assert await be.read_mem(start, n) == data
    assert await be.read_mem(start + n, 1) == b"\x00"


@pytest.mark.parametrize("ch", DATA_CHANNELS)
async def test_mode_read_moves_memory_to_io(be, dma, profile, ch):
    """docs/reference/8237.md §2.5 type 10 'read' = memory → I/O (Linux DMA_MODE_WRITE 0x48)."""
    n = 32 * unit(ch)
    data = bytes((i * 11 + 7) & 0xFF for i in range(n + 8))
    start = phys(profile, ch, 8, 0x0200)
    await be.write_mem(start, data)
    await dma.program(ch, SINGLE_READ, 0x0200, 31, page=8)
    sink = Sink()
    dma.machine.attach(ch, sink)
    await be.settle()
    assert bytes(sink.received) == data[:n]


@pytest.mark.parametrize("ch", DATA_CHANNELS)
async def test_mode_decrement_intel(intel, intel_dma, ch):
    """docs/reference/8237.md §3.3: mode bit 5 = address decrement, one unit at a time downward; docs/reference/qemu-qtest.md
    §6.3 'Address decrement': real hardware puts byte 0 at the start address and byte 511 at
    start-511. On 16-bit channels the unit is a word (§3.6)."""
    u = unit(ch)
    units = 64
    data = bytes((3 * i + 1) & 0xFF for i in range(units * u))
    start_word = 0x0400
    base = phys_intel(ch, 0x0A, start_word)
    await intel.fill_mem(base - 0x1000, 0x2000, 0xEE)
    await intel_dma.program(ch, SINGLE_WRITE | 0x20, start_word, units - 1, page=0x0A)
    intel_dma.machine.attach(ch, Source(data))
    await intel.settle()
    for i in range(units):
        got = await intel.read_mem(base - i * u, u)
        assert got == data[i * u : (i + 1) * u], i
    assert await intel.read_mem(base + u, 1) == b"\xee"
    assert await intel.read_mem(base - units * u, 1) == b"\xee"
    assert await intel_dma.addr(ch) == start_word - units
    assert await intel_dma.count(ch) == 0xFFFF


# ---------------------------------------------------------------------------------------
# §2.6 request register


@pytest.mark.parametrize("ch", DATA_CHANNELS)
async def test_software_request_block_mode_ignores_mask_intel(intel, intel_dma, ch):
    """docs/reference/8237.md §2.6: software requests are honoured in block mode, are not affected by the mask,
    and are cleared by TC; §6 service condition 'Software: request[c] and block mode (mask
    ignored)'. Sink(dreq=False) never requests by itself."""
    u = unit(ch)
    data = bytes((i ^ 0x5A) & 0xFF for i in range(24 * u))
    start = phys_intel(ch, 0x0A, 0x0100)
    await intel.write_mem(start, data)
    await intel_dma.program(ch, BLOCK_READ, 0x0100, 23, page=0x0A, unmask=False)
    sink = Sink(dreq=False)
    intel_dma.machine.attach(ch, sink)
    await intel.settle()
    assert sink.received == b""
    p = channel_ports(ch)
    await intel.outb(p.ctrl.request, 0x04 | p.local)
    await intel.settle()
    assert bytes(sink.received) == data
    assert await intel.inb(p.ctrl.status) == 1 << p.local  # TC set, request bit cleared


@pytest.mark.parametrize("ch", DATA_CHANNELS)
@pytest.mark.parametrize("mode", [SINGLE_READ, 0x08], ids=["single", "demand"])
async def test_software_request_ignored_outside_block_mode_intel(intel, intel_dma, ch, mode):
    """docs/reference/8237.md §2.6 / §5 'Software request honoured in: block mode only' (DS); the request
    stays visible in status (§2.3)."""
    await intel_dma.program(ch, mode, 0x0100, 23, page=0x0A)
    sink = Sink(dreq=False)
    intel_dma.machine.attach(ch, sink)
    p = channel_ports(ch)
    await intel.outb(p.ctrl.request, 0x04 | p.local)
    await intel.settle()
    assert sink.received == b""
    assert await intel_dma.count(ch) == 23
    assert await intel.inb(p.ctrl.status) == 1 << (4 + p.local)


# ---------------------------------------------------------------------------------------
# §2.7-§2.9 masks


@pytest.mark.parametrize("ch", ALL_CHANNELS)
async def test_single_mask_and_clear_mask(be, dma, ch):
    """docs/reference/8237.md §2.7 (bits 1:0 channel, bit 2 set/clear, bits 7:3 ignored), §2.8 (clear mask
    clears all), §2.9 readback (Intel 0x0F/0xDE; QEMU 0x09/0xD2, docs/reference/qemu-qtest.md §8)."""
    p = channel_ports(ch)
    c = p.ctrl
    bit = 1 << p.local
    await be.outb(c.clear_mask, 0xA5)
    assert await dma.mask(ch) == 0
    await be.outb(c.single_mask, 0xF8 | 0x04 | p.local)
    assert await dma.mask(ch) == bit
    await be.outb(c.single_mask, 0xF8 | p.local)
    assert await dma.mask(ch) == 0
    await be.outb(c.single_mask, 0x04 | p.local)
    await be.outb(c.single_mask, 0x04 | ((p.local + 2) & 3))
    assert await dma.mask(ch) == bit | (1 << ((p.local + 2) & 3))


@pytest.mark.parametrize("ctrl", [DMA1, DMA2], ids=["DMA1", "DMA2"])
async def test_write_all_mask_width(be, dma, profile, ctrl):
    """docs/reference/8237.md §2.9: write-all-mask takes bits 3:0 (DS, readback bits 7:4 = 0 [SIO]); QEMU keeps
    all 8 bits (§5 'Write-all-mask width'; docs/reference/qemu-qtest.md §8: `0f←F0` → `in 09`=F0)."""
    await be.outb(ctrl.all_mask, 0xF5)
    assert await dma.mask(ctrl) == (0x05 if profile == "intel" else 0xF5)
    await be.outb(ctrl.all_mask, 0xF0)
    assert await dma.mask(ctrl) == (0x00 if profile == "intel" else 0xF0)
    await be.outb(ctrl.all_mask, 0x0A)
    assert await dma.mask(ctrl) == 0x0A
    await be.outb(ctrl.clear_mask, 0)
    assert await dma.mask(ctrl) == 0


async def test_mask_readback_port_per_profile(be, profile):
    """docs/reference/8237.md §2.9 table: Intel chipsets read the mask at 0x0F/0xDE; QEMU reads 0x00 there and
    returns the mask at 0x09/0xD2 (docs/reference/qemu-qtest.md §8: `0f←05` → `in 0f`=00, `in 09`=05)."""
    await be.outb(DMA1.all_mask, 0x05)
    await be.outb(DMA2.all_mask, 0x03)
    if profile == "intel":
        assert (await be.inb(DMA1.all_mask), await be.inb(DMA2.all_mask)) == (0x05, 0x03)
    else:
        assert (await be.inb(DMA1.all_mask), await be.inb(DMA2.all_mask)) == (0x00, 0x00)
        assert (await be.inb(DMA1.request), await be.inb(DMA2.request)) == (0x05, 0x03)


async def test_reset_state_intel():
    """docs/reference/8237.md §6 reset: mask = 0xF, command/status/temp/FF = 0; §3.6 the AT BIOS programs ch4 as
    cascade and unmasks it (`post=bios`, the intel default), so DMA2 reads 0x0E; with
    `post=none` DMA2 keeps all four masked."""
    from hil.backends import open_backend

    async with open_backend("sim") as be:
        assert await be.inb(DMA1.all_mask) == 0x0F
        assert await be.inb(DMA2.all_mask) == 0x0E
        assert await be.inb(DMA1.status) == 0 and await be.inb(DMA2.status) == 0
        assert await be.inb(DMA1.temp) == 0 and await be.inb(DMA2.temp) == 0
        assert be.machine.channel(4).mode.select.name == "CASCADE"
    async with open_backend("sim:?post=none") as be:
        assert await be.inb(DMA2.all_mask) == 0x0F


# ---------------------------------------------------------------------------------------
# §2.10 master clear, §2.11 temporary register


@pytest.mark.parametrize("ch", ALL_CHANNELS)
async def test_master_clear(be, dma, profile, ch):
    """docs/reference/8237.md §2.10: master clear clears command, status (TC and request), request register,
    temporary register and FF and masks all channels — 0x0F on Intel, 0xFF on QEMU (§5) — but
    keeps mode, address/count and page registers; docs/reference/qemu-qtest.md §8 master clear row (ch3 address
    0x4321 / count 0x0123 / page 7 survive; the first read after the clear is the low byte)."""
    p = channel_ports(ch)
    c = p.ctrl
    other = other_channel(ch)
    mode = 0xC0 if ch == 4 else SINGLE_WRITE
    await be.execute(
        [
            Out(c.clear_mask, 0),
            Out(c.mode, mode | p.local),
            Out(PAGE_PORT[ch], 0x07),
            Out(c.clear_ff, 0),
            Out(p.addr, 0x21),
            Out(p.addr, 0x43),
            Out(p.count, 0x23),
            Out(p.count, 0x01),
            Out(c.request, 0x04 | (other & 3)),  # software request (status bit)
            Out(p.addr, 0x99),  # leave the FF at 1 (LSB write)
        ]
    )
    if profile == "intel":
        await be.outb(c.command, 0x04)  # disable the controller: master clear must undo it
    await be.outb(c.master_clear, 0)
    assert await dma.mask(ch) == (0x0F if profile == "intel" else 0xFF)
    assert await be.inb(c.status) == 0
    first = await be.inb(p.addr)  # FF cleared: low byte first
    # the lone 0x99 LSB write reached current only on the datasheet part (§2.2)
    assert first == (0x99 if profile == "intel" else 0x21)
    assert await be.inb(p.addr) == 0x43
    assert await dma.count(ch) == 0x0123
    assert await be.inb(PAGE_PORT[ch]) == 0x07
    assert await be.inb(c.temp) == 0
    if ch == 4:
        return
    # mode and address survived, command was cleared: unmask and let a device run the channel
    u = unit(ch)
    n = 0x124 * u
    data = bytes((i * 13 + 5) & 0xFF for i in range(n))
    addr = 0x4399 if profile == "intel" else 0x4321
    await be.outb(c.single_mask, p.local)
    dma.machine.attach(ch, Source(data))
    await be.settle()
    assert await be.read_mem(phys(profile, ch, 7, addr), n) == data


async def test_temporary_register_reads_zero_without_mem_to_mem(be):
    """docs/reference/8237.md §2.11 / §5 'Temporary register read': DS = last memory-to-memory byte (0 after
    reset); QEMU = 0 always (docs/reference/qemu-qtest.md §8)."""
    assert await be.inb(DMA1.temp) == 0
    assert await be.inb(DMA2.temp) == 0


# ---------------------------------------------------------------------------------------
# §1.3 page registers, §1.1/§1.2 decoding


async def test_page_register_file(be, profile):
    """docs/reference/8237.md §1.3: on AT-compatible models 0x80-0x8F are one read/write register file (also
    the unused slots and the POST port); QEMU registers only the channel pages 0x81-0x83, 0x87,
    0x89-0x8B, 0x8F and the others read 0xFF, writes lost (docs/reference/qemu-qtest.md §8 page row)."""
    for port in PAGE_FILE:
        await be.outb(port, 0x10 + (port - 0x80))
    for port in PAGE_FILE:
        got = await be.inb(port)
        if profile == "intel" or port in PAGE_CHANNEL:
            assert got == 0x10 + (port - 0x80), hex(port)
        else:
            assert got == 0xFF, hex(port)


@pytest.mark.parametrize("ch", DATA_CHANNELS)
async def test_page_register_selects_channel(be, dma, profile, ch):
    """docs/reference/8237.md §1.3 mapping (0x87 ch0, 0x83 ch1, 0x81 ch2, 0x82 ch3, 0x8B ch5, 0x89 ch6, 0x8A ch7):
    a transfer on channel n uses only its own page register."""
    for c, port in PAGE_PORT.items():
        if c != ch:
            await be.outb(port, 0x30 + c)  # decoys
    await dma.program(ch, SINGLE_WRITE, 0x0000, 0, page=0x0C)
    dma.machine.attach(ch, Source(b"\xab" * unit(ch)))
    await be.settle()
    assert await be.read_mem(0x0C0000, unit(ch)) == b"\xab" * unit(ch)


async def test_high_page_registers_not_decoded(be):
    """docs/reference/8237.md §1.4: 0x480-0x48F are EISA only; an AT model leaves them unmapped (reads 0xFF);
    docs/reference/qemu-qtest.md §8: 0x481-0x48F read 0xFF after writing 0x55 on `-machine pc`."""
    for port in range(0x480, 0x490):
        await be.outb(port, 0x55)
        assert await be.inb(port) == 0xFF


async def test_dma1_mirror_at_0x10(be, dma, profile):
    """docs/reference/8237.md §1.1: the AT decodes DMA1 in 0x00-0x1F, so 0x10-0x1F mirror 0x00-0x0F (§5 'DMA1
    mirror': DS yes, QEMU no — docs/reference/qemu-qtest.md §8: ports 0x10 and 0x1F read 0xFF)."""
    if profile == "intel":
        # address via the mirror, read via the real port, FF shared
        await be.execute([Out(0x1C, 0), Out(0x12, 0x34), Out(0x02, 0x12)])
        assert await dma.addr(1) == 0x1234
        await be.outb(0x1F, 0x06)  # write-all-mask via the mirror
        assert await be.inb(0x0F) == 0x06
        assert await be.inb(0x1F) == 0x06
        await be.outb(0x19, 0x05)  # software request ch1 via the mirror
        assert await be.inb(0x18) == 0x20
    else:
        assert await be.inb(0x10) == 0xFF
        assert await be.inb(0x1F) == 0xFF
        await be.execute([Out(0x0C, 0), Out(0x02, 0x00), Out(0x02, 0x00)])
        await be.execute([Out(0x1C, 0), Out(0x12, 0x34), Out(0x12, 0x12)])
        assert await dma.addr(1) == 0x0000


async def test_dma2_odd_ports_alias_even_ports(be, dma, profile):
    """docs/reference/8237.md §1.2: DMA2 registers at 0xC0 + 2r; SA0 not decoded so odd ports alias (QEMU too:
    docs/reference/qemu-qtest.md §8 '0xC5 / 0xC7 read the ch5 address / count', '0xD3 = mask')."""
    await be.execute(
        [Out(0xD9, 0), Out(0xC5, 0x34), Out(0xC5, 0x12), Out(0xC7, 0x78), Out(0xC6, 0x56)]
    )
    assert await be.execute([Out(0xD8, 0), In(0xC5), In(0xC4), In(0xC7), In(0xC6)]) == [0x34, 0x12, 0x78, 0x56]
    await be.outb(0xDF, 0x09)  # write-all-mask through the odd alias
    if profile == "intel":
        assert (await be.inb(0xDE), await be.inb(0xDF)) == (0x09, 0x09)
    else:
        assert (await be.inb(0xD2), await be.inb(0xD3)) == (0x09, 0x09)
    await be.outb(0xD3, 0x06)  # software request ch6 via 0xD3
    assert await be.inb(0xD1) == 0x40


async def test_word_access_is_split_into_two_byte_accesses(be, dma):
    """docs/reference/hil-lessons.md §1.3 / docs/reference/qemu-qtest.md §8 'word/dword port access': a 16-bit access to 8-bit
    registers is two byte accesses, low byte to port p, high byte to p+1. On DMA2 p+1 is the odd
    alias of the same register, so a word write fills LSB then MSB (docs/reference/qemu-qtest.md §8: word address
    0x1234 reads back as a word); on DMA1 it lands on the next register."""
    await be.outb(DMA2.clear_ff, 0)
    await be.outw(0xC4, 0x1234)
    await be.outb(DMA2.clear_ff, 0)
    assert await be.inw(0xC4) == 0x1234
    assert await dma.addr(5) == 0x1234
    await be.outw(0x82, 0xABCD)  # `outw 0x82` writes 0x82 (ch3 page) and 0x83 (ch1 page)
    assert (await be.inb(0x82), await be.inb(0x83)) == (0xCD, 0xAB)
    assert await be.inw(0x82) == 0xABCD
    # DMA1: 0x02 gets the low byte (ch1 address LSB), 0x03 the high byte (ch1 count, FF now 1)
    await be.execute([Out(DMA1.clear_ff, 0), Out(0x02, 0x00), Out(0x02, 0x00), Out(0x03, 0), Out(0x03, 0)])
    await be.outb(DMA1.clear_ff, 0)
    await be.outw(0x02, 0x5634)
    assert await dma.count(1) == 0x5600
    assert dma.machine.channel(1).base_addr == 0x0034
    # DS: the LSB went to base and current; QEMU: the count-MSB write re-initialised the channel
    # from base (docs/reference/qemu-qtest.md §8 'writing the high byte of address or count')
    assert await dma.addr(1) == 0x0034
