"""Replays of the Linux driver port traces in docs/reference/linux-isa-dma.md §2 and §5, with data checks.

The traces are taken literally from the reference (`W pp vv` = outb(vv, 0xpp), `R pp` = inb),
so the ports are spelled as numbers here on purpose. Devices stand in for the card's side of
the DREQ/DACK handshake (hil.sim.devices).
"""

from __future__ import annotations

import pytest

from hil.ops import In, Out
from hil.sim.devices import BusMaster, Sink, Source


def replay(text: str) -> list[Out | In]:
    """``"W 0A 06, R 05"`` → [Out(0x0A, 0x06), In(0x05)] (docs/reference/linux-isa-dma.md trace notation)."""
    ops: list[Out | In] = []
    for item in text.replace("\n", ",").split(","):
        parts = item.split()
        if not parts:
            continue
        if parts[0] == "W":
            ops.append(Out(int(parts[1], 16), int(parts[2], 16)))
        elif parts[0] == "R":
            ops.append(In(int(parts[1], 16)))
        else:
            raise ValueError(item)
    return ops


def residue(lsb: int, msb: int, channel: int) -> int:
    """docs/reference/linux-isa-dma.md §1.3 get_dma_residue: unsigned short count = 1 + R; count += R << 8;
    returned as is on ch0-3, << 1 on ch5-7."""
    count = (1 + lsb + (msb << 8)) & 0xFFFF
    return count if channel <= 3 else count << 1


def ring(size: int) -> bytes:
    return bytes(((i * 37) ^ (i >> 7)) & 0xFF for i in range(size))


# ---------------------------------------------------------------------------------------
# (a) floppy


FLOPPY_READ = "W 0A 06, W 0C 00, W 0B 46, W 81 12, W 04 00, W 04 34, W 05 FF, W 05 23, W 0A 02"


async def test_floppy_read(be, profile):
    """docs/reference/linux-isa-dma.md §2(a): floppy READ of 0x2400 bytes into 0x00123400 (`W 0A 06, W 0C 00,
    W 0B 46, W 81 12, W 04 00, W 04 34, W 05 FF, W 05 23, W 0A 02`); the FDC supplies the bytes;
    the raw-command residue read `R 05 ; R 05` (no clear-FF: the even number of accesses left it
    low) gives 0. docs/reference/8237.md §3.1: TC after 0x2400 transfers, count 0xFFFF; ch2 masked at TC on a
    datasheet part, not on QEMU (§5)."""
    data = ring(0x2400)
    await be.fill_mem(0x123400 - 0x10, 0x2420, 0xEE)
    await be.execute(replay(FLOPPY_READ))
    be.machine.attach(2, Source(data))
    await be.settle()
    assert await be.read_mem(0x123400, 0x2400) == data
    assert await be.read_mem(0x123400 - 1, 1) == b"\xee"
    assert await be.read_mem(0x123400 + 0x2400, 1) == b"\xee"
    lsb, msb = await be.execute(replay("R 05, R 05"))
    assert residue(lsb, msb, 2) == 0
    assert await be.inb(0x08) & 0x0F == 0x04
    # every FDC interrupt starts with fd_disable_dma(): W 0A 06
    await be.execute(replay("W 0A 06"))
    mask = await be.inb(0x0F) if profile == "intel" else await be.inb(0x09)
    assert mask & 0x04


async def test_floppy_write_and_a_second_command_without_reprogramming(intel):
    """docs/reference/linux-isa-dma.md §2(a) write path (mode 0x4A, memory → FDC); docs/reference/8237.md §2.9 [SIO]: a one-shot
    channel is masked at TC, so a second FDC request without reprogramming gets no DMA
    (docs/reference/qemu-qtest.md §6.3: 'On real hardware the non-autoinit channel would be masked')."""
    data = ring(0x200)
    await intel.write_mem(0x123400, data)
    await intel.execute(
        replay("W 0A 06, W 0C 00, W 0B 4A, W 81 12, W 04 00, W 04 34, W 05 FF, W 05 01, W 0A 02")
    )
    fdc = Sink()
    intel.machine.attach(2, fdc)
    await intel.settle()
    assert bytes(fdc.received) == data
    second = Sink()
    intel.machine.attach(2, second)
    await intel.settle()
    assert second.received == b""
    assert await intel.inb(0x08) == 0x04 | 0x40  # TC, and the FDC's DREQ is still up


