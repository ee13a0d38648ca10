"""The PC/AT DMA register map: the one place that spells a DMA port number or register bit.

Everything else (the simulator's decoder, the Linux-style driver layer, the register dump,
the diff decoder) asks this module. Sources: docs/reference/8237.md §1 (port map), §2.3-§2.10 (bit fields),
docs/reference/linux-isa-dma.md §1.1 (Linux's names for the same ports).
"""

from __future__ import annotations

import enum

from hil.records import dataclass

CHANNELS = range(8)
CASCADE_CHANNEL = 4  #: DMA2 local channel 0 receives DMA1's HRQ (docs/reference/8237.md §3.6)
DMA_LIMIT = 1 << 24  #: page (8 bits) + 16-bit address: ISA DMA reaches the low 16 MiB (§3.7)


class Ctrl(enum.IntEnum):
    """The two cascaded controllers of the PC/AT."""

    DMA1 = 0  #: channels 0-3, 8-bit transfers, ports 0x00-0x0F (slave)
    DMA2 = 1  #: channels 4-7, 16-bit transfers, ports 0xC0-0xDE stride 2 (master)


class Reg(enum.IntEnum):
    """Register index inside one controller (the 8237's A3..A0). Port = base + index * stride.

    Indices 0-7 are the channel address/count pairs (``2*local`` address, ``2*local+1`` count).
    Index 8-15 have different meanings on read and write (docs/reference/8237.md §1.1).
    """

    STATUS_COMMAND = 0x8  #: R status / W command
    REQUEST = 0x9  #: W request (QEMU reads the mask here)
    SINGLE_MASK = 0xA  #: W single-channel mask
    MODE = 0xB  #: W mode
    CLEAR_FF = 0xC  #: W clear byte-pointer flip-flop
    TEMP_MASTER_CLEAR = 0xD  #: R temporary / W master clear
    CLEAR_MASK = 0xE  #: W clear all mask bits
    ALL_MASK = 0xF  #: W write all mask bits (readable on later Intel chipsets)


@dataclass(frozen=True, slots=True)
class ControllerPorts:
    """Port numbers of one controller."""

    ctrl: Ctrl
    base: int
    stride: int

    def reg(self, index: int) -> int:
        return self.base + index * self.stride

    def addr(self, local: int) -> int:
        return self.reg(2 * local)

    def count(self, local: int) -> int:
        return self.reg(2 * local + 1)

    @property
    def status(self) -> int:
        return self.reg(Reg.STATUS_COMMAND)

    command = status

    @property
    def request(self) -> int:
        return self.reg(Reg.REQUEST)

    @property
    def single_mask(self) -> int:
        return self.reg(Reg.SINGLE_MASK)

    @property
    def mode(self) -> int:
        return self.reg(Reg.MODE)

    @property
    def clear_ff(self) -> int:
        return self.reg(Reg.CLEAR_FF)

    @property
    def temp(self) -> int:
        return self.reg(Reg.TEMP_MASTER_CLEAR)

    master_clear = temp

    @property
    def clear_mask(self) -> int:
        return self.reg(Reg.CLEAR_MASK)

    @property
    def all_mask(self) -> int:
        return self.reg(Reg.ALL_MASK)

    @property
    def span(self) -> range:
        """Every port the controller decodes on an AT (DMA2 decodes odd ports as aliases)."""
        return range(self.base, self.base + 16 * self.stride)


DMA1 = ControllerPorts(Ctrl.DMA1, base=0x00, stride=1)
DMA2 = ControllerPorts(Ctrl.DMA2, base=0xC0, stride=2)
CONTROLLERS = (DMA1, DMA2)
DMA1_MIRROR = range(0x10, 0x20)  #: AT decode block 0x00-0x1F mirrors DMA1 (docs/reference/8237.md §1.1)

PAGE_BASE = 0x80
PAGE_FILE = range(0x80, 0x90)  #: 16 latches, A16-A23 (docs/reference/8237.md §1.3)
#: channel -> page register port; 0x8F is the channel-4 ("refresh") page
PAGE_PORT = {0: 0x87, 1: 0x83, 2: 0x81, 3: 0x82, 4: 0x8F, 5: 0x8B, 6: 0x89, 7: 0x8A}
PAGE_CHANNEL = {port: ch for ch, port in PAGE_PORT.items()}
POST_PORT = 0x80  #: POST code / delay port; a storage byte in the page file, never a DMA page
HIGH_PAGE_FILE = range(0x480, 0x490)  #: EISA A24-A31 pages: not part of the AT (docs/reference/8237.md §1.4)

