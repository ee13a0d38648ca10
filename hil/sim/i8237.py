"""One 8237A controller, register-exact, with no I/O and no notion of time.

Two models of the chip, one per profile. :class:`I8237` follows the Intel datasheet / chipset
behaviour of docs/reference/8237.md §2-§3 and the reference model of §6. :class:`QemuI8257`
reproduces QEMU 7.2's ``hw/dma/i8257.c`` where docs/reference/8237.md §5 and
docs/reference/qemu-qtest.md §8 record that it differs. Each keeps one struct per channel, as
QEMU's and MAME's models do: :class:`Channel` (the datasheet's base and current registers) and
:class:`QemuChannel` (QEMU's base registers and transfer position, from which it derives the
current ones); the registers that span the four channels (flip-flop, command, status, request,
mask, temporary) are the controller's, as on the chip. The machine (:mod:`hil.sim.machine`)
wires two of them as the PC/AT, arbitrates, and moves the data; this module only keeps
registers and answers "where is the next unit, how many are left, what happens at TC".

Register indices are those of :class:`hil.ports.Reg` (the chip's A3..A0).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

from hil.ports import (
    MASK_SET,
    MODE_AUTOINIT,
    MODE_DECREMENT,
    Command,
    Ctrl,
    ModeSelect,
    Reg,
    TransferType,
)
from hil.records import dataclass

#: the command bits as plain ints: ``int & IntFlag`` goes through the enum's ``__rand__``,
#: a microsecond per test in the arbitration that runs at every port access
_DISABLE = Command.DISABLE.value
_DREQ_ACTIVE_LOW = Command.DREQ_ACTIVE_LOW.value
_MEM_TO_MEM = Command.MEM_TO_MEM.value
_ROTATING = Command.ROTATING.value
_BLOCK = ModeSelect.BLOCK.value
_SINGLE = ModeSelect.SINGLE.value


class R:
    """:class:`hil.ports.Reg`'s indices as plain ints, for the value patterns of the register
    dispatch: a pattern naming the enum looks its member up, a tenth of a microsecond per case
    on every port access."""

    STATUS_COMMAND = Reg.STATUS_COMMAND.value
    REQUEST = Reg.REQUEST.value
    SINGLE_MASK = Reg.SINGLE_MASK.value
    MODE = Reg.MODE.value
    CLEAR_FF = Reg.CLEAR_FF.value
    TEMP_MASTER_CLEAR = Reg.TEMP_MASTER_CLEAR.value
    CLEAR_MASK = Reg.CLEAR_MASK.value
    ALL_MASK = Reg.ALL_MASK.value


class Sel:
    """:class:`hil.ports.ModeSelect` as plain ints (mode bits 7:6), for the same reason as :class:`R`."""

    DEMAND = ModeSelect.DEMAND.value
    SINGLE = ModeSelect.SINGLE.value
    BLOCK = ModeSelect.BLOCK.value
    CASCADE = ModeSelect.CASCADE.value


class Xfer:
    """:class:`hil.ports.TransferType` as plain ints (mode bits 3:2), as :class:`R`."""

    VERIFY = TransferType.VERIFY.value
    WRITE = TransferType.WRITE.value
    READ = TransferType.READ.value
    ILLEGAL = TransferType.ILLEGAL.value


FLOAT = 0xFF  #: what an undriven ISA data bus reads


@dataclass(slots=True)
class Registers:
    """What every model keeps per channel: the programmed base registers and the mode byte."""

    base_addr: int = 0
    base_count: int = 0
    mode: int = 0


@dataclass(slots=True)
class Channel(Registers):
    """One datasheet channel (docs/reference/8237.md §6 'State per controller'): base and
    current address and count, 16 bits each, and the mode byte with bits 1:0 cleared."""

    cur_addr: int = 0
    cur_count: int = 0


@dataclass(slots=True)
class QemuChannel(Registers):
    """One channel of QEMU's i8257 (its ``I8257Regs``): no current registers, but the start
    address in bytes (``now_addr``, set from the base when the channel is initialised) and the
    bytes moved since (``pos``); the mode byte is kept whole."""

    now_addr: int = 0
    pos: int = 0


class Controller(ABC):
    """What both models do alike: the flip-flop, the mode decoding, resets, priority bookkeeping.

    The profile's behaviour is entirely in the two subclasses; the machine talks to either
    through this interface and never asks which one it has.
    """

    #: whether an address or count write can change :meth:`wants_service` (QEMU's model asks
    #: whether the channel is exhausted; the 8237's service condition has no count in it)
    COUNT_IN_SERVICE: ClassVar[bool] = True

    profile: ClassVar[str]
    channels: Sequence[Registers]

    def __init__(self, ctrl: Ctrl) -> None:
        self.ctrl = ctrl
        self.dshift = int(ctrl)  #: 0 = byte channels, 1 = word channels
        self.ff = 0
        self.command = 0
        self.tc = 0  #: status bits 0-3
        self.sw_request = 0  #: request register bits 0-3
        self.mask = 0x0F
        self.temp = 0
        self.last_served = 3  #: rotating-priority pointer (3 -> order 0,1,2,3)
        self.power_on()

    # --- reset --------------------------------------------------------------------------
    def power_on(self) -> None:
        """Hardware reset: as master clear; modes and address/count registers read as 0."""
        self.master_clear()

    def master_clear(self) -> None:
        """§2.10: command, status, request, temp, FF cleared; all four channels masked.
        Mode, base/current address/count (and the page registers) are not touched."""
        self.command = 0
        self.tc = 0
        self.sw_request = 0
        self.temp = 0
        self.ff = 0
        self.mask = 0x0F
        self.last_served = 3

    def _toggle(self) -> int:
        ff = self.ff
        self.ff = ff ^ 1
        return ff

    # --- CPU side (each model) --------------------------------------------------------------
    @abstractmethod
    def write_channel(self, index: int, value: int) -> None:
        """A CPU write to address/count port ``index`` (0-7) through the byte-pointer flip-flop."""

    @abstractmethod
    def read_channel(self, index: int) -> int:
        """A CPU read of address/count port ``index`` (0-7): the current register, one byte."""

    @abstractmethod
    def write_control(self, index: int, value: int) -> None:
        """A CPU write to control port ``index`` (8-15): command, request, masks, mode, clears."""

    @abstractmethod
    def read_control(self, index: int, requests: int) -> int:
        """``requests`` = live request lines (bits 0-3) the machine computed for status."""

    # --- machine side (each model) ----------------------------------------------------------
    @property
    @abstractmethod
    def enabled(self) -> bool:
        """The controller is not disabled by its command register (it may grant the bus)."""

    @abstractmethod
    def request_lines(self, dreq: int) -> int:
        """The request bits a status read shows, given the devices' DREQ lines ``dreq``."""

    @abstractmethod
    def wants_service(self, local: int, dreq: int) -> bool:
        """Channel ``local`` asks for the bus now (request, mask and mode as this model decides)."""

    def service_mask(self, dreq: int) -> int:
        """The local channels that :meth:`wants_service` now, as bits 0-3: the arbitration's
        one question per controller (a model answers it faster where it can, identically)."""
        return sum(1 << local for local in range(4) if self.wants_service(local, dreq))

    @abstractmethod
    def mem_to_mem(self) -> bool:
        """Memory-to-memory transfers (channel 0 to 1) are enabled."""

    @abstractmethod
    def priority_order(self) -> tuple[int, ...]:
        """Local channels from highest to lowest priority, as this model arbitrates."""

    @abstractmethod
    def units_to_tc(self, local: int) -> int:
        """Transfers left on channel ``local`` before terminal count."""

    @abstractmethod
    def next_unit(self, local: int, page: int) -> tuple[int, int, int]:
        """(physical address of the next unit, step in units (+1/-1), units before the wrap)."""

    @abstractmethod
    def advance(self, local: int, units: int, *, hold_address: bool = False) -> bool:
        """Account ``units`` transfers; return True when the last one hit terminal count."""

    @abstractmethod
    def terminal_count(self, local: int) -> None:
        """Channel ``local`` reached TC: status bit, then mask or autoinit reload as the model does."""

    @abstractmethod
    def exhausted(self, local: int) -> bool:
        """Channel ``local`` has nothing more to transfer until it is programmed again."""

    @abstractmethod
    def dreq_edge(self, local: int, level: bool) -> None:
        """A device's DREQ changed; only a model that stores request bits cares."""

    @abstractmethod
    def current(self, local: int) -> tuple[int, int]:
        """(current address, current count) as the registers read back, without the flip-flop."""

    @abstractmethod
    def requests(self) -> int:
        """Request bits 0-3 as stored in the chip (software requests; QEMU: its status bits)."""

    # --- machine side (alike) ---------------------------------------------------------------
    def software_started(self, local: int) -> bool:
        return bool(self.sw_request & (1 << local))

    def served(self, local: int) -> None:
        self.last_served = local

    def transfer_type(self, local: int) -> TransferType:
        return TransferType((self.channels[local].mode >> 2) & 3)

    def select(self, local: int) -> ModeSelect:
        return ModeSelect(self.channels[local].mode >> 6)

    def decrementing(self, local: int) -> bool:
        return bool(self.channels[local].mode & MODE_DECREMENT)

    def snapshot(self) -> dict[str, object]:
        """Every internal register, for tests and the register dump."""
        chans = self.channels
        cur = [self.current(i) for i in range(4)]
        return {
            "base_addr": [c.base_addr for c in chans],
            "cur_addr": [a for a, _ in cur],
            "base_count": [c.base_count for c in chans],
            "cur_count": [n for _, n in cur],
            "mode": [c.mode for c in chans],
            "ff": self.ff,
            "command": self.command,
            "tc": self.tc,
            "request": self.requests(),
            "mask": self.mask,
            "temp": self.temp,
        }


