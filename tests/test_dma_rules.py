"""The DMA-ISA-LPC rules are checked before a channel is unmasked (docs/reference/linux-isa-dma.md §3)."""

from __future__ import annotations

import asyncio

import pytest

from hil.backends import open_backend
from hil.backends.recording import RecordingBackend
from hil.dma import DMA_MODE_READ, DMA_MODE_WRITE, FlipFlopError, InvalidModeError, IsaDma
from hil.errors import (
    AddressLimitError,
    AlignmentError,
    BoundaryCrossingError,
    CascadeChannelError,
    ChannelNotProgrammedError,
    ChannelNotRequestedError,
    DmaRuleError,
    HilError,
    TransferIncompleteError,
    TransferLengthError,
)
from hil.ops import DevAttach, DevState
from hil.ports import DMA1, DMA2


@pytest.fixture
async def be():
    async with open_backend("sim") as backend:
        yield backend


async def masked(be, ch: int) -> bool:
    """The mask bit as the port reads it: 0x0F / 0xDE on Intel chipsets (docs/reference/8237.md §2.9)."""
    return bool(await be.inb(DMA2.all_mask if ch >= 4 else DMA1.all_mask) & (1 << (ch & 3)))


async def programmed(dma: IsaDma, ch: int, phys: int, nbytes: int, mode: int = DMA_MODE_READ) -> None:
    async with dma.claim_dma_lock():
        await dma.disable_dma(ch)
        await dma.clear_dma_ff(ch)
        await dma.set_dma_mode(ch, mode)
        await dma.set_dma_addr(ch, phys)
        await dma.set_dma_count(ch, nbytes)


VIOLATIONS = [
    # (channel, phys, nbytes, error, words the message must contain)  -- §3 rules 4, 5, 17
    (2, 0xFFF000, 0x2000, AddressLimitError, ["16 MiB", "0xFFF000"]),
    (2, 0x1000000, 0x10, AddressLimitError, ["16 MiB"]),
    (1, 0x2FFF0, 0x20, BoundaryCrossingError, ["64 KiB", "0x30000"]),
    (6, 0x3FFF0, 0x20, BoundaryCrossingError, ["128 KiB", "0x40000"]),
    (5, 0x20001, 0x10, AlignmentError, ["odd", "0x20001"]),
    (7, 0x20000, 0x11, AlignmentError, ["odd", "17"]),
    (3, 0x10000, 0x10001, TransferLengthError, ["65536"]),
    (5, 0x20000, 0x20002, TransferLengthError, ["131072"]),
    (0, 0x1000, 0, TransferLengthError, ["length 0"]),
]


@pytest.mark.parametrize(("ch", "phys", "nbytes", "error", "words"), VIOLATIONS)
async def test_each_violation_is_its_own_error_and_channel_stays_masked(be, ch, phys, nbytes, error, words):
    dma = IsaDma(be)
    await dma.request_dma(ch, "t")
    await programmed(dma, ch, phys, nbytes)
    with pytest.raises(error) as info:
        await dma.enable_dma(ch)
    msg = str(info.value)
    assert f"channel {ch}" in msg
    for word in words:
        assert word in msg
    assert isinstance(info.value, HilError) and isinstance(info.value, DmaRuleError)
    assert await masked(be, ch)


@pytest.mark.parametrize("ch", [0, 1, 2, 3, 5, 6, 7])
async def test_largest_legal_buffers_pass(be, ch):
    """64 KiB on 0-3 and 128 KiB on 5-7, aligned to their boundary, just below 16 MiB."""
    dma = IsaDma(be)
    await dma.request_dma(ch, "t")
    size = 0x20000 if ch >= 4 else 0x10000
    await programmed(dma, ch, 0x1000000 - size, size)
    await dma.enable_dma(ch)
    assert not await masked(be, ch)


async def test_unrequested_channel_can_be_programmed_but_not_enabled(be):
    """Rules are checked before a channel is enabled: programming an unclaimed channel is what
    Linux allows; unmasking it is refused and the channel stays masked."""
    dma = IsaDma(be)
    await programmed(dma, 2, 0x1000, 0x100)
    with pytest.raises(ChannelNotRequestedError, match="request_dma"):
        await dma.enable_dma(2)
    assert await masked(be, 2)
    with pytest.raises(ChannelNotRequestedError):
        await dma.program(3, DMA_MODE_READ, 0x1000, 0x100)


