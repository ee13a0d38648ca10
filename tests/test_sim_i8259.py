"""The simulated 8259A pair against the data sheet (docs/reference/8259.md), through the machine's
ports and its ISA IRQ lines, on the AT model and where QEMU 7.2 differs (docs/reference/8259.md §7)."""

from __future__ import annotations

import pytest

from hil.errors import DeviceError
from hil.sim.i8259 import I8259, PicPair, QemuPicPair
from hil.sim.machine import Machine, machine_for

MASTER_BASE, SLAVE_BASE = 0x08, 0x70


def init_pair(m: Machine, *, icw1: int = 0x11, master_icw4: int = 0x01, master_icw3: int = 0x04,
              slave_icw3: int = 0x02) -> None:
    """docs/reference/8259.md §6: Linux's init_8259A sequence, with the masks left open."""
    for port, value in ((0x21, 0xFF), (0x20, icw1), (0x21, MASTER_BASE), (0x21, master_icw3),
                        (0x21, master_icw4), (0xA0, icw1), (0xA1, SLAVE_BASE), (0xA1, slave_icw3),
                        (0xA1, 0x01), (0x21, 0x00), (0xA1, 0x00)):
        m.io_write(port, value)


def isr(m: Machine, port: int = 0x20) -> int:
    m.io_write(port, 0x0B)
    value = m.io_read(port)
    m.io_write(port, 0x0A)
    return value


@pytest.fixture(params=["intel", "qemu"])
def m(request) -> Machine:
    return machine_for(request.param)


@pytest.fixture
def at() -> Machine:
    return machine_for("intel")


@pytest.fixture
def qemu() -> Machine:
    return machine_for("qemu")


# --- ports, power-on, initialization ---------------------------------------------------------


def test_power_on_state_reads_zero_on_all_four_ports(m):
    """docs/reference/8259.md §5: IRR, IMR 0 (measured on QEMU 7.2); ISR 0."""
    assert [m.io_read(p) for p in (0x20, 0x21, 0xA0, 0xA1)] == [0, 0, 0, 0]
    assert isr(m) == 0 and isr(m, 0xA0) == 0
    assert not m.pic.int_output


def test_linux_probe_reads_the_mask_back(m):
    """docs/reference/8259.md §6 'probe_8259A': 0xFB written to 0x21 reads back (not the 0xFF float)."""
    m.io_write(0xA1, 0xFF)
    m.io_write(0x21, 0xFB)
    assert m.io_read(0x21) == 0xFB and m.io_read(0xA1) == 0xFF


def test_word_read_splits_even_then_odd(m):
    """docs/reference/8259.md §1: `inw 0x20` = IRR | IMR << 8 (measured 0xFB41 on QEMU 7.2)."""
    m.io_write(0x21, 0xFB)
    m.set_irq(6, True)
    assert m.io_read(0x20, 16) == 0xFB40


def test_icw_sequence_sets_the_vector_base_and_cascade(at):
    """docs/reference/8259.md §2.2, §2.3, §4.4: T7-T3 from ICW2, the IR number in bits 2-0."""
    init_pair(at, icw1=0x11)
    assert at.pic.master.vector_base == MASTER_BASE
    at.set_irq(3, True)
    assert at.pic.acknowledge() == MASTER_BASE | 3
    at.set_irq(11, True)
    assert at.pic.acknowledge() == SLAVE_BASE | 3


def test_icw2_low_bits_are_ignored(at):
    """docs/reference/8259.md §2.2: bits 2-0 of the vector are the IR number, not ICW2's."""
    for p, v in ((0x20, 0x13), (0x21, 0x0F), (0x21, 0x01)):  # single, ICW4
        at.io_write(p, v)
    at.set_irq(1, True)
    assert at.pic.acknowledge() == 0x09


