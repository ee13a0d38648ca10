"""The port-mapped ISA device base (hil/sim/isa.py) end to end, with a tiny test-only card:
ports in the decoder, a timer, an IRQ through the 8259 pair to an acknowledge() vector, and DMA
on a channel — the API the floppy and Sound Blaster models build on."""

from __future__ import annotations

import pytest

from hil.errors import DeviceError
from hil.sim.isa import IsaDevice, PortRange
from hil.sim.machine import Machine, machine_for
from hil.sim.timers import Timer

BASE, IRQ, CHANNEL = 0x300, 5, 3
CMD, STATUS, DELAY = BASE, BASE + 1, BASE + 2  # DELAY is a 16-bit port (in us)
START_DMA, START_PACED = 0x01, 0x02
BUSY, DONE = 0x01, 0x80


class Ticker(IsaDevice):
    """Test card: after DELAY us it sends ``length`` bytes (i & 0xFF) to memory on DMA 3, either
    as fast as the controller takes them or one per ``period_ns`` tick; at TC it raises IRQ 5,
    which a STATUS read clears."""

    def __init__(self, length: int = 16, period_ns: int = 50_000) -> None:
        super().__init__(ports=[PortRange(BASE, 4)], irqs=[IRQ], dma=[CHANNEL], wide_ports=[DELAY], name="ticker")
        self.length, self.period_ns = length, period_ns
        self.reset_count = 0
        self._clear()

    def _clear(self) -> None:
        self.delay_us = 0
        self.status = 0
        self.sent = 0
        self.paced = False
        self.timer: Timer | None = None
        self.reads: list[tuple[int, int]] = []

    def reset(self) -> None:
        super().reset()
        self.reset_count += 1
        self._clear()

    def io_read(self, port: int, width: int = 8) -> int:
        self.reads.append((port, width))
        if port == STATUS:
            value = self.status
            self.status &= ~DONE
            self.irq().lower()
            return value
        if port == DELAY:
            return self.delay_us if width == 16 else self.delay_us & 0xFF
        return 0xFF

    def io_write(self, port: int, value: int, width: int = 8) -> None:
        if port == DELAY:
            self.delay_us = value if width == 16 else (self.delay_us & 0xFF00) | value
        elif port == CMD and value in (START_DMA, START_PACED):
            self.paced = value == START_PACED
            self.status = BUSY
            self.sent = 0
            self.timer = self.after(self.delay_us * 1000, self._go, name="ticker start")

    def _go(self, when: int) -> None:
        self.dma_port(CHANNEL).dreq = True

    def dma_supply(self, channel: int, width: int) -> int:
        value = self.sent & 0xFF
        self.sent += 1
        if self.paced:
            self.dma_port(CHANNEL).dreq = False
            if self.sent < self.length:
                self.after(self.period_ns, self._go, name="ticker sample")
        return value

    def dma_terminal_count(self, channel: int) -> None:
        self.dma_port(CHANNEL).dreq = False
        self.status = DONE
        self.irq().raise_()


def init_pic(m: Machine) -> None:
    """docs/reference/8259.md §6: init_8259A with vector bases 0x08 / 0x70, all unmasked."""
    for port, value in ((0x20, 0x11), (0x21, 0x08), (0x21, 0x04), (0x21, 0x01),
                        (0xA0, 0x11), (0xA1, 0x70), (0xA1, 0x02), (0xA1, 0x01), (0x21, 0x00), (0xA1, 0x00)):
        m.io_write(port, value)


def program_ch3(m: Machine, count: int) -> None:
    """docs/reference/8237.md §4: single mode, write (to memory), ch3 at 0x2_4000, ``count`` bytes."""
    for port, value in ((0x0A, 0x07), (0x0B, 0x47), (0x0C, 0), (0x06, 0x00), (0x06, 0x40), (0x82, 0x02),
                        (0x07, (count - 1) & 0xFF), (0x07, (count - 1) >> 8), (0x0A, 0x03)):
        m.io_write(port, value)


@pytest.fixture(params=["intel", "qemu"])
def m(request) -> Machine:
    return machine_for(request.param)


