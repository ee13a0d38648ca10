"""The floppy disk controller at 0x3F0-0x3F7 on DMA channel 2 and IRQ 6: an 82077AA-compatible
subset (``intel``) and QEMU 7.2's ``hw/block/fdc.c`` (``qemu``).

Registers, commands, result layouts and status bits are those of docs/reference/devices.md §2.1-
§2.3; the DMA handshake, TC and overrun of §2.4; where QEMU differs, §2.5 and the measurements of
docs/reference/qemu-qtest.md §6. 0x3F6 belongs to the hard disk controller, not to the FDC.

``intel`` (:class:`FloppyController`): the command, execution and result phases with MSR's RQM,
DIO and CMD BUSY and the drive-busy bits while a drive steps; SPECIFY's step rate and head load
time, 300 rpm rotation and the data rate (DSR/CCR) in virtual time, so seeks, the wait for a
sector and the bytes of a sector take the time they take. In the execution phase the FDC raises
DRQ per byte (per FIFO threshold with the FIFO on) as the bytes pass the head; a byte not taken
(or not supplied) before the next one arrives is an overrun: ST1.OR, abnormal termination. TC
ends a READ / WRITE normally at the end of the sector in progress; running to EOT without TC is
abnormal termination with ST1.EN (§2.4). Sector IDs are those of a standard-formatted disk
(C = cylinder, H = head, R = 1..SPT, N = 2): a command naming another ID finds none (ST1.ND).
The controller comes up as an AT BIOS leaves it (out of reset, DMA gate on, no interrupt
pending); non-DMA mode (SPECIFY ND = 1) is refused with a :class:`~hil.errors.DeviceError` when a
data command starts.

``qemu`` (:class:`QemuFloppyController`): QEMU's state machine, 512-byte FIFO buffer included,
and its transfer handler: the i8257 calls it with the channel's length, it moves
min(length, data) bytes through the controller at once, and the result is normal (there is no TC
line, ST1.EN never comes). Seeks are instant, FORMAT TRACK writes nothing, SPECIFY's ND bit is
DOR bit 3, READ ID completes after 20 ms, VERSION is 0x90, every sector is 512 bytes and N reads
back 2 (docs/reference/devices.md §2.5).

Disks (:class:`Disk`): raw 1.44 MB or 720 KB images, kept in memory; WRITE DATA changes the
bytes and marks the disk dirty. Reading and writing image files is the backend's business
(:mod:`hil.backends.sim`), outside this no-I/O core. One :class:`Drive` per unit holds the
drive's state (cylinder, head, sector, disk change); drive A is unit 0.
"""

from __future__ import annotations

import enum
from dataclasses import field
from typing import ClassVar

from hil.errors import DeviceError
from hil.log import get_logger
from hil.records import dataclass
from hil.sim.isa import DmaWindow, IsaDevice, PortRange
from hil.sim.timers import Timer, TimerCallback

log = get_logger("hil.sim.fdc")

BASE = 0x3F0
IRQ = 6
DMA = 2
SECTOR = 512
NS_PER_MS = 1_000_000


class Msr(enum.IntFlag):
    """Main status register (docs/reference/devices.md §2.1)."""

    DRV0_BUSY = 0x01
    CMD_BUSY = 0x10
    NON_DMA = 0x20
    DIO = 0x40
    RQM = 0x80


class St0(enum.IntFlag):
    """ST0 (docs/reference/devices.md §2.3)."""

    HEAD = 0x04
    EC = 0x10
    SE = 0x20
    ABNORMAL = 0x40
    INVALID = 0x80
    READY_CHANGE = 0xC0


class St1(enum.IntFlag):
    MA = 0x01
    NW = 0x02
    ND = 0x04
    OR = 0x10
    DE = 0x20
    EN = 0x80


class St2(enum.IntFlag):
    BC = 0x02
    WC = 0x10


DOR_RESET_OFF = 0x04  #: DOR bit 2, /RESET: 0 holds the controller in reset
DOR_DMA = 0x08  #: DOR bit 3, DMA and interrupt gate on the AT
DSR_RESET = 0x80
DSR_POWERDOWN = 0x40
DIR_DSKCHG = 0x80
#: data rate code (DSR/CCR bits 1:0) -> bits per second, MFM (docs/reference/devices.md §2.1)
RATES = {0: 500_000, 1: 300_000, 2: 250_000, 3: 1_000_000}
VERSION = 0x90  #: "enhanced controller" (docs/reference/devices.md §2.2)
ROTATION_NS = 200 * NS_PER_MS  #: 300 rpm


@dataclass(frozen=True)
class Geometry:
    """A medium's layout and the data rate it was recorded at (DSR/CCR code)."""

    cylinders: int
    heads: int
    sectors: int
    rate: int
    name: str

    @property
    def size(self) -> int:
        return self.cylinders * self.heads * self.sectors * SECTOR


#: the raw images a drive takes, by size
GEOMETRIES = {g.size: g for g in (Geometry(80, 2, 18, 0, "1.44 MB"), Geometry(80, 2, 9, 2, "720 KB"))}
IMAGE_1440K = GEOMETRIES[1_474_560]


