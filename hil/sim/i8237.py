"""One 8237A controller, register-exact, with no I/O and no notion of time.

:class:`I8237` follows the Intel datasheet / chipset behaviour of docs/reference/8237.md §2-§3 and the
reference model of §6. :class:`QemuI8257` reproduces QEMU 7.2's ``hw/dma/i8257.c`` where
docs/reference/8237.md §5 and docs/reference/qemu-qtest.md §8 record that it differs. The machine (:mod:`hil.sim.machine`)
wires two of them as the PC/AT, arbitrates, and moves the data; this module only keeps
registers and answers "where is the next unit, how many are left, what happens at TC".

Register indices are those of :class:`hil.ports.Reg` (the chip's A3..A0).
"""

from __future__ import annotations

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

FLOAT = 0xFF  #: what an undriven ISA data bus reads


class I8237:
    """Datasheet 8237A (Intel chipset flavour: the mask reads back at 0x0F / 0xDE)."""

    profile = "intel"

    def __init__(self, ctrl: Ctrl) -> None:
        self.ctrl = ctrl
        self.dshift = int(ctrl)  #: 0 = byte channels, 1 = word channels
        self.base_addr = [0] * 4
        self.cur_addr = [0] * 4
        self.base_count = [0] * 4
        self.cur_count = [0] * 4
        self.mode = [0] * 4
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

    # --- CPU side: channel registers -------------------------------------------------------
    def _toggle(self) -> int:
        ff = self.ff
        self.ff = ff ^ 1
        return ff

    def write_channel(self, index: int, value: int) -> None:
        """§2.1/§2.2: the byte selected by the FF goes to base *and* current; FF toggles."""
        local, is_count = index >> 1, index & 1
        shift = 8 * self._toggle()
        keep = 0xFF00 >> shift
        byte = (value & 0xFF) << shift
        if is_count:
            self.base_count[local] = (self.base_count[local] & keep) | byte
            self.cur_count[local] = (self.cur_count[local] & keep) | byte
        else:
            self.base_addr[local] = (self.base_addr[local] & keep) | byte
            self.cur_addr[local] = (self.cur_addr[local] & keep) | byte

    def read_channel(self, index: int) -> int:
        """Reads return the *current* register, byte selected by the FF, which toggles."""
        local = index >> 1
        value = self.cur_count[local] if index & 1 else self.cur_addr[local]
        return (value >> (8 * self._toggle())) & 0xFF

    # --- CPU side: control registers -------------------------------------------------------
    def write_control(self, index: int, value: int) -> None:
        if index == Reg.STATUS_COMMAND:
            self.command = value
        elif index == Reg.REQUEST:
            bit = 1 << (value & 3)
            self.sw_request = self.sw_request | bit if value & MASK_SET else self.sw_request & ~bit
        elif index == Reg.SINGLE_MASK:
            bit = 1 << (value & 3)
            self.mask = self.mask | bit if value & MASK_SET else self.mask & ~bit
        elif index == Reg.MODE:
            self.mode[value & 3] = value & 0xFC
        elif index == Reg.CLEAR_FF:
            self.ff = 0
        elif index == Reg.TEMP_MASTER_CLEAR:
            self.master_clear()
        elif index == Reg.CLEAR_MASK:
            self.mask = 0
        elif index == Reg.ALL_MASK:
            self.mask = value & 0x0F

    def read_control(self, index: int, requests: int) -> int:
        """``requests`` = live request lines (bits 0-3) the machine computed for status."""
        if index == Reg.STATUS_COMMAND:
            value = ((requests & 0x0F) << 4) | self.tc
            self.tc = 0  # §2.3: a status read clears the TC bits only
            return value
        if index == Reg.TEMP_MASTER_CLEAR:
            return self.temp
        if index == Reg.ALL_MASK:
            return self.mask  # readable on SIO/PIIX/ICH (§2.9), bits 7:4 read 0
        return FLOAT  # write-only ports: undefined, we float (§2.12)

    # --- machine side ---------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        return not self.command & Command.DISABLE

    def request_lines(self, dreq: int) -> int:
        """Request bits as status shows them: DREQ (after sense polarity) or software request."""
        if self.command & Command.DREQ_ACTIVE_LOW:
            dreq = ~dreq & 0x0F
        return (dreq | self.sw_request) & 0x0F

    def wants_service(self, local: int, dreq: int) -> bool:
        """§6 service condition, for this chip alone (the machine adds cascade gating)."""
        mode = self.mode[local]
        select = mode >> 6
        bit = 1 << local
        if self.sw_request & bit:
            # §2.6: software requests ignore the mask and are honoured in block mode; in
            # memory-to-memory mode channel 0's request starts the copy (MAME: also single).
            if select == ModeSelect.BLOCK:
                return True
            if local == 0 and self.command & Command.MEM_TO_MEM and select == ModeSelect.SINGLE:
                return True
        if self.mask & bit or select == ModeSelect.CASCADE:
            return False
        active_low = bool(self.command & Command.DREQ_ACTIVE_LOW)
        return bool(dreq & bit) != active_low

    def software_started(self, local: int) -> bool:
        return bool(self.sw_request & (1 << local))

    def mem_to_mem(self) -> bool:
        return bool(self.command & Command.MEM_TO_MEM) and self.ctrl == Ctrl.DMA1

    def priority_order(self) -> tuple[int, ...]:
        if self.command & Command.ROTATING:
            last = self.last_served
            return tuple((last + i) & 3 for i in range(1, 5))
        return (0, 1, 2, 3)

    def served(self, local: int) -> None:
        self.last_served = local

    def transfer_type(self, local: int) -> TransferType:
        return TransferType((self.mode[local] >> 2) & 3)

    def select(self, local: int) -> ModeSelect:
        return ModeSelect(self.mode[local] >> 6)

    def units_to_tc(self, local: int) -> int:
        return self.cur_count[local] + 1

    def decrementing(self, local: int) -> bool:
        return bool(self.mode[local] & MODE_DECREMENT)

    def next_unit(self, local: int, page: int) -> tuple[int, int, int]:
        """(physical address of the next unit, step in units (+1/-1), units before the wrap).

        §3.3/§3.6: the 16-bit address counter wraps inside the 64 KiB (ch0-3) or 128 KiB
        (ch5-7) page; the page latch never changes; page bit 0 is dropped on word channels.
        """
        addr = self.cur_addr[local]
        if self.dshift:
            phys = ((page & 0xFE) << 16) | (addr << 1)
        else:
            phys = (page << 16) | addr
        if self.decrementing(local):
            return phys, -1, addr + 1
        return phys, 1, 0x10000 - addr

    def advance(self, local: int, units: int, *, hold_address: bool = False) -> bool:
        """Account ``units`` transfers; return True when the last one hit terminal count."""
        if not hold_address:
            step = -units if self.decrementing(local) else units
            self.cur_addr[local] = (self.cur_addr[local] + step) & 0xFFFF
        old = self.cur_count[local]
        self.cur_count[local] = (old - units) & 0xFFFF
        return units == old + 1

    def terminal_count(self, local: int) -> None:
        """§3.1/§3.2: TC status set, request cleared, then autoinit reload or mask."""
        bit = 1 << local
        self.tc |= bit
        self.sw_request &= ~bit
        if self.mode[local] & MODE_AUTOINIT:
            self.cur_addr[local] = self.base_addr[local]
            self.cur_count[local] = self.base_count[local]
        else:
            self.mask |= bit

    def exhausted(self, local: int) -> bool:
        return False

    # QEMU keeps the request lines as stored status bits; the datasheet chip sees live lines.
    def dreq_edge(self, local: int, level: bool) -> None:
        pass

    def snapshot(self) -> dict[str, object]:
        """Every internal register, for tests and the register dump."""
        return {
            "base_addr": list(self.base_addr),
            "cur_addr": list(self.cur_addr),
            "base_count": list(self.base_count),
            "cur_count": list(self.cur_count),
            "mode": list(self.mode),
            "ff": self.ff,
            "command": self.command,
            "tc": self.tc,
            "request": self.sw_request,
            "mask": self.mask,
            "temp": self.temp,
        }