async def test_floppy_historical_order_with_mode_written_to_0x0c(be):
    """docs/reference/linux-isa-dma.md §2(a) 'Historical variant (Linux 0.11)': mask, mode byte to 0x0C (doubles
    as the FF clear) then 0x0B, address LSB/MSB, *then* the page, count 0x03FF, unmask."""
    data = ring(0x400)
    await be.execute(
        replay("W 0A 06, W 0C 46, W 0B 46, W 04 00, W 04 80, W 81 03, W 05 FF, W 05 03, W 0A 02")
    )
    be.machine.attach(2, Source(data))
    await be.settle()
    assert await be.read_mem(0x038000, 0x400) == data
    assert await be.execute(replay("R 05, R 05")) == [0xFF, 0xFF]


# ---------------------------------------------------------------------------------------
# (b) ALSA SB16 autoinit ring on channel 5


SB16_PROGRAM = "W D4 05, W D8 00, W D6 59, W 8B 24, W C4 00, W C4 18, W C6 FF, W C6 3F, W D4 01"
SB16_POINTER = "W D8 00, W D4 05, R C6, R C6, R C6, R C6, W D4 01"
SB16_POINTER_BUGGY = "W D8 00, R C6, R C6, R C6, R C6"
RING_BASE, RING_SIZE = 0x243000, 0x8000


def snd_dma_pointer(reads: list[int], size: int) -> tuple[int, int, int]:
    """docs/reference/linux-isa-dma.md §2(b) snd_dma_pointer: two residues, keep the larger, then
    `(r >= size || r == 0) ? 0 : size - r`."""
    r = residue(reads[0], reads[1], 5)
    r1 = residue(reads[2], reads[3], 5)
    keep = max(r, r1)
    return (0 if keep >= size or keep == 0 else size - keep), r, r1


