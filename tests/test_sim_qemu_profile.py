"""The ``qemu`` profile against QEMU 7.2's observed i8257 behaviour.

Every scenario here replays a sequence from docs/reference/qemu-qtest.md §6 (FDC-driven DMA, with a Source or
Sink standing in for the floppy controller's data phase) or §8 (the i8257 vs 8237A table), and
checks the QEMU-column result; where the same sequence has a defined datasheet result (docs/reference/8237.md
§5), the ``intel`` profile is checked against it alongside.
"""

from __future__ import annotations

import pytest

from hil.ops import In, Out
from hil.sim.devices import Sink, Source


def sector(lba: int) -> bytes:
    """docs/reference/qemu-qtest.md §6: byte i of LBA n is (13*n + i) & 0xFF."""
    return bytes((13 * lba + i) & 0xFF for i in range(512))


class Fdc(Source):
    """Stands in for the floppy controller's data phase in a READ: it requests while it has
    bytes and ends the command (drops DREQ) on T/C, as docs/reference/qemu-qtest.md §6.3 observes ('The FDC ends
    normally on TC')."""

    def terminal_count(self, channel: int) -> None:
        super().terminal_count(channel)
        self.dreq = False


class FdcSink(Sink):
    """The floppy controller in a WRITE: takes one sector, drops DREQ on T/C."""

    def terminal_count(self, channel: int) -> None:
        super().terminal_count(channel)
        self.dreq = False


def w(port: int, value: int) -> Out:
    return Out(port, value)


def trace(text: str) -> list[Out]:
    """``"0a←06; 0c←00"`` → [Out(0x0A, 0x06), Out(0x0C, 0x00)] (docs/reference/qemu-qtest.md notation)."""
    ops = []
    for item in text.split(";"):
        port, value = item.split("←")
        ops.append(Out(int(port.strip(), 16), int(value.strip(), 16)))
    return ops


async def read16(be, ff_port: int, port: int) -> int:
    lo, hi = await be.execute([Out(ff_port, 0), In(port), In(port)])
    return lo | (hi << 8)


CH2_READ = "0a←06; 0c←00; 0b←{mode:02x}; 04←00; 04←{hi:02x}; 81←02; 05←{clo:02x}; 05←{chi:02x}"


def ch2(mode: int, addr_hi: int, count: int, page: int = 2) -> list[Out]:
    ops = trace(CH2_READ.format(mode=mode, hi=addr_hi, clo=count & 0xFF, chi=count >> 8))
    if page != 2:
        ops[5] = Out(0x81, page)
    return ops


# ---------------------------------------------------------------------------------------
# docs/reference/qemu-qtest.md §8: reset state and registers


async def test_reset_state(qemu):
    """docs/reference/qemu-qtest.md §8 'Reset state (halt mode)': in 08=00, 09=FF, 0A..0F=00, D0=00, D2=FF,
    DA=00, DE=00; ports 0x10 and 0x1F read 0xFF (not decoded); D3 aliases D2."""
    got = await qemu.execute([In(p) for p in (0x08, 0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x0E, 0x0F)])
    assert got == [0x00, 0xFF, 0, 0, 0, 0, 0, 0]
    got = await qemu.execute([In(p) for p in (0xD0, 0xD2, 0xD3, 0xDA, 0xDE, 0x10, 0x1F)])
    assert got == [0x00, 0xFF, 0xFF, 0x00, 0x00, 0xFF, 0xFF]


async def test_low_byte_only_write_sequence(qemu):
    """docs/reference/qemu-qtest.md §8 'low-byte-only write': `0c←0; 02←34; 02←12` then `0c←0; 02←99` → reads
    0x1234; completing with `0c←0; 02←99; 02←12` → 0x1299."""
    await qemu.execute(trace("0c←00; 02←34; 02←12; 0c←00; 02←99"))
    assert await read16(qemu, 0x0C, 0x02) == 0x1234
    await qemu.execute(trace("0c←00; 02←99; 02←12"))
    assert await read16(qemu, 0x0C, 0x02) == 0x1299