def test_end_to_end_port_timer_dma_irq_vector(m):
    card = m.plug(Ticker(length=16))
    init_pic(m)
    program_ch3(m, 16)
    m.io_write(DELAY, 250, 16)  # 250 us
    m.io_write(CMD, START_DMA)
    started = m.now_ns
    assert m.irq_count(IRQ) == 0 and m.next_event_ns() == 250_000
    assert m.wait_irq(IRQ, timeout_ns=10_000_000)
    assert m.now_ns - started >= 250_000
    assert m.mem_read(0x24000, 17) == bytes(range(16)) + b"\x00"
    assert m.channel(3).cur_count == 0xFFFF and m.channel(3).tc
    assert m.io_read(0x20) & (1 << IRQ)  # docs/reference/8259.md §4.1: IRR
    assert m.pic.acknowledge() == 0x08 | IRQ  # docs/reference/8259.md §4.4
    assert m.io_read(STATUS) == DONE and not m.irq_level(IRQ)
    m.io_write(0x20, 0x20)  # EOI
    assert m.irq_count(IRQ) == 1 and card.dma_port(CHANNEL).tc_count == 1


def test_paced_device_interleaves_timers_with_dma(m):
    """One byte per 50 us tick: the count falls at the device's rate, and settle waits for the end."""
    m.plug(Ticker(length=8, period_ns=50_000))
    program_ch3(m, 8)
    m.io_write(CMD, START_PACED)
    m.advance(120_000)  # the first byte at +0, the next two at +50 us and +100 us
    assert m.channel(3).cur_count == 8 - 1 - 3
    took = m.run_until_idle()
    assert m.mem_read(0x24000, 8) == bytes(range(8)) and m.irq_level(IRQ)
    assert 7 * 50_000 - 120_000 <= took < 7 * 50_000 - 120_000 + 20_000


def test_ports_refuse_overlaps_and_float_again_after_unplug(m):
    card = m.plug(Ticker())
    with pytest.raises(DeviceError, match=r"0x0300.*ticker"):
        m.plug(Ticker())
    with pytest.raises(DeviceError, match=r"port 0x0020 .*motherboard"):
        m.plug(IsaDevice(ports=[PortRange(0x20, 2)], name="pic-clash"))
    with pytest.raises(DeviceError, match="already plugged"):
        m.plug(card)
    m.unplug(card)
    assert m.io_read(STATUS) == 0xFF and CHANNEL not in m.devices
    m.plug(Ticker())  # the ports and the channel are free again


def test_channel_held_by_a_card_is_refused(m):
    from hil.sim.devices import Source

    m.plug(Ticker())
    with pytest.raises(DeviceError, match="belongs to ticker"):
        m.attach(CHANNEL, Source(b"x"))
    other = IsaDevice(ports=[PortRange(0x310)], dma=[CHANNEL], name="second")
    with pytest.raises(DeviceError, match="DMA channel 3 already"):
        m.plug(other)


def test_word_access_one_cycle_on_a_wide_port_two_elsewhere(m):
    """A card asserting IOCS16# gets one 16-bit cycle; on its 8-bit ports the bus splits the word,
    low byte first (docs/reference/8237.md §1.4)."""
    card = m.plug(Ticker())
    m.io_write(DELAY, 0x1234, 16)
    assert m.io_read(DELAY, 16) == 0x1234
    card.reads.clear()
    m.io_read(CMD, 16)
    assert card.reads == [(CMD, 8), (CMD + 1, 8)]


def test_reset_resets_the_card_and_drops_its_timers(m):
    card = m.plug(Ticker())
    m.io_write(DELAY, 5, 16)
    m.io_write(CMD, START_DMA)
    assert card.timer is not None and card.timer.pending
    m.reset()
    assert card.reset_count == 1 and card.status == 0 and m.timers.next_ns() is None
    m.advance(100_000)
    assert not card.dma_port(CHANNEL).dreq and m.io_read(STATUS) == 0


def test_unplugged_card_has_no_services():
    card = Ticker()
    with pytest.raises(DeviceError, match="not plugged"):
        card.after(10, lambda t: None)
    with pytest.raises(DeviceError, match="not plugged on DMA channel"):
        card.dma_port(CHANNEL)
