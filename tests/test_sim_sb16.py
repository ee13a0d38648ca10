"""The simulator's Sound Blaster 16 (hil/sim/sb16.py): the AT profile from the Creative subset in
docs/reference/devices.md §5, the qemu profile from QEMU 7.2 as measured in
docs/reference/qemu-qtest.md §7, compared op for op with ``qemu:?sb16=1`` where QEMU can be run.

The card is driven through its ports only (as a script would); IRQ lines are observed with the
machine's ``irq_count`` / ``irq_level`` on the simulator and with the qemu backend's on QEMU.
"""

from __future__ import annotations

import pytest

from hil.backends import open_backend
from hil.backends.base import Capability
from hil.errors import BackendOptionError, DeviceError
from hil.ops import Delay, In, Out
from hil.sim.machine import Machine, machine_for
from hil.sim.sb16 import CARDS, QemuSoundBlaster16, SoundBlaster16, card_for
from hil.testing import require

MIX_I, MIX_D, RESET, READ, WRITE, STATUS, ACK16 = 0x224, 0x225, 0x226, 0x22A, 0x22C, 0x22E, 0x22F
MS = 1_000_000  # ns


def need_qemu() -> None:
    from hil.backends.qemu import qemu_available

    ok, why = qemu_available()
    require(ok, "qemu-system-x86_64 (QEMU 7.2 or later)", why)


def card(profile: str) -> tuple[Machine, SoundBlaster16]:
    m = machine_for(profile)
    sb = m.plug(card_for(profile))
    assert isinstance(sb, SoundBlaster16) and sb.profile == profile
    return m, sb


def dsp(m: Machine, *data: int) -> None:
    """Command/data bytes to 0x22C, each after the write status says ready (docs/reference/devices.md §5)."""
    for b in data:
        assert m.io_read(WRITE) & 0x80 == 0
        m.io_write(WRITE, b)


def dsp_reset(m: Machine) -> None:
    m.io_write(RESET, 1)
    m.io_write(RESET, 0)


def mixer(m: Machine, reg: int, value: int | None = None) -> int:
    m.io_write(MIX_I, reg)
    if value is not None:
        m.io_write(MIX_D, value)
    return m.io_read(MIX_D)


def program_ch1(m: Machine, count: int, *, mode: int = 0x49, page: int = 0x04) -> None:
    """docs/reference/qemu-qtest.md §7: ch1, address 0, page 4 (0x40000), ``count`` bytes."""
    for port, value in ((0x0A, 0x05), (0x0C, 0), (0x0B, mode), (0x02, 0), (0x02, 0), (0x83, page),
                        (0x03, (count - 1) & 0xFF), (0x03, (count - 1) >> 8), (0x0A, 0x01)):
        m.io_write(port, value)


def program_ch5(m: Machine, words: int, *, mode: int = 0x49) -> None:
    """docs/reference/linux-isa-dma.md §2(b) ch5 order; word address 0x1000 in page 2 (0x22000 on the AT)."""
    for port, value in ((0xD4, 0x05), (0xD8, 0), (0xD6, mode), (0x8B, 0x02), (0xC4, 0x00), (0xC4, 0x10),
                        (0xC6, (words - 1) & 0xFF), (0xC6, (words - 1) >> 8), (0xD4, 0x01)):
        m.io_write(port, value)


def count(m: Machine, channel: int) -> int:
    return m.channel(channel).cur_count


@pytest.fixture(params=["intel", "qemu"])
def profile(request) -> str:
    return request.param


# --- both profiles: the register subset of docs/reference/devices.md §5 -----------------