def test_single_mode_skips_icw3_and_ic4_zero_skips_icw4(at):
    """docs/reference/8259.md §2.1, §2.2: SNGL = 1, IC4 = 0: ICW2 ends the sequence, so the next
    odd-port write is OCW1."""
    at.io_write(0x20, 0x12)
    at.io_write(0x21, 0x20)
    at.io_write(0x21, 0x5A)
    assert at.io_read(0x21) == 0x5A and at.pic.master.vector_base == 0x20


def test_icw1_clears_imr_and_icw4_functions(at):
    """docs/reference/8259.md §2.5: ICW1 clears the IMR; with IC4 = 0 AEOI is off again."""
    init_pair(at, master_icw4=0x03)
    at.io_write(0x21, 0xF0)
    assert at.pic.master.auto_eoi
    at.io_write(0x20, 0x10)  # ICW1 without IC4, cascaded
    assert at.io_read(0x21) == 0x00
    at.io_write(0x21, MASTER_BASE)
    at.io_write(0x21, 0x04)  # ICW3, then the sequence ends: no ICW4
    at.io_write(0x21, 0xAA)
    assert at.io_read(0x21) == 0xAA and not at.pic.master.auto_eoi


def test_icw1_resets_the_edge_sense_of_a_held_line(m):
    """docs/reference/8259.md §2.5, §4.1: a line already high before ICW1 must go low and high."""
    m.set_irq(5, True)
    init_pair(m)
    assert m.io_read(0x20) & 0x20 == 0
    m.set_irq(5, False)
    m.set_irq(5, True)
    assert m.io_read(0x20) & 0x20


def test_icw1_keeps_isr_on_the_chip_and_clears_it_on_qemu(at, qemu):
    """docs/reference/8259.md §2.5 (not in the data sheet's list) and §7 row 'ICW1 side effects'."""
    for mach in (at, qemu):
        init_pair(mach)
        mach.set_irq(4, True)
        mach.pic.acknowledge()
        assert isr(mach) == 0x10
        init_pair(mach)
    assert isr(at) == 0x10 and isr(qemu) == 0x00


# --- requests ------------------------------------------------------------------------------


def test_edge_request_latches_once_per_rising_edge(m):
    """docs/reference/8259.md §4.1: a held line requests once; it must go low before the next."""
    init_pair(m)
    m.set_irq(6, True)
    assert m.io_read(0x20) & 0x40 and m.pic.int_output
    assert m.pic.acknowledge() == MASTER_BASE | 6
    m.io_write(0x20, 0x20)  # EOI
    assert m.io_read(0x20) & 0x40 == 0 and not m.pic.int_output  # still high: no new request
    m.set_irq(6, False)
    m.set_irq(6, True)
    assert m.io_read(0x20) & 0x40


def test_request_gone_before_inta_gives_the_default_ir7(at):
    """docs/reference/8259.md §4.1, §4.6: the IRR follows the line; INTA then answers IR7
    without setting ISR bit 7."""
    init_pair(at)
    at.set_irq(6, True)
    at.set_irq(6, False)
    assert at.io_read(0x20) == 0x00
    assert at.pic.acknowledge() == MASTER_BASE | 7
    assert isr(at) == 0x00


def test_qemu_keeps_the_irr_bit_after_the_line_drops(qemu):
    """docs/reference/8259.md §7 row 'Edge request whose line drops before INTA' (measured)."""
    init_pair(qemu)
    qemu.set_irq(6, True)
    qemu.set_irq(6, False)
    assert qemu.io_read(0x20) == 0x40
    assert qemu.pic.acknowledge() == MASTER_BASE | 6


def test_level_mode_follows_the_line_and_repeats_after_eoi(at):
    """docs/reference/8259.md §4.2: LTIM = 1: the IRR is the line; still high at EOI = again."""
    init_pair(at, icw1=0x19)
    at.set_irq(3, True)
    assert at.pic.acknowledge() == MASTER_BASE | 3
    assert at.io_read(0x20) & 0x08  # not cleared by the acknowledge
    at.io_write(0x20, 0x20)
    assert at.pic.int_output  # the line is still high
    at.set_irq(3, False)
    assert at.io_read(0x20) & 0x08 == 0 and not at.pic.int_output