async def test_mask_register_sequence(qemu):
    """docs/reference/qemu-qtest.md §8 mask rows: `0f←05` → in 0f=00, in 09=05; `0a←06` with mask 05 → 05;
    `0e←0` → 00; `0f←F0` → in 09=F0 (whole byte kept); master clear → 0xFF."""
    await qemu.outb(0x0F, 0x05)
    assert (await qemu.inb(0x0F), await qemu.inb(0x09)) == (0x00, 0x05)
    await qemu.outb(0x0A, 0x06)
    assert await qemu.inb(0x09) == 0x05
    await qemu.outb(0x0E, 0x00)
    assert await qemu.inb(0x09) == 0x00
    await qemu.outb(0x0F, 0xF0)
    assert await qemu.inb(0x09) == 0xF0
    await qemu.outb(0x0D, 0x00)
    assert await qemu.inb(0x09) == 0xFF


async def test_master_clear_sequence(qemu):
    """docs/reference/qemu-qtest.md §8 master clear row: ch3 mode 0x5B, address 0x4321, count 0x0123, page 0x82=7,
    request ch2 (status 0x40), FF left at 1, `0d←0` → mask 0xFF, status 0, address/count/page
    kept, and the first read after the clear returns the low byte (0x21)."""
    await qemu.execute(trace("0b←5b; 0c←00; 06←21; 06←43; 07←23; 07←01; 82←07; 09←06"))
    assert await qemu.inb(0x08) == 0x40
    await qemu.execute([In(0x06)])  # FF left at 1
    await qemu.outb(0x0D, 0x00)
    assert await qemu.inb(0x09) == 0xFF
    assert await qemu.inb(0x08) == 0x00
    assert await qemu.execute([In(0x06), In(0x06), In(0x07), In(0x07), In(0x82)]) == [0x21, 0x43, 0x23, 0x01, 0x07]


async def test_inw_of_undecoded_first_port(be, profile):
    """docs/reference/qemu-qtest.md §8 'word/dword port access': dispatched to the owner of the first port, so
    `outw 0x82` writes 0x82 + 0x83 but `inw 0x80` reads 0xFFFF (0x80 is not QEMU's). On the AT
    model 0x80 is a page-file byte (docs/reference/8237.md §1.3) and the access splits into 0x80, 0x81."""
    await be.outb(0x81, 0x12)
    if profile == "intel":
        await be.outb(0x80, 0x34)
        assert await be.inw(0x80) == 0x1234
    else:
        assert await be.inw(0x80) == 0xFFFF
        await be.outw(0x80, 0xABCD)  # the whole write goes to the undecoded owner: lost
        assert await be.inb(0x81) == 0x12


# ---------------------------------------------------------------------------------------
# docs/reference/qemu-qtest.md §6: FDC-paced transfers


@pytest.mark.parametrize("mode", [0x46, 0x56], ids=["oneshot", "autoinit"])
async def test_fdc_read_data(be, profile, mode):
    """docs/reference/qemu-qtest.md §6.1 READ DATA → memory (ch2, mode 0x46, address 0x3000, page 2, count 511):
    afterwards address 0x3200, count 0xFFFF, status 0x04 then 0x00, mask at 0x09 = 0xFB (ch2 not
    masked at TC); memory 0x23000 = the sector, 0x23200 still 0xEE. §6.3 'Autoinit and
    re-triggering': mode 0x56 gives identical results (no reload). Intel (docs/reference/8237.md §3.1/§3.2):
    the same registers without autoinit, ch2 masked at TC; with autoinit reloaded and unmasked."""
    await be.fill_mem(0x23000, 0x400, 0xEE)
    await be.execute([*ch2(mode, 0x30, 511), w(0x0A, 0x02)])
    be.machine.attach(2, Source(sector(1)))
    await be.settle()
    assert await be.read_mem(0x23000, 512) == sector(1)
    assert await be.read_mem(0x23200, 1) == b"\xee"
    assert await be.inb(0x08) == 0x04
    assert await be.inb(0x08) == 0x00
    if profile == "qemu" or mode == 0x46:
        addr, count = 0x3200, 0xFFFF
    else:
        addr, count = 0x3000, 511  # reloaded from base (docs/reference/8237.md §3.2)
    assert await read16(be, 0x0C, 0x04) == addr
    assert await read16(be, 0x0C, 0x05) == count
    if profile == "qemu":
        assert await be.inb(0x09) == 0xFB
    else:
        assert await be.inb(0x0F) == (0x0F if mode == 0x46 else 0x0B)