async def test_alsa_sb16_playback_ring_intel(intel):
    """docs/reference/linux-isa-dma.md §2(b): SB16 playback, ch5, 32 KiB at 0x00243000, mode 0x59 (single,
    autoinit, memory → I/O); pointer queries mask the channel around a double residue read. On a
    datasheet part (docs/reference/8237.md §3.2) autoinit reloads at TC, so the ring wraps: the DSP receives the
    buffer over and over, the channel stays unmasked, and the pointer always equals the bytes
    consumed modulo the ring size."""
    data = ring(RING_SIZE)
    await intel.write_mem(RING_BASE, data)
    await intel.execute(replay(SB16_PROGRAM))
    dsp = Sink()
    intel.machine.attach(5, dsp)
    for step_us in (5_000, 9_000, 13_000, 30_000):
        await intel.delay(step_us)
        reads = await intel.execute(replay(SB16_POINTER))
        pointer, r, r1 = snd_dma_pointer(reads, RING_SIZE)
        assert r == r1  # masked: nothing moves between the two reads
        assert 0 < r <= RING_SIZE
        assert pointer == len(dsp.received) % RING_SIZE
    assert len(dsp.received) > 2 * RING_SIZE  # wrapped at least twice
    got = bytes(dsp.received)
    assert got == (data * (len(got) // RING_SIZE + 1))[: len(got)]
    assert await intel.inb(0xD0) & 0x02  # TC seen on ch5
    assert not await intel.inb(0xDE) & 0x02  # autoinit: never masked at TC
    # with the ring running, settle can never return: it must say so
    from hil.errors import SettleTimeout

    with pytest.raises(SettleTimeout):
        await intel.settle(timeout_s=0.05)


async def test_alsa_sb16_pointer_on_buggy_bridge(intel):
    """docs/reference/linux-isa-dma.md §2(b): on an isa_dma_bridge_buggy system the pointer reads the residue
    twice *without* masking, and keeps the larger one; the result stays inside the ring and
    within a few words of the true position."""
    await intel.write_mem(RING_BASE, ring(RING_SIZE))
    await intel.execute(replay(SB16_PROGRAM))
    dsp = Sink()
    intel.machine.attach(5, dsp)
    for step_us in (3_000, 11_000, 17_000):
        await intel.delay(step_us)
        before = len(dsp.received)
        pointer, r, r1 = snd_dma_pointer(await intel.execute(replay(SB16_POINTER_BUGGY)), RING_SIZE)
        after = len(dsp.received)
        assert 0 <= pointer < RING_SIZE
        assert 0 < max(r, r1) <= RING_SIZE
        consumed = {n % RING_SIZE for n in range(before, after + 1)}
        assert pointer in consumed or pointer == 0


async def test_alsa_sb16_qemu_has_no_autoinit(qemu):
    """docs/reference/qemu-qtest.md §8 'autoinit: not implemented in the i8257' (docs/reference/8237.md §5): the same program
    plays the buffer once, then TC with count 0xFFFF (residue 0), no reload and no mask; the
    DMA2 mask reads 0xFD at 0xD2 (ch4 masked by the halt firmware, ch5 enabled)."""
    data = ring(RING_SIZE)
    await qemu.write_mem(RING_BASE, data)
    await qemu.execute(replay(SB16_PROGRAM))
    dsp = Sink()
    qemu.machine.attach(5, dsp)
    await qemu.settle()  # terminates: nothing reloads
    assert bytes(dsp.received) == data
    pointer, r, r1 = snd_dma_pointer(await qemu.execute(replay(SB16_POINTER)), RING_SIZE)
    assert (pointer, r, r1) == (0, 0, 0)
    assert await qemu.inb(0xD0) == 0x02 | 0x20  # TC ch5; the DSP still requests
    assert await qemu.inb(0xD2) == 0xFD


async def test_sb8_one_byte_oneshot_then_autoinit_reprogram(be, profile):
    """docs/reference/linux-isa-dma.md §2(b) SB8: a 1-byte one-shot (count register 0x0000, mode 0x48|ch) then the
    full autoinit program on the same channel (variant 7). The first moves exactly one byte; the
    second restarts from the buffer start (both profiles: the MSB writes re-initialise QEMU's
    channel, and the datasheet part was simply reprogrammed)."""
    data = ring(0x1000)
    await be.write_mem(0x050000, data)
    await be.execute(replay("W 0A 05, W 0C 00, W 0B 49, W 83 05, W 02 00, W 02 00, W 03 00, W 03 00, W 0A 01"))
    dsp = Sink(capacity=1)
    be.machine.attach(1, dsp)
    await be.settle()
    assert bytes(dsp.received) == data[:1]
    assert await be.inb(0x08) & 0x02
    await be.execute(replay("W 0A 05, W 0C 00, W 0B 59, W 83 05, W 02 00, W 02 00, W 03 FF, W 03 0F, W 0A 01"))
    dsp2 = Sink(capacity=0x1800)
    be.machine.attach(1, dsp2)
    await be.settle()
    if profile == "intel":
        assert bytes(dsp2.received) == data + data[:0x800]  # autoinit wrapped once
    else:
        assert bytes(dsp2.received) == data  # no reload in QEMU


# ---------------------------------------------------------------------------------------
# (c) parport ECP


PARPORT_CHUNK = "W 0A 07, W 0C 00, W 0B 4B, W 82 01, W 06 00, W 06 20, W 07 FF, W 07 0F, W 0A 03"
PARPORT_RESIDUE = "W 0A 07, W 0C 00, R 07, R 07"


async def test_parport_ecp_chunk(be):
    """docs/reference/linux-isa-dma.md §2(c): ch3, bounce page at 0x00012000, 4096 bytes, mode 0x4B; after the
    chunk `disable; clear_ff; R 07; R 07` gives residue 0, and the unconditional teardown reads it
    *again* and expects 0 again — the count register keeps reading 0xFFFF after TC (docs/reference/8237.md §3.1)."""
    data = ring(4096)
    await be.write_mem(0x012000, data)
    await be.execute(replay(PARPORT_CHUNK))
    ecp = Sink()
    be.machine.attach(3, ecp)
    await be.settle()
    assert bytes(ecp.received) == data
    lsb, msb = await be.execute(replay(PARPORT_RESIDUE))
    assert residue(lsb, msb, 3) == 0
    lsb, msb = await be.execute(replay(PARPORT_RESIDUE))
    assert residue(lsb, msb, 3) == 0


async def test_parport_ecp_short_chunk_is_retried(be):
    """docs/reference/linux-isa-dma.md §2(c): `count = get_dma_residue(); buf -= count; left += count` — when the
    peripheral stops early the residue is exactly the bytes not sent, and the next chunk
    (reprogrammed at the first unsent byte) sends the rest."""
    data = ring(4096)
    await be.write_mem(0x012000, data)
    await be.execute(replay(PARPORT_CHUNK))
    ecp = Sink(capacity=1000)
    be.machine.attach(3, ecp)
    await be.settle()
    lsb, msb = await be.execute(replay(PARPORT_RESIDUE))
    left = residue(lsb, msb, 3)
    assert left == 4096 - 1000
    start = 0x012000 + 1000
    count = left - 1
    await be.execute(
        replay(
            f"W 0A 07, W 0C 00, W 0B 4B, W 82 {start >> 16:02X}, W 06 {start & 0xFF:02X}, "
            f"W 06 {(start >> 8) & 0xFF:02X}, W 07 {count & 0xFF:02X}, W 07 {count >> 8:02X}, W 0A 03"
        )
    )
    rest = Sink()
    be.machine.attach(3, rest)
    await be.settle()
    assert bytes(ecp.received) + bytes(rest.received) == data
    lsb, msb = await be.execute(replay(PARPORT_RESIDUE))
    assert residue(lsb, msb, 3) == 0


# ---------------------------------------------------------------------------------------
# (d) bus-master cascade, 3c505 demand RX


@pytest.mark.parametrize(
    ("trace", "ch"),
    [
        ("W D6 C1, W D4 01", 5),  # ni65 / tms380tr / aha1542 order
        ("W D4 01, W D6 C1", 5),  # lance / 3c515: enable before mode
        ("W 0B C3, W 0A 03", 3),
        ("W D6 C3, W D4 03", 7),
    ],
)
async def test_bus_master_cascade_moves_no_data(intel, trace, ch):
    """docs/reference/linux-isa-dma.md §2(d): bus-master cards get the channel in cascade mode with no address or
    count; docs/reference/8237.md §3.5: a cascade channel only relays DREQ/DACK and generates no addresses — the
    8237 itself moves nothing: the card holds the bus for its tenure and gives it back. A request
    on the masked channel still shows in status (§2.3), which is what lance's probe reads."""
    before = await intel.read_mem(0, 0x20000)
    await intel.execute(replay(trace))
    card = BusMaster(5_000)
    intel.machine.attach(ch, card)
    await intel.settle()
    assert card.tenures == 1
    assert await intel.read_mem(0, 0x20000) == before
    await intel.outb(0xD4 if ch >= 4 else 0x0A, 0x04 | (ch & 3))  # disable_dma: the probe's view
    card.request()
    status_port = 0xD0 if ch >= 4 else 0x08
    assert await intel.inb(status_port) == 1 << (4 + (ch & 3))
    # lance probe: dma_channels = ((R 08 >> 4) & 0x0F) | (R D0 & 0xF0)
    r08, rd0 = await intel.execute(replay("R 08, R D0"))
    assert ((r08 >> 4) & 0x0F) | (rd0 & 0xF0) == 1 << ch


async def test_3c505_demand_mode_rx(be):
    """docs/reference/linux-isa-dma.md §2(d) 3c505 receive: mode 0x04 (demand, device → memory, no autoinit) on an
    8-bit channel; the board delivers a frame in bursts and the transfer completes at TC."""
    frame = ring(1514 + 1)[1:]
    await be.execute(replay("W 0A 05, W 0C 00, W 0B 05, W 83 07, W 02 00, W 02 40, W 03 E9, W 03 05, W 0A 01"))
    board = Source(frame[:700])
    be.machine.attach(1, board)
    await be.settle()
    assert await be.execute(replay("W 0C 00, R 03, R 03")) == [(1513 - 700) & 0xFF, (1513 - 700) >> 8]
    be.machine.attach(1, Source(frame[700:]))
    await be.settle()
    assert await be.read_mem(0x074000, 1514) == frame
    assert await be.inb(0x08) & 0x02


# ---------------------------------------------------------------------------------------
# §5 the i8237 resume trace


RESUME = """
W 0D 00, W DA 00,
W 87 00, W 00 00, W 00 00, W 01 00, W 01 00,
W 83 00, W 02 00, W 02 00, W 03 00, W 03 00,
W 81 00, W 04 00, W 04 00, W 05 00, W 05 00,
W 82 00, W 06 00, W 06 00, W 07 00, W 07 00,
W C0 00, W C0 00, W C2 00, W C2 00,
W 8B 00, W C4 00, W C4 00, W C6 00, W C6 00,
W 89 00, W C8 00, W C8 00, W CA 00, W CA 00,
W 8A 00, W CC 00, W CC 00, W CE 00, W CE 00,
W D4 00
"""


async def test_i8237_resume_trace(be, profile):
    """docs/reference/linux-isa-dma.md §5 i8237A_resume: master clear both controllers, set_dma_addr(ch, 0) and
    set_dma_count(ch, 1) for ch0-7 (no page for ch4), enable_dma(4) — 42 writes. Afterwards every
    channel but 4 is masked, all address/count registers read 0, 0x87 reads 0 (not 0xFF), and
    channel 4 works as cascade without its mode having been written: a DMA1 channel transfers as
    soon as it is programmed. Before the trace the controllers are left in a messy state."""
    ops = replay(RESUME)
    assert len(ops) == 42
    # mess: DMA2 disabled and ch4 masked, FF left at 1, garbage in registers and pages
    await be.execute(
        replay("W D0 04, W D4 04, W 0C 00, W 02 77, W D8 00, W C6 55, W 87 99, W 8B 33, W 0F 00, W 09 06")
    )
    await be.execute(ops)
    if profile == "intel":
        assert (await be.inb(0x0F), await be.inb(0xDE)) == (0x0F, 0x0E)
    else:
        assert (await be.inb(0x09), await be.inb(0xD2)) == (0xFF, 0xFE)
    assert await be.inb(0x08) == 0 and await be.inb(0xD0) == 0
    for addr_port, count_port, ff in [(2 * c, 2 * c + 1, 0x0C) for c in range(4)] + [
        (0xC0 + 4 * c, 0xC2 + 4 * c, 0xD8) for c in range(4)
    ]:
        assert await be.execute([Out(ff, 0), In(addr_port), In(addr_port), In(count_port), In(count_port)]) == [0] * 4
    assert await be.inb(0x87) == 0x00
    # channel 4 usable: floppy read on ch2 goes through
    data = ring(0x2400)
    await be.execute(replay(FLOPPY_READ))
    be.machine.attach(2, Source(data))
    await be.settle()
    assert await be.read_mem(0x123400, 0x2400) == data
    assert residue(*await be.execute(replay("R 05, R 05")), 2) == 0


async def test_resume_then_alsa_prepare(intel):
    """docs/reference/linux-isa-dma.md §5: after a suspend during playback the order is i8237 resume trace → DSP
    reset → prepare (a full snd_dma_program with autoinit) → trigger start; the ring then runs."""
    await intel.write_mem(RING_BASE, ring(RING_SIZE))
    await intel.execute(replay(RESUME))
    await intel.execute(replay(SB16_PROGRAM))
    dsp = Sink(capacity=RING_SIZE + 0x100)
    intel.machine.attach(5, dsp)
    await intel.settle()
    assert bytes(dsp.received) == (ring(RING_SIZE) * 2)[: RING_SIZE + 0x100]