class I8237(Controller):
    """Datasheet 8237A (Intel chipset flavour: the mask reads back at 0x0F / 0xDE)."""

    COUNT_IN_SERVICE = False  #: §6: request, mask, mode and command decide service

    profile = "intel"
    channels: list[Channel]

    def __init__(self, ctrl: Ctrl) -> None:
        self.channels = [Channel() for _ in range(4)]
        super().__init__(ctrl)

    # --- CPU side: channel registers -------------------------------------------------------
    def write_channel(self, index: int, value: int) -> None:
        """§2.1/§2.2: the byte selected by the FF goes to base *and* current; FF toggles."""
        ch = self.channels[index >> 1]
        ff = self.ff  # self._toggle(), inlined: half of a channel programming's writes come here
        self.ff = ff ^ 1
        shift = 8 * ff
        keep = 0xFF00 >> shift
        byte = (value & 0xFF) << shift
        if index & 1:
            ch.base_count = (ch.base_count & keep) | byte
            ch.cur_count = (ch.cur_count & keep) | byte
        else:
            ch.base_addr = (ch.base_addr & keep) | byte
            ch.cur_addr = (ch.cur_addr & keep) | byte

    def read_channel(self, index: int) -> int:
        """Reads return the *current* register, byte selected by the FF, which toggles."""
        ch = self.channels[index >> 1]
        value = ch.cur_count if index & 1 else ch.cur_addr
        return (value >> (8 * self._toggle())) & 0xFF

    # --- CPU side: control registers -------------------------------------------------------
    def write_control(self, index: int, value: int) -> None:
        match index:
            case R.STATUS_COMMAND:
                self.command = value
            case R.REQUEST:
                bit = 1 << (value & 3)
                self.sw_request = self.sw_request | bit if value & MASK_SET else self.sw_request & ~bit
            case R.SINGLE_MASK:
                bit = 1 << (value & 3)
                self.mask = self.mask | bit if value & MASK_SET else self.mask & ~bit
            case R.MODE:
                self.channels[value & 3].mode = value & 0xFC
            case R.CLEAR_FF:
                self.ff = 0
            case R.TEMP_MASTER_CLEAR:
                self.master_clear()
            case R.CLEAR_MASK:
                self.mask = 0
            case R.ALL_MASK:
                self.mask = value & 0x0F

    def read_control(self, index: int, requests: int) -> int:
        match index:
            case R.STATUS_COMMAND:
                value = ((requests & 0x0F) << 4) | self.tc
                self.tc = 0  # §2.3: a status read clears the TC bits only
                return value
            case R.TEMP_MASTER_CLEAR:
                return self.temp
            case R.ALL_MASK:
                return self.mask  # readable on SIO/PIIX/ICH (§2.9), bits 7:4 read 0
        return FLOAT  # write-only ports: undefined, we float (§2.12)

    # --- machine side ---------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        return not self.command & _DISABLE

    def request_lines(self, dreq: int) -> int:
        """Request bits as status shows them: DREQ (after sense polarity) or software request."""
        if self.command & _DREQ_ACTIVE_LOW:
            dreq = ~dreq & 0x0F
        return (dreq | self.sw_request) & 0x0F

    def wants_service(self, local: int, dreq: int) -> bool:
        """§6 service condition, for this chip alone (the machine adds cascade gating). A
        cascade-mode channel requests the bus like any DREQ (§3.5), a software request never."""
        mode = self.channels[local].mode
        select = mode >> 6
        bit = 1 << local
        if self.sw_request & bit:
            # §2.6: software requests ignore the mask and are honoured in block mode; in
            # memory-to-memory mode channel 0's request starts the copy (MAME: also single).
            if select == _BLOCK:
                return True
            if local == 0 and self.command & _MEM_TO_MEM and select == _SINGLE:
                return True
        if self.mask & bit:
            return False
        # a cascade channel asks for the bus too: it relays its DREQ to HRQ for the bus master
        # behind it (§3.5 'Cascade'); the machine grants it without moving data itself
        active_low = bool(self.command & _DREQ_ACTIVE_LOW)
        return bool(dreq & bit) != active_low

    def service_mask(self, dreq: int) -> int:
        """:meth:`wants_service` of the four channels in plain int arithmetic: unmasked lines
        active after the sense polarity, plus the software requests it honours
        (tests/test_sim_fast_paths.py compares the two)."""
        command = self.command
        lines = (~dreq if command & _DREQ_ACTIVE_LOW else dreq) & ~self.mask & 0x0F
        sw = self.sw_request & 0x0F
        if sw:
            channels = self.channels
            for local in range(4):
                if sw >> local & 1:
                    select = channels[local].mode >> 6
                    if select == _BLOCK or (local == 0 and command & _MEM_TO_MEM and select == _SINGLE):
                        lines |= 1 << local
        return lines

    def mem_to_mem(self) -> bool:
        return bool(self.command & _MEM_TO_MEM) and self.ctrl == Ctrl.DMA1

    def priority_order(self) -> tuple[int, ...]:
        if self.command & _ROTATING:
            last = self.last_served
            return tuple((last + i) & 3 for i in range(1, 5))
        return (0, 1, 2, 3)

    def units_to_tc(self, local: int) -> int:
        return self.channels[local].cur_count + 1

    def next_unit(self, local: int, page: int) -> tuple[int, int, int]:
        """§3.3/§3.6: the 16-bit address counter wraps inside the 64 KiB (ch0-3) or 128 KiB
        (ch5-7) page; the page latch never changes; page bit 0 is dropped on word channels.
        """
        ch = self.channels[local]
        addr = ch.cur_addr
        if self.dshift:
            phys = ((page & 0xFE) << 16) | (addr << 1)
        else:
            phys = (page << 16) | addr
        if ch.mode & MODE_DECREMENT:
            return phys, -1, addr + 1
        return phys, 1, 0x10000 - addr

    def advance(self, local: int, units: int, *, hold_address: bool = False) -> bool:
        ch = self.channels[local]
        if not hold_address:
            step = -units if ch.mode & MODE_DECREMENT else units
            ch.cur_addr = (ch.cur_addr + step) & 0xFFFF
        old = ch.cur_count
        ch.cur_count = (old - units) & 0xFFFF
        return units == old + 1

    def terminal_count(self, local: int) -> None:
        """§3.1/§3.2: TC status set, request cleared, then autoinit reload or mask."""
        bit = 1 << local
        self.tc |= bit
        self.sw_request &= ~bit
        ch = self.channels[local]
        if ch.mode & MODE_AUTOINIT:
            ch.cur_addr = ch.base_addr
            ch.cur_count = ch.base_count
        else:
            self.mask |= bit

    def exhausted(self, local: int) -> bool:
        return False

    def dreq_edge(self, local: int, level: bool) -> None:
        """The datasheet chip sees the live lines: nothing to store."""

    def current(self, local: int) -> tuple[int, int]:
        ch = self.channels[local]
        return ch.cur_addr, ch.cur_count

    def requests(self) -> int:
        return self.sw_request