def test_qemu_ignores_ltim(qemu):
    """docs/reference/8259.md §7 row 'ICW1 LTIM': still edge-triggered."""
    init_pair(qemu, icw1=0x19)
    qemu.set_irq(3, True)
    qemu.pic.acknowledge()
    qemu.io_write(0x20, 0x20)
    assert not qemu.pic.int_output


def test_mask_holds_the_interrupt_not_the_request(m):
    """docs/reference/8259.md §3.1: the IRR latches a masked request; INT stays low until unmasked."""
    init_pair(m)
    m.io_write(0x21, 0x40)
    m.set_irq(6, True)
    assert m.io_read(0x20) == 0x40 and not m.pic.int_output
    m.io_write(0x21, 0x00)
    assert m.pic.int_output


def test_priority_and_nesting(m):
    """docs/reference/8259.md §4.3: IR0 highest; an in-service level holds off itself and lower
    levels, a higher one still interrupts."""
    init_pair(m)
    m.set_irq(5, True)
    m.set_irq(3, True)
    assert m.pic.acknowledge() == MASTER_BASE | 3
    assert not m.pic.int_output  # IR5 is below IR3 in service
    m.set_irq(1, True)
    assert m.pic.acknowledge() == MASTER_BASE | 1
    assert isr(m) == 0x0A
    m.io_write(0x20, 0x20)  # non-specific EOI: IR1, the highest in service
    assert isr(m) == 0x08
    m.io_write(0x20, 0x20)
    assert m.pic.acknowledge() == MASTER_BASE | 5


def test_specific_eoi_and_rotation(m):
    """docs/reference/8259.md §3.2: specific EOI clears level L; rotate makes a level lowest;
    set priority makes L lowest, L + 1 highest."""
    init_pair(m)
    for irq in (1, 4):
        m.set_irq(irq, True)
    m.io_write(0x20, 0xC3)  # set priority: IR3 lowest, IR4 highest
    assert m.pic.master.order() == [4, 5, 6, 7, 0, 1, 2, 3]
    assert m.pic.acknowledge() == MASTER_BASE | 4
    m.io_write(0x20, 0x64)  # specific EOI IR4
    assert isr(m) == 0
    assert m.pic.acknowledge() == MASTER_BASE | 1
    m.io_write(0x20, 0xA0)  # rotate on non-specific EOI: IR1 becomes lowest
    assert isr(m) == 0 and m.pic.master.order()[0] == 2
    m.io_write(0x20, 0xE6)  # rotate on specific EOI of IR6 (nothing in service): IR6 lowest
    assert m.pic.master.order()[-1] == 6


def test_auto_eoi_and_rotate_in_auto_eoi(m):
    """docs/reference/8259.md §4.5: AEOI leaves no ISR bit; rotate-in-AEOI makes the acknowledged
    level the lowest."""
    init_pair(m, master_icw4=0x03)
    m.io_write(0x20, 0x80)  # set rotate in AEOI
    m.set_irq(3, True)
    assert m.pic.acknowledge() == MASTER_BASE | 3
    assert isr(m) == 0 and m.pic.master.order()[-1] == 3
    m.io_write(0x20, 0x00)  # clear rotate in AEOI
    m.set_irq(5, True)
    m.pic.acknowledge()
    assert m.pic.master.order()[-1] == 3


# --- OCW3 -----------------------------------------------------------------------------------


def test_status_read_selection_is_remembered(m):
    """docs/reference/8259.md §3.3: RR/RIS select ISR or IRR until changed."""
    init_pair(m)
    m.set_irq(4, True)
    m.set_irq(6, True)
    m.pic.acknowledge()
    m.io_write(0x20, 0x0B)
    assert [m.io_read(0x20), m.io_read(0x20)] == [0x10, 0x10]
    m.io_write(0x20, 0x08)  # RR = 0: no change
    assert m.io_read(0x20) == 0x10
    m.io_write(0x20, 0x0A)
    assert m.io_read(0x20) == 0x40