async def test_fdc_write_data(be):
    """docs/reference/qemu-qtest.md §6.2 WRITE DATA memory → disk (mode 0x4A, address 0x4000, page 2, count 511):
    DMA address 0x4200, count 0xFFFF, status 0x04; the device got the payload (0xFF - i)."""
    payload = bytes((0xFF - i) & 0xFF for i in range(512))
    await be.write_mem(0x24000, payload)
    await be.execute(trace("0a←06; 0c←00; 0b←4a; 04←00; 04←40; 81←02; 05←ff; 05←01; 0a←02"))
    sink = FdcSink()
    be.machine.attach(2, sink)
    await be.settle()
    assert bytes(sink.received) == payload
    assert await read16(be, 0x0C, 0x04) == 0x4200
    assert await read16(be, 0x0C, 0x05) == 0xFFFF
    assert await be.inb(0x08) == 0x04


async def test_dreq_while_masked_then_unmask(be, profile):
    """docs/reference/qemu-qtest.md §6.3 'DREQ while masked': status reads 0x40, count stays 0x01FF, still 0x40
    later; then the unmask runs the whole transfer (address 0x3200, count 0xFFFF, status 0x04).
    Same on a datasheet part (docs/reference/8237.md §2.3 live request bits, §2.7 mask)."""
    await be.execute(ch2(0x46, 0x30, 511))
    be.machine.attach(2, Source(sector(2)))
    assert await be.inb(0x08) == 0x40
    assert await read16(be, 0x0C, 0x05) == 0x01FF
    await be.delay(50_000)
    assert await be.inb(0x08) == 0x40
    await be.outb(0x0A, 0x02)
    if profile == "intel":
        await be.settle()  # single mode: one transfer per bus grant (docs/reference/8237.md §3.5)
    assert await be.inb(0x08) == 0x04  # QEMU: done inside the unmask, by the very next access
    assert await read16(be, 0x0C, 0x04) == 0x3200
    assert await read16(be, 0x0C, 0x05) == 0xFFFF
    assert await be.read_mem(0x23000, 512) == sector(2)


async def test_multi_sector_read_short_count(be):
    """docs/reference/qemu-qtest.md §6.3 'Multi-sector read, short DMA count': address 0, page 3, count 999,
    1536 bytes offered → exactly 1000 bytes land, byte 1000 untouched; address 0x03E8, count
    0xFFFF, status 0x04 (docs/reference/8237.md §3.1: count+1 transfers, then TC)."""
    await be.fill_mem(0x30000, 0x800, 0xEE)
    await be.execute([*ch2(0x46, 0x00, 999, page=3), w(0x0A, 0x02)])
    data = sector(1) + sector(2) + sector(3)
    be.machine.attach(2, Fdc(data))
    await be.settle()
    assert await be.read_mem(0x30000, 1001) == data[:1000] + b"\xee"
    assert await read16(be, 0x0C, 0x04) == 0x03E8
    assert await read16(be, 0x0C, 0x05) == 0xFFFF
    assert await be.inb(0x08) == 0x04


async def test_partial_transfer(be):
    """docs/reference/qemu-qtest.md §6.3 'Partial transfer': count 1023, one 512-byte sector → address 0x3200,
    count 0x01FF, status 0x00 (no TC)."""
    await be.execute([*ch2(0x46, 0x30, 1023), w(0x0A, 0x02)])
    be.machine.attach(2, Source(sector(1)))
    await be.settle()
    assert await read16(be, 0x0C, 0x04) == 0x3200
    assert await read16(be, 0x0C, 0x05) == 0x01FF
    assert await be.inb(0x08) == 0x00


async def test_direction_bits(be, profile):
    """docs/reference/qemu-qtest.md §6.3 'Direction bits ignored': QEMU — mode 0x4A ('read from memory') with the
    FDC reading still writes the sector to memory; mode 0x46 with the FDC writing still reads
    memory to the device. docs/reference/8237.md §2.5: on a datasheet part the mode decides (a 0x4A channel reads
    memory, so the device's data never reaches memory)."""
    await be.fill_mem(0x23000, 0x200, 0xEE)
    await be.execute([*ch2(0x4A, 0x30, 511), w(0x0A, 0x02)])
    src = Source(sector(1))
    be.machine.attach(2, src)
    await be.settle()
    if profile == "qemu":
        assert await be.read_mem(0x23000, 512) == sector(1)
    else:
        assert await be.read_mem(0x23000, 512) == b"\xee" * 512
        assert src.pos == 0
    assert await read16(be, 0x0C, 0x04) == 0x3200
    assert await read16(be, 0x0C, 0x05) == 0xFFFF

    await be.write_mem(0x24000, sector(9))
    await be.execute([*ch2(0x46, 0x40, 511), w(0x0A, 0x02)])
    sink = Sink()
    be.machine.attach(2, sink)
    await be.settle()
    if profile == "qemu":
        assert bytes(sink.received) == sector(9)
    else:
        assert sink.received == b""  # a write (I/O → memory) transfer never offers data
        assert await be.read_mem(0x24000, 512) == b"\xff" * 512  # Sink drives a floating bus