def test_reset_leaves_0xaa_and_version_is_4_05(profile):
    m, _ = card(profile)
    dsp_reset(m)
    assert m.io_read(STATUS) & 0x80  # a byte is ready
    assert m.io_read(READ) == 0xAA
    assert m.io_read(STATUS) & 0x80 == 0
    dsp(m, 0xE1)
    assert [m.io_read(READ), m.io_read(READ)] == [4, 5]
    dsp(m, 0xE0, 0x5A)
    assert m.io_read(READ) == 0xA5  # identification: the complement
    dsp(m, 0xE4, 0x3C, 0xE8)
    assert m.io_read(READ) == 0x3C  # test register


def test_mixer_setup_registers_at_reset(profile):
    """0x80 = IRQ 5 (bit 1), 0x81 = DMA 1 and 5 (bits 1 and 5); 0x82 is read-only."""
    m, _ = card(profile)
    dsp_reset(m)
    assert mixer(m, 0x80) == 0x02 and mixer(m, 0x81) == 0x22
    assert mixer(m, 0x82) == 0x00
    assert mixer(m, 0x82, 0xFF) == 0x00


def test_forced_interrupts_and_their_acknowledge_ports(profile):
    """F2/F3 set 0x82 bit 0 / bit 1 and raise IRQ 5; reading 0x22E acknowledges only the 8-bit
    one, 0x22F only the 16-bit one (docs/reference/devices.md §5)."""
    m, _ = card(profile)
    dsp_reset(m)
    m.io_read(READ)
    dsp(m, 0xF2)
    assert m.irq_level(5) and mixer(m, 0x82) & 0x03 == 0x01
    m.io_read(ACK16)
    assert m.irq_level(5) and mixer(m, 0x82) & 0x01
    m.io_read(STATUS)
    assert not m.irq_level(5) and mixer(m, 0x82) & 0x03 == 0
    dsp(m, 0xF3)
    assert m.irq_level(5) and mixer(m, 0x82) & 0x03 == 0x02
    m.io_read(STATUS)
    assert m.irq_level(5)
    m.io_read(ACK16)
    assert not m.irq_level(5) and m.irq_count(5) == 2


def test_single_cycle_count_falls_at_the_sample_rate_then_one_irq(profile):
    """8 kHz (time constant 0x83), 2000 bytes: ~80 bytes per 10 ms of virtual time; the block ends
    after 250 ms with one IRQ 5 and DREQ dropped (docs/reference/devices.md §5 'Behaviour')."""
    m, sb = card(profile)
    dsp_reset(m)
    m.io_read(READ)
    program_ch1(m, 2000)
    dsp(m, 0xD1, 0x40, 0x83, 0x14, 0xCF, 0x07)
    start = count(m, 1)
    m.advance(100 * MS)
    first = count(m, 1)
    m.advance(100 * MS)
    second = count(m, 1)
    # the qemu profile moves nothing before QEMU's first audio tick (10 ms): 720 in the first 100 ms
    assert 700 <= start - first <= 840 and 780 <= first - second <= 820, (start, first, second)
    assert m.irq_count(5) == 0
    assert m.wait_irq(5, timeout_ns=100 * MS)
    assert 249 * MS <= m.now_ns <= 262 * MS
    assert sb.eng8.moved == 2000 and not sb.dma_port(1).dreq and m.irq_count(5) == 1
    assert mixer(m, 0x82) & 1
    m.advance(100 * MS)
    assert m.irq_count(5) == 1 and m.io_read(0x08) & 0x20 == 0  # no request after the block


def test_auto_init_interrupts_per_block_and_exit_after_the_block(profile):
    """48h block 500 bytes in a 2000-byte ring at 8 kHz: one IRQ per 62.5 ms; DAh ends auto-init
    after the current block (docs/reference/devices.md §5)."""
    m, sb = card(profile)
    dsp_reset(m)
    m.io_read(READ)
    program_ch1(m, 2000, mode=0x59)
    dsp(m, 0xD1, 0x40, 0x83, 0x48, 0xF3, 0x01, 0x1C)
    acks = 0
    for _ in range(6):
        assert m.wait_irq(5, timeout_ns=80 * MS)
        m.io_read(STATUS)
        acks += 1
    assert 6 * 62 * MS <= m.now_ns <= 6 * 62.5 * MS + 15 * MS
    assert sb.eng8.running and sb.eng8.blocks == 6
    dsp(m, 0xDA)
    assert m.wait_irq(5, timeout_ns=80 * MS)
    m.io_read(STATUS)
    m.advance(200 * MS)
    assert m.irq_count(5) == 7 and not sb.eng8.running and sb.eng8.moved == 7 * 500


