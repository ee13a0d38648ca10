"""The PC/AT's two 8259A interrupt controllers: master at 0x20/0x21, slave at 0xA0/0xA1 on IR2.

One :class:`I8259` per chip (its registers and where it is in the ICW sequence) and
:class:`PicPair`, the AT wiring: ISA IRQ 0-7 on the master's IR0-7, IRQ 8-15 on the slave's,
the slave's INT output on the master's IR2 (docs/reference/8259.md §1). The CPU side is
:meth:`PicPair.read`/:meth:`PicPair.write` for the four ports and :meth:`PicPair.acknowledge`,
the INTA cycle, which returns the vector a CPU would fetch (docs/reference/8259.md §4.4).

:class:`QemuI8259` / :class:`QemuPicPair` reproduce QEMU 7.2's ``hw/intc/i8259.c`` where a script
can see the difference (docs/reference/8259.md §7). Pure state machines: no I/O, no time.
"""

from __future__ import annotations

import enum
from typing import ClassVar

from hil.records import dataclass

#: the floating data bus, when no chip drives the vector (docs/reference/8259.md §4.4)
FLOAT = 0xFF
MASTER_PORTS = (0x20, 0x21)
SLAVE_PORTS = (0xA0, 0xA1)
PORTS = MASTER_PORTS + SLAVE_PORTS
CASCADE_IR = 2  #: the master input the AT's slave INT drives (docs/reference/8259.md §1)


class InitStep(enum.IntEnum):
    """Which byte the odd port expects next (docs/reference/8259.md §2)."""

    READY = 0  #: odd-port writes are OCW1
    ICW2 = 1
    ICW3 = 2
    ICW4 = 3


