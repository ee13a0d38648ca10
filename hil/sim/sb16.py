"""A Sound Blaster 16 at 0x220: the DSP's DMA subset and the mixer's interrupt/DMA registers.

What a driver touches (docs/reference/devices.md §5; the Linux sequences in
docs/reference/linux-isa-dma.md §2(b)): DSP reset at 0x226 (write 1, then 0: 0xAA is then ready at
0x22A and bit 7 of 0x22E is set), read data 0x22A, command/data writes and the write status at
0x22C, the read status at 0x22E (reading it acknowledges the 8-bit interrupt) and 0x22F (acknowledges
the 16-bit one), the mixer's index/data pair 0x224/0x225 with registers 0x80 (IRQ select), 0x81
(DMA select) and 0x82 (interrupt status). DSP commands: E1 (version 4.05), 40 (time constant), 41/42
(output/input rate), 14/1C (8-bit single-cycle / auto-init output), 24/2C (the same for input), 48
(block size), 90/91 (high-speed auto-init / single-cycle output), the SB16 generic Bx (16-bit) and
Cx (8-bit) commands with their mode byte and length, D0/D4 and D5/D6 (pause/continue 8/16-bit),
DA/D9 (exit auto-init after the block), D1/D3 speaker, D8 speaker status, E0 (identify), E4/E8
(test register), F2/F3 (force the 8/16-bit interrupt).

Two DMA engines (:class:`Engine`): 8-bit on DMA 1, 16-bit on DMA 5. Each moves one unit (a byte on
channel 1, a word on channel 5) per sample period in virtual time, so the 8237's count falls at the
audio rate. The DSP's own length counter ends a block, not the 8237's TC (docs/reference/devices.md §5
'Behaviour'): single-cycle raises the IRQ once and drops DREQ; auto-init raises it at the end of
every block and carries on. The interrupt goes out on the line mixer 0x80 selects (IRQ 5 at reset).

The ``qemu`` profile (:class:`QemuSoundBlaster16`, a subclass that overrides only where QEMU
differs; :func:`card_for` picks the class of a machine's profile) is QEMU 7.2's
``hw/audio/sb16.c``, as measured in docs/reference/qemu-qtest.md §7: DREQ is held for the whole transfer and the data moves
in chunks when QEMU's audio timer frees room, not one request per sample; the handler returns its
position modulo the channel length, so the channel reads its base values at the end and TC is
never set; only playback runs (input commands start nothing); the IRQ stays on line 5 whatever
mixer 0x80 says; D0/D5, D4/D6 and DA/D9 act on whichever transfer runs; the output buffer is read
last-in first-out; mixer 0x82 reads 0x40 until the first DSP reset; any acknowledge lowers the line;
one transfer runs at a time.

Not modelled: the DSP busy bit (0x22C always reads ready), channel changes through mixer 0x81 (it
reads back what was written; the card stays on DMA 1 and 5), E2's DMA identification byte, the
mixer's volume registers beyond storage, ADPCM, MIDI and the FM ports 0x220-0x223/0x228-0x229
(they float to 0xFF).
"""

from __future__ import annotations

import enum
from functools import partial
from typing import ClassVar

from hil.errors import DeviceError
from hil.log import get_logger
from hil.records import dataclass
from hil.sim.devices import Direction
from hil.sim.isa import IsaDevice, PortRange
from hil.sim.timers import Timer

log = get_logger("hil.sim.sb16")

BASE = 0x220


class Port(enum.IntEnum):
    """The card's registers at base 0x220 (docs/reference/devices.md §5)."""

    MIXER_INDEX = BASE + 0x4
    MIXER_DATA = BASE + 0x5
    DSP_RESET = BASE + 0x6
    DSP_READ = BASE + 0xA
    DSP_WRITE = BASE + 0xC  #: write: command/data; read: write status (bit 7 busy)
    QEMU_TIMER_CLEAR = BASE + 0xD  #: decoded by QEMU only
    DSP_STATUS = BASE + 0xE  #: read status (bit 7: data to read); the read acknowledges the 8-bit IRQ
    DSP_ACK16 = BASE + 0xF  #: the read acknowledges the 16-bit IRQ


