"""An ECP parallel port (a Super I/O's LPT in ECP mode): the FIFO, the ECR and its DMA.

Why this device: nearly every board with LPC DMA has one, and in FIFO test mode the data sheets
say it moves data by DMA with nothing plugged in (docs/reference/devices.md §1, §1.5), while
QEMU has no ECP at all (docs/reference/devices.md §1.8). So a script written against this model
runs on a bench board as it is.

Registers (docs/reference/devices.md §1.1): DATA / ecpAFifo, STATUS, CONTROL at base+0..+2, the
EPP ports base+3..+7 as a stub (reads float, writes are lost), and at base_hi = base+0x400 the
FIFO / cnfgA, cnfgB and the ECR. What base_hi+0 is depends on the ECR mode: the PPF data FIFO
(010), the ECP data FIFO (011), the test FIFO (110), cnfgA (111).

* ECR (docs/reference/devices.md §1.2): modes 000-111, nErrIntrEn, dmaEn, serviceIntr, and the
  read-only full/empty bits; reset value 0x15. Entering mode 000 or 001 resets the FIFO; a switch
  between two FIFO modes keeps its contents (Linux's change_mode goes through 001 when it wants
  the reset, and its "FIFO is stuck" path switches ECP -> test mode to count what is left).
* cnfgA reads 0x10 (an 8-bit implementation, pword 1: docs/reference/devices.md §1.3); cnfgB
  carries the IRQ and DMA channel in the encodings Linux decodes, and bit 6 the live IRQ line.
* One 16-byte FIFO (:class:`Fifo`) shared by every mode. Thresholds (docs/reference/devices.md
  §1.2): writeIntrThreshold = readIntrThreshold = 16 - threshold (a threshold of 16 acts as 15),
  the threshold being the chip's configuration register (:attr:`EcpConfig.threshold`).
* Interrupts (docs/reference/devices.md §1.2): with serviceIntr = 0, a TC with dmaEn = 1, or
  (dmaEn = 0, a FIFO mode) at least writeIntrThreshold free bytes going forward / at least
  readIntrThreshold bytes present in reverse, sets serviceIntr and raises the IRQ; clearing
  serviceIntr while the condition already holds interrupts at once. nErrIntrEn = 0 and a falling
  nFault interrupts; so does ackIntEn with a rising nAck. **inference**: the line stays high
  from the event until software's next ECR write (the acknowledge); cnfgA's bit 7 = 0 is what
  Linux prints as "ISA-Pulses".
* PDRQ (docs/reference/devices.md §1.4): with dmaEn = 1 and serviceIntr = 0 in a DMA mode,
  forward while the FIFO has room, reverse while it holds data; at most 32 consecutive DMA cycles,
  then low for 350 ns (the nPDACK rule, modelled as a gap after every 32 cycles).
* Test mode (110; docs/reference/devices.md §1.5): CPU and DMA reach the tFIFO with no peripheral;
  a write to a full tFIFO is lost, a read of an empty one repeats the last byte. Whether DMA runs
  in test mode is :attr:`EcpConfig.test_dma` (True per the SMSC data sheets; False as 86Box). The
  direction is the CONTROL direction bit (bit 5), as for every FIFO mode.
* The stand-in peripheral (:class:`Peripheral`, docs/reference/devices.md §1.6): in PPF and
  forward ECP mode a printer-like sink takes one FIFO byte per 1/rate s (ecpAFifo bytes are kept
  apart as commands); in reverse ECP mode a source puts bytes 0x00, 0x01, ... into the FIFO at the
  same rate. ``stall`` holds Busy high (the FIFO never drains: Linux's "FIFO is stuck"), ``starve``
  gives the source only that many bytes.

Not modelled: the IEEE 1284 negotiation and handshake lines beyond Busy (the peripheral is always
ready in the mode the ECR selects), RLE compression (cnfgB bit 7 reads 0), EPP cycles, and the
Super I/O configuration ports that choose base, IRQ and DMA (they are :class:`EcpConfig`).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Mapping
from dataclasses import field

from hil.errors import DeviceError
from hil.log import get_logger
from hil.records import dataclass
from hil.sim.isa import IsaDevice, PortRange
from hil.sim.timers import Timer

log = get_logger("hil.sim.ecp")

HI = 0x400  #: base_hi = base + 0x400 on ISA/LPC Super I/O parts (docs/reference/devices.md §1.1)
DEPTH = 16  #: the FIFO's depth in bytes (SMSC LPC47M102: one 16-byte FIFO for every mode)
BASES = (0x378, 0x278, 0x3BC)  #: the LPT bases a Super I/O offers
DMA_CHOICES = (1, 3)  #: ECP DMA is channel 1 or 3 (docs/reference/devices.md §1.7)
#: cnfgB bits 5:3 -> ISA IRQ, as Linux's intrline table decodes them (docs/reference/devices.md §1.3)
INTRLINE = (0, 7, 9, 10, 11, 14, 15, 5)
CNFGA = 0x10  #: 8-bit implementation, pword 1 (docs/reference/devices.md §1.3)
ECR_RESET = 0x15  #: mode 000, nErrIntrEn, serviceIntr, empty (docs/reference/devices.md §1.2)
MAX_BURST = 32  #: consecutive DMA cycles PDRQ may stay asserted (docs/reference/devices.md §1.4)
DACK_GAP_NS = 350  #: then low until nPDACK has been deasserted this long
DEFAULT_RATE = 2_500_000  #: the stand-in's bytes/s: 86Box's FIFO drain rate (docs/reference/devices.md §1.6)
DEFAULT_THRESHOLD = 8  #: 86Box's trigger length (docs/reference/devices.md §1.6)


class Mode(enum.IntEnum):
    """ECR bits 7:5 (docs/reference/devices.md §1.2)."""

    SPP = 0
    PS2 = 1
    PPF = 2  #: parallel-port FIFO (Centronics handshake, forward only)
    ECP = 3
    EPP = 4
    VENDOR = 5
    TEST = 6
    CONFIG = 7


FIFO_MODES = frozenset({Mode.PPF, Mode.ECP, Mode.TEST})
RESETS_FIFO = frozenset({Mode.SPP, Mode.PS2})


class Ecr(enum.IntFlag):
    """ECR bits 4:0 (docs/reference/devices.md §1.2)."""

    EMPTY = 0x01
    FULL = 0x02
    SERVICE_INTR = 0x04
    DMA_EN = 0x08
    N_ERR_INTR_EN = 0x10


class Ctr(enum.IntFlag):
    """CONTROL (base+2) bits."""

    STROBE = 0x01
    AUTOFD = 0x02
    INIT = 0x04
    SELECT_IN = 0x08
    ACK_INT_EN = 0x10
    REVERSE = 0x20


class Status(enum.IntFlag):
    """STATUS (base+1) bits; bit 7 reads the inverse of the Busy line."""

    N_FAULT = 0x08
    SELECT = 0x10
    PAPER_OUT = 0x20
    N_ACK = 0x40
    N_BUSY = 0x80


#: the bits as plain ints: the FIFO paths test them on every byte, and IntFlag arithmetic is slow
EMPTY, FULL, SERVICE, DMA_EN, N_ERR = (int(f) for f in (Ecr.EMPTY, Ecr.FULL, Ecr.SERVICE_INTR, Ecr.DMA_EN,
                                                         Ecr.N_ERR_INTR_EN))
REVERSE, ACK_INT_EN = int(Ctr.REVERSE), int(Ctr.ACK_INT_EN)


@dataclass(frozen=True)
class EcpConfig:
    """What the Super I/O's configuration registers and the board choose (``sim:?ecp=...``)."""

    base: int = 0x378
    dma: int = 3
    irq: int = 7
    test_dma: bool = True  #: DMA in test mode: the SMSC data sheets say yes, 86Box does not
    threshold: int = DEFAULT_THRESHOLD  #: the FIFO threshold configuration field, 0-16
    rate: int = DEFAULT_RATE  #: the stand-in peripheral's bytes per second
    stall: bool = False  #: Busy held high: the peripheral takes nothing
    starve: int | None = None  #: bytes the reverse source has (None: never runs dry)

    def __post_init__(self) -> None:
        if self.base not in BASES:
            raise DeviceError(f"ecp: base 0x{self.base:X}: a Super I/O LPT is at {', '.join(f'0x{b:X}' for b in BASES)}")
        if self.dma not in DMA_CHOICES:
            raise DeviceError(f"ecp: DMA channel {self.dma}: ECP DMA is channel 1 or 3")
        if self.irq not in INTRLINE[1:]:
            raise DeviceError(f"ecp: IRQ {self.irq}: cnfgB can name IRQ {', '.join(map(str, sorted(INTRLINE[1:])))}")
        if not 0 <= self.threshold <= DEPTH:
            raise DeviceError(f"ecp: threshold {self.threshold}: the field is 0-16")
        if not 1 <= self.rate <= 1_000_000_000:
            raise DeviceError(f"ecp: rate {self.rate}: 1 byte/s .. 1e9 bytes/s")
        if self.starve is not None and self.starve < 0:
            raise DeviceError(f"ecp: starve {self.starve}: a byte count")

    @property
    def intr_threshold(self) -> int:
        """writeIntrThreshold = readIntrThreshold = 16 - threshold; 16 acts as 15."""
        return DEPTH - min(self.threshold, DEPTH - 1)

    @property
    def cnfgb(self) -> int:
        """cnfgB bits 5:0: the IRQ code and the DMA channel (bit 6 is the live line)."""
        return INTRLINE.index(self.irq) << 3 | self.dma