@dataclass
class I8259:
    """One 8259A (docs/reference/8259.md §2-§5). ``lines`` are the IR input levels."""

    master: bool
    lines: int = 0  #: IR0-7 input levels, as the devices drive them
    edge: int = 0  #: edge-sense latches: a rising edge seen and not yet acknowledged
    isr: int = 0
    imr: int = 0
    vector_base: int = 0  #: ICW2 T7-T3
    lowest: int = 7  #: the IR with the lowest priority (rotation, docs/reference/8259.md §3.2)
    step: InitStep = InitStep.READY
    need_icw4: bool = False
    single: bool = False
    ltim: bool = False  #: level-triggered inputs (ICW1 bit 3)
    cascade_map: int = 0  #: master ICW3: inputs that have a slave
    slave_id: int = 7  #: slave ICW3: the cascade code it answers
    x86: bool = False  #: ICW4 uPM (vectors are always given in 8086 form, docs/reference/8259.md §2.4)
    auto_eoi: bool = False
    sfnm: bool = False  #: special fully nested mode (docs/reference/8259.md §4.7)
    rotate_aeoi: bool = False
    read_isr: bool = False  #: OCW3 RIS: an even-port read returns ISR, else IRR
    poll: bool = False  #: OCW3 P: the next read is a poll (docs/reference/8259.md §3.3)
    special_mask: bool = False

    # --- inputs ---------------------------------------------------------------------------
    def level_mode(self) -> bool:
        return self.ltim

    def set_line(self, ir: int, level: bool) -> None:
        bit = 1 << ir
        if level:
            if not self.lines & bit:
                self.edge |= bit  # docs/reference/8259.md §4.1: a low-to-high transition
            self.lines |= bit
        else:
            self.lines &= ~bit
            self._line_dropped(bit)

    def _line_dropped(self, bit: int) -> None:
        """docs/reference/8259.md §4.1: the request latch follows the input, so a request that
        goes away before INTA is gone (and INTA then gives the default IR7)."""
        self.edge &= ~bit

    @property
    def irr(self) -> int:
        if self.level_mode():
            return self.lines  # docs/reference/8259.md §4.2
        return self.edge & self.lines

    # --- priority ------------------------------------------------------------------------
    def order(self) -> list[int]:
        """IR numbers from highest to lowest priority (docs/reference/8259.md §4.3)."""
        top = (self.lowest + 1) & 7
        return [(top + i) & 7 for i in range(8)]

    def pending(self) -> int | None:
        """The request the chip would present now: highest priority, unmasked, and above every
        level in service (docs/reference/8259.md §4.3; special mask §3.3; SFNM §4.7)."""
        request = self.irr & ~self.imr
        if not request:
            return None
        blocking = self.isr & ~self.imr if self.special_mask else self.isr
        for ir in self.order():
            bit = 1 << ir
            if request & bit and (not blocking & bit or self._nested_cascade(ir)):
                return ir
            if blocking & bit:
                return None
        return None

    def _nested_cascade(self, ir: int) -> bool:
        """SFNM on the master: a slave's input in service does not lock out that slave."""
        return self.sfnm and self.master and bool(self.cascade_map & (1 << ir))

    @property
    def int_output(self) -> bool:
        return self.pending() is not None

    def acknowledge_level(self, ir: int) -> None:
        """First INTA (or a poll read) for ``ir``: ISR set, request latch cleared (§4.4, §4.5)."""
        bit = 1 << ir
        if self.auto_eoi:
            if self.rotate_aeoi:
                self.lowest = ir
        else:
            self.isr |= bit
        if not self.level_mode():
            self.edge &= ~bit

    # --- EOI -----------------------------------------------------------------------------
    def _highest_in_service(self) -> int | None:
        """docs/reference/8259.md §3.2: in special mask mode a masked ISR bit is not cleared by
        a non-specific EOI."""
        candidates = self.isr & ~self.imr if self.special_mask else self.isr
        for ir in self.order():
            if candidates & (1 << ir):
                return ir
        return None

    # --- CPU writes ------------------------------------------------------------------------
    def write(self, a0: int, value: int) -> None:
        if a0 == 0:
            if value & 0x10:
                self._icw1(value)
            elif value & 0x08:
                self._ocw3(value)
            else:
                self._ocw2(value)
            return
        match self.step:
            case InitStep.READY:
                self.imr = value  # OCW1, docs/reference/8259.md §3.1
            case InitStep.ICW2:
                self.vector_base = value & 0xF8
                self.step = self._after_icw3() if self.single else InitStep.ICW3
            case InitStep.ICW3:
                if self.master:
                    self.cascade_map = value
                else:
                    self.slave_id = value & 7
                self.step = self._after_icw3()
            case InitStep.ICW4:
                self.x86 = bool(value & 0x01)
                self.auto_eoi = bool(value & 0x02)
                self.sfnm = bool(value & 0x10)
                self.step = InitStep.READY

    def _after_icw3(self) -> InitStep:
        return InitStep.ICW4 if self.need_icw4 else InitStep.READY

    def _icw1(self, value: int) -> None:
        """docs/reference/8259.md §2.1, §2.5: what starting the sequence resets."""
        self.step = InitStep.ICW2
        self.need_icw4 = bool(value & 0x01)
        self.single = bool(value & 0x02)
        self.ltim = bool(value & 0x08)
        self.edge = 0  # the edge-sense circuit is reset: a held input needs a new edge
        self.imr = 0
        self.lowest = 7
        self.slave_id = 7
        self.special_mask = False
        self.read_isr = False
        self.poll = False
        if not self.need_icw4:
            self.x86 = self.auto_eoi = self.sfnm = False

    def _ocw2(self, value: int) -> None:
        """docs/reference/8259.md §3.2: R, SL, EOI in bits 7-5, the level in bits 2-0."""
        level = value & 7
        match value >> 5:
            case 0b001 | 0b101:  # non-specific EOI, rotate on non-specific EOI
                ir = self._highest_in_service()
                if ir is not None:
                    self.isr &= ~(1 << ir)
                    if value & 0x80:
                        self.lowest = ir
            case 0b011:  # specific EOI
                self.isr &= ~(1 << level)
            case 0b111:  # rotate on specific EOI
                self.isr &= ~(1 << level)
                self.lowest = level
            case 0b110:  # set priority: ``level`` becomes the lowest
                self.lowest = level
            case 0b100:
                self.rotate_aeoi = True
            case 0b000:
                self.rotate_aeoi = False
            # 0b010: no operation

    def _ocw3(self, value: int) -> None:
        """docs/reference/8259.md §3.3: ESMM/SMM, P, RR/RIS."""
        if value & 0x40:
            self.special_mask = bool(value & 0x20)
        if value & 0x04:
            self.poll = True
        if value & 0x02:
            self.read_isr = bool(value & 0x01)

    # --- CPU reads -------------------------------------------------------------------------
    def read(self, a0: int) -> int:
        if self.poll:  # docs/reference/8259.md §3.3: the read is the acknowledge, at either address
            self.poll = False
            ir = self.pending()
            if ir is None:
                return 0x00
            self.acknowledge_level(ir)
            return 0x80 | ir
        if a0:
            return self.imr
        return self.isr if self.read_isr else self.irr

    def reset(self) -> None:
        """Power-on state (docs/reference/8259.md §5): the input levels stay as driven."""
        lines = self.lines
        fresh = type(self)(master=self.master)
        self.__dict__.update(fresh.__dict__)
        self.lines = lines