def test_poll_acknowledges_on_the_next_read(m):
    """docs/reference/8259.md §3.3: poll word 0x80 | level, ISR set; nothing pending reads 0x00;
    the poll is one read only."""
    init_pair(m)
    m.set_irq(6, True)
    m.io_write(0x20, 0x0C)
    assert m.io_read(0x21) == 0x86  # either port
    assert isr(m) == 0x40 and m.io_read(0x20) == 0x00
    m.io_write(0x20, 0x0C)
    assert m.io_read(0x20) == 0x00
    assert m.io_read(0x21) == 0x00  # back to the IMR


def test_special_mask_lets_lower_levels_in(m):
    """docs/reference/8259.md §3.3: in special mask mode a masked in-service level no longer
    holds off lower levels."""
    init_pair(m)
    m.set_irq(3, True)
    m.pic.acknowledge()
    m.set_irq(5, True)
    assert not m.pic.int_output
    m.io_write(0x21, 0x08)  # mask IR3 (in service)
    m.io_write(0x20, 0x68)  # ESMM | SMM
    assert m.pic.acknowledge() == MASTER_BASE | 5
    m.io_write(0x20, 0x48)  # leave special mask mode
    assert not m.pic.master.special_mask


def test_non_specific_eoi_skips_a_masked_level_in_special_mask_mode(at, qemu):
    """docs/reference/8259.md §3.2 (the chip) and §7 row 'Non-specific EOI in special mask mode'."""
    for mach in (at, qemu):
        init_pair(mach)
        mach.set_irq(3, True)
        mach.pic.acknowledge()
        mach.io_write(0x21, 0x08)
        mach.io_write(0x20, 0x68)
        mach.set_irq(5, True)
        mach.pic.acknowledge()
        mach.io_write(0x20, 0x20)
    assert isr(at) == 0x08  # IR5 cleared, masked IR3 kept
    assert isr(qemu) == 0x20  # IR3 cleared, IR5 kept


# --- the cascade -----------------------------------------------------------------------------


def test_slave_interrupt_through_master_ir2(m):
    """docs/reference/8259.md §1, §4.4, §6 'mask_and_ack_8259A': IRQ 12 raises master IR2; the
    slave gives its vector; both ISR bits are set until the slave, then the master, get EOIs."""
    init_pair(m)
    m.set_irq(12, True)
    assert m.io_read(0x20) == 0x04 and m.io_read(0xA0) == 0x10
    assert m.pic.acknowledge() == SLAVE_BASE | 4
    assert isr(m) == 0x04 and isr(m, 0xA0) == 0x10
    m.io_write(0xA0, 0x64)
    m.io_write(0x20, 0x62)
    assert isr(m) == 0 and isr(m, 0xA0) == 0


def test_spurious_irq15(at):
    """docs/reference/8259.md §4.6: a slave request gone before INTA: the master acknowledges IR2
    normally, the slave answers IR7 without ISR bit 7."""
    init_pair(at)
    at.set_irq(12, True)
    slave = at.pic.slave
    slave.set_line(4, False)  # the request goes away between INT and INTA, the cascade still up
    assert at.pic.master.pending() == 2
    assert at.pic.acknowledge() == SLAVE_BASE | 7
    assert isr(at) == 0x04 and isr(at, 0xA0) == 0x00


def test_icw3_decides_who_gives_the_vector(at, qemu):
    """docs/reference/8259.md §4.4 and §7 row 'ICW3': no slave named on IR2 -> the master's own
    vector; QEMU ignores ICW3."""
    for mach in (at, qemu):
        init_pair(mach, master_icw3=0x00)
        mach.set_irq(12, True)
    assert at.pic.acknowledge() == MASTER_BASE | 2
    assert qemu.pic.acknowledge() == SLAVE_BASE | 4