def test_pause_freezes_the_count_and_continue_resumes(profile):
    m, _ = card(profile)
    dsp_reset(m)
    m.io_read(READ)
    program_ch1(m, 2000)
    dsp(m, 0x40, 0x83, 0x14, 0xCF, 0x07)
    m.advance(50 * MS)
    dsp(m, 0xD0)
    held = count(m, 1)
    m.advance(100 * MS)
    assert count(m, 1) == held and held < 1999
    assert m.io_read(0x08) & 0x20 == 0  # paused: no request
    dsp(m, 0xD4)
    m.advance(100 * MS)
    assert held - count(m, 1) >= 700


def test_16_bit_generic_command_on_dma5(profile):
    """B0h: 16-bit single-cycle output on DMA 5, mode 0x10 (signed mono), length in words;
    41h sets 8000 Hz (high byte first); IRQ status bit 1, acknowledged at 0x22F."""
    m, sb = card(profile)
    dsp_reset(m)
    m.io_read(READ)
    program_ch5(m, 400)
    dsp(m, 0x41, 0x1F, 0x40, 0xB0, 0x10, 0x8F, 0x01)
    m.advance(25 * MS)
    assert 150 <= 399 - count(m, 5) <= 210
    assert m.wait_irq(5, timeout_ns=60 * MS)
    assert sb.eng16.moved == 400 and mixer(m, 0x82) & 0x03 == 0x02
    m.io_read(STATUS)
    assert m.irq_level(5)  # the 8-bit acknowledge does not clear a 16-bit interrupt
    m.io_read(ACK16)
    assert not m.irq_level(5)


def test_dsp_reset_stops_a_transfer(profile):
    m, sb = card(profile)
    dsp_reset(m)
    program_ch1(m, 2000, mode=0x59)
    dsp(m, 0x40, 0x83, 0x48, 0xF3, 0x01, 0x1C)
    m.advance(30 * MS)
    dsp_reset(m)
    at = count(m, 1)
    m.advance(100 * MS)
    assert count(m, 1) == at and not sb.eng8.running and not sb.dma_port(1).dreq
    assert m.io_read(READ) == 0xAA


def test_machine_reset_powers_the_card_on_again(profile):
    m, sb = card(profile)
    program_ch1(m, 2000)
    dsp(m, 0x40, 0x83, 0x14, 0xCF, 0x07)
    m.advance(10 * MS)
    m.reset()
    assert not sb.eng8.running and not sb.dma_port(1).dreq and m.timers.next_ns() is None


# --- the AT profile only (docs/reference/devices.md §5) ---------------------------------------


def test_intel_mixer_0x80_moves_the_interrupt_line():
    """0x80 bit 2 selects IRQ 7, bit 3 IRQ 10, bit 0 IRQ 2 (= the AT's IRQ 9); a pending interrupt
    follows the selection."""
    m, _ = card("intel")
    dsp_reset(m)
    assert mixer(m, 0x80, 0x04) == 0x04
    dsp(m, 0xF2)
    assert m.irq_level(7) and not m.irq_level(5) and m.irq_count(7) == 1
    mixer(m, 0x80, 0x08)
    assert m.irq_level(10) and not m.irq_level(7)
    m.io_read(STATUS)
    assert not m.irq_level(10)
    mixer(m, 0x80, 0x01)
    dsp(m, 0xF2)
    assert m.irq_level(2) and m.irq_level(9)