@dataclass
class Fifo:
    """The one FIFO every mode shares: (byte, is-command) entries and the test-mode rules'
    bookkeeping."""

    depth: int = DEPTH
    entries: deque[tuple[int, bool]] = field(default_factory=deque)
    last: int = 0  #: the byte read last (what a read of an empty test FIFO repeats)
    dropped: int = 0  #: writes lost to a full FIFO
    repeats: int = 0  #: reads of an empty FIFO

    @property
    def count(self) -> int:
        return len(self.entries)

    @property
    def free(self) -> int:
        return self.depth - len(self.entries)

    @property
    def full(self) -> bool:
        return len(self.entries) >= self.depth

    @property
    def empty(self) -> bool:
        return not self.entries

    def push(self, value: int, command: bool = False) -> bool:
        if self.full:
            self.dropped += 1
            return False
        self.entries.append((value & 0xFF, command))
        return True

    def pop(self) -> int:
        if not self.entries:
            self.repeats += 1
            return self.last
        self.last = self.entries.popleft()[0]
        return self.last

    def reset(self) -> None:
        self.entries.clear()


@dataclass
class Peripheral:
    """The stand-in at the far end of the cable (see the module docstring)."""

    rate: int
    stall: bool = False
    starve: int | None = None
    received: bytearray = field(default_factory=bytearray)  #: data bytes the sink took
    commands: list[int] = field(default_factory=list)  #: ecpAFifo bytes the sink took
    sent: int = 0  #: bytes the reverse source produced
    timer: Timer | None = None
    fault: bool = False  #: nFault low

    @property
    def period_ns(self) -> int:
        return max(1, -(-1_000_000_000 // self.rate))

    @property
    def has_data(self) -> bool:
        return self.starve is None or self.sent < self.starve


class EcpPort(IsaDevice):
    """The port (see the module docstring); :attr:`config` is what the board chose."""

    name = "ecp"
    dma_isolated = True  #: the DMA callbacks change no DREQ but this port's

    def __init__(self, config: EcpConfig | None = None) -> None:
        self.config = cfg = config or EcpConfig()
        self.base = cfg.base
        self.hi = cfg.base + HI
        super().__init__(ports=[PortRange(cfg.base, 8), PortRange(self.hi, 3)], irqs=(cfg.irq,), dma=(cfg.dma,),
                         name="ecp")
        self.fifo = Fifo()
        self.peripheral = Peripheral(cfg.rate, cfg.stall, cfg.starve)
        self.test_dma = cfg.test_dma
        self._power_on()

    def _power_on(self) -> None:
        self.ecr = ECR_RESET & 0xFC
        self.ctr = 0x00
        self.data = 0x00
        self.fifo.reset()
        self.burst = 0  #: consecutive DMA cycles of this PDRQ assertion
        self.hold: Timer | None = None  #: the 350 ns gap after 32 cycles
        self.tc_seen = 0  #: terminal counts with dmaEn set
        self.interrupts = 0  #: interrupt events raised

    def reset(self) -> None:
        """RESET DRV: the port powers on again (the stand-in keeps what it received)."""
        for timer in (self.hold, self.peripheral.timer):
            if self.machine is not None:
                self.cancel(timer)
        self.peripheral.timer = None
        super().reset()
        self._power_on()

    def plugged(self) -> None:
        self._update()

    # --- state ----------------------------------------------------------------------------
    @property
    def mode(self) -> Mode:
        return Mode(self.ecr >> 5)

    @property
    def reverse(self) -> bool:
        """The direction the FIFO runs: CONTROL bit 5, ignored in modes 000 and 010
        (docs/reference/devices.md §1.6)."""
        return bool(self.ctr & REVERSE) and self.mode not in (Mode.SPP, Mode.PPF)

    def _read_ecr(self) -> int:
        return self.ecr | (FULL if self.fifo.full else 0) | (EMPTY if self.fifo.empty else 0)

    def _dma_mode(self) -> bool:
        mode = self.mode
        return mode in (Mode.PPF, Mode.ECP) or (mode == Mode.TEST and self.test_dma)

    def _pdrq(self) -> bool:
        if self.ecr & SERVICE or not self.ecr & DMA_EN or self.hold is not None:
            return False
        if not self._dma_mode():
            return False
        return not self.fifo.empty if self.reverse else not self.fifo.full

    def _update(self) -> None:
        """Re-evaluate the service interrupt, PDRQ and the peripheral after any change."""
        self._check_service()
        if self.machine is None:
            return
        pdrq = self._pdrq()
        if not pdrq and self.hold is None:
            self.burst = 0  # the request dropped for its own reasons: nPDACK goes high
        self.dma_port(self.config.dma).dreq = pdrq
        self._kick()

    def _check_service(self) -> None:
        """PIO service condition (docs/reference/devices.md §1.2, sources 2a/2b)."""
        if self.ecr & (SERVICE | DMA_EN) or self.mode not in FIFO_MODES:
            return
        level = self.config.intr_threshold
        if (self.fifo.count >= level) if self.reverse else (self.fifo.free >= level):
            self._service_interrupt()

    def _service_interrupt(self) -> None:
        self.ecr |= SERVICE
        self._interrupt()

    def _interrupt(self) -> None:
        self.interrupts += 1
        if self.machine is not None:
            self.irq().raise_()

    # --- the CPU side -----------------------------------------------------------------------
    def io_read(self, port: int, width: int = 8) -> int:
        off = port - self.base
        match off:
            case 0:
                return 0xFF if self.reverse and self.mode == Mode.PS2 else self.data
            case 1:
                return self._status()
            case 2:
                return self.ctr | 0xC0
            case 0x400:
                if self.mode == Mode.CONFIG:
                    return CNFGA
                if self.mode in FIFO_MODES:
                    value = self.fifo.pop()
                    self._update()
                    return value
            case 0x401:
                if self.mode == Mode.CONFIG:
                    line = self.irq_lines.get(self.config.irq)
                    return (0x40 if line is not None and line.level else 0) | self.config.cnfgb
            case 0x402:
                return self._read_ecr()
        return 0xFF  # EPP stub, and FIFO / cnfgB outside their modes

    def _status(self) -> int:
        p = self.peripheral
        value = Status.SELECT | Status.N_ACK | 0x07  # reserved bits 2:0 read 1 (inference)
        if not p.stall:
            value |= Status.N_BUSY
        if not p.fault:
            value |= Status.N_FAULT
        return int(value)

    def io_write(self, port: int, value: int, width: int = 8) -> None:
        value &= 0xFF
        off = port - self.base
        match off:
            case 0:
                if self.mode == Mode.ECP:
                    self.fifo.push(value, command=True)  # ecpAFifo: a channel address or RLE count
                    self._update()
                else:
                    self.data = value
            case 2:
                self.ctr = value & 0x3F
                self._update()
            case 0x400:
                if self.mode in FIFO_MODES:
                    self.fifo.push(value)
                    self._update()
            case 0x402:
                self._write_ecr(value)

    def _write_ecr(self, value: int) -> None:
        old = self.mode
        new = Mode(value >> 5)
        if self.machine is not None:
            self.irq().lower()  # software's ECR write acknowledges the interrupt (inference)
        if new != old:
            if new in RESETS_FIFO:
                self.fifo.reset()
            elif old in FIFO_MODES and new in FIFO_MODES:
                log.debug("ecp_mode_switch_keeps_fifo", old=old.name, new=new.name, count=self.fifo.count)
        self.ecr = value & 0xFC  # full/empty are read-only
        self._update()

    # --- the peripheral ---------------------------------------------------------------------
    def fault(self, low: bool) -> None:
        """The stand-in drives nFault (low = error): a falling edge interrupts when nErrIntrEn = 0."""
        falling = low and not self.peripheral.fault
        self.peripheral.fault = low
        if falling and not self.ecr & N_ERR:
            self._interrupt()

    def ack_pulse(self) -> None:
        """The stand-in pulses nAck: its rising edge interrupts when ackIntEn is set."""
        if self.ctr & ACK_INT_EN:
            self._interrupt()

    def _kick(self) -> None:
        p = self.peripheral
        if p.timer is not None or self.machine is None:
            return
        if self._sink_wants() or self._source_wants():
            p.timer = self.after(p.period_ns, self._peripheral_tick, name="ecp peripheral")

    def _sink_wants(self) -> bool:
        return (self.mode in (Mode.PPF, Mode.ECP) and not self.reverse and not self.fifo.empty
                and not self.peripheral.stall)

    def _source_wants(self) -> bool:
        return self.mode == Mode.ECP and self.reverse and not self.fifo.full and self.peripheral.has_data

    def _peripheral_tick(self, when: int) -> None:
        p = self.peripheral
        p.timer = None
        if self._sink_wants():
            value, command = self.fifo.entries.popleft()
            (p.commands.append(value) if command else p.received.append(value))
        elif self._source_wants():
            self.fifo.push(p.sent & 0xFF)
            p.sent += 1
        self._update()

    # --- DMA --------------------------------------------------------------------------------
    def dma_accept(self, channel: int, value: int, width: int) -> None:
        self.fifo.push(value)
        self._cycle()

    def dma_supply(self, channel: int, width: int) -> int:
        value = self.fifo.pop()
        self._cycle()
        return value

    def _cycle(self) -> None:
        self.burst += 1
        if self.burst >= MAX_BURST and self.hold is None:
            self.hold = self.after(DACK_GAP_NS, self._release, name="ecp nPDACK gap")
        self._update()

    def _release(self, when: int) -> None:
        self.hold = None
        self.burst = 0
        self._update()

    def dma_burst_units(self, channel: int, width: int, limit: int) -> int:
        """Units that can move before PDRQ drops: the FIFO's room (data), the 32-cycle rule; one
        at a time while the peripheral works the other end, so its clock interleaves with the
        transfers as it would on the bus."""
        p = self.peripheral
        if self.mode in (Mode.PPF, Mode.ECP) and (p.has_data if self.reverse else not p.stall):
            return 1
        room = self.fifo.count if self.reverse else self.fifo.free
        return max(1, min(limit, room, MAX_BURST - self.burst))

    def dma_terminal_count(self, channel: int) -> None:
        """TC with dmaEn set: serviceIntr, the interrupt, PDRQ off (docs/reference/devices.md §1.4)."""
        if self.ecr & DMA_EN:
            self.tc_seen += 1
            self._service_interrupt()
            self._update()


def config_from_options(opts: Mapping[str, str]) -> EcpConfig | None:
    """The port the ``ecp*`` URL options describe (``hil.backends.sim.ECP_OPTIONS``), None
    without ``ecp`` (or ``ecp=0``). Raises
    :class:`ValueError` naming the option."""
    text = opts.get("ecp", "0").strip().lower()
    if text in ("0", "no", "off", "false", "none"):
        extra = sorted(k for k in opts if k.startswith("ecp_"))
        if extra:
            raise ValueError(f"option {extra[0]} needs ecp=1 (or ecp=BASE)")
        return None
    base = 0x378 if text in ("1", "yes", "on", "true", "") else _int("ecp", text)
    kw: dict[str, int | bool] = {"base": base}
    for key, name, choices in (("ecp_dma", "dma", (1, 3)), ("ecp_irq", "irq", (5, 7))):
        if key in opts:
            value = _int(key, opts[key])
            if value not in choices:
                raise ValueError(f"option {key}={opts[key]!r}: expected {' or '.join(map(str, choices))}")
            kw[name] = value
    for key, name in (("ecp_test_dma", "test_dma"), ("ecp_stall", "stall")):
        if key in opts:
            kw[name] = _bool(key, opts[key])
    for key, name in (("ecp_threshold", "threshold"), ("ecp_rate", "rate"), ("ecp_starve", "starve")):
        if key in opts:
            kw[name] = _int(key, opts[key])
    try:
        return EcpConfig(**kw)  # type: ignore[arg-type]  # the keys are EcpConfig's fields, typed above
    except DeviceError as e:
        raise ValueError(str(e)) from None


def _int(key: str, text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise ValueError(f"option {key}={text!r}: expected an integer (0x.. for hex)") from None


def _bool(key: str, text: str) -> bool:
    match text.lower():
        case "1" | "true" | "yes" | "on" | "":
            return True
        case "0" | "false" | "no" | "off":
            return False
    raise ValueError(f"option {key}={text!r}: expected 0 or 1")


__all__ = ["EcpConfig", "EcpPort", "Fifo", "Mode", "Peripheral", "config_from_options"]