async def test_channel_4_is_never_programmable(be):
    dma = IsaDma(be)
    for call in (dma.set_dma_mode(4, DMA_MODE_READ), dma.set_dma_addr(4, 0), dma.enable_dma(4), dma.disable_dma(4)):
        with pytest.raises(CascadeChannelError, match="channel 4"):
            await call
    assert not await masked(be, 4)  # still cascading DMA1


async def test_enable_before_programming_is_refused(be):
    dma = IsaDma(be)
    await dma.request_dma(1, "t")
    with pytest.raises(ChannelNotProgrammedError, match="set_dma_mode"):
        await dma.enable_dma(1)
    await dma.set_dma_mode(1, DMA_MODE_WRITE)
    with pytest.raises(ChannelNotProgrammedError, match="address"):
        await dma.enable_dma(1)


async def test_previously_enabled_channel_is_masked_when_a_rule_breaks(be):
    dma = IsaDma(be)
    await dma.request_dma(2, "t")
    await dma.program(2, DMA_MODE_READ, 0x1000, 0x100)
    assert not await masked(be, 2)
    await dma.clear_dma_ff(2)
    await dma.set_dma_addr(2, 0xFFFF0)  # now crosses 0x100000
    with pytest.raises(BoundaryCrossingError):
        await dma.enable_dma(2)
    assert await masked(be, 2)


async def test_program_checks_before_touching_ports():
    rec = RecordingBackend(open_backend("sim"))
    async with rec:
        dma = IsaDma(rec)
        await dma.request_dma(5, "t")
        rec.clear()
        with pytest.raises(AlignmentError):
            await dma.program(5, DMA_MODE_READ, 0x20001, 0x100)
        assert rec.port_trace() == []


async def test_unchecked_escape_hatch_does_what_linux_would(be):
    """Probing hardware: the 64K wrap happens (docs/reference/8237.md §3.3) because nothing refused it."""
    dma = IsaDma(be, unchecked=True)
    await be.execute([DevAttach(1, "source", bytes(range(0x20)))])
    await programmed(dma, 1, 0x2FFF0, 0x20)
    await dma.enable_dma(1)
    await be.settle()
    assert await be.read_mem(0x2FFF0, 0x10) == bytes(range(0x10))
    assert await be.read_mem(0x20000, 0x10) == bytes(range(0x10, 0x20))  # wrapped inside the page


async def test_per_call_unchecked(be):
    dma = IsaDma(be)
    await dma.request_dma(1, "t")
    await programmed(dma, 1, 0x2FFF0, 0x20)
    await dma.enable_dma(1, unchecked=True)
    assert not await masked(be, 1)


async def test_mode_with_channel_bits_or_illegal_type_refused(be):
    dma = IsaDma(be)
    await dma.request_dma(2, "t")
    with pytest.raises(InvalidModeError, match="channel bits"):
        await dma.set_dma_mode(2, 0x46)
    with pytest.raises(InvalidModeError, match="illegal"):
        await dma.set_dma_mode(2, 0x4C)
    with pytest.raises(InvalidModeError, match="byte"):
        await dma.set_dma_mode(2, 0x144)


async def test_flip_flop_set_is_refused(be):
    """docs/reference/hil-lessons.md §1.1 / docs/reference/8237.md §4: the functions assume the FF is clear."""
    dma = IsaDma(be)
    await dma.request_dma(2, "t")
    await dma.clear_dma_ff(2)
    await dma.set_dma_addr(2, 0x1000)
    await dma.get_dma_residue(2)  # two reads: still clear
    await dma.set_dma_count(2, 0x10)
    dma._state.ff[0] = 1  # as after an odd number of raw accesses seen through the shadow
    with pytest.raises(FlipFlopError, match="clear_dma_ff"):
        await dma.set_dma_addr(2, 0x1000)


async def test_wait_dma_done_reports_complete_transfer(be):
    dma = IsaDma(be)
    await dma.request_dma(3, "t")
    await be.execute([DevAttach(3, "source", b"x" * 300)])
    await dma.program(3, DMA_MODE_READ, 0x5000, 300)
    result = await dma.wait_dma_done(3, timeout=0.1)
    assert result.tc and result.residue == 0 and result.complete
    assert await masked(be, 3)