def generated_image(geometry: Geometry = IMAGE_1440K) -> bytes:
    """The generated image of ``floppy=generate``: byte *i* of LBA *n* is ``(13n + i) & 0xFF``
    (docs/reference/qemu-qtest.md §6), the same bytes as the ``qemu:`` backend's image."""
    ramp = bytes(range(256)) * 3
    return b"".join(ramp[(13 * n) & 0xFF:][:SECTOR] for n in range(geometry.size // SECTOR))


class Disk:
    """A raw image in memory. ``dirty`` tells the owner of the file to write it back."""

    def __init__(self, image: bytes | bytearray, *, writable: bool = True, name: str = "disk") -> None:
        geometry = GEOMETRIES.get(len(image))
        if geometry is None:
            sizes = ", ".join(f"{g.name} ({g.size} bytes)" for g in GEOMETRIES.values())
            raise DeviceError(f"floppy image {name}: {len(image)} bytes is not a raw image of {sizes}")
        self.geometry = geometry
        self.data = bytearray(image)
        self.writable = writable
        self.name = name
        self.dirty = False
        self.changed: set[int] = set()  #: LBAs written since the owner last saved them

    @property
    def sectors(self) -> int:
        return len(self.data) // SECTOR

    def lba(self, cylinder: int, head: int, sector: int) -> int:
        g = self.geometry
        return (cylinder * g.heads + head) * g.sectors + sector - 1

    def read(self, lba: int) -> bytes | None:
        """Sector ``lba``, or None outside the image."""
        if not 0 <= lba < self.sectors:
            return None
        return bytes(self.data[lba * SECTOR:(lba + 1) * SECTOR])

    def write(self, lba: int, data: bytes) -> bool:
        """Store a sector; False outside the image or on a write-protected disk."""
        if not 0 <= lba < self.sectors or not self.writable:
            return False
        self.data[lba * SECTOR:(lba + 1) * SECTOR] = data[:SECTOR].ljust(SECTOR, b"\0")
        self.dirty = True
        self.changed.add(lba)
        return True


@dataclass
class Drive:
    """One drive (unit): its disk and where its head is."""

    unit: int
    disk: Disk | None = None
    cylinder: int = 0  #: where the head physically is (intel) / QEMU's ``track``
    head: int = 0  #: QEMU's ``head`` (the intel model takes the head from each command)
    sector: int = 0  #: QEMU's ``sect``: the sector the drive is "at"
    disk_changed: bool = True  #: DIR bit 7 (set at power-on, cleared by a step with a disk in)
    pcn: int = 0  #: the controller's present cylinder number for this unit (intel)
    seeking: bool = False  #: MSR drive-busy bit (intel)
    seek_status: int | None = None  #: ST0 of a finished seek/recalibrate not yet sensed (intel)
    # QEMU's per-drive geometry (FORMAT TRACK rewrites last_sect there)
    last_sect: int = 0
    max_track: int = 0
    heads: int = 1
    media_rate: int = 0
    perpendicular: int = 0

    @property
    def inserted(self) -> bool:
        return self.disk is not None


class Phase(enum.Enum):
    COMMAND = "command"
    EXECUTION = "execution"
    RESULT = "result"


@dataclass(frozen=True)
class Command:
    """One entry of a controller's command table: opcode under a mask, parameter bytes."""

    name: str
    value: int
    mask: int
    params: int


class FloppyController(IsaDevice):
    """The ``intel`` floppy controller (see the module docstring)."""

    profile: ClassVar[str] = "intel"
    name = "fdc"
    dma_isolated = True  #: its DACK callbacks change only its own DRQ
    #: commands of the 82077AA subset (docs/reference/devices.md §2.2); opcode bits outside the mask are MT/MFM/SK
    COMMANDS: ClassVar[tuple[Command, ...]] = (
        Command("READ DATA", 0x06, 0x1F, 8),
        Command("WRITE DATA", 0x05, 0x3F, 8),
        Command("VERIFY", 0x16, 0x1F, 8),
        Command("READ ID", 0x0A, 0xBF, 1),
        Command("FORMAT TRACK", 0x0D, 0xBF, 5),
        Command("SPECIFY", 0x03, 0xFF, 2),
        Command("RECALIBRATE", 0x07, 0xFF, 1),
        Command("SEEK", 0x0F, 0xFF, 2),
        Command("SENSE INTERRUPT STATUS", 0x08, 0xFF, 0),
        Command("SENSE DRIVE STATUS", 0x04, 0xFF, 1),
        Command("VERSION", 0x10, 0xFF, 0),
        Command("CONFIGURE", 0x13, 0xFF, 3),
        Command("DUMPREG", 0x0E, 0xFF, 0),
        Command("LOCK", 0x14, 0x7F, 0),
    )
    UNITS: ClassVar[int] = 4

    def __init__(self, disks: dict[int, Disk] | None = None) -> None:
        super().__init__(ports=self.port_ranges(), irqs=[IRQ], dma=[DMA], name="fdc")
        disks = disks or {}
        for unit in disks:
            if unit not in range(self.UNITS):
                raise DeviceError(f"fdc: drive unit {unit} does not exist (units 0-{self.UNITS - 1})")
        self.drives = [Drive(u, disks.get(u)) for u in range(self.UNITS)]
        self._timers: list[Timer] = []
        self._seek_timers: list[Timer] = []
        self._table = [self._lookup(b) for b in range(256)]
        self.power_on()

    @classmethod
    def port_ranges(cls) -> list[PortRange]:
        return [PortRange(BASE, 6), PortRange(BASE + 7)]

    def _lookup(self, byte: int) -> Command | None:
        return next((c for c in self.COMMANDS if byte & c.mask == c.value), None)

    # --- state ---------------------------------------------------------------------------
    def power_on(self) -> None:
        """As an AT BIOS leaves the controller: out of reset, DMA gate on, motors off, drive 0,
        the four post-reset interrupts sensed (docs/reference/devices.md §2.2 SENSE INTERRUPT)."""
        self.dor = DOR_RESET_OFF | DOR_DMA
        self.rate = 0
        self.srt, self.hut, self.hlt, self.nd = 0, 0, 0, False
        self.lock = False
        self._config_defaults()
        self.last_eot = 0
        for d in self.drives:
            d.pcn = 0
            d.cylinder = 0
            d.seeking = False
            d.seek_status = None
            d.disk_changed = True
        self._controller_reset(interrupt=False)

    def _config_defaults(self) -> None:
        """CONFIGURE's reset values: implied seeks off, FIFO off, polling on, threshold 1."""
        self.eis, self.efifo_off, self.poll_off, self.fifothr, self.pretrk = False, True, False, 0, 0

    def _controller_reset(self, *, interrupt: bool) -> None:
        """A DOR or DSR reset: the phases, the interrupt and, unless LOCK is set, CONFIGURE go
        back to their reset values; the drives stay where they are but the PCNs read 0; with
        polling on, an interrupt follows and four SENSE INTERRUPT STATUS are due (§2.2)."""
        self._cancel_all(seeks=True)
        self.phase = Phase.COMMAND
        self.cmd: list[int] = []
        self.command: Command | None = None
        self.result: list[int] = []
        self.irq_pending = False
        self.reset_sense = 0
        self.drq = False
        if not self.lock:
            self._config_defaults()
        for d in self.drives:
            d.pcn = 0
            d.seeking = False
            d.seek_status = None
        self.xfer: Transfer | None = None
        if interrupt and not self.poll_off:
            self.reset_sense = 4
            self.irq_pending = True
        self._lines()

    def reset(self) -> None:
        super().reset()
        self._timers, self._seek_timers = [], []  # the machine's reset dropped them
        self.power_on()

    def plugged(self) -> None:
        self._lines()

    # --- lines ---------------------------------------------------------------------------
    def _lines(self) -> None:
        """DRQ and INT reach the bus only through DOR bit 3 on the AT (docs/reference/devices.md §2.1)."""
        if self.machine is None:
            return
        gate = bool(self.dor & DOR_DMA)
        self.dma_port(DMA).dreq = self.drq and gate
        self.irq().set(self.irq_pending and gate)

    def _interrupt(self) -> None:
        self.irq_pending = True
        self._lines()

    # --- timers --------------------------------------------------------------------------
    def _after(self, delay_ns: int, callback: TimerCallback, name: str, *, seek: bool = False) -> None:
        """A timer of the command in execution (cancelled when it ends), or of a seek (kept)."""
        timer = self.after(max(0, delay_ns), callback, name=f"fdc {name}")
        if seek:
            self._seek_timers = [t for t in self._seek_timers if t.pending] + [timer]
        else:
            self._timers = [t for t in self._timers if t.pending] + [timer]

    def _cancel_all(self, *, seeks: bool = False) -> None:
        if self.machine is not None:
            for t in self._timers + (self._seek_timers if seeks else []):
                self.cancel(t)
        self._timers = []
        if seeks:
            self._seek_timers = []

    # --- ports ---------------------------------------------------------------------------
    def io_read(self, port: int, width: int = 8) -> int:
        return int(self._io_read(port))

    def _io_read(self, port: int) -> int:
        match port - BASE:
            case 2:
                return self.dor
            case 3:
                return 0xFC  # tape drive register: bits 1:0 only
            case 4:
                return self.msr()
            case 5:
                return self._read_fifo()
            case 7:  # AT mode: bit 7 DSKCHG; bits 6:0 are not driven by the FDC (they float)
                return (DIR_DSKCHG if self.drives[self.dor & 3].disk_changed else 0) | 0x7F
        return 0xFF  # SRA/SRB exist only in PS/2 mode

    def io_write(self, port: int, value: int, width: int = 8) -> None:
        match port - BASE:
            case 2:
                self._write_dor(value)
            case 4:
                self._write_dsr(value)
            case 5:
                self._write_fifo(value)
            case 7:
                self.rate = value & 3

    def _write_dor(self, value: int) -> None:
        before = self.dor
        self.dor = value & 0xFF
        if not value & DOR_RESET_OFF:
            if before & DOR_RESET_OFF:
                self._controller_reset(interrupt=False)
        elif not before & DOR_RESET_OFF:
            self._controller_reset(interrupt=True)
        self._lines()

    def _write_dsr(self, value: int) -> None:
        self.rate = value & 3
        if value & DSR_RESET:  # self-clearing software reset
            self._controller_reset(interrupt=True)

    @property
    def in_reset(self) -> bool:
        return not self.dor & DOR_RESET_OFF

    def msr(self) -> int:
        if self.in_reset:
            return 0x00
        busy = sum(1 << d.unit for d in self.drives if d.seeking)
        match self.phase:
            case Phase.COMMAND:
                return Msr.RQM | busy | (Msr.CMD_BUSY if self.cmd else 0)
            case Phase.EXECUTION:
                return Msr.CMD_BUSY | busy
            case Phase.RESULT:
                return Msr.RQM | Msr.DIO | Msr.CMD_BUSY | busy

    def _read_fifo(self) -> int:
        if self.in_reset or self.phase is not Phase.RESULT:
            return 0xFF  # no RQM/DIO: nothing drives the data bus
        value = self.result.pop(0)
        if self.irq_pending and self.command is not None and self.command.name != "SENSE INTERRUPT STATUS":
            self.irq_pending = False  # reading the result clears the interrupt
            self._lines()
        if not self.result:
            self._to_command()
        return value

    def _to_command(self) -> None:
        self.phase = Phase.COMMAND
        self.cmd = []
        self.command = None

    def _write_fifo(self, value: int) -> None:
        if self.in_reset or self.phase is not Phase.COMMAND:
            return  # RQM is low or DIO points at the host: the byte is lost
        if not self.cmd:
            command = self._table[value]
            if command is None:
                self.command = None
                self._results([St0.INVALID])
                return
            self.command = command
        self.cmd.append(value)
        assert self.command is not None
        if len(self.cmd) == self.command.params + 1:
            self.phase = Phase.EXECUTION
            self._execute(self.command, self.cmd)

    def _results(self, values: list[int], *, interrupt: bool = False) -> None:
        self.phase = Phase.RESULT
        self.result = [int(v) & 0xFF for v in values]
        if interrupt:
            self._interrupt()

    # --- commands ------------------------------------------------------------------------
    def _execute(self, command: Command, b: list[int]) -> None:
        match command.name:
            case "SPECIFY":
                self.srt, self.hut = b[1] >> 4, b[1] & 0x0F
                self.hlt, self.nd = b[2] >> 1, bool(b[2] & 1)
                self._to_command()
            case "CONFIGURE":
                self.eis, self.efifo_off = bool(b[2] & 0x40), bool(b[2] & 0x20)
                self.poll_off, self.fifothr = bool(b[2] & 0x10), b[2] & 0x0F
                self.pretrk = b[3]
                self._to_command()
            case "VERSION":
                self._results([VERSION])
            case "LOCK":
                self.lock = bool(b[0] & 0x80)
                self._results([0x10 if self.lock else 0])
            case "DUMPREG":
                self._results([*(d.pcn for d in self.drives), self.srt << 4 | self.hut, self.hlt << 1 | self.nd,
                               self.last_eot, 0x80 if self.lock else 0,
                               self.eis << 6 | self.efifo_off << 5 | self.poll_off << 4 | self.fifothr, self.pretrk])
            case "SENSE DRIVE STATUS":
                d = self.drives[b[1] & 3]
                wp = 0x40 if d.disk is not None and not d.disk.writable else 0
                self._results([wp | 0x20 | (0x10 if d.cylinder == 0 else 0) | 0x08 | (b[1] & 7)])
            case "SENSE INTERRUPT STATUS":
                self._sense_interrupt()
            case "SEEK" | "RECALIBRATE":
                self._seek(b[1] & 3, b[2] if command.name == "SEEK" else None)
            case "READ DATA" | "WRITE DATA" | "VERIFY" | "READ ID" | "FORMAT TRACK":
                self._start_data(command, b)

    def _sense_interrupt(self) -> None:
        if self.reset_sense:
            unit = 4 - self.reset_sense
            self.reset_sense -= 1
            self.irq_pending = any(d.seek_status is not None for d in self.drives)
            self._lines()
            self._results([St0.READY_CHANGE | unit, self.drives[unit].pcn])
            return
        done = next((d for d in self.drives if d.seek_status is not None), None)
        if done is None:
            self._results([St0.INVALID])
            return
        status, done.seek_status = done.seek_status, None
        self.irq_pending = any(d.seek_status is not None for d in self.drives)
        self._lines()
        self._results([status or 0, done.pcn])

    def step_ns(self) -> int:
        """SPECIFY's step rate: (16 - SRT) ms per step at 500 kb/s, scaled by the data rate."""
        return (16 - self.srt) * NS_PER_MS * 500_000 // RATES[self.rate]

    def _seek(self, unit: int, target: int | None) -> None:
        """SEEK / RECALIBRATE: no result phase (CMD BUSY drops now), the drive's busy bit while
        it steps, then an interrupt whose ST0 SENSE INTERRUPT STATUS reads (§2.1, §2.2)."""
        d = self.drives[unit]
        self._to_command()
        d.seeking = True
        if target is None:  # recalibrate: step out until TRK0, at most 80 steps
            steps = min(d.cylinder, 80)
            reached = d.cylinder <= 80
            d.cylinder -= steps
            d.pcn = 0
            ec = 0 if reached else St0.EC | St0.ABNORMAL
        else:
            steps = abs(target - d.pcn)
            d.cylinder = max(0, min(79, d.cylinder + target - d.pcn))
            d.pcn = target
            ec = 0
        if steps and d.disk is not None:
            d.disk_changed = False
        status = St0.SE | ec | unit

        def done(_: int) -> None:
            d.seeking = False
            d.seek_status = status
            self._interrupt()

        self._after(steps * self.step_ns(), done, "seek", seek=True)

    # --- data commands -------------------------------------------------------------------
    def byte_ns(self) -> int:
        return 8 * 1_000_000_000 // RATES[self.rate]

    def _start_data(self, command: Command, b: list[int]) -> None:
        if self.nd and command.name != "READ ID":
            raise DeviceError(
                f"fdc: {command.name} in non-DMA mode (SPECIFY ND=1) is not modelled; "
                f"clear ND (SPECIFY 03 xx {self.hlt << 1:02x}) and transfer by DMA on channel 2")
        unit, head = b[1] & 3, (b[1] >> 2) & 1
        d = self.drives[unit]
        x = Transfer(command=command, unit=unit, head=head, mt=bool(b[0] & 0x80) and command.name != "READ ID")
        self.xfer = x
        if command.name in ("READ DATA", "WRITE DATA", "VERIFY"):
            x.c, x.h, x.r, x.n, x.eot = b[2], b[3], b[4], b[5], b[6]
            x.ec = command.name == "VERIFY" and bool(b[1] & 0x80)
            x.sc = b[8] or 256
            self.last_eot = x.eot
        elif command.name == "FORMAT TRACK":
            x.n, x.sc, x.fill = b[2], b[3] or 256, b[5]
        delay = 0
        if command.name in ("READ DATA", "WRITE DATA", "VERIFY") and self.eis and x.c != d.pcn:
            steps = abs(x.c - d.pcn)
            d.cylinder = max(0, min(79, d.cylinder + x.c - d.pcn))
            d.pcn = x.c
            delay = steps * self.step_ns()
            if steps and d.disk is not None:
                d.disk_changed = False
        delay += max(1, self.hlt) * 2 * NS_PER_MS  # head load
        self._after(delay, lambda _: self._find_sector(), "head load")

    def _rotation(self, at_ns: int) -> int:
        return at_ns % ROTATION_NS

    def _until_sector(self, sector: int, spt: int) -> int:
        """Virtual ns until the ID field of ``sector`` (1-based) passes the head."""
        slot = ROTATION_NS // spt
        return ((sector - 1) * slot - self._rotation(self.now_ns)) % ROTATION_NS

    def _find_sector(self) -> None:
        x = self.xfer
        if x is None:
            return
        d = self.drives[x.unit]
        disk = d.disk
        if disk is None or disk.geometry.rate != self.rate or x.head >= disk.geometry.heads:
            # nothing readable passes the head: two index pulses, then missing address mark
            self._after(2 * ROTATION_NS, lambda _: self._end(St0.ABNORMAL, St1.MA, 0), "no ID")
            return
        spt = disk.geometry.sectors
        match x.command.name:
            case "READ ID":
                nxt = (self._rotation(self.now_ns) * spt // ROTATION_NS + 1) % spt + 1
                x.c, x.h, x.r, x.n = d.cylinder, x.head, nxt, 2
                self._after(self._until_sector(nxt, spt), lambda _: self._end(0, 0, 0, ids=(x.c, x.h, x.r, 2)),
                            "READ ID")
                return
            case "FORMAT TRACK":
                self._after((-self._rotation(self.now_ns)) % ROTATION_NS, lambda _: self._format_sector(0), "index")
                return
        if x.c != d.cylinder or x.h != x.head or x.n != 2 or not 1 <= x.r <= spt:
            # IDs pass but none matches: the wrong cylinder ends at the first ID, otherwise two revolutions
            if x.c != d.cylinder:
                st2 = St2.BC if d.cylinder == 0xFF else St2.WC
                self._after(self._until_sector(1, spt), lambda _: self._end(St0.ABNORMAL, St1.ND, st2), "wrong cylinder")
            else:
                self._after(2 * ROTATION_NS, lambda _: self._end(St0.ABNORMAL, St1.ND, 0), "no sector")
            return
        self._after(self._until_sector(x.r, spt), lambda _: self._sector_start(), "sector")

    def _sector_start(self) -> None:
        """The data field of sector R is under the head: its bytes pass at the data rate."""
        x = self.xfer
        assert x is not None
        d = self.drives[x.unit]
        assert d.disk is not None
        x.lba = d.disk.lba(d.cylinder, x.head, x.r)
        x.buf = bytearray(d.disk.read(x.lba) or bytes(SECTOR)) if x.command.name != "WRITE DATA" else bytearray()
        x.slot = 0
        x.level = 0
        if x.command.name == "VERIFY" or x.tc:
            self._after(SECTOR * self.byte_ns(), lambda _: self._sector_end(), "sector data")
            return
        if x.command.name == "WRITE DATA":
            self._set_drq(True)  # the FIFO is empty: ask for the first bytes before they are due
        self._after(self.chunk() * self.byte_ns(), lambda _: self._slot(), "byte")

    def chunk(self) -> int:
        """Bytes per DRQ: one with the FIFO off, else 16 - threshold (docs/reference/devices.md §2.4)."""
        return 1 if self.efifo_off else max(1, 16 - (self.fifothr + 1))

    def capacity(self) -> int:
        return 1 if self.efifo_off else 16

    def _set_drq(self, level: bool) -> None:
        if self.drq != level:
            self.drq = level
            self._lines()

    def _slot(self) -> None:
        """``chunk`` more bytes have passed the head: a read has them in the FIFO, a write has
        written them from it. Too many in a read FIFO, or too few in a write FIFO, is an overrun."""
        x = self.xfer
        if x is None:
            return
        n = min(self.chunk(), SECTOR - x.slot)
        if x.tc:  # TC came mid-sector: the sector finishes without the host
            x.slot += n
        elif x.command.name == "WRITE DATA":
            if x.level < n:
                self._overrun()
                return
            x.level -= n
            x.slot += n
            if x.slot + x.level < SECTOR:
                self._set_drq(True)
        else:
            if x.level + n > self.capacity():
                self._overrun()
                return
            x.level += n
            x.slot += n
            self._set_drq(True)
        if x.slot < SECTOR:
            self._after(min(self.chunk(), SECTOR - x.slot) * self.byte_ns(), lambda _: self._slot(), "byte")
        elif x.command.name == "WRITE DATA" or x.tc:
            self._sector_end()
        # a read sector ends when the host has taken its last byte (dma_supply)

    def _overrun(self) -> None:
        """§2.4: the host did not keep up; the command ends (a write pads the sector with 00)."""
        x = self.xfer
        assert x is not None
        if x.command.name == "WRITE DATA":
            self._store(x)
        self._set_drq(False)
        self._end(St0.ABNORMAL, St1.OR, 0, ids=(x.c, x.h, x.r, x.n))

    def _store(self, x: Transfer) -> None:
        d = self.drives[x.unit]
        assert d.disk is not None
        d.disk.write(x.lba, bytes(x.buf))

    def dma_supply(self, channel: int, width: int) -> int:
        x = self.xfer
        if x is None or x.command.name == "WRITE DATA" or x.level == 0:
            return 0xFF  # no byte in the FIFO: the bus floats
        value = x.buf[x.taken]
        self._took(x)
        return value

    def dma_verify(self, channel: int, count: int, width: int) -> None:
        """A verify-mode channel DACKs without strobes: the FDC counts the bytes as taken (or
        given) all the same (docs/reference/8237.md §2.5)."""
        x = self.xfer
        for _ in range(count):
            if x is None or (x.level == 0 and x.command.name != "WRITE DATA"):
                return
            if x.command.name == "WRITE DATA":
                self.dma_accept(channel, 0xFF, width)
            else:
                self._took(x)

    def _took(self, x: Transfer) -> None:
        x.taken += 1
        x.level -= 1
        if x.level == 0:
            self._set_drq(False)
            if x.slot >= SECTOR:  # decided after this DMA grant, which may carry TC
                self._after(0, lambda _: self._sector_end(), "sector end")

    def dma_accept(self, channel: int, value: int, width: int) -> None:
        x = self.xfer
        if x is None or x.command.name not in ("WRITE DATA", "FORMAT TRACK"):
            return
        if x.command.name == "FORMAT TRACK":
            x.ids.append(value)
            if len(x.ids) % 4 == 0:
                self._set_drq(False)
            return
        x.buf.append(value)
        x.level += 1
        if x.level >= self.capacity() or len(x.buf) >= SECTOR:
            self._set_drq(False)

    def dma_terminal_count(self, channel: int) -> None:
        """TC: the command ends normally at the end of the sector in progress (§2.4)."""
        x = self.xfer
        if x is None:
            return
        x.tc = True
        x.level = 0
        self._set_drq(False)  # no more requests: the sector in progress finishes without the host

    def _sector_end(self) -> None:
        x = self.xfer
        if x is None:
            return
        self._set_drq(False)
        if x.command.name == "WRITE DATA":
            x.buf = x.buf.ljust(SECTOR, b"\0")  # TC mid-sector: the rest is written as 00
            self._store(x)
        last = x.r == x.eot
        x.done += 1
        if x.command.name == "VERIFY" and x.ec:
            x.sc -= 1
            if x.sc == 0:
                self._finish(normal=True)
                return
        if x.tc:
            self._finish(normal=True)
            return
        if last and (not x.mt or x.head == 1):
            # EOT without TC: abnormal termination with EN, except VERIFY with EC=0, whose
            # EOT is the planned end (docs/reference/devices.md §2.2 notes)
            self._finish(normal=x.command.name == "VERIFY" and not x.ec, en=True)
            return
        self._next_sector(x, last)

    def _next_sector(self, x: Transfer, last: bool) -> None:
        d = self.drives[x.unit]
        assert d.disk is not None
        if last:  # MT: on to head 1, sector 1
            x.head, x.h, x.r = 1, x.h ^ 1, 1
        else:
            x.r += 1
        x.taken = 0
        spt = d.disk.geometry.sectors
        if x.r > spt:
            self._after(2 * ROTATION_NS, lambda _: self._end(St0.ABNORMAL, St1.ND, 0), "no sector")
            return
        self._after(self._until_sector(x.r, spt), lambda _: self._sector_start(), "sector")

    def _finish(self, *, normal: bool, en: bool = False) -> None:
        """Result phase with the next sector's ID as 82077AA Table 5-6 gives it (docs/reference/devices.md §2.2)."""
        x = self.xfer
        assert x is not None
        c, h, r = x.c, x.h, x.r
        if r == x.eot:
            if x.mt and x.head == 0:
                h, r = h ^ 1, 1
            else:
                c, r = c + 1, 1
                if x.mt:
                    h ^= 1
        else:
            r += 1
        st0 = 0 if normal else St0.ABNORMAL
        self._end(st0, St1.EN if en and not normal else 0, 0, ids=(c, h, r, x.n))

    def _end(self, st0: int, st1: int, st2: int, ids: tuple[int, int, int, int] | None = None) -> None:
        x = self.xfer
        assert x is not None
        self._cancel_all()
        self._set_drq(False)
        self.xfer = None
        c, h, r, n = ids if ids is not None else (x.c, x.h, x.r, x.n)
        st0 |= x.unit | (St0.HEAD if x.head else 0)
        self._results([st0, st1, st2, c, h, r, n], interrupt=True)

    def _format_sector(self, index: int) -> None:
        """FORMAT TRACK: from the index pulse, each sector's C, H, R, N come by DMA (4 bytes)
        and the sector is written with the fill byte; it ends at the next index pulse."""
        x = self.xfer
        if x is None:
            return
        d = self.drives[x.unit]
        assert d.disk is not None
        if index > 0:
            ids = x.ids[(index - 1) * 4:index * 4]
            if len(ids) < 4:
                self._set_drq(False)
                self._end(St0.ABNORMAL, St1.OR, 0)
                return
            c, h, r, n = ids
            g = d.disk.geometry
            if c == d.cylinder and h == x.head and n == 2 and 1 <= r <= g.sectors:
                d.disk.write(d.disk.lba(c, x.head, r), bytes([x.fill]) * SECTOR)
            x.c, x.h, x.r = c, h, r
        if index == x.sc:
            self._after((-self._rotation(self.now_ns)) % ROTATION_NS or ROTATION_NS,
                        lambda _: self._end(0, 0, 0, ids=(x.c, x.h, x.r, x.n)), "index")
            return
        self._set_drq(True)
        self._after(ROTATION_NS // max(x.sc, 1) * 9 // 10, lambda _: self._format_sector(index + 1), "format")

    def dma_burst_units(self, channel: int, width: int, limit: int) -> int:
        x = self.xfer
        if x is None:
            return 1
        if x.command.name == "READ DATA":
            return max(1, min(limit, x.level))
        return 1


@dataclass
class Transfer:
    """The execution phase of one intel data command."""

    command: Command
    unit: int
    head: int  #: the physical head (HDS)
    mt: bool
    c: int = 0
    h: int = 0
    r: int = 1
    n: int = 2
    eot: int = 1
    ec: bool = False
    sc: int = 0
    fill: int = 0
    lba: int = 0
    buf: bytearray = field(default_factory=bytearray)
    slot: int = 0  #: bytes of the sector that have passed the head
    level: int = 0  #: bytes in the FIFO
    taken: int = 0  #: bytes of the sector the host took (read)
    done: int = 0  #: sectors finished
    tc: bool = False
    ids: list[int] = field(default_factory=list)


# --- QEMU 7.2 ----------------------------------------------------------------------------------


class QDir(enum.Enum):
    WRITE = 0
    READ = 1
    SCANE = 2
    SCANL = 3
    SCANH = 4
    VERIFY = 5


MULTI = 0x01
FORMAT = 0x02
SRA_INTPEND = 0x80
SRA_NDRV2 = 0x40
SRB_MTR0, SRB_MTR1, SRB_DR0 = 0x01, 0x02, 0x20
CONFIG_EIS, CONFIG_EFIFO = 0x40, 0x20
SR1_EC = 0x80  #: what QEMU names "end of cylinder" for a sector past the last


class QemuFloppyController(FloppyController):
    """QEMU 7.2's ISA FDC (``qemu``), as hw/block/fdc.c behaves: see the module docstring and
    docs/reference/devices.md §2.5, docs/reference/qemu-qtest.md §6. Two units (QEMU's
    ``MAX_FD``), DOR bit 0 selects; ports 0x3F1-0x3F5 and 0x3F7 (0x3F0 is not decoded)."""

    profile = "qemu"
    transfer_handler = True
    UNITS = 2
    #: QEMU's command table: the first entry whose mask matches wins; unknown bytes are invalid
    COMMANDS = (
        Command("READ", 0x06, 0x1F, 8),
        Command("WRITE", 0x05, 0x3F, 8),
        Command("SEEK", 0x0F, 0xFF, 2),
        Command("SENSE INTERRUPT STATUS", 0x08, 0xFF, 0),
        Command("RECALIBRATE", 0x07, 0xFF, 1),
        Command("FORMAT TRACK", 0x0D, 0xBF, 5),
        Command("READ TRACK", 0x02, 0xBF, 8),
        Command("RESTORE", 0x4E, 0xFF, 17),
        Command("SAVE", 0x2E, 0xFF, 0),
        Command("READ DELETED DATA", 0x0C, 0x1F, 8),
        Command("SCAN EQUAL", 0x11, 0x1F, 8),
        Command("VERIFY", 0x16, 0x1F, 8),
        Command("SCAN LOW OR EQUAL", 0x19, 0x1F, 8),
        Command("SCAN HIGH OR EQUAL", 0x1D, 0x1F, 8),
        Command("WRITE DELETED DATA", 0x09, 0x3F, 8),
        Command("READ ID", 0x0A, 0xBF, 1),
        Command("SPECIFY", 0x03, 0xFF, 2),
        Command("SENSE DRIVE STATUS", 0x04, 0xFF, 1),
        Command("PERPENDICULAR MODE", 0x12, 0xFF, 1),
        Command("CONFIGURE", 0x13, 0xFF, 3),
        Command("POWERDOWN MODE", 0x17, 0xFF, 2),
        Command("OPTION", 0x33, 0xFF, 1),
        Command("DRIVE SPECIFICATION COMMAND", 0x8E, 0xFF, 5),
        Command("RELATIVE SEEK OUT", 0x8F, 0xFF, 2),
        Command("FORMAT AND WRITE", 0xCD, 0xFF, 10),
        Command("RELATIVE SEEK IN", 0xCF, 0xFF, 2),
        Command("LOCK", 0x14, 0x7F, 0),
        Command("DUMPREG", 0x0E, 0xFF, 0),
        Command("VERSION", 0x10, 0xFF, 0),
        Command("PART ID", 0x18, 0xFF, 0),
        Command("WRITE", 0x05, 0x1F, 8),  # QEMU's "BeOS" alias
    )
    INVALID = Command("unknown", 0, 0, 0)
    DIRECTIONS: ClassVar[dict[str, QDir]] = {
        "READ": QDir.READ, "READ TRACK": QDir.READ, "WRITE": QDir.WRITE, "VERIFY": QDir.VERIFY,
        "SCAN EQUAL": QDir.SCANE, "SCAN LOW OR EQUAL": QDir.SCANL, "SCAN HIGH OR EQUAL": QDir.SCANH,
    }

    @classmethod
    def port_ranges(cls) -> list[PortRange]:
        return [PortRange(BASE + 1, 5), PortRange(BASE + 7)]

    def _lookup(self, byte: int) -> Command:
        return next((c for c in self.COMMANDS if byte & c.mask == c.value), self.INVALID)

    def power_on(self) -> None:
        """realize + reset: FIFO zeroed, CONFIGURE = EIS | EFIFO, each drive's geometry from its
        image (pick_geometry), DSR 0, then a reset without interrupt."""
        self.fifo = bytearray(SECTOR)
        self.config = CONFIG_EIS | CONFIG_EFIFO
        self.dsr = 0
        self.tdr = 0
        self.timer0 = self.timer1 = 0
        self.precomp = 0
        self.lock_bit = 0
        self.pwrd = 0
        self.status0 = 0
        self.sra = 0
        self.read_id_timer: Timer | None = None
        for d in self.drives:
            d.head = d.cylinder = d.sector = 0
            d.disk_changed = True
            d.perpendicular = 0
            if d.disk is not None:
                g = d.disk.geometry
                d.last_sect, d.max_track, d.heads, d.media_rate = g.sectors, g.cylinders, g.heads, g.rate
            else:
                d.last_sect, d.max_track, d.heads, d.media_rate = 0, 0, 1, 0
        self.dor = 0
        self.q_reset(interrupt=False)

    def reset(self) -> None:
        IsaDevice.reset(self)
        self.power_on()

    # --- QEMU's helpers ----------------------------------------------------------------------
    def drive(self, unit: int) -> Drive:
        """drv0/drv1: TDR's boot select swaps the units."""
        swap = bool(self.tdr & 0x04)
        return self.drives[(unit ^ 1) if swap else unit]

    def cur(self) -> Drive:
        return self.drive(self.cur_drv)

    @staticmethod
    def _lba(d: Drive, head: int, track: int, sect: int) -> int:
        return (track * d.heads + head) * d.last_sect + sect - 1

    def _seek_to(self, d: Drive, head: int, track: int, sect: int) -> int:
        """fd_seek: 0 same track, 1 track changed, 2 invalid track (or no medium), 3 invalid sector."""
        head, track, sect = head & 0xFF, track & 0xFF, sect & 0xFF
        if track > d.max_track or (head != 0 and d.heads == 1):
            return 2
        if sect > d.last_sect:
            return 3
        ret = 0
        if self._lba(d, head, track, sect) != self._lba(d, d.head, d.cylinder, d.sector):
            d.head = head
            if d.cylinder != track:
                if d.inserted:
                    d.disk_changed = False
                ret = 1
            d.cylinder, d.sector = track, sect
        return 2 if not d.inserted else ret

    def _read_sector(self, d: Drive) -> bytes:
        data = d.disk.read(self._lba(d, d.head, d.cylinder, d.sector)) if d.disk is not None else None
        return data if data is not None else bytes(SECTOR)

    def _write_sector(self, d: Drive, data: bytes) -> bool:
        return d.disk is not None and d.disk.write(self._lba(d, d.head, d.cylinder, d.sector), data)

    def _set_irq(self, level: bool) -> None:
        if self.machine is not None:
            self.irq().set(level)

    def _lines(self) -> None:
        """QEMU's FDC drives its IRQ whatever DOR bit 3 says (docs/reference/devices.md §2.5)."""

    def reset_irq(self) -> None:
        self.status0 = 0
        if self.sra & SRA_INTPEND:
            self._set_irq(False)
            self.sra &= ~SRA_INTPEND

    def raise_irq(self) -> None:
        if not self.sra & SRA_INTPEND:
            self._set_irq(True)
            self.sra |= SRA_INTPEND
        self.reset_sensei = 0

    def q_reset(self, *, interrupt: bool) -> None:
        self.reset_irq()
        self.sra = SRA_NDRV2  # no drive B
        self.srb = 0xC0
        self.cur_drv = 0
        self.dor = DOR_RESET_OFF | DOR_DMA
        self.msr_q = Msr.RQM
        self.reset_sensei = 0
        if self.read_id_timer is not None and self.machine is not None:
            self.cancel(self.read_id_timer)
        self.read_id_timer = None
        self.data_pos = self.data_len = self.data_state = 0
        self.data_dir = QDir.WRITE
        self.eot = 0
        for d in self.drives:
            self._seek_to(d, 0, 0, 1)
        self.to_command()
        if interrupt:
            self.status0 |= St0.READY_CHANGE
            self.raise_irq()
            self.reset_sensei = 4

    def to_command(self) -> None:
        self.phase = Phase.COMMAND
        self.data_dir = QDir.WRITE
        self.data_pos = 0
        self.data_len = 1
        self.msr_q = (self.msr_q & ~(Msr.CMD_BUSY | Msr.DIO)) | Msr.RQM

    def to_result(self, n: int) -> None:
        self.phase = Phase.RESULT
        self.data_dir = QDir.READ
        self.data_len = n
        self.data_pos = 0
        self.msr_q |= Msr.CMD_BUSY | Msr.RQM | Msr.DIO

    def _hold_dreq(self) -> None:
        port = self.dma_port(DMA)
        port.dreq = False  # QEMU sets the request bit whatever it was: an edge does the same here
        port.dreq = True

    def _release_dreq(self) -> None:
        self.dma_port(DMA).dreq = False

    def stop_transfer(self, s0: int, s1: int, s2: int) -> None:
        d = self.cur()
        self.status0 = (self.status0 & ~(0x03 | St0.HEAD)) | self.cur_drv | (St0.HEAD if d.head else 0) | s0
        self.fifo[0:7] = bytes([self.status0 & 0xFF, s1, s2, d.cylinder & 0xFF, d.head & 0xFF, d.sector & 0xFF, 2])
        self.data_dir = QDir.READ
        if not self.msr_q & Msr.NON_DMA:
            self._release_dreq()
        self.msr_q = (self.msr_q | Msr.RQM | Msr.DIO) & ~Msr.NON_DMA
        self.to_result(7)
        self.raise_irq()

    def _abort(self, s0: int, s1: int, kt: int, kh: int, ks: int) -> None:
        self.stop_transfer(s0, s1, 0)
        self.fifo[3:6] = bytes([kt, kh, ks])

    def next_sect(self, d: Drive) -> bool:
        """fdctrl_seek_to_next_sect: False at the end of the transfer's track."""
        head, track, sect = d.head, d.cylinder, d.sector
        more = True
        if sect >= d.last_sect or sect == self.eot:
            sect = 1
            if self.data_state & MULTI:
                if head == 0 and d.heads == 2:
                    head = 1
                else:
                    head = 0
                    track += 1
                    self.status0 |= St0.SE
                    if d.heads == 1:
                        more = False
            else:
                self.status0 |= St0.SE
                track += 1
                more = False
        else:
            sect += 1
        self._seek_to(d, head, track, sect)
        return more

    # --- ports -------------------------------------------------------------------------------
    def msr(self) -> int:
        return int(self.msr_q)

    def _io_read(self, port: int) -> int:
        match port - BASE:
            case 0:
                return self.sra
            case 1:
                return self.srb
            case 2:
                return self.dor | self.cur_drv
            case 3:
                return self.tdr
            case 4:
                value = self.msr()
                self.dsr &= ~DSR_POWERDOWN
                self.dor |= DOR_RESET_OFF
                return value
            case 5:
                return self._q_read_data()
            case 7:
                return DIR_DSKCHG if self.cur().disk_changed else 0
        return 0xFF

    def io_write(self, port: int, value: int, width: int = 8) -> None:
        match port - BASE:
            case 2:
                self._q_write_dor(value)
            case 3:
                if self.dor & DOR_RESET_OFF:
                    self.tdr = value & 0x04
            case 4:
                if self.dor & DOR_RESET_OFF:
                    if value & DSR_RESET:
                        self.dor &= ~DOR_RESET_OFF
                        self.q_reset(interrupt=True)
                        self.dor |= DOR_RESET_OFF
                    if value & DSR_POWERDOWN:
                        self.q_reset(interrupt=True)
                    self.dsr = value
            case 5:
                self._q_write_data(value)
            case 7:
                if self.dor & DOR_RESET_OFF:
                    self.dsr = (self.dsr & ~3) | (value & 3)

    def _q_write_dor(self, value: int) -> None:
        self.srb = (self.srb & ~(SRB_MTR0 | SRB_MTR1 | SRB_DR0)) | (SRB_MTR0 if value & 0x10 else 0) \
            | (SRB_MTR1 if value & 0x20 else 0) | (SRB_DR0 if value & 1 else 0)
        if value & DOR_RESET_OFF and not self.dor & DOR_RESET_OFF:
            self.q_reset(interrupt=True)
            self.dsr &= ~DSR_POWERDOWN
        self.cur_drv = value & 1
        self.dor = value & 0xFF

    def _q_read_data(self) -> int:
        self.dsr &= ~DSR_POWERDOWN
        if not self.msr_q & Msr.RQM or not self.msr_q & Msr.DIO:
            return 0
        pos = self.data_pos % SECTOR
        if self.phase is Phase.RESULT:
            self.data_pos += 1
            if self.data_pos == self.data_len:
                self.msr_q &= ~Msr.RQM
                self.to_command()
                self.reset_irq()
        return self.fifo[pos]

    def _q_write_data(self, value: int) -> None:
        if not self.dor & DOR_RESET_OFF:
            return
        if not self.msr_q & Msr.RQM or self.msr_q & Msr.DIO:
            return
        self.dsr &= ~DSR_POWERDOWN
        pos = self.data_pos % SECTOR
        self.data_pos += 1
        self.fifo[pos] = value
        if self.data_pos == self.data_len:
            self.msr_q &= ~Msr.RQM
        if self.phase is not Phase.COMMAND:
            return  # PIO execution phase: refused when the command started
        if pos == 0:
            cmd = self._table[value]
            assert cmd is not None
            self.data_len = cmd.params + 1
            if cmd.params:
                self.msr_q |= Msr.RQM
            self.msr_q |= Msr.CMD_BUSY
        if self.data_pos == self.data_len:
            self.phase = Phase.EXECUTION
            cmd = self._table[self.fifo[0]]
            assert cmd is not None
            self._q_execute(cmd)

    # --- QEMU's command handlers ---------------------------------------------------------------
    def _q_execute(self, cmd: Command) -> None:  # one case per command, as QEMU's table
        f = self.fifo
        match cmd.name:
            case "READ" | "READ TRACK" | "WRITE" | "VERIFY" | "SCAN EQUAL" | "SCAN LOW OR EQUAL" | "SCAN HIGH OR EQUAL":
                self._start_transfer(self.DIRECTIONS[cmd.name])
            case "READ DELETED DATA" | "WRITE DELETED DATA":
                self.stop_transfer(St0.ABNORMAL | St0.SE, 0, 0)
            case "SEEK" | "RECALIBRATE":
                self.cur_drv = f[1] & 1
                d = self.cur()
                if cmd.name == "SEEK":
                    self.to_command()
                    self._seek_to(d, d.head, f[2], d.sector)
                else:
                    self._seek_to(d, 0, 0, 1)
                    self.to_command()
                self.status0 |= St0.SE
                self.raise_irq()
            case "RELATIVE SEEK OUT" | "RELATIVE SEEK IN":
                self.cur_drv = f[1] & 1
                d = self.cur()
                if cmd.name == "RELATIVE SEEK IN":
                    target = d.max_track - 1 if f[2] + d.cylinder >= d.max_track else d.cylinder + f[2]
                else:
                    target = 0 if f[2] > d.cylinder else d.cylinder - f[2]
                self._seek_to(d, d.head, target, d.sector)
                self.to_command()
                self.status0 |= St0.SE
                self.raise_irq()
            case "SENSE INTERRUPT STATUS":
                d = self.cur()
                if self.reset_sensei > 0:
                    f[0] = St0.READY_CHANGE + 4 - self.reset_sensei
                    self.reset_sensei -= 1
                elif not self.sra & SRA_INTPEND:
                    f[0] = St0.INVALID
                    self.to_result(1)
                    return
                else:
                    f[0] = (self.status0 & ~(St0.HEAD | 3) | self.cur_drv) & 0xFF
                f[1] = d.cylinder & 0xFF
                self.to_result(2)
                self.reset_irq()
                self.status0 = St0.READY_CHANGE
            case "SPECIFY":
                self.timer0, self.timer1 = f[1] >> 4, f[2] >> 1
                self.dor = self.dor & ~DOR_DMA if f[2] & 1 else self.dor | DOR_DMA
                self.to_command()
            case "SENSE DRIVE STATUS":
                self.cur_drv = f[1] & 1
                d = self.cur()
                d.head = (f[1] >> 2) & 1
                ro = 0x40 if d.disk is None or not d.disk.writable else 0
                f[0] = ro | (0x10 if d.cylinder == 0 else 0) | d.head << 2 | self.cur_drv | 0x28
                self.to_result(1)
            case "PERPENDICULAR MODE":
                if f[1] & 0x80:
                    self.cur().perpendicular = f[1] & 7
                self.to_command()
            case "CONFIGURE":
                self.config, self.precomp = f[2], f[3]
                self.to_command()
            case "POWERDOWN MODE":
                self.pwrd = f[1]
                f[0] = f[1]
                self.to_result(1)
            case "OPTION":
                self.to_command()
            case "LOCK":
                self.lock_bit = 1 if f[0] & 0x80 else 0
                f[0] = self.lock_bit << 4
                self.to_result(1)
            case "DUMPREG":
                d = self.cur()
                f[0:10] = bytes([self.drive(0).cylinder & 0xFF, self.drive(1).cylinder & 0xFF, 0, 0, self.timer0,
                                 (self.timer1 << 1 | (1 if self.dor & DOR_DMA else 0)) & 0xFF, d.last_sect & 0xFF,
                                 (self.lock_bit << 7 | d.perpendicular << 2) & 0xFF, self.config, self.precomp])
                self.to_result(10)
            case "VERSION":
                f[0] = VERSION
                self.to_result(1)
            case "PART ID":
                f[0] = 0x41
                self.to_result(1)
            case "SAVE":
                d = self.cur()
                f[0:15] = bytes([0, 0, self.drive(0).cylinder & 0xFF, self.drive(1).cylinder & 0xFF, 0, 0,
                                 self.timer0, self.timer1, d.last_sect & 0xFF,
                                 (self.lock_bit << 7 | d.perpendicular << 2) & 0xFF, self.config, self.precomp,
                                 self.pwrd, 0, 0])
                self.to_result(15)
            case "RESTORE":
                d = self.cur()
                self.drive(0).cylinder, self.drive(1).cylinder = f[3], f[4]
                self.timer0, self.timer1 = f[7], f[8]
                d.last_sect = f[9]
                self.lock_bit, d.perpendicular = f[10] >> 7, (f[10] >> 2) & 0x0F
                self.config, self.precomp, self.pwrd = f[11], f[12], f[13]
                self.to_command()
            case "DRIVE SPECIFICATION COMMAND":
                last = f[(self.data_pos - 1) % SECTOR]
                if last & 0x80:
                    if last & 0x40:
                        f[0] = f[1]
                        f[2] = f[3] = 0
                        self.to_result(4)
                    else:
                        self.to_command()
                elif self.data_len > 7:
                    d = self.cur()
                    f[0] = (0x80 | (d.head << 2) | self.cur_drv) & 0xFF
                    self.to_result(1)
            case "FORMAT TRACK":
                # FORMAT does no DMA and writes nothing, but takes SC as the drive's sectors per track
                self.cur_drv = f[1] & 1
                d = self.cur()
                self.data_state = (self.data_state | MULTI) if f[0] & 0x80 else (self.data_state & ~MULTI)
                d.last_sect = f[3]
                self.stop_transfer(0, 0, 0)
            case "READ ID":
                d = self.cur()
                d.head = (f[1] >> 2) & 1
                if self.read_id_timer is not None:
                    self.cancel(self.read_id_timer)
                self.read_id_timer = self.after(20 * NS_PER_MS, self._read_id_done, name="fdc READ ID")
            case _:  # unknown, FORMAT AND WRITE
                f[0] = St0.INVALID
                self.to_result(1)

    def _read_id_done(self, _: int) -> None:
        self.read_id_timer = None
        d = self.cur()
        if d.last_sect:
            d.sector = d.sector % d.last_sect + 1  # "pretend spinning"
        if (self.dsr & 3) != d.media_rate:
            self.stop_transfer(St0.ABNORMAL, St1.MA, 0)
        else:
            self.stop_transfer(0, 0, 0)

    def _start_transfer(self, direction: QDir) -> None:
        f = self.fifo
        self.cur_drv = f[1] & 1
        d = self.cur()
        kt, kh, ks = f[2], f[3], f[4]
        match self._seek_to(d, kh, kt, ks):
            case 2:
                self._abort(St0.ABNORMAL, 0, kt, kh, ks)
                return
            case 3:
                self._abort(St0.ABNORMAL, SR1_EC, kt, kh, ks)
                return
            case 1:
                self.status0 |= St0.SE
        if (self.dsr & 3) != d.media_rate:
            self._abort(St0.ABNORMAL, St1.MA, kt, kh, ks)
            return
        self.data_dir = direction
        self.data_pos = 0
        self.data_state = (self.data_state | MULTI) if f[0] & 0x80 else (self.data_state & ~MULTI)
        if f[5] == 0:
            self.data_len = f[8]
        else:
            sectors = f[6] - ks + 1
            if sectors < 0:
                self._abort(St0.ABNORMAL, St1.MA, kt, kh, ks)
                return
            if f[0] & 0x80:
                sectors += f[6]
            self.data_len = (128 << min(f[5], 7)) * sectors
        self.eot = f[6]
        if not self.dor & DOR_DMA:
            raise DeviceError(
                "fdc: non-DMA (PIO) data transfer is not modelled; with QEMU's FDC DOR bit 3 is "
                "SPECIFY's ND bit: clear ND (and keep DOR bit 3 set) to transfer by DMA on channel 2")
        self.msr_q &= ~Msr.RQM
        if direction is QDir.VERIFY:
            self._transfer(0, self.data_len, None)
        else:
            self._hold_dreq()

    def dma_handler(self, channel: int, pos: int, size: int, dma: DmaWindow) -> int:
        return self._transfer(pos, size, dma)

    def _transfer(self, dma_pos: int, dma_len: int, dma: DmaWindow | None) -> int:
        """fdctrl_transfer_handler: min(DMA length, data) bytes in 512-byte pieces through the
        FIFO buffer, sector after sector, then the result phase; returns the position."""
        if self.msr_q & Msr.RQM:
            return 0
        d = self.cur()
        scan = self.data_dir in (QDir.SCANE, QDir.SCANL, QDir.SCANH)
        status2 = 0x04 if scan else 0
        dma_len = min(dma_len, self.data_len)
        rel = self.data_pos % SECTOR
        start = self.data_pos
        ln = 0
        while self.data_pos < dma_len:
            ln = min(dma_len - self.data_pos, SECTOR - rel)
            if self.data_dir is not QDir.WRITE or ln < SECTOR or rel != 0:
                self.fifo[:] = self._read_sector(d)
            match self.data_dir:
                case QDir.READ:
                    if dma is not None:
                        self.fifo[rel:rel + ln] = dma.write(self.data_pos, bytes(self.fifo[rel:rel + ln]))
                case QDir.WRITE:
                    if d.disk is not None and not d.disk.writable:
                        self.stop_transfer(St0.ABNORMAL | St0.SE, St1.NW, 0)
                        return ln
                    got = dma.read(self.data_pos, ln) if dma is not None else None
                    if got is not None:
                        self.fifo[rel:rel + ln] = got
                    if not self._write_sector(d, bytes(self.fifo)):
                        self.stop_transfer(St0.ABNORMAL | St0.SE, 0, 0)
                        return ln
                case QDir.VERIFY:
                    pass
                case _:
                    got = (dma.read(self.data_pos, ln) if dma is not None else None) or bytes(ln)
                    here = bytes(self.fifo[rel:rel + ln])
                    if got == here or (got < here and self.data_dir is QDir.SCANL) or (
                            got > here and self.data_dir is QDir.SCANH):
                        break
            self.data_pos += ln
            rel = self.data_pos % SECTOR
            if rel == 0 and not self.next_sect(d):
                break
        n = self.data_pos - start
        if scan:
            status2 = 0x08
        self.data_len -= n
        self.stop_transfer(0, 0, status2)
        return n


#: the floppy controller of each simulator profile, by name
CONTROLLERS: dict[str, type[FloppyController]] = {c.profile: c for c in (FloppyController, QemuFloppyController)}


def fdc_for(profile: str, disks: dict[int, Disk] | None = None) -> FloppyController:
    """The controller of a machine profile (``intel`` or ``qemu``) with ``disks`` by unit."""
    cls = CONTROLLERS.get(profile)
    if cls is None:
        raise DeviceError(f"fdc: no floppy controller for profile {profile!r}")
    return cls(disks)


__all__ = [
    "CONTROLLERS", "DMA", "GEOMETRIES", "IMAGE_1440K", "IRQ", "SECTOR", "Disk", "Drive", "FloppyController",
    "Geometry", "QemuFloppyController", "fdc_for", "generated_image",
]