def test_intel_dsp_length_ends_the_block_not_the_8237_tc():
    """One 2000-byte auto-init 8237 ring, 48h block 1000: the DSP interrupts every 1000 bytes, the
    8237 reaches TC (and reloads, docs/reference/8237.md §3.2) every 2000 (docs/reference/devices.md §5 'Behaviour')."""
    m, sb = card("intel")
    program_ch1(m, 2000, mode=0x59)
    dsp(m, 0x41, 0x2B, 0x11, 0x48, 0xE7, 0x03, 0x1C)  # 11025 Hz
    assert m.wait_irq(5, timeout_ns=200 * MS)
    assert m.io_read(0x08) & 0x02 == 0  # half the ring: no TC yet
    assert 999 - 1 <= 1999 - count(m, 1) <= 1000
    m.io_read(STATUS)
    assert m.wait_irq(5, timeout_ns=200 * MS)
    assert m.io_read(0x08) & 0x02  # the ring wrapped: TC, and the count reloaded
    assert count(m, 1) >= 1998 and sb.eng8.blocks == 2


def test_intel_requests_once_per_sample():
    """The DSP drops DREQ at each DACK (single mode, one transfer per request): between samples the
    status shows no request on channel 1 (docs/reference/8237.md §2.3, §3.5)."""
    m, sb = card("intel")
    program_ch1(m, 2000)
    dsp(m, 0x40, 0x83, 0x14, 0xCF, 0x07)
    m.advance(20 * MS)
    seen = [m.io_read(0x08) & 0x20 for _ in range(20)]
    assert not any(seen) and sb.eng8.running


def test_intel_input_records_silence_at_the_rate():
    """C8h: 8-bit single-cycle input (bit 3), mode 0x00 (unsigned): the card supplies samples, the
    8237 (write transfer, mode 0x45) stores them; silence in unsigned 8-bit is 0x80."""
    m, _ = card("intel")
    m.mem_fill(0x40000, 600, 0x11)
    program_ch1(m, 500, mode=0x45)
    dsp(m, 0x42, 0x1F, 0x40, 0xC8, 0x00, 0xF3, 0x01)
    assert m.wait_irq(5, timeout_ns=100 * MS)
    assert 62 * MS <= m.now_ns <= 64 * MS
    assert m.mem_read(0x40000, 501) == b"\x80" * 500 + b"\x11"


def test_intel_both_engines_run_at_once_and_pause_separately():
    """8-bit on DMA 1 and 16-bit on DMA 5 are two engines: D5h pauses only the 16-bit one."""
    m, sb = card("intel")
    program_ch1(m, 2000, mode=0x59)
    program_ch5(m, 2000, mode=0x59)
    dsp(m, 0x41, 0x1F, 0x40, 0xC6, 0x00, 0xE7, 0x03, 0xB6, 0x10, 0xE7, 0x03)
    m.advance(20 * MS)
    dsp(m, 0xD5)
    c1, c5 = count(m, 1), count(m, 5)
    m.advance(20 * MS)
    assert count(m, 5) == c5 and c1 - count(m, 1) >= 150
    assert sb.eng8.running and sb.eng16.paused


def test_intel_output_buffer_is_first_in_first_out():
    m, _ = card("intel")
    dsp_reset(m)
    dsp(m, 0xE1)
    assert [m.io_read(READ) for _ in range(3)] == [0xAA, 4, 5]


# --- the qemu profile: docs/reference/qemu-qtest.md §7 -------------------------------------------


def test_qemu_single_cycle_ends_at_the_base_values_without_tc():
    """§7 'Single-cycle': IRQ 5 once, DREQ dropped, address 0x0000 and count 0x0F9F, status 0x00."""
    m, _ = card("qemu")
    dsp_reset(m)
    m.io_read(READ)
    program_ch1(m, 4000)
    dsp(m, 0xD1, 0x40, 0x83, 0x14, 0x9F, 0x0F)
    m.advance(50 * MS)
    assert m.io_read(0x08) == 0x20  # while it runs: request ch1
    assert 350 <= 0xF9F - count(m, 1) <= 420  # ~404 bytes per 50 ms
    m.advance(500 * MS)
    assert m.irq_count(5) == 1
    assert (m.channel(1).cur_addr, count(m, 1)) == (0x0000, 0x0F9F)
    assert m.io_read(0x08) == 0x00