async def test_wait_dma_done_reports_incomplete_transfer_with_residue(be):
    """DMA-ISA-LPC rule 19: on timeout, disable and check the residue."""
    dma = IsaDma(be)
    await dma.request_dma(3, "t")
    await be.execute([DevAttach(3, "source", b"x" * 100)])  # the device has only 100 of 300 bytes
    await dma.program(3, DMA_MODE_READ, 0x5000, 300)
    with pytest.raises(TransferIncompleteError) as info:
        await dma.wait_dma_done(3, timeout=0.01)
    assert info.value.residue == 200 and info.value.expected == 300
    assert "200" in str(info.value) and "300" in str(info.value)
    assert await masked(be, 3)
    result = await dma.wait_dma_done(3, timeout=0.001, check=False)
    assert not result.tc and result.residue == 200


async def test_tc_bits_of_other_channels_are_not_lost(be):
    """A status read clears every TC bit of the controller (docs/reference/8237.md §2.3); waiters share them."""
    dma = IsaDma(be)
    for ch in (1, 2):
        await dma.request_dma(ch, "t")
        await be.execute([DevAttach(ch, "source", b"y" * 64)])
        await dma.program(ch, DMA_MODE_READ, 0x8000 + ch * 0x100, 64)
    await be.settle()
    r1, r2 = await asyncio.gather(dma.wait_dma_done(1, timeout=0.01), dma.wait_dma_done(2, timeout=0.01))
    assert r1.tc and r2.tc


async def test_claim_dma_lock_serialises_programming():
    """Two tasks programming under the lock never interleave their sequences (rule 14)."""
    rec = RecordingBackend(open_backend("sim"))
    async with rec:
        dma = IsaDma(rec)
        await dma.request_dma(1, "a")
        await dma.request_dma(2, "b")
        rec.clear()

        async def task(ch: int) -> None:
            for _ in range(5):
                async with dma.claim_dma_lock():
                    await dma.disable_dma(ch)
                    await asyncio.sleep(0)
                    await dma.clear_dma_ff(ch)
                    await asyncio.sleep(0)
                    await dma.set_dma_mode(ch, DMA_MODE_WRITE)
                    await dma.set_dma_addr(ch, 0x1000 * ch)
                    await dma.set_dma_count(ch, 16)
                    await dma.enable_dma(ch)

        await asyncio.gather(task(1), task(2))
        trace = rec.port_trace()
        assert len(trace) == 2 * 5 * 9
        for i in range(0, len(trace), 9):
            block = trace[i : i + 9]
            ch = block[0][2] & 3
            assert block[-1] == ("W", 0x0A, ch), "a sequence was interleaved with the other task's"
            assert all(p != 0x0A or v & 3 == ch for _, p, v in block)


async def test_sink_takes_memory_to_device(be):
    dma = IsaDma(be)
    await dma.request_dma(6, "t")
    await be.execute([DevAttach(6, "sink")])
    await be.write_mem(0x40000, bytes(range(256)) * 4)
    await dma.program(6, DMA_MODE_WRITE, 0x40000, 1024)
    result = await dma.wait_dma_done(6, timeout=0.1)
    (sink,) = await be.execute([DevState(6, max_bytes=2048)])
    assert result.complete and (sink.moved, sink.head) == (1024, bytes(range(256)) * 4)


DECREMENT_READ = DMA_MODE_READ | 0x20  # docs/reference/8237.md §3.3: address decrement


async def test_decrement_mode_checks_the_bytes_walked_downwards(be):
    """A decrementing transfer touches [addr-len+1, addr]: 0x2FFFF down 16 bytes stays in page 2."""
    dma = IsaDma(be)
    await dma.request_dma(2, "t")
    await be.execute([DevAttach(2, "source", bytes(range(16)))])
    await dma.program(2, DECREMENT_READ, 0x2FFFF, 16)  # would be refused if checked upwards
    await be.settle()
    assert await be.read_mem(0x2FFF0, 0x10) == bytes(range(15, -1, -1))
    await dma.clear_dma_ff(2)
    await dma.set_dma_addr(2, 0x20004)  # 16 bytes down from 0x20004 would wrap below 0x20000
    with pytest.raises(BoundaryCrossingError, match="decrementing"):
        await dma.enable_dma(2)
    assert await masked(be, 2)


async def test_decrement_on_16bit_channel_spans_whole_words(be):
    dma = IsaDma(be)
    await dma.request_dma(5, "t")
    await dma.program(5, DECREMENT_READ, 0x3FFFE, 0x20000)  # the whole 128 KiB block, top word first
    with pytest.raises(BoundaryCrossingError):
        await dma.program(5, DECREMENT_READ, 0x3FFFC, 0x20000)  # lowest word 0x1FFFE
    with pytest.raises(AddressLimitError, match="below address 0"):
        await dma.program(5, DECREMENT_READ, 0x10, 0x40)