IRQ, DMA8, DMA16 = 5, 1, 5
VERSION = (4, 5)  #: DSP 4.05 (docs/reference/devices.md §5 'E1')
READY = 0xAA  #: the byte a DSP reset leaves to read

MIXER_IRQ, MIXER_DMA, MIXER_STATUS = 0x80, 0x81, 0x82
#: mixer 0x80 bits -> ISA IRQ (docs/reference/devices.md §5): bit 0 IRQ 2, 1 IRQ 5, 2 IRQ 7, 3 IRQ 10
IRQ_SELECT = {0: 2, 1: 5, 2: 7, 3: 10}
STATUS_8BIT, STATUS_16BIT = 0x01, 0x02  #: mixer 0x82 bits 0 and 1

#: QEMU's audio timer period (``-audiodev none``'s default timer-period, 10 ms): data moves in
#: chunks this far apart in the qemu profile (about 404 bytes per 50 ms at 8 kHz, docs/reference/qemu-qtest.md §7)
QEMU_AUDIO_PERIOD_NS = 10_000_000
QEMU_RATE_MIN, QEMU_RATE_MAX = 5000, 45000  #: QEMU clamps the sample rate to this range
DEFAULT_RATE = 11025  #: the rate before any 40h/41h (QEMU's; the Creative guide gives none)


class Cmd(enum.IntEnum):
    """The DSP commands modelled (docs/reference/devices.md §5)."""

    DMA8_SINGLE_OUT = 0x14
    DMA8_AUTO_OUT = 0x1C
    DMA8_SINGLE_IN = 0x24
    DMA8_AUTO_IN = 0x2C
    TIME_CONSTANT = 0x40
    OUTPUT_RATE = 0x41
    INPUT_RATE = 0x42
    BLOCK_SIZE = 0x48
    HIGHSPEED_AUTO_OUT = 0x90
    HIGHSPEED_SINGLE_OUT = 0x91
    PAUSE8 = 0xD0
    SPEAKER_ON = 0xD1
    SPEAKER_OFF = 0xD3
    CONTINUE8 = 0xD4
    PAUSE16 = 0xD5
    CONTINUE16 = 0xD6
    SPEAKER_STATUS = 0xD8
    EXIT_AUTO16 = 0xD9
    EXIT_AUTO8 = 0xDA
    IDENTIFY = 0xE0
    VERSION = 0xE1
    DMA_ID = 0xE2
    WRITE_TEST = 0xE4
    READ_TEST = 0xE8
    FORCE_IRQ8 = 0xF2
    FORCE_IRQ16 = 0xF3


#: argument bytes per command; the generic Bx/Cx commands take 3 (mode, length low, length high)
ARGS: dict[int, int] = {
    Cmd.DMA8_SINGLE_OUT: 2, Cmd.DMA8_SINGLE_IN: 2, Cmd.TIME_CONSTANT: 1, Cmd.OUTPUT_RATE: 2,
    Cmd.INPUT_RATE: 2, Cmd.BLOCK_SIZE: 2, Cmd.IDENTIFY: 1, Cmd.DMA_ID: 1, Cmd.WRITE_TEST: 1,
}
#: QEMU also takes arguments for commands it does not model (CSP 04/05/0E/0F, 10, ADPCM 74-77,
#: silence 80, F9), so the byte stream stays aligned with QEMU's; 24h/2Ch are unknown to it
QEMU_ARGS: dict[int, int] = {**{k: v for k, v in ARGS.items() if k != Cmd.DMA8_SINGLE_IN},
             0x04: 1, 0x05: 2, 0x0E: 2, 0x0F: 1, 0x10: 1, 0x74: 2, 0x75: 2, 0x76: 2, 0x77: 2, 0x80: 2, 0xF9: 1}