def test_qemu_auto_init_wraps_and_keeps_requesting():
    """§7 'Auto-init': the count wraps by itself, one IRQ 5 per 1000-byte block, status 0x20, no TC."""
    m, _ = card("qemu")
    dsp_reset(m)
    program_ch1(m, 4000, mode=0x59)
    dsp(m, 0x40, 0x83, 0x48, 0xE7, 0x03, 0x1C)
    acks, seen = 0, set()
    for _ in range(24):
        m.advance(50 * MS)
        seen.add(m.io_read(0x08))
        if m.irq_level(5):
            m.io_read(STATUS)
            acks += 1
    assert seen == {0x20} and m.irq_count(5) == 9 and acks == 9  # 1.2 s: 9 acks (§7)
    assert mixer(m, 0x82) == 0x00


def test_qemu_input_commands_start_nothing():
    m, sb = card("qemu")
    program_ch1(m, 500, mode=0x45)
    dsp(m, 0x42, 0x1F, 0x40, 0xC8, 0x00, 0xF3, 0x01)
    m.advance(100 * MS)
    assert not sb.eng8.running and count(m, 1) == 499 and m.irq_count(5) == 0


#: a register-level session run unchanged on QEMU and on the qemu profile: power-on 0x82, reset,
#: the LIFO output buffer, E0/E4/E8, F2/F3 and their acknowledges, mixer 0x80 written to IRQ 7
#: (QEMU stays on 5), 0x82 read-only, mixer reset via register 0x00, the ports QEMU floats
REGISTER_SESSION = [
    Out(MIX_I, 0x82), In(MIX_D), Out(MIX_I, 0x80), In(MIX_D), Out(MIX_I, 0x81), In(MIX_D),
    Out(RESET, 1), Out(RESET, 0), Out(MIX_I, 0x82), In(MIX_D),
    Out(WRITE, 0xE1), In(STATUS), In(READ), In(READ), In(READ), In(STATUS), In(READ),
    Out(WRITE, 0xE0), Out(WRITE, 0x5A), In(READ), Out(WRITE, 0xE4), Out(WRITE, 0x3C), Out(WRITE, 0xE8), In(READ),
    Out(WRITE, 0xF2), Out(MIX_I, 0x82), In(MIX_D), In(ACK16), In(MIX_D), In(STATUS), In(MIX_D), In(READ),
    Out(WRITE, 0xF3), In(MIX_D), In(STATUS), In(MIX_D), In(ACK16), In(MIX_D),
    Out(MIX_I, 0x80), Out(MIX_D, 0x04), In(MIX_D), Out(WRITE, 0xF2), In(STATUS), In(READ),
    Out(MIX_I, 0x82), Out(MIX_D, 0xFF), In(MIX_D),
    Out(MIX_I, 0x30), In(MIX_D), Out(MIX_D, 0x55), In(MIX_D), Out(MIX_I, 0x00), Out(MIX_D, 0x00),
    Out(MIX_I, 0x30), In(MIX_D), Out(MIX_I, 0x02), In(MIX_D), Out(MIX_I, 0x22), In(MIX_D),
    In(0x220), In(0x224), In(RESET), In(0x22B), In(0x22D), In(WRITE),
]