#: The ports the DMA subsystem of an AT owns: default allow-list for hardware backends.
DMA_PORT_RANGES: tuple[range, ...] = (range(0x00, 0x20), PAGE_FILE, range(0xC0, 0xE0))


# --- the interrupt controllers, as a backend observes them (docs/reference/8259.md §3.3, §7) ----
PIC_COMMAND = (0x20, 0xA0)  #: master and slave even ports: OCW3, then IRR/ISR reads
ELCR_PORTS = (0x4D0, 0x4D1)  #: PIIX/ICH edge/level control, one bit per IRQ (master, slave)
OCW3_READ_IRR = 0x0A  #: OCW3 with RR = 1, RIS = 0: even-port reads return the IRR
#: IRQs whose ELCR bit a PIIX/ICH lets software set (0, 1, 2, 8 and 13 are edge-only)
ELCR_PROGRAMMABLE = frozenset({3, 4, 5, 6, 7, 9, 10, 11, 12, 14, 15})


def controller_of(channel: int) -> ControllerPorts:
    return DMA2 if channel >= 4 else DMA1


def is_16bit(channel: int) -> bool:
    return channel >= 4


@dataclass(frozen=True, slots=True)
class ChannelPorts:
    channel: int
    ctrl: ControllerPorts
    local: int
    addr: int
    count: int
    page: int


def channel_ports(channel: int) -> ChannelPorts:
    ctrl = controller_of(channel)
    local = channel & 3
    return ChannelPorts(channel, ctrl, local, ctrl.addr(local), ctrl.count(local), PAGE_PORT[channel])


# ---------------------------------------------------------------------------------------
# Register bit fields (docs/reference/8237.md §2.3-§2.9)


class Command(enum.IntFlag):
    """Command register (write 0x08 / 0xD0)."""

    MEM_TO_MEM = 0x01  #: memory-to-memory, channel 0 -> channel 1 (DMA1 only)
    CH0_HOLD = 0x02  #: channel 0 address hold (block fill) during mem-to-mem
    DISABLE = 0x04  #: controller disabled
    COMPRESSED = 0x08  #: compressed timing
    ROTATING = 0x10  #: rotating priority
    EXTENDED_WRITE = 0x20  #: extended write
    DREQ_ACTIVE_LOW = 0x40  #: DREQ sense active low
    DACK_ACTIVE_HIGH = 0x80  #: DACK sense active high


class TransferType(enum.IntEnum):
    """Mode bits 3:2, named from memory's point of view as the datasheet does."""

    VERIFY = 0
    WRITE = 1  #: I/O -> memory (Linux DMA_MODE_READ)
    READ = 2  #: memory -> I/O (Linux DMA_MODE_WRITE)
    ILLEGAL = 3


class ModeSelect(enum.IntEnum):
    """Mode bits 7:6."""

    DEMAND = 0
    SINGLE = 1
    BLOCK = 2
    CASCADE = 3


MODE_AUTOINIT = 0x10
MODE_DECREMENT = 0x20
MODE_CHANNEL_MASK = 0x03
MASK_SET = 0x04  #: single-mask / request register bit 2: set (1) or clear (0)


@dataclass(frozen=True, slots=True)
class Mode:
    """A decoded mode byte (channel bits excluded)."""

    transfer: TransferType = TransferType.VERIFY
    select: ModeSelect = ModeSelect.DEMAND
    autoinit: bool = False
    decrement: bool = False

    @classmethod
    def decode(cls, byte: int) -> Mode:
        return cls(
            TransferType((byte >> 2) & 3),
            ModeSelect((byte >> 6) & 3),
            bool(byte & MODE_AUTOINIT),
            bool(byte & MODE_DECREMENT),
        )

    def encode(self, local: int = 0) -> int:
        return (
            (self.select << 6)
            | (MODE_DECREMENT if self.decrement else 0)
            | (MODE_AUTOINIT if self.autoinit else 0)
            | (self.transfer << 2)
            | (local & 3)
        )

    def __str__(self) -> str:
        parts = [self.select.name.lower(), self.transfer.name.lower()]
        if self.autoinit:
            parts.append("autoinit")
        parts.append("decrement" if self.decrement else "increment")
        return " ".join(parts)