class QemuI8257(I8237):
    """QEMU 7.2's i8257, as observed in docs/reference/qemu-qtest.md §8 and read in ``hw/dma/i8257.c``.

    QEMU keeps base registers plus a transfer *position* instead of current registers: the
    current address reads ``(base_addr << dshift) + pos*dir``, the current count reads
    ``(base_count << dshift) - pos``, and writing either high byte restarts the channel
    (position 0, address from base). The DMA engine ignores the command register, the mode
    select bits and cascade gating; it neither masks nor reloads at TC; it addresses memory
    linearly from ``page << 16 | base << dshift`` (so 16-bit page bit 0 is OR-ed in and nothing
    wraps); the direction is the device's; the mask is 8 bits wide and reads back at 0x09.
    """

    profile = "qemu"

    def __init__(self, ctrl: Ctrl) -> None:
        self.pos = [0] * 4  #: bytes transferred since the channel was (re)initialised
        self.now_addr = [0] * 4
        self.status_req = 0  #: QEMU's status bits 4-7, set/cleared by writes and DREQ edges
        super().__init__(ctrl)

    def master_clear(self) -> None:
        super().master_clear()
        self.mask = 0xFF
        self.status_req = 0

    def _init_chan(self, local: int) -> None:
        self.now_addr[local] = self.base_addr[local] << self.dshift
        self.pos[local] = 0

    def write_channel(self, index: int, value: int) -> None:
        local, is_count = index >> 1, index & 1
        regs = self.base_count if is_count else self.base_addr
        if self._toggle():
            regs[local] = (regs[local] & 0xFF) | ((value << 8) & 0xFF00)
            self._init_chan(local)
        else:
            regs[local] = (regs[local] & 0xFF00) | (value & 0xFF)

    def _current(self, local: int, is_count: int) -> int:
        if is_count:
            return (self.base_count[local] << self.dshift) - self.pos[local]
        direction = -1 if self.mode[local] & MODE_DECREMENT else 1
        return self.now_addr[local] + self.pos[local] * direction

    def read_channel(self, index: int) -> int:
        val = self._current(index >> 1, index & 1)
        return (val >> (self.dshift + 8 * self._toggle())) & 0xFF

    def write_control(self, index: int, value: int) -> None:
        if index == Reg.STATUS_COMMAND:
            if value and value & ~Command.DISABLE & 0xFF:
                return  # "command not supported": the whole write is ignored
            self.command = value
        elif index == Reg.REQUEST:
            local = value & 3
            if value & MASK_SET:
                self.status_req |= 1 << local
            else:
                self.status_req &= ~(1 << local)
            self.tc &= ~(1 << local)
        elif index == Reg.SINGLE_MASK:
            bit = 1 << (value & 3)
            self.mask = self.mask | bit if value & MASK_SET else self.mask & ~bit
        elif index == Reg.MODE:
            self.mode[value & 3] = value
        elif index == Reg.CLEAR_FF:
            self.ff = 0
        elif index == Reg.TEMP_MASTER_CLEAR:
            self.master_clear()
        elif index == Reg.CLEAR_MASK:
            self.mask = 0
        elif index == Reg.ALL_MASK:
            self.mask = value & 0xFF

    def read_control(self, index: int, requests: int) -> int:
        if index == Reg.STATUS_COMMAND:
            value = (self.status_req << 4) | self.tc
            self.tc = 0
            return value
        if index == Reg.REQUEST:
            return self.mask
        return 0

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
        bit = 1 << local
        return not self.mask & bit and bool(self.status_req & bit) and not self.exhausted(local)

    def mem_to_mem(self) -> bool:
        return False

    def priority_order(self) -> tuple[int, ...]:
        return (0, 1, 2, 3)

    def size_bytes(self, local: int) -> int:
        return (self.base_count[local] + 1) << self.dshift

    def exhausted(self, local: int) -> bool:
        return self.pos[local] >= self.size_bytes(local)

    def units_to_tc(self, local: int) -> int:
        return max(0, (self.size_bytes(local) - self.pos[local]) >> self.dshift)

    def next_unit(self, local: int, page: int) -> tuple[int, int, int]:
        unit = 1 << self.dshift
        base = (page << 16) | self.now_addr[local]
        if self.decrementing(local):
            # DMA_write_memory(addr - pos - len): data goes *below* the start address
            return base - self.pos[local] - unit, -1, 1 << 30
        return base + self.pos[local], 1, 1 << 30

    def advance(self, local: int, units: int, *, hold_address: bool = False) -> bool:
        self.pos[local] += units << self.dshift
        return self.exhausted(local)

    def terminal_count(self, local: int) -> None:
        self.tc |= 1 << local  # "transfer done": no request clear, no mask, no reload

    def snapshot(self) -> dict[str, object]:
        snap = super().snapshot()
        snap["cur_addr"] = [self._current(i, 0) >> self.dshift & 0xFFFF for i in range(4)]
        snap["cur_count"] = [self._current(i, 1) >> self.dshift & 0xFFFF for i in range(4)]
        snap["request"] = self.status_req
        snap["pos"] = list(self.pos)
        return snap


CONTROLLER_CLASSES: dict[str, type[I8237]] = {"intel": I8237, "qemu": QemuI8257}