@dataclass
class Engine:
    """One DSP DMA engine: its channel and the transfer it runs (units are the channel's:
    bytes on the 8-bit channel, words on the 16-bit one)."""

    bits: int
    channel: int
    status_bit: int
    running: bool = False  #: a transfer is programmed and not finished
    paused: bool = False
    auto: bool = False
    output: bool = True  #: D/A (memory -> card); False: A/D (card -> memory)
    signed: bool = False
    stereo: bool = False
    block: int = 0  #: units per block (the DSP's length counter reload)
    left: int = 0  #: units left in the current block
    units_per_s: int = 0
    t0_ns: int = 0  #: when pacing (re)started
    paced: int = 0  #: units requested since t0 (intel) / credited since t0 (qemu)
    credit: int = 0  #: qemu: units the audio timer has room for
    timer: Timer | None = None
    moved: int = 0  #: units moved in all (for tests and dumps)
    blocks: int = 0  #: blocks completed
    overruns: int = 0  #: DACK cycles that came with no transfer running

    @property
    def silence(self) -> int:
        """The unit an A/D transfer records: silence in the programmed format."""
        if self.bits == 8:
            return 0x00 if self.signed else 0x80
        return 0x0000 if self.signed else 0x8000



class SoundBlaster16(IsaDevice):
    """The card as the Creative guide describes it (profile ``intel``; see the module docstring)."""

    name = "sb16"
    profile: ClassVar[str] = "intel"
    #: argument bytes per command (the generic Bx/Cx commands take 3 whatever this says)
    arg_counts: ClassVar[dict[int, int]] = ARGS
    #: the ISA lines the card can drive (mixer 0x80 selects one)
    irq_choices: ClassVar[tuple[int, ...]] = tuple(IRQ_SELECT.values())
    #: mixer 0x82 before the first DSP reset
    status_at_power_on: ClassVar[int] = 0x00
    #: ADC commands (Bx/Cx bit 3, 24h, 2Ch) move data to memory
    input_dma: ClassVar[bool] = True

    def __init__(self) -> None:
        super().__init__(ports=[PortRange(BASE, 16)], irqs=self.irq_choices, dma=(DMA8, DMA16), name="sb16")
        self.eng8 = Engine(8, DMA8, STATUS_8BIT)
        self.eng16 = Engine(16, DMA16, STATUS_16BIT)
        self.mixer = bytearray(256)
        self._power_on()

    # --- state ------------------------------------------------------------------------------
    def _power_on(self) -> None:
        self.mixer = bytearray(256)
        self._reset_mixer()
        self.mixer[MIXER_IRQ] = 0x02  # IRQ 5
        self.mixer[MIXER_DMA] = (1 << DMA8) | (1 << DMA16)
        self.mixer[MIXER_STATUS] = self.status_at_power_on
        self.mixer_index = 0
        self.reset_latch = False
        self.out: list[int] = []
        self.last_read = 0
        self.pending_cmd: int | None = None
        self.args: list[int] = []
        self.speaker = False
        self.test_reg = 0
        self.rate = DEFAULT_RATE  #: 41h/42h rate (Hz), or QEMU's ``freq``
        self.time_constant: int | None = None  #: 40h value while it rules the rate
        self.block_size: int | None = None  #: the 48h block size in units (None: never set)
        self.current = self.eng8  #: the engine the qemu profile's D0/D4/DA/... act on
        self._irq_line = IRQ

    def _reset_mixer(self) -> None:
        """Mixer register 0x00 (and power-on); 0x80-0x82 stay. The model keeps no volume
        defaults (the reference gives none): the other registers are plain storage, cleared."""
        self.mixer[0x00:0x80] = bytes(0x80)
        self.mixer[0x83:] = bytes(256 - 0x83)

    def reset(self) -> None:
        """Machine reset (RESET DRV): the card powers on again."""
        for engine in (self.eng8, self.eng16):
            self._stop(engine)
        super().reset()
        self._power_on()

    # --- ports ------------------------------------------------------------------------------
    def io_read(self, port: int, width: int = 8) -> int:
        match port:
            case Port.MIXER_DATA:
                return self.mixer[self.mixer_index]
            case Port.DSP_READ:
                if self.out:
                    self.last_read = self._next_out()
                return self.last_read  # empty: the last byte again
            case Port.DSP_WRITE:
                return 0x00  # bit 7 clear: ready for a command (busy time not modelled)
            case Port.DSP_STATUS:
                value = 0x80 if self.out else 0x00  # bits 0-6: the guide defines none; 0 here
                self._ack(STATUS_8BIT)
                return value
            case Port.DSP_ACK16:
                self._ack(STATUS_16BIT)
                return 0xFF
        return 0xFF

    def io_write(self, port: int, value: int, width: int = 8) -> None:
        value &= 0xFF
        match port:
            case Port.MIXER_INDEX:
                self.mixer_index = value
            case Port.MIXER_DATA:
                self._mixer_write(self.mixer_index, value)
            case Port.DSP_RESET:
                if value & 1:
                    self.reset_latch = True
                elif self.reset_latch:  # 1 then 0: the reset pulse
                    self.reset_latch = False
                    self._dsp_reset()
            case Port.DSP_WRITE:
                self._dsp_byte(value)

    def _mixer_write(self, reg: int, value: int) -> None:
        match reg:
            case 0x00:
                self._reset_mixer()
            case 0x80:
                self.mixer[reg] = value
                self._route_irq()
                return
            case 0x82:
                return  # the interrupt status is read-only
        self.mixer[reg] = value

    # --- interrupts ---------------------------------------------------------------------------
    def _selected_irq(self) -> int | None:
        """The line mixer 0x80 selects (the lowest bit set wins; none set: no line)."""
        sel = self.mixer[MIXER_IRQ]
        return next((irq for bit, irq in IRQ_SELECT.items() if sel & (1 << bit)), None)

    def _route_irq(self) -> None:
        """Mixer 0x80 changed: a pending interrupt moves to the newly selected line."""
        pending = bool(self.mixer[MIXER_STATUS] & (STATUS_8BIT | STATUS_16BIT))
        if self.irq_lines:
            self.irq(self._irq_line).lower()
        new = self._selected_irq()
        if new is not None:
            self._irq_line = new
            if pending and self.irq_lines:
                self.irq(new).raise_()

    def _interrupt(self, bit: int) -> None:
        self.mixer[MIXER_STATUS] |= bit
        line = self._selected_irq()
        if line is not None:
            self._irq_line = line
            self.irq(line).raise_()

    def _ack(self, bit: int) -> None:
        if not self.mixer[MIXER_STATUS] & bit:
            return
        self.mixer[MIXER_STATUS] &= ~bit
        if self.irq_lines and self._ack_lowers():
            self.irq(self._irq_line).lower()

    def _ack_lowers(self) -> bool:
        """The line stays up while the other interrupt is still pending (they share it)."""
        return not self.mixer[MIXER_STATUS] & (STATUS_8BIT | STATUS_16BIT)

    # --- the DSP ------------------------------------------------------------------------------
    def _dsp_reset(self) -> None:
        """Reset (docs/reference/devices.md §5 '0x226'): transfers stop, 0xAA waits at 0x22A."""
        for engine in (self.eng8, self.eng16):
            self._stop(engine)
            engine.auto = False
        self.mixer[MIXER_STATUS] = 0
        if self.irq_lines:
            self.irq(self._irq_line).lower()
        self.out = [READY]
        self.pending_cmd, self.args = None, []
        self.speaker = False
        self.block_size = None

    def _put(self, *data: int) -> None:
        """Bytes for the host to read at 0x22A, in the order the guide gives them."""
        self.out.extend(data)

    def _next_out(self) -> int:
        return self.out.pop(0)

    def _needs(self, cmd: int) -> int:
        return 3 if 0xB0 <= cmd <= 0xCF else self.arg_counts.get(cmd, 0)

    def _dsp_byte(self, value: int) -> None:
        if self.pending_cmd is None:
            if self._needs(value):
                self.pending_cmd, self.args = value, []
            else:
                self._command(value, [])
            return
        self.args.append(value)
        cmd = self.pending_cmd
        if len(self.args) == self._needs(cmd):
            self.pending_cmd = None
            self._command(cmd, self.args)

    def _command(self, cmd: int, a: list[int]) -> None:
        if 0xB0 <= cmd <= 0xCF:
            self._generic(cmd, a[0], a[1] | a[2] << 8)
            return
        match cmd:
            case Cmd.DMA8_SINGLE_OUT:
                self._start8(auto=False, output=True, length=(a[0] | a[1] << 8) + 1)
            case Cmd.DMA8_SINGLE_IN if self.input_dma:
                self._start8(auto=False, output=False, length=(a[0] | a[1] << 8) + 1)
            case Cmd.DMA8_AUTO_OUT | Cmd.HIGHSPEED_AUTO_OUT:
                self._start8(auto=True, output=True, length=None)
            case Cmd.HIGHSPEED_SINGLE_OUT:
                self._start8(auto=False, output=True, length=None)
            case Cmd.DMA8_AUTO_IN if self.input_dma:
                self._start8(auto=True, output=False, length=None)
            case Cmd.TIME_CONSTANT:
                self.time_constant = a[0]
            case Cmd.OUTPUT_RATE | Cmd.INPUT_RATE:
                self.time_constant = None
                self.rate = self._clamp(a[0] << 8 | a[1])  # high byte first (docs/reference/devices.md §5)
            case Cmd.BLOCK_SIZE:
                self.block_size = (a[0] | a[1] << 8) + 1
            case Cmd.PAUSE8 | Cmd.PAUSE16:
                self._pause(self._target(cmd == Cmd.PAUSE16), True)
            case Cmd.CONTINUE8 | Cmd.CONTINUE16:
                self._pause(self._target(cmd == Cmd.CONTINUE16), False)
            case Cmd.EXIT_AUTO8 | Cmd.EXIT_AUTO16:
                self._target(cmd == Cmd.EXIT_AUTO16).auto = False
            case Cmd.SPEAKER_ON:
                self.speaker = True
            case Cmd.SPEAKER_OFF:
                self.speaker = False
            case Cmd.IDENTIFY:
                self._identify(a[0])
            case Cmd.VERSION:
                self._put(*VERSION)
            case Cmd.WRITE_TEST:
                self.test_reg = a[0]
            case Cmd.READ_TEST:
                self._put(self.test_reg)
            case Cmd.FORCE_IRQ8 | Cmd.FORCE_IRQ16:
                self._force_irq(STATUS_8BIT if cmd == Cmd.FORCE_IRQ8 else STATUS_16BIT)
            case _:
                self._other_command(cmd, a)

    def _other_command(self, cmd: int, a: list[int]) -> None:
        """Commands only one profile knows: D8h speaker status here."""
        if cmd == Cmd.SPEAKER_STATUS:
            self._put(0xFF if self.speaker else 0x00)
        else:
            log.debug("sb16_command_ignored", command=f"0x{cmd:02X}", args=a)

    def _identify(self, value: int) -> None:
        self._put(~value & 0xFF)

    def _force_irq(self, bit: int) -> None:
        self._interrupt(bit)

    def _target(self, sixteen: bool) -> Engine:
        """The engine D0/D4/DA (8-bit) or D5/D6/D9 (16-bit) act on."""
        return self.eng16 if sixteen else self.eng8

    def _clamp(self, rate: int) -> int:
        return rate

    # --- starting transfers ----------------------------------------------------------------
    def _start8(self, *, auto: bool, output: bool, length: int | None) -> None:
        """The 8-bit legacy commands: mono, unsigned; 14h/24h carry their length, 1Ch/2Ch/90h/91h
        use 48h's block size."""
        block = length if length is not None else self.block_size
        self._begin(self.eng8, auto=auto, output=output, signed=False, stereo=False, block=block,
                    ups=self._units_per_s(stereo=False))

    def _generic(self, cmd: int, mode: int, length: int) -> None:
        """Bx (16-bit, DMA 5) / Cx (8-bit, DMA 1): bit 3 input, bit 2 auto-init, bit 1 FIFO; mode
        byte bit 4 signed, bit 5 stereo; length - 1 in units (docs/reference/devices.md §5; Linux
        sends period bytes, halved for 16-bit, minus 1: docs/reference/linux-isa-dma.md §2(b))."""
        e = self.eng16 if cmd < 0xC0 else self.eng8
        stereo = bool(mode & 0x20)
        self._begin(e, auto=bool(cmd & 0x04), output=not cmd & 0x08, signed=bool(mode & 0x10), stereo=stereo,
                    block=length + 1, ups=self._units_per_s(stereo=stereo))

    def _units_per_s(self, *, stereo: bool) -> int:
        """A 40h time constant is the transfer period in us (256 - 10^6 / (channels x rate));
        41h/42h give samples per second per channel."""
        if self.time_constant is not None:
            return max(1, 1_000_000 // (256 - self.time_constant))
        return max(1, self.rate << stereo)

    def _begin(self, e: Engine, *, auto: bool, output: bool, signed: bool, stereo: bool,
               block: int | None, ups: int) -> None:
        self._stop(e)
        self.current = e
        e.auto, e.output, e.signed, e.stereo = auto, output, signed, stereo
        e.block = block or 0
        e.left = e.block
        e.units_per_s = max(1, ups)
        e.running, e.paused = True, False
        if not e.block:
            log.warning("sb16_no_block_size", channel=e.channel, note="1Ch/90h/91h before 48h: nothing moves")
        self._pace(e)

    # --- pacing: one request per unit at the sample rate -------------------------------------
    def _pace(self, e: Engine) -> None:
        """(Re)start the clock of a running, unpaused engine from now."""
        e.t0_ns, e.paced, e.credit = self.now_ns, 0, 0
        self._request(e, self.now_ns)

    def _next_ns(self, e: Engine, k: int) -> int:
        """When unit ``k`` since t0 is due (the first at t0): ceil(k / rate)."""
        return e.t0_ns + -(-k * 1_000_000_000 // e.units_per_s)

    def _request(self, e: Engine, when: int) -> None:
        """The sample clock ticked: request the next unit."""
        e.timer = None
        if e.running and not e.paused and e.block:
            self.dma_port(e.channel).dreq = True

    def _stop(self, e: Engine) -> None:
        e.running = e.paused = False
        if e.timer is not None:
            if self.machine is not None:
                self.cancel(e.timer)
            e.timer = None
        if e.channel in self.dma_ports:
            self.dma_port(e.channel).dreq = False

    def _pause(self, e: Engine, pause: bool) -> None:
        if not e.running or e.paused == pause:
            return
        if pause:
            e.paused = True
            if e.timer is not None:
                self.cancel(e.timer)
                e.timer = None
            self.dma_port(e.channel).dreq = False
        else:
            e.paused = False
            self._pace(e)

    # --- DMA ---------------------------------------------------------------------------------
    def _engine(self, channel: int) -> Engine:
        return self.eng16 if channel == DMA16 else self.eng8

    def dma_accept(self, channel: int, value: int, width: int) -> None:
        self._unit(self._engine(channel))

    def dma_supply(self, channel: int, width: int) -> int:
        e = self._engine(channel)
        self._unit(e)
        return e.silence

    def _unit(self, e: Engine) -> None:
        """One DACK cycle: the DSP's length counter counts it, then the next request is timed."""
        if not self._count_unit(e):
            return
        self.dma_port(e.channel).dreq = False  # one transfer per request
        e.paced += 1
        self.cancel(e.timer)  # a unit without a request (block mode) must not add a second clock
        e.timer = self.at(max(self.now_ns, self._next_ns(e, e.paced)), partial(self._request, e), name="sb16 sample")

    def _count_unit(self, e: Engine) -> bool:
        """Count one unit against the block; False when the engine stopped (or was not running)."""
        if not e.running or e.paused or not e.block:
            e.overruns += 1
            return False
        e.moved += 1
        e.left -= 1
        if e.left <= 0:
            e.blocks += 1
            self._interrupt(e.status_bit)
            if not e.auto:
                self._stop(e)
                return False
            while e.left <= 0:
                e.left += e.block
        return True


class QemuSoundBlaster16(SoundBlaster16):
    """QEMU 7.2's ``-device sb16`` (profile ``qemu``), where it differs from the guide's card
    (docs/reference/qemu-qtest.md §7; read in QEMU's ``hw/audio/sb16.c``)."""

    profile = "qemu"
    #: QEMU also takes argument bytes for commands it does not model (CSP 04/05/0E/0F, 10h, ADPCM
    #: 74-77, silence 80h, F9h), so the byte stream stays aligned with QEMU's; 24h is unknown to it
    arg_counts = QEMU_ARGS
    irq_choices = (IRQ,)  #: the line is chosen when QEMU builds the card; 0x80 writes do not move it
    status_at_power_on = 0x40  #: QEMU's realize sets 2 << 5; the first DSP reset clears it
    input_dma = False  #: QEMU logs "ADC not yet supported" and starts nothing

    def plugged(self) -> None:
        for channel in (DMA8, DMA16):  # QEMU's handler only reads memory (playback)
            self.dma_port(channel).direction = Direction.FROM_MEMORY

    def _reset_mixer(self) -> None:
        """The values QEMU's mixer reset leaves: 0xFF but for a few volumes; 0x7F-0x82 untouched."""
        keep = self.mixer[0x7F:0x83]
        self.mixer[:] = b"\xff" * 256
        self.mixer[0x7F:0x83] = keep
        for reg, value in ((0x02, 4), (0x06, 4), (0x08, 0), (0x0A, 0), (0x0C, 0), (0x0E, 0),
                           (0x04, 0x88), (0x22, 0x88), (0x26, 0x88)):
            self.mixer[reg] = value
        self.mixer[0x30:0x48] = b"\x20" * 0x18

    def io_read(self, port: int, width: int = 8) -> int:
        if port == Port.QEMU_TIMER_CLEAR:
            return 0x00  # QEMU answers its "timer interrupt clear" offset with 0
        return super().io_read(port, width)

    def _mixer_write(self, reg: int, value: int) -> None:
        if reg == MIXER_IRQ:
            self.mixer[reg] = value  # stored, read back; QEMU keeps raising the line it was built with
            return
        super()._mixer_write(reg, value)

    def _selected_irq(self) -> int | None:
        return IRQ

    def _ack_lowers(self) -> bool:
        return True  # QEMU lowers the line on either acknowledge

    def _dsp_reset(self) -> None:
        """QEMU's reset also pulses the line when auto-init was on, and sets the rate to 11025 Hz
        (its time constant survives)."""
        pulse = self.current.auto
        super()._dsp_reset()
        if pulse:
            self.irq(self._irq_line).pulse()
        self.rate = DEFAULT_RATE

    def _put(self, *data: int) -> None:
        self.out.extend(reversed(data))  # QEMU's buffer is a stack: pushed so the first is on top

    def _next_out(self) -> int:
        return self.out.pop()

    def _other_command(self, cmd: int, a: list[int]) -> None:
        log.debug("sb16_command_ignored", command=f"0x{cmd:02X}", args=a)  # no D8h in QEMU

    def _identify(self, value: int) -> None:
        self.out = []  # QEMU drops what was waiting
        super()._identify(value)

    def _force_irq(self, bit: int) -> None:
        self._put(READY)  # QEMU also queues 0xAA
        super()._force_irq(bit)

    def _target(self, sixteen: bool) -> Engine:
        return self.current  # one set of state: D0/D5, D4/D6, DA/D9 act on the running transfer

    def _clamp(self, rate: int) -> int:
        return min(max(rate, QEMU_RATE_MIN), QEMU_RATE_MAX)

    def _qemu_rate_from_time_constant(self) -> None:
        if self.time_constant is not None:
            tmp = 256 - self.time_constant
            self.rate = (1_000_000 + tmp // 2) // tmp  # rounded, as QEMU computes it

    def _start8(self, *, auto: bool, output: bool, length: int | None) -> None:
        """QEMU's 8-bit path: stereo from the SB Pro mixer switch (0x0E bit 1), the rate halved
        for stereo and kept so; 14h's length (doubled for stereo) becomes the block size that
        1Ch and 90h/91h use."""
        stereo = bool(self.mixer[0x0E] & 2)
        self._qemu_rate_from_time_constant()
        self.rate = self._clamp(self.rate) >> stereo
        if length is not None:
            self.block_size = length << stereo
        elif self.block_size is not None and stereo:
            self.block_size &= ~1
        self._begin(self.eng8, auto=auto, output=output, signed=False, stereo=stereo, block=self.block_size,
                    ups=self.rate << stereo)

    def _generic(self, cmd: int, mode: int, length: int) -> None:
        """QEMU's Bx/Cx: playback only; a time constant, if set, gives the rate and is spent; a
        stereo single-cycle length is doubled."""
        if cmd & 0x08:
            log.debug("sb16_adc_not_supported", command=f"0x{cmd:02X}")
            return
        self._qemu_rate_from_time_constant()
        self.time_constant = None
        auto, stereo = bool(cmd & 0x04), bool(mode & 0x20)
        block = (length + 1) << (stereo and not auto)
        e = self.eng16 if cmd < 0xC0 else self.eng8
        self._begin(e, auto=auto, output=True, signed=bool(mode & 0x10), stereo=stereo, block=block,
                    ups=self.rate << stereo)

    def _begin(self, e: Engine, *, auto: bool, output: bool, signed: bool, stereo: bool,
               block: int | None, ups: int) -> None:
        self._stop(self.eng16 if e is self.eng8 else self.eng8)  # one transfer at a time
        self.speaker = True  # QEMU switches the speaker on with every transfer
        super()._begin(e, auto=auto, output=output, signed=signed, stereo=stereo, block=block, ups=ups)

    # --- pacing: DREQ held, data in audio-timer chunks -------------------------------------------
    def _pace(self, e: Engine) -> None:
        """QEMU holds DREQ for the whole transfer; nothing moves before the first audio tick."""
        e.t0_ns, e.paced, e.credit = self.now_ns, 0, 0
        self.dma_port(e.channel).dreq = True
        e.timer = self.after(QEMU_AUDIO_PERIOD_NS, partial(self._audio_tick, e), name="sb16 audio")

    def _audio_tick(self, e: Engine, when: int) -> None:
        """The audio timer freed room for the units played since the last tick."""
        e.timer = None
        if not e.running or e.paused:
            return
        due = (when - e.t0_ns) * e.units_per_s // 1_000_000_000
        e.credit += due - e.paced
        e.paced = due
        e.timer = self.at(when + QEMU_AUDIO_PERIOD_NS, partial(self._audio_tick, e), name="sb16 audio")
        if e.credit > 0:
            self.dma_port(e.channel).wake()

    def dma_ready(self, channel: int) -> bool:
        e = self._engine(channel)
        return e.running and not e.paused and e.block > 0 and e.credit > 0

    def dma_wraps_at_length(self, channel: int) -> bool:
        return True  # the handler returns its position modulo the channel length

    def dma_burst_units(self, channel: int, width: int, limit: int) -> int:
        e = self._engine(channel)
        n = min(limit, max(0, e.credit))
        return n if e.auto else min(n, e.left)  # single-cycle stops at the block's end

    def _unit(self, e: Engine) -> None:
        if self._count_unit(e):
            e.credit -= 1


#: the card of each simulator profile, by name
CARDS: dict[str, type[SoundBlaster16]] = {cls.profile: cls for cls in (SoundBlaster16, QemuSoundBlaster16)}


def card_for(profile: str) -> SoundBlaster16:
    """The card of a simulator profile (``intel`` or ``qemu``)."""
    cls = CARDS.get(profile)
    if cls is None:
        raise DeviceError(f"sb16: unknown profile {profile!r}; profiles: {', '.join(CARDS)}")
    return cls()


__all__ = ["CARDS", "Engine", "QemuSoundBlaster16", "SoundBlaster16", "card_for"]
