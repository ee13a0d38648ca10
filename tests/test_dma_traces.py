"""IsaDma emits exactly Linux's port traffic (docs/reference/linux-isa-dma.md §1.3, §1.4, §2), one program per call."""

from __future__ import annotations

import pytest

from hil.backends import open_backend
from hil.backends.recording import RecordingBackend
from hil.dma import DMA_AUTOINIT, DMA_MODE_CASCADE, DMA_MODE_READ, DMA_MODE_WRITE, IsaDma
from hil.errors import ChannelBusyError, HilError, InvalidChannelError
from hil.ops import DevAttach

DATA_CHANNELS = [0, 1, 2, 3, 5, 6, 7]
# docs/reference/linux-isa-dma.md §1.1 per-channel ports, written out as the reference table gives them
ADDR = {0: 0x00, 1: 0x02, 2: 0x04, 3: 0x06, 4: 0xC0, 5: 0xC4, 6: 0xC8, 7: 0xCC}
CNT = {0: 0x01, 1: 0x03, 2: 0x05, 3: 0x07, 4: 0xC2, 5: 0xC6, 6: 0xCA, 7: 0xCE}
PAGE = {0: 0x87, 1: 0x83, 2: 0x81, 3: 0x82, 5: 0x8B, 6: 0x89, 7: 0x8A}


def W(port: int, value: int) -> tuple[str, int, int]:
    return ("W", port, value)


@pytest.fixture
async def rec():
    be = RecordingBackend(open_backend("sim"))
    async with be:
        yield be


@pytest.fixture
async def dma(rec):
    d = IsaDma(rec)
    for ch in DATA_CHANNELS:
        await d.request_dma(ch, f"dev{ch}")
    rec.clear()
    return d


async def one_call(rec, coro):
    rec.clear()
    result = await coro
    assert rec.programs == 1, "each API call must be exactly one execute() program (one round trip)"
    return rec.port_trace(), result


@pytest.mark.parametrize("ch", DATA_CHANNELS)
async def test_enable_disable_clear_mode_per_channel(rec, dma, ch):
    """§1.3 table: enable/disable are single-mask writes, clear_dma_ff the FF port, mode ORs ch&3."""
    mask, clrff, mode = (0x0A, 0x0C, 0x0B) if ch < 4 else (0xD4, 0xD8, 0xD6)
    assert (await one_call(rec, dma.disable_dma(ch)))[0] == [W(mask, (ch & 3) | 4)]
    assert (await one_call(rec, dma.clear_dma_ff(ch)))[0] == [W(clrff, 0)]
    assert (await one_call(rec, dma.set_dma_mode(ch, DMA_MODE_READ)))[0] == [W(mode, 0x44 | (ch & 3))]
    assert (await one_call(rec, dma.set_dma_mode(ch, DMA_MODE_WRITE | DMA_AUTOINIT)))[0] == [W(mode, 0x58 | (ch & 3))]
    await dma.clear_dma_ff(ch)
    await dma.set_dma_addr(ch, 0x20000 * (ch & 3) + 0x1000)
    await dma.set_dma_count(ch, 0x100)
    assert (await one_call(rec, dma.enable_dma(ch)))[0] == [W(mask, ch & 3)]


@pytest.mark.parametrize("ch", DATA_CHANNELS)
@pytest.mark.parametrize("phys", [0x000000, 0x012346, 0x123456 & ~1, 0xFE0000, 0xFFFFFE])
async def test_set_dma_addr_per_channel(rec, dma, ch, phys):
    """§1.3: page first, then address low, high to the same port; 5-7 shift by 1, page & 0xFE."""
    await dma.clear_dma_ff(ch)
    trace, _ = await one_call(rec, dma.set_dma_addr(ch, phys))
    if ch < 4:
        expected = [W(PAGE[ch], phys >> 16), W(ADDR[ch], phys & 0xFF), W(ADDR[ch], (phys >> 8) & 0xFF)]
    else:
        expected = [W(PAGE[ch], (phys >> 16) & 0xFE), W(ADDR[ch], (phys >> 1) & 0xFF), W(ADDR[ch], (phys >> 9) & 0xFF)]
    assert trace == expected