def status_tc(status: int) -> int:
    """Bits 0-3: channels that reached terminal count since the last status read."""
    return status & 0x0F


def status_requests(status: int) -> int:
    """Bits 4-7: channels with a pending request (DREQ or software request)."""
    return (status >> 4) & 0x0F


# ---------------------------------------------------------------------------------------
# Port decoding: what a port number means, for decoders, dumps and diff reports


class PortRole(enum.Enum):
    ADDRESS = "address"
    COUNT = "count"
    CONTROL = "control"
    PAGE = "page"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class PortInfo:
    port: int
    role: PortRole
    ctrl: Ctrl | None = None
    reg: int | None = None  #: register index inside the controller (0-15)
    channel: int | None = None  #: system channel 0-7 where one applies

    def describe(self, *, write: bool) -> str:
        if self.role is PortRole.PAGE:
            return f"page register (channel {self.channel})" if self.channel is not None else "page file byte"
        if self.role in (PortRole.ADDRESS, PortRole.COUNT):
            return f"channel {self.channel} {'base+current' if write else 'current'} {self.role.value}"
        if self.role is PortRole.CONTROL:
            names_w = {8: "command", 9: "request", 10: "single mask", 11: "mode", 12: "clear flip-flop",
                       13: "master clear", 14: "clear mask", 15: "write all mask"}
            names_r = {8: "status", 9: "(request port)", 10: "(single mask port)", 11: "(mode port)",
                       12: "(clear flip-flop port)", 13: "temporary", 14: "(clear mask port)", 15: "mask"}
            name = (names_w if write else names_r)[self.reg or 0]
            return f"{self.ctrl.name} {name}" if self.ctrl is not None else name
        return "not a DMA port"


def decode_port(port: int) -> PortInfo:
    """Name an I/O port as the AT decodes it (DMA1 mirror and DMA2 odd aliases included)."""
    if port in DMA1.span or port in DMA1_MIRROR:
        ctrl, index = Ctrl.DMA1, port & 0x0F
    elif port in DMA2.span:
        ctrl, index = Ctrl.DMA2, ((port - DMA2.base) >> 1) & 0x0F
    elif port in PAGE_FILE:
        return PortInfo(port, PortRole.PAGE, channel=PAGE_CHANNEL.get(port))
    else:
        return PortInfo(port, PortRole.OTHER)
    if index < 8:
        channel = (index >> 1) + 4 * ctrl
        role = PortRole.COUNT if index & 1 else PortRole.ADDRESS
        return PortInfo(port, role, ctrl, index, channel)
    return PortInfo(port, PortRole.CONTROL, ctrl, index)


# ---------------------------------------------------------------------------------------
# Symbolic names, for transfer scripts and the command line ("dma1.status", "ch5.count")

_REG_NAMES = {
    "status": Reg.STATUS_COMMAND,
    "command": Reg.STATUS_COMMAND,
    "request": Reg.REQUEST,
    "single_mask": Reg.SINGLE_MASK,
    "mode": Reg.MODE,
    "clear_ff": Reg.CLEAR_FF,
    "temp": Reg.TEMP_MASTER_CLEAR,
    "master_clear": Reg.TEMP_MASTER_CLEAR,
    "clear_mask": Reg.CLEAR_MASK,
    "all_mask": Reg.ALL_MASK,
}


def port_names() -> dict[str, int]:
    """Every symbolic port name and its number."""
    names: dict[str, int] = {"post": POST_PORT}
    for ports in CONTROLLERS:
        prefix = ports.ctrl.name.lower()
        for reg_name, index in _REG_NAMES.items():
            names[f"{prefix}.{reg_name}"] = ports.reg(index)
    for ch in CHANNELS:
        cp = channel_ports(ch)
        names[f"ch{ch}.addr"] = cp.addr
        names[f"ch{ch}.count"] = cp.count
        names[f"ch{ch}.page"] = cp.page
    return names
