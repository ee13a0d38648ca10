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
audio rate. The DSP's own length counter ends a block, not the 8237's TC (devices.md §5
'Behaviour'): single-cycle raises the IRQ once and drops DREQ; auto-init raises it at the end of
every block and carries on. The interrupt goes out on the line mixer 0x80 selects (IRQ 5 at reset).

The ``qemu`` profile (:data:`QUIRKS`) is QEMU 7.2's ``hw/audio/sb16.c`` where it differs, as
measured in docs/reference/qemu-qtest.md §7: DREQ is held for the whole transfer and the data moves
in chunks when QEMU's audio timer frees room, not one request per sample; the handler returns its
position modulo the channel length, so the channel reads its base values at the end and TC is
never set; only playback runs (input commands start nothing); the IRQ stays on line 5 whatever
mixer 0x80 says; D0/D5, D4/D6 and DA/D9 act on whichever transfer runs; the output buffer is read
last-in first-out; mixer 0x82 reads 0x40 until the first DSP reset; any acknowledge lowers the line.

Not modelled: the DSP busy bit (0x22C always reads ready), channel changes through mixer 0x81 (it
reads back what was written; the card stays on DMA 1 and 5), E2's DMA identification byte, the
mixer's volume registers beyond storage, ADPCM, MIDI and the FM ports 0x220-0x223/0x228-0x229
(they float to 0xFF).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from functools import partial

from hil.errors import DeviceError
from hil.log import get_logger
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
#: chunks this far apart in the qemu profile (about 404 bytes per 50 ms at 8 kHz, qemu-qtest.md §7)
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


@dataclass(frozen=True)
class Quirks:
    """Where a profile's card differs; the device class reads these and nothing else."""

    profile: str
    held_dreq: bool  #: DREQ held for the whole transfer, data moved in audio-timer chunks
    wraps_channel: bool  #: the handler's position is modulo the channel length: no TC, base again
    input_dma: bool  #: ADC commands (Bx/Cx bit 3, 24h, 2Ch) move data to memory
    fixed_irq: bool  #: mixer 0x80 is stored but the interrupt stays on IRQ 5
    one_engine: bool  #: pause/continue/exit-auto-init act on whichever transfer runs
    lifo_output: bool  #: the DSP's output bytes are read newest first
    any_ack_lowers: bool  #: an acknowledge lowers the line even if the other status bit is set
    status_at_power_on: int  #: mixer 0x82 before the first DSP reset
    clamp_rate: bool  #: sample rates outside 5000-45000 Hz are clamped
    args: dict[int, int] = field(default_factory=dict)