async def test_illegal_transfer_type_device_decides(qemu):
    """docs/reference/qemu-qtest.md §8 'direction / transfer type': the direction bits are ignored, the device
    decides; only verify (bits 3:2 = 00) is honoured — so type 11 with a device that sends data
    is an ordinary transfer to memory."""
    await qemu.execute([*ch2(0x4E, 0x30, 511), w(0x0A, 0x02)])
    qemu.machine.attach(2, Source(sector(4)))
    await qemu.settle()
    assert await qemu.read_mem(0x23000, 512) == sector(4)
    assert await read16(qemu, 0x0C, 0x05) == 0xFFFF


async def test_decrement_to_memory(be, profile):
    """docs/reference/qemu-qtest.md §6.3 'Address decrement, FDC → memory' (mode 0x66, address 0x3400, count 511):
    final address 0x3200, count 0xFFFF, status 0x04 in both. QEMU writes the data *forward* into
    0x23200..0x233FF (the block ending below the start address; 0x23400 untouched); real hardware
    puts byte 0 at 0x23400 and byte 511 at 0x23201 (docs/reference/8237.md §3.3)."""
    await be.fill_mem(0x23000, 0x800, 0xEE)
    await be.execute([*ch2(0x66, 0x34, 511), w(0x0A, 0x02)])
    data = sector(1)
    be.machine.attach(2, Source(data))
    await be.settle()
    assert await read16(be, 0x0C, 0x04) == 0x3200
    assert await read16(be, 0x0C, 0x05) == 0xFFFF
    assert await be.inb(0x08) == 0x04
    if profile == "qemu":
        assert await be.read_mem(0x23200, 512) == data
        assert await be.read_mem(0x23400, 1) == b"\xee"
        assert await be.read_mem(0x231FF, 1) == b"\xee"
    else:
        assert await be.read_mem(0x23201, 512) == data[::-1]
        assert await be.read_mem(0x23200, 1) == b"\xee"
        assert await be.read_mem(0x23401, 1) == b"\xee"


async def test_decrement_from_memory(be, profile):
    """docs/reference/qemu-qtest.md §6.3 'Address decrement, memory → FDC': memory 0x25000..0x251FF = 00..FF
    00..FF, mode 0x6A, address 0x5200, count 511 → address 0x5000, count 0xFFFF, status 0x04.
    QEMU reads 0x25000..0x251FF and mirrors the first half from the second, so the device gets
    FF FE .. 00 | 00 01 .. FF. Real hardware reads downward from 0x25200 (docs/reference/8237.md §3.3)."""
    ramp = bytes(range(256)) * 2
    await be.write_mem(0x25000, ramp)
    await be.write_mem(0x25200, b"\x77")
    await be.execute(trace("0a←06; 0c←00; 0b←6a; 04←00; 04←52; 81←02; 05←ff; 05←01; 0a←02"))
    sink = FdcSink()
    be.machine.attach(2, sink)
    await be.settle()
    assert await read16(be, 0x0C, 0x04) == 0x5000
    assert await read16(be, 0x0C, 0x05) == 0xFFFF
    assert await be.inb(0x08) == 0x04
    if profile == "qemu":
        assert bytes(sink.received) == bytes(range(255, -1, -1)) + bytes(range(256))
    else:
        assert bytes(sink.received) == b"\x77" + bytes((ramp[::-1])[:511])