@pytest.mark.parametrize("ch", DATA_CHANNELS)
@pytest.mark.parametrize("nbytes", [1, 2, 0x200, 0x2400, 0x10000, 0x20000, 0])
async def test_set_dma_count_per_channel(rec, dma, ch, nbytes):
    """§1.3: count-1, 5-7 shifted after the decrement; 0 underflows to a full 64K-unit count."""
    await dma.clear_dma_ff(ch)
    trace, _ = await one_call(rec, dma.set_dma_count(ch, nbytes))
    c = (nbytes - 1) & 0xFFFFFFFF
    if ch < 4:
        assert trace == [W(CNT[ch], c & 0xFF), W(CNT[ch], (c >> 8) & 0xFF)]
    else:
        assert trace == [W(CNT[ch], (c >> 1) & 0xFF), W(CNT[ch], (c >> 9) & 0xFF)]


async def test_worked_examples_from_8237_md_section_4(rec, dma):
    """docs/reference/8237.md §4 worked examples, byte for byte."""
    await dma.clear_dma_ff(5)
    assert (await one_call(rec, dma.set_dma_addr(5, 0x123456)))[0] == [W(0x8B, 0x12), W(0xC4, 0x2B), W(0xC4, 0x1A)]
    assert (await one_call(rec, dma.set_dma_count(5, 0x200)))[0] == [W(0xC6, 0xFF), W(0xC6, 0x00)]
    await dma.clear_dma_ff(2)
    assert (await one_call(rec, dma.set_dma_count(2, 0x10000)))[0] == [W(0x05, 0xFF), W(0x05, 0xFF)]
    assert (await one_call(rec, dma.set_dma_mode(2, DMA_MODE_READ)))[0] == [W(0x0B, 0x46)]


async def test_worked_expansions_linux_isa_dma_1_3(rec, dma):
    """docs/reference/linux-isa-dma.md §1.3 'Worked expansions'."""
    await dma.clear_dma_ff(2)
    assert (await one_call(rec, dma.set_dma_addr(2, 0x00123400)))[0] == [W(0x81, 0x12), W(0x04, 0x00), W(0x04, 0x34)]
    assert (await one_call(rec, dma.set_dma_count(2, 0x2400)))[0] == [W(0x05, 0xFF), W(0x05, 0x23)]
    await dma.clear_dma_ff(5)
    assert (await one_call(rec, dma.set_dma_addr(5, 0x00243000)))[0] == [W(0x8B, 0x24), W(0xC4, 0x00), W(0xC4, 0x18)]
    assert (await one_call(rec, dma.set_dma_count(5, 0x8000)))[0] == [W(0xC6, 0xFF), W(0xC6, 0x3F)]


async def test_floppy_read_sequence(rec, dma):
    """§2(a): read 0x2400 bytes into 0x00123400 -> the nine writes of the reference, in order."""
    async with dma.claim_dma_lock():
        await dma.disable_dma(2)
        await dma.clear_dma_ff(2)
        await dma.set_dma_mode(2, DMA_MODE_READ)
        await dma.set_dma_addr(2, 0x00123400)
        await dma.set_dma_count(2, 0x2400)
        await dma.enable_dma(2)
    assert rec.port_trace() == [W(0x0A, 0x06), W(0x0C, 0x00), W(0x0B, 0x46), W(0x81, 0x12), W(0x04, 0x00),
                                W(0x04, 0x34), W(0x05, 0xFF), W(0x05, 0x23), W(0x0A, 0x02)]


async def test_program_is_snd_dma_program_in_one_round_trip(rec, dma):
    """§2(b) SB16 ch5 playback, 32 KiB at 0x00243000: the reference trace, as one program."""
    trace, _ = await one_call(rec, dma.program(5, DMA_MODE_WRITE | DMA_AUTOINIT, 0x00243000, 0x8000))
    assert trace == [W(0xD4, 0x05), W(0xD8, 0x00), W(0xD6, 0x59), W(0x8B, 0x24), W(0xC4, 0x00),
                     W(0xC4, 0x18), W(0xC6, 0xFF), W(0xC6, 0x3F), W(0xD4, 0x01)]