QUIRKS = {
    "intel": Quirks("intel", held_dreq=False, wraps_channel=False, input_dma=True, fixed_irq=False,
                    one_engine=False, lifo_output=False, any_ack_lowers=False, status_at_power_on=0x00,
                    clamp_rate=False, args=dict(ARGS)),
    # QEMU 7.2 hw/audio/sb16.c: realize sets 0x82 to 2 << 5; reset() clears it (qemu-qtest.md §7
    # reads 0x00 after the runs)
    "qemu": Quirks("qemu", held_dreq=True, wraps_channel=True, input_dma=False, fixed_irq=True,
                   one_engine=True, lifo_output=True, any_ack_lowers=True, status_at_power_on=0x40,
                   clamp_rate=True, args=QEMU_ARGS),
}


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
    """The card (see the module docstring); ``profile`` picks the :data:`QUIRKS`."""

    name = "sb16"

    def __init__(self, profile: str = "intel") -> None:
        if profile not in QUIRKS:
            raise DeviceError(f"sb16: unknown profile {profile!r}; profiles: {', '.join(QUIRKS)}")
        self.quirks = QUIRKS[profile]
        irqs = (IRQ,) if self.quirks.fixed_irq else tuple(IRQ_SELECT.values())
        super().__init__(ports=[PortRange(BASE, 16)], irqs=irqs, dma=(DMA8, DMA16), name="sb16")
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
        self.mixer[MIXER_STATUS] = self.quirks.status_at_power_on
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
        """Mixer register 0x00 (and power-on): volumes to their defaults; 0x80-0x82 stay."""
        if self.quirks.profile == "qemu":  # the values QEMU's reset_mixer leaves
            keep = self.mixer[0x7F:0x83]
            self.mixer[:] = b"\xff" * 256
            self.mixer[0x7F:0x83] = keep
            for reg, value in ((0x02, 4), (0x06, 4), (0x08, 0), (0x0A, 0), (0x0C, 0), (0x0E, 0),
                               (0x04, 0x88), (0x22, 0x88), (0x26, 0x88)):
                self.mixer[reg] = value
            self.mixer[0x30:0x48] = b"\x20" * 0x18
        else:  # the model keeps no volume defaults: storage only
            self.mixer[0x00:0x80] = bytes(0x80)
            self.mixer[0x83:] = bytes(256 - 0x83)

    def reset(self) -> None:
        """Machine reset (RESET DRV): the card powers on again."""
        for engine in (self.eng8, self.eng16):
            self._stop(engine)
        super().reset()
        self._power_on()

    def plugged(self) -> None:
        if self.quirks.held_dreq:  # QEMU's SB16 only reads memory (its DMA handler is playback)
            for channel in (DMA8, DMA16):
                self.dma_port(channel).direction = Direction.FROM_MEMORY

    # --- ports ------------------------------------------------------------------------------
    def io_read(self, port: int, width: int = 8) -> int:
        match port:
            case Port.MIXER_DATA:
                return self.mixer[self.mixer_index]
            case Port.DSP_READ:
                if self.out:
                    self.last_read = self.out.pop() if self.quirks.lifo_output else self.out.pop(0)
                return self.last_read  # empty: the last byte again
            case Port.DSP_WRITE:
                return 0x00  # bit 7 clear: ready for a command (busy time not modelled)
            case Port.QEMU_TIMER_CLEAR if self.quirks.profile == "qemu":
                return 0x00
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
            case 0x80 if not self.quirks.fixed_irq:
                self.mixer[reg] = value
                self._route_irq()
                return
            case 0x82:
                return  # the interrupt status is read-only
        self.mixer[reg] = value

    # --- interrupts ---------------------------------------------------------------------------
    def _selected_irq(self) -> int | None:
        if self.quirks.fixed_irq:
            return IRQ
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
        still = self.mixer[MIXER_STATUS] & (STATUS_8BIT | STATUS_16BIT)
        if self.irq_lines and (self.quirks.any_ack_lowers or not still):
            self.irq(self._irq_line).lower()

    # --- the DSP ------------------------------------------------------------------------------
    def _dsp_reset(self) -> None:
        """Reset (docs/reference/devices.md §5 '0x226'): transfers stop, 0xAA waits at 0x22A."""
        qemu_pulse = self.quirks.profile == "qemu" and self.current.auto
        for engine in (self.eng8, self.eng16):
            self._stop(engine)
            engine.auto = False
        self.mixer[MIXER_STATUS] = 0
        if self.irq_lines:
            self.irq(self._irq_line).lower()
            if qemu_pulse:  # QEMU's reset() pulses the line when auto-init was on
                self.irq(self._irq_line).pulse()
        self.out = [READY]
        self.pending_cmd, self.args = None, []
        self.speaker = False
        self.block_size = None
        if self.quirks.profile == "qemu":
            self.rate = DEFAULT_RATE  # QEMU's legacy_reset; its time constant survives

    def _put(self, *data: int) -> None:
        """Bytes for the host to read at 0x22A, in the order the guide gives them."""
        if self.quirks.lifo_output:
            self.out.extend(reversed(data))  # QEMU pushes them so that the newest is read first
        else:
            self.out.extend(data)

    def _dsp_byte(self, value: int) -> None:
        if self.pending_cmd is None:
            cmd = value
            need = 3 if 0xB0 <= cmd <= 0xCF else self.quirks.args.get(cmd, 0)
            if need:
                self.pending_cmd, self.args = cmd, []
            else:
                self._command(cmd, [])
            return
        self.args.append(value)
        cmd = self.pending_cmd
        if len(self.args) == (3 if 0xB0 <= cmd <= 0xCF else self.quirks.args.get(cmd, 0)):
            self.pending_cmd = None
            self._command(cmd, self.args)

    def _command(self, cmd: int, a: list[int]) -> None:
        q = self.quirks
        if 0xB0 <= cmd <= 0xCF:
            self._generic(cmd, a[0], a[1] | a[2] << 8)
            return
        match cmd:
            case Cmd.DMA8_SINGLE_OUT:
                self._start8(auto=False, output=True, length=(a[0] | a[1] << 8) + 1)
            case Cmd.DMA8_SINGLE_IN if q.input_dma:
                self._start8(auto=False, output=False, length=(a[0] | a[1] << 8) + 1)
            case Cmd.DMA8_AUTO_OUT | Cmd.HIGHSPEED_AUTO_OUT:
                self._start8(auto=True, output=True, length=None)
            case Cmd.HIGHSPEED_SINGLE_OUT:
                self._start8(auto=False, output=True, length=None)
            case Cmd.DMA8_AUTO_IN if q.input_dma:
                self._start8(auto=True, output=False, length=None)
            case Cmd.TIME_CONSTANT:
                self.time_constant = a[0]
            case Cmd.OUTPUT_RATE | Cmd.INPUT_RATE:
                self.time_constant = None
                self.rate = self._clamp(a[0] << 8 | a[1])  # high byte first (devices.md §5)
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
            case Cmd.SPEAKER_STATUS if q.profile == "intel":
                self._put(0xFF if self.speaker else 0x00)
            case Cmd.IDENTIFY:
                if q.profile == "qemu":
                    self.out = []  # QEMU drops what was waiting
                self._put(~a[0] & 0xFF)
            case Cmd.VERSION:
                self._put(*VERSION)
            case Cmd.WRITE_TEST:
                self.test_reg = a[0]
            case Cmd.READ_TEST:
                self._put(self.test_reg)
            case Cmd.FORCE_IRQ8 | Cmd.FORCE_IRQ16:
                if q.profile == "qemu":
                    self._put(READY)  # QEMU also queues 0xAA
                self._interrupt(STATUS_8BIT if cmd == Cmd.FORCE_IRQ8 else STATUS_16BIT)
            case _:
                log.debug("sb16_command_ignored", command=f"0x{cmd:02X}", args=a)

    def _target(self, sixteen: bool) -> Engine:
        if self.quirks.one_engine:
            return self.current
        return self.eng16 if sixteen else self.eng8

    def _clamp(self, rate: int) -> int:
        return min(max(rate, QEMU_RATE_MIN), QEMU_RATE_MAX) if self.quirks.clamp_rate else rate

    # --- starting transfers ----------------------------------------------------------------
    def _start8(self, *, auto: bool, output: bool, length: int | None) -> None:
        """The 8-bit legacy commands (14h/1Ch/24h/2Ch/90h/91h): mono, unsigned."""
        e = self.eng8
        if self.quirks.profile == "qemu":
            # QEMU's dma_cmd8: stereo from the SB Pro mixer switch (0x0E bit 1); a 40h time
            # constant sets the rate (rounded); 14h sets the block size, 1Ch uses 48h's
            stereo = bool(self.mixer[0x0E] & 2)
            if self.time_constant is not None:
                tmp = 256 - self.time_constant
                self.rate = (1_000_000 + tmp // 2) // tmp
            self.rate = self._clamp(self.rate)
            if length is not None:
                self.block_size = length << stereo
            elif self.block_size is not None and stereo:
                self.block_size &= ~1
            self.rate >>= stereo  # QEMU keeps the halved rate
            ups = self.rate << stereo
            block = self.block_size
        else:  # 14h/24h carry their length; 1Ch/2Ch/90h/91h use 48h's block size
            stereo = False
            ups = self._intel_units_per_s(stereo)
            block = length if length is not None else self.block_size
        self._begin(e, auto=auto, output=output, signed=False, stereo=stereo, block=block, ups=ups)

    def _generic(self, cmd: int, mode: int, length: int) -> None:
        """Bx (16-bit, DMA 5) / Cx (8-bit, DMA 1): bit 3 input, bit 2 auto-init, bit 1 FIFO; mode
        byte bit 4 signed, bit 5 stereo; length - 1 in units (docs/reference/devices.md §5; Linux
        sends period bytes, halved for 16-bit, minus 1: docs/reference/linux-isa-dma.md §2(b))."""
        q = self.quirks
        sixteen = cmd < 0xC0
        e = self.eng16 if sixteen else self.eng8
        output, auto = not cmd & 0x08, bool(cmd & 0x04)
        signed, stereo = bool(mode & 0x10), bool(mode & 0x20)
        if q.profile == "qemu":
            if not output:
                log.debug("sb16_adc_not_supported", command=f"0x{cmd:02X}")  # QEMU logs and does nothing
                return
            if self.time_constant is not None:
                tmp = 256 - self.time_constant
                self.rate = (1_000_000 + tmp // 2) // tmp
                self.time_constant = None
            block = length + 1
            if not auto:
                block <<= stereo  # QEMU doubles a stereo single-cycle length
            ups = self.rate << stereo
        else:
            block = length + 1
            ups = self._intel_units_per_s(stereo)
        self._begin(e, auto=auto, output=output, signed=signed, stereo=stereo, block=block, ups=ups)

    def _intel_units_per_s(self, stereo: bool) -> int:
        """A 40h time constant is the transfer period in us (256 - 10^6 / (channels x rate));
        41h/42h give samples per second per channel."""
        if self.time_constant is not None:
            return max(1, 1_000_000 // (256 - self.time_constant))
        return max(1, self.rate << stereo)

    def _begin(self, e: Engine, *, auto: bool, output: bool, signed: bool, stereo: bool,
               block: int | None, ups: int) -> None:
        if self.quirks.one_engine:
            other = self.eng16 if e is self.eng8 else self.eng8
            self._stop(other)
            self.current = e
        self._stop(e)
        e.auto, e.output, e.signed, e.stereo = auto, output, signed, stereo
        e.block = block or 0
        e.left = e.block
        e.units_per_s = max(1, ups)
        e.running, e.paused = True, False
        if self.quirks.profile == "qemu":
            self.speaker = True  # QEMU switches the speaker on with every transfer
        if not e.block:
            log.warning("sb16_no_block_size", channel=e.channel, note="1Ch/90h/91h before 48h: nothing moves")
        self._pace(e)

    # --- pacing --------------------------------------------------------------------------------
    def _pace(self, e: Engine) -> None:
        """(Re)start the clock of a running, unpaused engine from now."""
        e.t0_ns, e.paced, e.credit = self.now_ns, 0, 0
        if self.quirks.held_dreq:
            self.dma_port(e.channel).dreq = True  # QEMU's hold_DREQ for the whole transfer
            e.timer = self.after(QEMU_AUDIO_PERIOD_NS, partial(self._audio_tick, e), name="sb16 audio")
        else:
            self._request(e, self.now_ns)

    def _due(self, e: Engine, when: int) -> int:
        """Units the audio clock has reached at ``when`` since the engine's t0."""
        return (when - e.t0_ns) * e.units_per_s // 1_000_000_000

    def _next_ns(self, e: Engine, k: int) -> int:
        """When unit ``k`` since t0 is due (the first at t0): ceil(k / rate)."""
        return e.t0_ns + -(-k * 1_000_000_000 // e.units_per_s)

    def _request(self, e: Engine, when: int) -> None:
        """intel: one DREQ per unit at the sample rate (the timer that raised it has fired)."""
        e.timer = None
        if e.running and not e.paused and e.block:
            self.dma_port(e.channel).dreq = True

    def _audio_tick(self, e: Engine, when: int) -> None:
        """qemu: the audio timer freed room for the units played since the last tick."""
        e.timer = None
        if not (e.running and not e.paused):
            return
        due = self._due(e, when)
        e.credit += due - e.paced
        e.paced = due
        e.timer = self.at(when + QEMU_AUDIO_PERIOD_NS, partial(self._audio_tick, e), name="sb16 audio")
        if e.credit > 0:
            self.dma_port(e.channel).wake()

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

    def dma_ready(self, channel: int) -> bool:
        e = self._engine(channel)
        return not self.quirks.held_dreq or (e.running and not e.paused and e.block > 0 and e.credit > 0)

    def dma_wraps_at_length(self, channel: int) -> bool:
        return self.quirks.wraps_channel

    def dma_burst_units(self, channel: int, width: int, limit: int) -> int:
        if not self.quirks.held_dreq:
            return 1  # one request per sample
        e = self._engine(channel)
        n = min(limit, max(0, e.credit))
        return min(n, e.left) if not e.auto else n  # single-cycle stops at the block's end

    def dma_accept(self, channel: int, value: int, width: int) -> None:
        self._unit(self._engine(channel))

    def dma_supply(self, channel: int, width: int) -> int:
        e = self._engine(channel)
        self._unit(e)
        return e.silence

    def _unit(self, e: Engine) -> None:
        """One DACK cycle: the DSP's length counter counts it."""
        if not e.running or e.paused or not e.block:
            e.overruns += 1
            return
        e.moved += 1
        e.left -= 1
        if self.quirks.held_dreq:
            e.credit -= 1
        else:
            self.dma_port(e.channel).dreq = False
            e.paced += 1
        if e.left <= 0:
            e.blocks += 1
            self._interrupt(e.status_bit)
            if not e.auto:
                self._stop(e)
                return
            while e.left <= 0:
                e.left += e.block
        if not self.quirks.held_dreq:
            self.cancel(e.timer)  # a unit without a request (block mode) must not add a second clock
            when = max(self.now_ns, self._next_ns(e, e.paced))
            e.timer = self.at(when, partial(self._request, e), name="sb16 sample")


def sb16_for(profile: str) -> SoundBlaster16:
    """The card of a simulator profile (``intel`` or ``qemu``)."""
    return SoundBlaster16(profile)


__all__ = ["QUIRKS", "Engine", "Quirks", "SoundBlaster16", "sb16_for"]