def test_cascade_code_no_slave_answers_floats(at):
    """docs/reference/8259.md §4.4: the slave's ID is not the master's cascade code."""
    init_pair(at, slave_icw3=0x05)
    at.set_irq(12, True)
    assert at.pic.acknowledge() == 0xFF


def test_special_fully_nested_mode(at, qemu):
    """docs/reference/8259.md §4.7 and §7 row 'SFNM': a higher request in the slave in service gets
    through; the master's lower IR3 stays held off (QEMU lets it in)."""
    for mach in (at, qemu):
        init_pair(mach, master_icw4=0x11)
        mach.set_irq(12, True)
        assert mach.pic.acknowledge() == SLAVE_BASE | 4
        mach.set_irq(10, True)
        assert mach.pic.acknowledge() == SLAVE_BASE | 2
        mach.set_irq(3, True)
    assert not at.pic.int_output
    assert qemu.pic.acknowledge() == MASTER_BASE | 3


def test_without_sfnm_the_slave_is_locked_out(m):
    """docs/reference/8259.md §4.3: master IR2 in service holds off a second slave request."""
    init_pair(m)
    m.set_irq(12, True)
    m.pic.acknowledge()
    m.set_irq(10, True)
    assert not m.pic.int_output


# --- ISA IRQ lines -----------------------------------------------------------------------------


def test_isa_irq2_is_irq9(m):
    """docs/reference/8259.md §1: the slot's IRQ 2 is the slave's IR1; master IR2 stays the cascade."""
    init_pair(m)
    m.set_irq(2, True)
    assert m.irq_level(9) and m.irq_level(2) and m.irq_count(9) == 1
    assert m.io_read(0xA0) == 0x02
    assert m.pic.acknowledge() == SLAVE_BASE | 1


def test_irq_count_counts_rising_edges_of_the_wire(m):
    """docs/reference/8259.md §8: drivers are OR-ed; a second driver raising a high wire is no edge;
    reset clears the counts."""
    a, b = m.irq_line(6), m.irq_line(6)
    a.raise_()
    b.raise_()
    a.lower()
    assert m.irq_level(6) and m.irq_count(6) == 1
    b.lower()
    assert not m.irq_level(6)
    a.pulse()
    assert m.irq_count(6) == 2 and not m.irq_level(6)
    m.reset()
    assert m.irq_count(6) == 0


def test_irq_numbers_are_checked(m):
    with pytest.raises(DeviceError, match="0-15"):
        m.set_irq(16, True)
    with pytest.raises(DeviceError, match="0-15"):
        m.irq_level(-1)


def test_reset_restores_the_power_on_state(m):
    """docs/reference/8259.md §5: a machine reset clears what the ICWs and OCWs set."""
    init_pair(m)
    m.io_write(0x21, 0x5A)
    m.reset()
    assert [m.io_read(p) for p in (0x20, 0x21, 0xA0, 0xA1)] == [0, 0, 0, 0]
    assert m.pic.master.vector_base == 0


def test_profiles_use_their_pair():
    """docs/reference/8259.md §7: the qemu profile wires QEMU's variant."""
    assert type(machine_for("intel").pic) is PicPair
    assert type(machine_for("qemu").pic) is QemuPicPair
    assert isinstance(machine_for("qemu").pic.master, I8259)


@pytest.mark.parametrize("url", ["sim", "sim:?profile=qemu", "sim:?strict=1"])
async def test_backends_decode_the_pic_ports(url):
    """docs/reference/8259.md §5, §6 'probe_8259A': through the backend interface, the PIC answers
    (it was an undecoded 0xFF before; strict mode no longer refuses these four ports)."""
    from hil.backends import open_backend

    async with open_backend(url) as be:
        await be.outb(0x21, 0xFB)
        assert await be.inb(0x21) == 0xFB
        assert await be.inb(0xA0) == 0x00