class QemuI8257(Controller):
    """QEMU 7.2's i8257, as observed in docs/reference/qemu-qtest.md §8 and read in ``hw/dma/i8257.c``.

    QEMU keeps base registers plus a transfer *position* instead of current registers: the
    current address reads ``(base_addr << dshift) + pos*dir``, the current count reads
    ``(base_count << dshift) - pos``, and writing either high byte restarts the channel
    (position 0, address from base). The DMA engine ignores the command register, the mode
    select bits and cascade gating; it neither masks nor reloads at TC; it addresses memory
    linearly from ``page << 16 | base << dshift`` (so 16-bit page bit 0 is OR-ed in and nothing
    wraps); the direction is the device's; the mask is 8 bits wide and reads back at 0x09.
    Requests are stored status bits, set and cleared by request-register writes and DREQ edges.
    """

    profile = "qemu"
    channels: list[QemuChannel]

    def __init__(self, ctrl: Ctrl) -> None:
        self.channels = [QemuChannel() for _ in range(4)]
        self.status_req = 0  #: QEMU's status bits 4-7, set/cleared by writes and DREQ edges
        super().__init__(ctrl)

    def master_clear(self) -> None:
        super().master_clear()
        self.mask = 0xFF
        self.status_req = 0

    def _init_chan(self, ch: QemuChannel) -> None:
        ch.now_addr = ch.base_addr << self.dshift
        ch.pos = 0

    # --- CPU side --------------------------------------------------------------------------
    def write_channel(self, index: int, value: int) -> None:
        ch = self.channels[index >> 1]
        is_count = index & 1
        reg = ch.base_count if is_count else ch.base_addr
        high = self._toggle()
        if high:
            reg = (reg & 0xFF) | ((value << 8) & 0xFF00)
        else:
            reg = (reg & 0xFF00) | (value & 0xFF)
        if is_count:
            ch.base_count = reg
        else:
            ch.base_addr = reg
        if high:  # QEMU's init_chan: the channel restarts from its base
            self._init_chan(ch)

    def _current(self, local: int, is_count: int) -> int:
        ch = self.channels[local]
        if is_count:
            return (ch.base_count << self.dshift) - ch.pos
        direction = -1 if ch.mode & MODE_DECREMENT else 1
        return ch.now_addr + ch.pos * direction

    def read_channel(self, index: int) -> int:
        val = self._current(index >> 1, index & 1)
        return (val >> (self.dshift + 8 * self._toggle())) & 0xFF

    def write_control(self, index: int, value: int) -> None:
        match index:
            case R.STATUS_COMMAND:
                if value and value & ~_DISABLE & 0xFF:
                    return  # "command not supported": the whole write is ignored
                self.command = value
            case R.REQUEST:
                local = value & 3
                if value & MASK_SET:
                    self.status_req |= 1 << local
                else:
                    self.status_req &= ~(1 << local)
                self.tc &= ~(1 << local)
            case R.SINGLE_MASK:
                bit = 1 << (value & 3)
                self.mask = self.mask | bit if value & MASK_SET else self.mask & ~bit
            case R.MODE:
                self.channels[value & 3].mode = value
            case R.CLEAR_FF:
                self.ff = 0
            case R.TEMP_MASTER_CLEAR:
                self.master_clear()
            case R.CLEAR_MASK:
                self.mask = 0
            case R.ALL_MASK:
                self.mask = value & 0xFF

    def read_control(self, index: int, requests: int) -> int:
        match index:
            case R.STATUS_COMMAND:
                value = (self.status_req << 4) | self.tc
                self.tc = 0
                return value
            case R.REQUEST:
                return self.mask
        return 0

    # --- machine side ---------------------------------------------------------------------
    def request_lines(self, dreq: int) -> int:
        return self.status_req

    def dreq_edge(self, local: int, level: bool) -> None:
        if level:
            self.status_req |= 1 << local
        else:
            self.status_req &= ~(1 << local)

    @property
    def enabled(self) -> bool:
        return True  # 0x04 is accepted but never consulted

    def wants_service(self, local: int, dreq: int) -> bool:
        return self.requested(local) and not self.exhausted(local)

    def requested(self, local: int) -> bool:
        """DMA_run's test: unmasked with the request bit set (position and size aside)."""
        bit = 1 << local
        return not self.mask & bit and bool(self.status_req & bit)

    def mem_to_mem(self) -> bool:
        return False

    def priority_order(self) -> tuple[int, ...]:
        return (0, 1, 2, 3)

    def size_bytes(self, local: int) -> int:
        return (self.channels[local].base_count + 1) << self.dshift

    def exhausted(self, local: int) -> bool:
        return self.channels[local].pos >= self.size_bytes(local)

    def units_to_tc(self, local: int) -> int:
        return max(0, (self.size_bytes(local) - self.channels[local].pos) >> self.dshift)

    def next_unit(self, local: int, page: int) -> tuple[int, int, int]:
        ch = self.channels[local]
        unit = 1 << self.dshift
        base = (page << 16) | ch.now_addr
        if ch.mode & MODE_DECREMENT:
            # DMA_write_memory(addr - pos - len): data goes *below* the start address
            return base - ch.pos - unit, -1, 1 << 30
        return base + ch.pos, 1, 1 << 30

    def advance(self, local: int, units: int, *, hold_address: bool = False) -> bool:
        self.channels[local].pos += units << self.dshift
        return self.exhausted(local)

    def terminal_count(self, local: int) -> None:
        self.tc |= 1 << local  # "transfer done": no request clear, no mask, no reload

    def rewind(self, local: int) -> None:
        """A device's handler returned position 0 at the end of the channel (QEMU's SB16 counts
        modulo the length): the registers read their base values again (docs/reference/qemu-qtest.md §7)."""
        self.channels[local].pos = 0

    def current(self, local: int) -> tuple[int, int]:
        return self._current(local, 0) >> self.dshift & 0xFFFF, self._current(local, 1) >> self.dshift & 0xFFFF

    def requests(self) -> int:
        return self.status_req

    def snapshot(self) -> dict[str, object]:
        snap = super().snapshot()
        snap["pos"] = [c.pos for c in self.channels]
        return snap