class QemuI8259(I8259):
    """QEMU 7.2's ``hw/intc/i8259.c`` where it differs from the chip (docs/reference/8259.md §7)."""

    def level_mode(self) -> bool:
        return False  # ICW1 LTIM is logged as unimplemented and ignored (no ELCR modelled)

    def _line_dropped(self, bit: int) -> None:
        """The IRR bit stays set until INTA after the device lowers its line (measured)."""

    @property
    def irr(self) -> int:
        return self.edge

    def pending(self) -> int | None:
        """Under SFNM the master leaves IR2 out of the in-service mask entirely, so IR3-7 are
        not held off by a slave in service either."""
        request = self.irr & ~self.imr
        if not request:
            return None
        blocking = self.isr & ~self.imr if self.special_mask else self.isr
        if self.sfnm and self.master:
            blocking &= ~(1 << CASCADE_IR)
        for ir in self.order():
            bit = 1 << ir
            if blocking & bit:
                return None
            if request & bit:
                return ir
        return None

    def _highest_in_service(self) -> int | None:
        for ir in self.order():  # the special-mask rule of the non-specific EOI is not modelled
            if self.isr & (1 << ir):
                return ir
        return None

    def _icw1(self, value: int) -> None:
        """``pic_init_reset``: ICW1 also clears ISR, the vector base and rotate-in-AEOI."""
        super()._icw1(value)
        self.isr = 0
        self.vector_base = 0
        self.rotate_aeoi = False
        self.x86 = self.auto_eoi = self.sfnm = False  # whatever IC4 says; ICW4 sets them again


class PicPair:
    """The AT's master and slave 8259A (docs/reference/8259.md §1). ISA IRQ ``n`` (0-15) is
    the master's IR ``n`` or the slave's IR ``n - 8``; the machine maps ISA IRQ 2 to 9."""

    chip: ClassVar[type[I8259]] = I8259

    def __init__(self) -> None:
        self.master = self.chip(master=True)
        self.slave = self.chip(master=False)

    def set_irq(self, n: int, level: bool) -> None:
        if n < 8:
            self.master.set_line(n, level)
        else:
            self.slave.set_line(n - 8, level)
        self._cascade()

    def _cascade(self) -> None:
        self.master.set_line(CASCADE_IR, self.slave.int_output)

    @property
    def int_output(self) -> bool:
        """The master's INT pin: what would interrupt a CPU with interrupts enabled."""
        return self.master.int_output

    def _chip(self, port: int) -> I8259:
        return self.master if port in MASTER_PORTS else self.slave

    def read(self, port: int) -> int:
        value = self._chip(port).read(port & 1)
        self._cascade()
        return value

    def write(self, port: int, value: int) -> None:
        self._chip(port).write(port & 1, value)
        self._cascade()

    def _slave_answers(self, ir: int) -> bool:
        """docs/reference/8259.md §4.4: the master puts the cascade code on CAS0-2 only for an
        input its ICW3 names, and the slave whose ID matches drives the vector."""
        m = self.master
        return not m.single and bool(m.cascade_map & (1 << ir))

    def _slave_matches(self, ir: int) -> bool:
        s = self.slave
        return not s.single and s.slave_id == ir

    def acknowledge(self) -> int:
        """The INTA cycle: the vector the CPU reads (docs/reference/8259.md §4.4, §4.6).

        With no request left (it went away before INTA, or INT was never up) the master answers
        as if IR7 had requested, without setting ISR7; the same on the slave gives its IR7
        vector while the master's IR2 is acknowledged normally."""
        m, s = self.master, self.slave
        ir = m.pending()
        if ir is None:
            return m.vector_base | 7
        m.acknowledge_level(ir)
        if not self._slave_answers(ir):
            self._cascade()
            return m.vector_base | ir
        if not self._slave_matches(ir):
            self._cascade()
            return FLOAT  # no slave answers this cascade code: nobody drives the data bus
        sir = s.pending()
        if sir is None:
            vector = s.vector_base | 7
        else:
            s.acknowledge_level(sir)
            vector = s.vector_base | sir
        self._cascade()
        return vector

    def reset(self) -> None:
        self.master.reset()
        self.slave.reset()
        self._cascade()

    def snapshot(self) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        """(IRR, ISR, IMR) of master and slave, for dumps and tests (no side effects)."""
        return (self.master.irr, self.master.isr, self.master.imr), (self.slave.irr, self.slave.isr, self.slave.imr)


class QemuPicPair(PicPair):
    """QEMU 7.2's pair: ICW3 is ignored, an INTA for IR2 always goes to the slave (§7)."""

    chip = QemuI8259

    def _slave_answers(self, ir: int) -> bool:
        return ir == CASCADE_IR

    def _slave_matches(self, ir: int) -> bool:
        return True