#: 16-bit playback on DMA 5 and a reset during auto-init, compared at the end of each part
PLAYBACK_SESSION = [
    Out(RESET, 1), Out(RESET, 0), In(READ),
    Out(0xD4, 0x05), Out(0xD8, 0), Out(0xD6, 0x49), Out(0x8B, 0x02), Out(0xC4, 0x00), Out(0xC4, 0x10),
    Out(0xC6, 0x8F), Out(0xC6, 0x01), Out(0xD4, 0x01),
    *(Out(WRITE, b) for b in (0x41, 0x1F, 0x40, 0xB0, 0x10, 0x8F, 0x01)),  # 400 words at 8 kHz: 50 ms
    Delay(300_000),
    Out(0xD8, 0), In(0xC4), In(0xC4), In(0xC6), In(0xC6), In(0xD0), Out(MIX_I, 0x82), In(MIX_D), In(ACK16), In(MIX_D),
    Out(0x0A, 0x05), Out(0x0C, 0), Out(0x0B, 0x59), Out(0x02, 0), Out(0x02, 0), Out(0x83, 0x04),
    Out(0x03, 0xCF), Out(0x03, 0x07), Out(0x0A, 0x01),
    *(Out(WRITE, b) for b in (0x40, 0x83, 0x48, 0xE7, 0x03, 0x1C)),  # 1000-byte blocks: 125 ms
    Delay(20_000), Out(RESET, 1), Out(RESET, 0),  # QEMU pulses IRQ 5 on a reset in auto-init mode
    Delay(200_000), In(0x08), In(MIX_D), In(READ),
]


async def run_on(url: str, ops: list) -> tuple[list, list[int]]:
    async with open_backend(url) as be:
        results = await be.execute(ops)
        counts = [be.machine.irq_count(n) if url.startswith("sim") else be.irq_count(n) for n in (5, 7, 9, 10)]  # type: ignore[attr-defined]  # sim: the machine; qemu: its own IRQ counts
    return results, counts


@pytest.mark.parametrize("session", [REGISTER_SESSION, PLAYBACK_SESSION], ids=["registers", "playback"])
async def test_qemu_profile_matches_qemu_op_for_op(session):
    need_qemu()
    want = await run_on("qemu:?sb16=1", session)
    got = await run_on("sim:?profile=qemu&sb16=1", session)
    assert got == want


async def test_intel_profile_differs_from_qemu_where_documented():
    """The register session on the AT profile: FIFO output (0xAA first), 0x82 = 0 at power on, the
    IRQ moved to line 7 by mixer 0x80, no QEMU volume defaults, 0x22D floating."""
    results, counts = await run_on("sim:?sb16=1", REGISTER_SESSION)
    assert results[0] == 0x00 and results[4:8] == [0x80, 0xAA, 4, 5]
    assert counts == [2, 1, 0, 0]


# --- the backend option -----------------------------------------------------------------------------


async def test_backend_option_and_capability():
    for url, profile in (("sim:?sb16=1", "intel"), ("sim:?profile=qemu&sb16=1", "qemu")):
        async with open_backend(url) as be:
            caps = be.capabilities
            assert Capability.SB16 in caps and caps.details["sb16"] is True
            assert "sb16" in caps.identity and caps.details["profile"] == profile
            assert type(be.sb16) is CARDS[profile]  # type: ignore[attr-defined]  # SimBackend
            assert await be.execute([Out(RESET, 1), Out(RESET, 0), In(READ)]) == [0xAA]
    async with open_backend("sim") as be:
        assert Capability.SB16 not in be.capabilities and await be.inb(READ) == 0xFF
    with pytest.raises(BackendOptionError, match="sb16"):
        open_backend("sim:?sb16=maybe")


def test_unknown_profile_and_taken_channel_are_refused():
    with pytest.raises(DeviceError, match="unknown profile 'bochs'; profiles: intel, qemu"):
        card_for("bochs")
    assert CARDS == {"intel": SoundBlaster16, "qemu": QemuSoundBlaster16}
    from hil.sim.devices import Sink

    m = machine_for("intel")
    m.attach(5, Sink())
    with pytest.raises(DeviceError, match="DMA channel 5 already"):
        m.plug(SoundBlaster16())