async def test_parport_ecp_chunk_trace(rec, dma):
    """§2(c) example: ch3, bounce page at 0x00012000, 4096 bytes (ECR writes are not ours)."""
    trace, _ = await one_call(rec, dma.program(3, DMA_MODE_WRITE, 0x00012000, 4096))
    assert trace == [W(0x0A, 0x07), W(0x0C, 0x00), W(0x0B, 0x4B), W(0x82, 0x01), W(0x06, 0x00),
                     W(0x06, 0x20), W(0x07, 0xFF), W(0x07, 0x0F), W(0x0A, 0x03)]


async def test_cascade_mode_for_bus_master(rec, dma):
    """§2(d): cascade on ch5 is 'W D6 C1 ; W D4 01' and needs no buffer."""
    async with dma.claim_dma_lock():
        await dma.set_dma_mode(5, DMA_MODE_CASCADE)
        await dma.enable_dma(5)
    assert rec.port_trace() == [W(0xD6, 0xC1), W(0xD4, 0x01)]


@pytest.mark.parametrize("ch", DATA_CHANNELS)
async def test_get_dma_residue_reads_and_arithmetic(rec, dma, ch):
    """§1.3: two reads of the count port; 1 + lsb + (msb<<8) as unsigned short, doubled on 5-7."""
    await dma.clear_dma_ff(ch)
    await dma.set_dma_count(ch, 0x4000)  # register 0x3FFF bytes or 0x1FFF words
    await dma.clear_dma_ff(ch)
    trace, residue = await one_call(rec, dma.get_dma_residue(ch))
    assert [(d, p) for d, p, _ in trace] == [("R", CNT[ch]), ("R", CNT[ch])]
    lsb, msb = trace[0][2], trace[1][2]
    count = (1 + lsb + (msb << 8)) & 0xFFFF
    assert residue == (count << 1 if ch >= 4 else count) == 0x4000


async def test_residue_after_tc_wraps_to_zero(rec, dma):
    """§1.3: 'get_dma_residue(1) reading FF,FF -> 0' (count register 0xFFFF after TC)."""
    await rec.execute([DevAttach(1, "source", bytes(16))])
    await dma.program(1, DMA_MODE_READ, 0x3000, 16)
    await rec.settle()
    await dma.clear_dma_ff(1)
    trace, residue = await one_call(rec, dma.get_dma_residue(1))
    assert [v for _, _, v in trace] == [0xFF, 0xFF] and residue == 0


async def test_request_dma_semantics():
    """§1.4: -EINVAL for >= 8, -EBUSY when claimed, channel 4 pre-claimed as cascade; /proc/dma."""
    async with open_backend("sim") as be:
        dma = IsaDma(be)
        assert dma.proc_dma() == " 4: cascade\n"
        with pytest.raises(ChannelBusyError, match="cascade"):
            await dma.request_dma(4, "x")
        with pytest.raises(InvalidChannelError, match="8"):
            await dma.request_dma(8, "x")
        with pytest.raises(InvalidChannelError):
            await dma.request_dma(-1, "x")
        await dma.request_dma(2, "floppy")
        with pytest.raises(ChannelBusyError, match="floppy"):
            await dma.request_dma(2, "other")
        # the table belongs to the backend: a second IsaDma on it sees the claim
        assert IsaDma(be).owner_of(2) == "floppy"
        assert dma.proc_dma() == " 2: floppy\n 4: cascade\n"
        await dma.free_dma(2)
        await dma.free_dma(2)  # kernel: warning "Trying to free free DMA2", no error
        await dma.free_dma(9)
        assert dma.proc_dma() == " 4: cascade\n"
        assert issubclass(ChannelBusyError, HilError)


async def test_free_dma_does_not_mask(rec, dma):
    """§1.4: free_dma does no port I/O (the driver must disable_dma itself)."""
    await dma.free_dma(3)
    assert rec.port_trace() == []