async def test_16bit_channel5(be, profile):
    """docs/reference/qemu-qtest.md §6.3 '16-bit channel 5': word address 0x1000, page 3, word count 255 →
    word address 0x1100, count 0xFFFF, status at 0xD0 = 0x02, mask at 0xD2 = 0xFD, data at 0x32000
    (QEMU ORs page bit 0) — an AT puts it at 0x22000 (docs/reference/8237.md §3.6)."""
    await be.fill_mem(0x22000, 0x200, 0xEE)
    await be.fill_mem(0x32000, 0x200, 0xEE)
    await be.execute(trace("d4←05; d8←00; d6←45; c4←00; c4←10; 8b←03; c6←ff; c6←00; d4←01"))
    be.machine.attach(5, Source(sector(3)))
    await be.settle()
    assert await read16(be, 0xD8, 0xC4) == 0x1100
    assert await read16(be, 0xD8, 0xC6) == 0xFFFF
    assert await be.inb(0xD0) == 0x02
    if profile == "qemu":
        assert await be.inb(0xD2) == 0xFD
        assert await be.read_mem(0x32000, 512) == sector(3)
        assert await be.read_mem(0x22000, 512) == b"\xee" * 512
    else:
        assert await be.inb(0xDE) == 0x0E  # ch5 masked at TC, ch4 unmasked by the BIOS, 6-7 masked
        assert await be.read_mem(0x22000, 512) == sector(3)
        assert await be.read_mem(0x32000, 512) == b"\xee" * 512


async def test_16bit_even_page_same_in_both(be):
    """docs/reference/qemu-qtest.md §6.3: 'With page 0x02 and word address 0x9000 both give 0x32000'."""
    await be.execute(trace("d4←05; d8←00; d6←45; c4←00; c4←90; 8b←02; c6←ff; c6←00; d4←01"))
    be.machine.attach(5, Source(sector(5)))
    await be.settle()
    assert await be.read_mem(0x32000, 512) == sector(5)


# ---------------------------------------------------------------------------------------
# software requests, memory-to-memory


async def test_memory_to_memory_not_supported(qemu):
    """docs/reference/qemu-qtest.md §8 'memory-to-memory': `08←01` is ignored; with ch0 block read 0x5000 and ch1
    block write 0x6000, `09←04` gives status 0x10, nothing is copied, both addresses unchanged."""
    await qemu.write_mem(0x5000, bytes(range(1, 17)))
    await qemu.execute(
        trace("08←01; 0c←00; 0b←88; 00←00; 00←50; 01←0f; 01←00; 0b←85; 02←00; 02←60; 03←0f; 03←00; 0e←00; 09←04")
    )
    await qemu.settle()
    assert await qemu.inb(0x08) == 0x10
    assert await qemu.read_mem(0x6000, 16) == bytes(16)
    assert await read16(qemu, 0x0C, 0x00) == 0x5000
    assert await read16(qemu, 0x0C, 0x02) == 0x6000
    assert await qemu.inb(0x0D) == 0  # temporary register reads 0


async def test_software_request_without_device(qemu):
    """docs/reference/qemu-qtest.md §8 'software request without a device': ch1 mode 0x49, address 0x1000, count
    0xFF, `09←05` → nothing transfers, address/count unchanged after 50 ms."""
    await qemu.execute(trace("0a←05; 0c←00; 0b←49; 02←00; 02←10; 03←ff; 03←00; 0a←01; 09←05"))
    await qemu.delay(50_000)
    assert await read16(qemu, 0x0C, 0x02) == 0x1000
    assert await read16(qemu, 0x0C, 0x03) == 0x00FF
    assert await qemu.inb(0x08) == 0x20


@pytest.mark.parametrize("mode", [0x49, 0x09, 0x89], ids=["single", "demand", "block"])
async def test_software_request_with_device_any_mode_but_masked(qemu, mode):
    """docs/reference/8237.md §2.6 [QEMU] / §5: a software request sets the status request bit and QEMU runs the
    device handler of every *unmasked* channel with that bit — in any mode, but not while masked
    (§5 'Software request bypasses mask': QEMU no)."""
    data = bytes(range(1, 33))
    await qemu.write_mem(0x41000, data)
    await qemu.execute(trace(f"0c←00; 0b←{mode:02x}; 02←00; 02←10; 83←04; 03←1f; 03←00"))
    sink = Sink(dreq=False)
    qemu.machine.attach(1, sink)
    await qemu.outb(0x09, 0x05)
    await qemu.settle()
    assert sink.received == b""  # channel 1 is still masked (reset mask 0xFF)
    await qemu.outb(0x0A, 0x01)
    await qemu.settle()
    assert bytes(sink.received) == data
    assert await read16(qemu, 0x0C, 0x03) == 0xFFFF
