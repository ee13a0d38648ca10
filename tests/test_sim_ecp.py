"""The simulator's ECP parallel port (hil/sim/ecp.py), checked against docs/reference/devices.md
§1 and against Linux ``drivers/parport/parport_pc.c``: its probe sequences (ECR present, FIFO depth
in test mode, the write/read thresholds, pword from cnfgA, the IRQ probe by filling the test FIFO,
programmable_dma_support) replayed port for port give what Linux would print, and its
fifo_write_block_dma sequence (docs/reference/linux-isa-dma.md §2(c)), run through the ISA DMA API
(hil.dma.IsaDma), moves a buffer with the residue and interrupt Linux expects.

The replay below is written from the driver's documented behaviour (docs/reference/devices.md §1.2-§1.5), one
method per driver function, with the same port accesses in the same order.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import pytest

from hil.backends import open_backend
from hil.backends.base import Capability
from hil.backends.sim import SimBackend
from hil.dma import IsaDma
from hil.errors import BackendOptionError, DeviceError
from hil.ops import In, Out
from hil.sim.ecp import DEPTH, MAX_BURST, EcpConfig, EcpPort, Mode
from hil.sim.machine import Machine

ECR_SPP, ECR_PS2, ECR_PPF, ECR_ECP, ECR_TST, ECR_CNF = 0, 1, 2, 3, 6, 7
INTRLINE = (0, 7, 9, 10, 11, 14, 15, 5)  # parport_pc.c's intrline table


def port(config: EcpConfig | None = None) -> tuple[Machine, EcpPort]:
    m = Machine()
    ecp = m.plug(EcpPort(config))
    assert isinstance(ecp, EcpPort)
    return m, ecp


@dataclass
class Probe:
    """What parport_pc.c learns and prints about the port."""

    ecr: bool = False
    fifo_depth: int = 0
    write_threshold: int = 0
    read_threshold: int = 0
    pword: int = 0
    level_irqs: bool = False
    cfga: int = 0
    cfgb: int = 0
    irq: int | None = None
    dma: int | None = None
    printed: tuple[str, ...] = ()


class LinuxParport:
    """parport_pc.c's register traffic against one port (CPU accesses on the machine: 1 us each)."""

    def __init__(self, m: Machine, base: int = 0x378) -> None:
        self.m, self.base = m, base
        self.data, self.status, self.control = base, base + 1, base + 2
        self.fifo, self.cfgb, self.econtrol = base + 0x400, base + 0x401, base + 0x402
        self.ctr = 0x0C
        self.log: list[str] = []

    def inb(self, p: int) -> int:
        return self.m.io_read(p)

    def outb(self, v: int, p: int) -> None:  # Linux's argument order
        self.m.io_write(p, v)

    def udelay(self, us: int) -> None:
        self.m.advance(us * 1000)

    def ecr_write(self, v: int) -> None:
        self.outb(v, self.econtrol)

    def frob_econtrol(self, mask: int, val: int) -> None:
        ectr = self.inb(self.econtrol)
        self.outb(((ectr & ~mask) ^ val) & 0xFF, self.econtrol)

    def frob_set_mode(self, mode: int) -> None:
        self.frob_econtrol(0xE0, mode << 5)

    def frob_control(self, mask: int, val: int) -> None:
        self.ctr = (self.ctr & ~mask) ^ val
        self.outb(self.ctr, self.control)

    def data_reverse(self) -> None:
        self.frob_control(0x20, 0x20)

    def data_forward(self) -> None:
        self.frob_control(0x20, 0x00)

    # --- parport_ECR_present ------------------------------------------------------------
    def ecr_present(self) -> bool:
        r = self.inb(self.control)
        if (self.inb(self.econtrol) & 0x3) == (r & 0x3):
            self.outb(r ^ 0x2, self.control)
            r = self.inb(self.control)
            if (self.inb(self.econtrol) & 0x2) == (r & 0x2):
                return False
        if (self.inb(self.econtrol) & 0x3) != 0x1:
            return False
        self.ecr_write(0x34)
        if self.inb(self.econtrol) != 0x35:
            return False
        self.outb(0xC, self.control)
        self.frob_set_mode(ECR_SPP)
        return True

    # --- parport_ECP_supported ----------------------------------------------------------
    def ecp_supported(self, probe: Probe) -> bool:
        b = f"0x{self.base:x}"
        self.ecr_write(ECR_SPP << 5)
        self.ecr_write(ECR_TST << 5)
        i = 0
        while i < 1024 and not self.inb(self.econtrol) & 0x02:
            self.outb(0xAA, self.fifo)
            i += 1
        if i == 1024:
            self.ecr_write(ECR_SPP << 5)
            return False
        probe.fifo_depth = i
        self.log.append(f"{b}: FIFO is {i} bytes")
        self.frob_econtrol(1 << 2, 1 << 2)
        self.frob_econtrol(1 << 2, 0)
        i = 1
        while i <= probe.fifo_depth:
            self.inb(self.fifo)
            self.udelay(50)
            if self.inb(self.econtrol) & (1 << 2):
                break
            i += 1
        if i <= probe.fifo_depth:
            self.log.append(f"{b}: writeIntrThreshold is {i}")
        else:
            i = 0
        probe.write_threshold = i
        self.frob_set_mode(ECR_PS2)
        self.data_reverse()
        self.frob_set_mode(ECR_TST)
        self.frob_econtrol(1 << 2, 1 << 2)
        self.frob_econtrol(1 << 2, 0)
        i = 1
        while i <= probe.fifo_depth:
            self.outb(0xAA, self.fifo)
            if self.inb(self.econtrol) & (1 << 2):
                break
            i += 1
        if i <= probe.fifo_depth:
            self.log.append(f"{b}: readIntrThreshold is {i}")
        else:
            i = 0
        probe.read_threshold = i
        self.ecr_write(ECR_SPP << 5)
        self.ecr_write(0xF4)
        config = self.inb(self.fifo)
        pword = (config >> 4) & 0x7
        match pword:
            case 0:
                pword = 2
                self.log.append(f"{b}: Unsupported pword size!")
            case 2:
                pword = 4
                self.log.append(f"{b}: Unsupported pword size!")
            case 1:
                pword = 1
            case _:
                self.log.append(f"{b}: Unknown implementation ID")
                pword = 1
        probe.pword, probe.cfga, probe.level_irqs = pword, config, bool(config & 0x80)
        self.log.append(f"{b}: PWord is {8 * pword} bits")
        self.log.append(f"{b}: Interrupts are ISA-{'Level' if config & 0x80 else 'Pulses'}")
        configb = self.inb(self.cfgb)
        probe.cfgb = configb
        self.log.append(f"{b}: ECP port cfgA=0x{config:02x} cfgB=0x{configb:02x}")
        irq = str(INTRLINE[(configb >> 3) & 7]) if (configb >> 3) & 7 else "<none or set by other means>"
        dma = str(configb & 7) if configb & 3 else "<none or set by other means>"
        self.log.append(f"{b}: ECP settings irq={irq} dma={dma}")
        self.frob_set_mode(ECR_SPP)
        return True

    # --- irq_probe_ECP (probe_irq_on/off: the one line that rose) --------------------------
    def irq_probe(self) -> int | None:
        before = [self.m.irq_count(n) for n in range(16)]
        self.ecr_write(ECR_SPP << 5)
        self.ecr_write((ECR_TST << 5) | 0x04)
        self.ecr_write(ECR_TST << 5)
        i = 0
        while i < 1024 and not self.inb(self.econtrol) & 0x02:
            self.outb(0xAA, self.fifo)
            i += 1
        rose = [n for n in range(16) if self.m.irq_count(n) != before[n] and n != 2]
        self.ecr_write(ECR_SPP << 5)
        return rose[0] if len(rose) == 1 else None

    # --- programmable_dma_support ------------------------------------------------------------
    def programmable_dma(self) -> int | None:
        oecr = self.inb(self.econtrol)
        self.frob_set_mode(ECR_CNF)
        dma = self.inb(self.cfgb) & 0x07
        self.ecr_write(oecr)
        return None if dma & 0x03 == 0 else dma

    def probe(self) -> Probe:
        self.outb(0x0C, self.control)  # parport_SPP_supported leaves CTR = 0x0c
        p = Probe(ecr=self.ecr_present())
        if p.ecr and self.ecp_supported(p):
            p.irq = self.irq_probe()
            p.dma = self.programmable_dma()
        p.printed = tuple(self.log)
        return p

    # --- change_mode ------------------------------------------------------------------------
    def change_mode(self, m: int, *, timeout_us: int = 20_000) -> int:
        oecr = self.inb(self.econtrol)
        mode = (oecr >> 5) & 7
        if mode == m:
            return 0
        if mode >= 2 and not self.ctr & 0x20 and mode in (ECR_PPF, ECR_ECP):
            waited = 0
            while not self.inb(self.econtrol) & 0x01:
                if waited >= timeout_us:
                    return -16  # -EBUSY: "FIFO is stuck"
                self.udelay(5 if waited < 200 else 10_000)
                waited += 5 if waited < 200 else 10_000
        if mode >= 2 and m >= 2:
            oecr = (oecr & ~(7 << 5)) | (ECR_PS2 << 5)
            self.ecr_write(oecr)
        oecr = (oecr & ~(7 << 5)) | (m << 5)
        self.ecr_write(oecr)
        return 0


# --- the Linux probe on the model (docs/reference/devices.md §1.2, §1.3, §1.5) ----------------


def test_linux_probe_finds_the_port_as_the_driver_would_print_it():
    m, _ = port()
    p = LinuxParport(m).probe()
    assert p.ecr
    assert (p.fifo_depth, p.write_threshold, p.read_threshold, p.pword) == (16, 8, 8, 1)
    assert (p.cfga, p.cfgb, p.irq, p.dma) == (0x10, 0x0B, 7, 3)
    assert p.printed == (
        "0x378: FIFO is 16 bytes",
        "0x378: writeIntrThreshold is 8",
        "0x378: readIntrThreshold is 8",
        "0x378: PWord is 8 bits",
        "0x378: Interrupts are ISA-Pulses",
        "0x378: ECP port cfgA=0x10 cfgB=0x0b",
        "0x378: ECP settings irq=7 dma=3",
    )
    assert m.io_read(0x77A) >> 5 == ECR_SPP  # the probe leaves mode 000


@pytest.mark.parametrize(("threshold", "level"), [(0, 16), (4, 12), (8, 8), (15, 1), (16, 1)])
def test_thresholds_are_16_minus_the_field(threshold: int, level: int):
    """docs/reference/devices.md §1.2: writeIntrThreshold = readIntrThreshold = 16 - threshold; 16 acts as 15."""
    m, _ = port(EcpConfig(threshold=threshold))
    p = LinuxParport(m).probe()
    assert (p.write_threshold, p.read_threshold) == (level, level)


@pytest.mark.parametrize(("base", "dma", "irq", "cfgb"), [(0x278, 1, 5, 0x39), (0x3BC, 3, 7, 0x0B), (0x378, 1, 7, 0x09)])
def test_cnfgb_names_the_irq_and_dma_linux_decodes(base: int, dma: int, irq: int, cfgb: int):
    m, _ = port(EcpConfig(base=base, dma=dma, irq=irq))
    p = LinuxParport(m, base).probe()
    assert (p.cfgb, p.irq, p.dma) == (cfgb, irq, dma)
    assert p.printed[-1] == f"0x{base:x}: ECP settings irq={irq} dma={dma}"


def test_no_ecr_without_the_port():
    """parport_ECR_present on a machine with nothing at 0x778: the floating 0xFF fails the test."""
    assert LinuxParport(Machine()).probe() == Probe(ecr=False)


def test_ecr_reset_value_and_read_only_bits():
    """docs/reference/devices.md §1.2: 0x15 at reset (86Box); full/empty are read-only."""
    m, _ecp = port()
    assert m.io_read(0x77A) == 0x15
    m.io_write(0x77A, 0x37)
    assert m.io_read(0x77A) == 0x35


# --- the FIFO, test mode and the interrupt rules ---------------------------------------------


def test_test_mode_full_write_is_lost_and_empty_read_repeats_the_last_byte():
    """docs/reference/devices.md §1.5: a write to a full tFIFO is lost, a read of an empty one repeats."""
    m, ecp = port()
    m.io_write(0x77A, 0xC4)  # test mode, serviceIntr set: no interrupts
    for i in range(DEPTH + 3):
        m.io_write(0x778, i)
    assert m.io_read(0x77A) & 0x03 == 0x02 and ecp.fifo.dropped == 3
    assert [m.io_read(0x778) for _ in range(DEPTH + 2)] == [*range(DEPTH), 15, 15]
    assert m.io_read(0x77A) & 0x03 == 0x01 and ecp.fifo.repeats == 2


def test_service_intr_cleared_with_the_condition_true_interrupts_at_once():
    m, _ecp = port()
    m.io_write(0x77A, 0xC4)
    before = m.irq_count(7)
    m.io_write(0x77A, 0xC0)  # 1 -> 0 with 16 free bytes (>= 8): at once
    assert m.io_read(0x77A) & 0x04 and m.irq_count(7) == before + 1 and m.irq_level(7)
    m.io_write(0x77A, 0xC4)  # an ECR write acknowledges: the line drops
    assert not m.irq_level(7)


def test_mode_000_and_001_reset_the_fifo_a_fifo_to_fifo_switch_keeps_it():
    """docs/reference/devices.md §1.2 (change_mode): entering 000/001 resets; Linux's stuck-FIFO count switches
    ECP -> test mode directly and relies on the bytes still being there."""
    m, ecp = port(EcpConfig(stall=True))
    m.io_write(0x77A, 0x34)  # PS2
    m.io_write(0x77A, 0x74)  # ECP, serviceIntr set
    for i in range(5):
        m.io_write(0x778, i)
    m.io_write(0x77A, 0xD4)  # straight to test mode
    assert ecp.fifo.count == 5
    m.io_write(0x77A, 0x34)
    assert ecp.fifo.count == 0 and m.io_read(0x77A) & 1


def test_fifo_stuck_linux_counts_the_bytes_left():
    """The stall knob: Busy held, the FIFO never drains, change_mode returns -EBUSY and Linux
    counts what is left by filling the test FIFO (docs/reference/devices.md §1.5 item 5)."""
    m, ecp = port(EcpConfig(stall=True))
    lx = LinuxParport(m)
    lx.probe()
    lx.change_mode(ECR_PS2)
    lx.data_forward()
    lx.change_mode(ECR_ECP)
    for b in b"hello":
        lx.outb(b, lx.fifo)
    assert m.io_read(0x379) & 0x80 == 0  # Busy high
    assert lx.change_mode(ECR_PS2) == -16
    lx.frob_set_mode(ECR_TST)
    written = 5 - 16
    while not lx.inb(lx.econtrol) & 0x2:
        lx.outb(0, lx.fifo)
        written += 1
    assert written == 0  # none of the five left the FIFO
    lx.frob_set_mode(ECR_PS2)
    assert ecp.fifo.empty and ecp.peripheral.received == b""


def test_nfault_and_nack_interrupts():
    m, ecp = port()
    m.io_write(0x77A, 0x04)  # nErrIntrEn = 0
    before = m.irq_count(7)
    ecp.fault(True)
    assert m.irq_count(7) == before + 1 and m.io_read(0x379) & 0x08 == 0
    ecp.fault(False)
    m.io_write(0x77A, 0x14)
    ecp.fault(True)
    assert m.irq_count(7) == before + 1  # masked by nErrIntrEn
    m.io_write(0x37A, 0x10)  # ackIntEn
    ecp.ack_pulse()
    assert m.irq_count(7) == before + 2


# --- DMA (docs/reference/devices.md §1.4, §1.5) ----------------------------------------------


def program(m: Machine, ch: int, mode: int, addr: int, count: int) -> None:
    """disable, clear FF, mode, address, page, count, enable (docs/reference/linux-isa-dma.md §1.3)."""
    page = {1: 0x83, 3: 0x82}[ch]
    for p, v in ((0x0A, 4 | ch), (0x0C, 0), (0x0B, mode | ch), (ch * 2, addr & 0xFF), (ch * 2, addr >> 8 & 0xFF),
                 (page, addr >> 16), (ch * 2 + 1, (count - 1) & 0xFF), (ch * 2 + 1, (count - 1) >> 8), (0x0A, ch)):
        m.io_write(p, v)


@pytest.mark.parametrize("test_dma", [True, False])
def test_test_mode_dma_fill_then_cpu_readback(test_dma: bool):
    """memory -> tFIFO by DMA (forward), back by CPU; with ecp_test_dma=0 (86Box) nothing moves."""
    m, ecp = port(EcpConfig(test_dma=test_dma))
    data = bytes(range(0x40, 0x50))
    m.mem_write(0x20000, data)
    m.io_write(0x77A, 0xC4)  # test mode, serviceIntr set
    program(m, 3, 0x48, 0x20000, 16)
    before = m.irq_count(7)
    m.io_write(0x77A, 0xCC)  # dmaEn
    m.io_write(0x77A, 0xC8)  # serviceIntr = 0: PDRQ
    m.advance(100_000)
    if not test_dma:
        assert ecp.fifo.empty and m.channel(3).cur_count == 15 and not m.channel(3).tc
        return
    assert m.channel(3).tc and m.io_read(0x77A) == 0xCE  # serviceIntr set by TC, full
    assert m.irq_count(7) == before + 1 and ecp.tc_seen == 1
    assert bytes(m.io_read(0x778) for _ in range(16)) == data


def test_test_mode_dma_reverse_cpu_fill_then_dma_to_memory():
    m, _ecp = port()
    m.io_write(0x77A, 0x34)
    m.io_write(0x37A, 0x2C)  # reverse (PS/2 mode)
    m.io_write(0x77A, 0xD4)  # test mode, serviceIntr set
    for b in range(0xA0, 0xB0):
        m.io_write(0x778, b)
    program(m, 3, 0x44, 0x30000, 16)
    m.io_write(0x77A, 0xDC)
    m.io_write(0x77A, 0xD8)
    m.advance(100_000)
    assert m.mem_read(0x30000, 16) == bytes(range(0xA0, 0xB0))
    assert m.channel(3).tc and m.io_read(0x77A) & 0x05 == 0x05


def test_pdrq_stays_up_for_at_most_32_consecutive_cycles():
    """Single mode with a peripheral faster than the DMA, so the FIFO never fills: PDRQ drops
    after 32 consecutive cycles and comes back 350 ns later (docs/reference/devices.md §1.4)."""
    m, ecp = port(EcpConfig(rate=10_000_000))
    m.io_write(0x77A, 0x34)
    m.io_write(0x77A, 0x74)  # ECP forward, serviceIntr set
    m.mem_write(0x20000, bytes(range(256)) * 4)
    program(m, 3, 0x48, 0x20000, 1024)  # single, memory -> I/O
    bursts: list[int] = []
    orig = ecp._cycle

    def cycle() -> None:
        bursts.append(ecp.burst + 1)
        orig()

    ecp._cycle = cycle  # type: ignore[method-assign]  # observe each DMA cycle
    m.io_write(0x77A, 0x7C)
    m.io_write(0x77A, 0x78)
    m.advance(5_000_000)
    assert m.channel(3).tc and bytes(ecp.peripheral.received) == bytes(range(256)) * 4
    assert max(bursts) == MAX_BURST and bursts.count(MAX_BURST) == 1024 // MAX_BURST


async def fifo_write_block_dma(be: SimBackend, dma: IsaDma, base: int, ch: int, addr: int, length: int) -> int:
    """parport_pc_fifo_write_block_dma with the ISA DMA API; returns bytes written."""
    ecr = base + 0x402

    async def frob(mask: int, val: int) -> None:
        v = await be.inb(ecr)
        await be.outb(ecr, ((v & ~mask) ^ val) & 0xFF)

    left = length
    maxlen = 0x10000 if not (addr ^ (addr + length - 1)) & ~0xFFFF else 0x10000 - (addr & 0xFFFF)
    await frob((1 << 4) | (1 << 2), (1 << 4) | (1 << 2))
    while left:
        count = min(left, maxlen)
        async with dma.claim_dma_lock():
            await dma.disable_dma(ch)
            await dma.clear_dma_ff(ch)
            await dma.set_dma_mode(ch, 0x48)
            await dma.set_dma_addr(ch, addr)
            await dma.set_dma_count(ch, count)
            await frob(1 << 3, 1 << 3)
            await frob(1 << 2, 0)
            await dma.enable_dma(ch)
        left -= count
        addr += count
        assert await be.wait_irq(be.ecp.config.irq, True, timeout=1.0)  # type: ignore[union-attr]  # plugged
        assert await be.inb(ecr) & (1 << 2)
        async with dma.claim_dma_lock():
            await dma.disable_dma(ch)
            await dma.clear_dma_ff(ch)
            residue = await dma.get_dma_residue(ch)
        addr -= residue
        left += residue
        maxlen = 0x10000
    async with dma.claim_dma_lock():
        await dma.disable_dma(ch)
        await dma.clear_dma_ff(ch)
        left += await dma.get_dma_residue(ch)
    await frob(1 << 3, 0)
    return length - left


@pytest.mark.parametrize("url", ["sim:?ecp=1", "sim:?ecp=0x278&ecp_dma=1&ecp_irq=5"])
def test_linux_fifo_write_block_dma_moves_the_buffer(url: str):
    async def go() -> None:
        async with open_backend(url) as be:
            assert isinstance(be, SimBackend) and be.ecp is not None
            cfg = be.ecp.config
            data = bytes((i * 7 + 3) & 0xFF for i in range(3000))
            addr = 0x2FA00  # crosses 64 KiB at 0x30000: two chunks (1536 + 1464), as the driver caps them
            await be.write_mem(addr, data)
            hi = cfg.base + 0x400
            await be.outb(cfg.base + 2, 0x0C)
            await be.outb(hi + 2, 0x34)  # PS2
            await be.outb(hi + 2, 0x74)  # ECP (change_mode goes through 001)
            dma = IsaDma(be)
            await dma.request_dma(cfg.dma, "parport0")
            before = be.irq_count(cfg.irq)
            written = await fifo_write_block_dma(be, dma, cfg.base, cfg.dma, addr, len(data))
            assert written == len(data)
            assert be.irq_count(cfg.irq) - before == 2  # one interrupt per chunk, at TC
            await be.settle()  # the FIFO drains to the peripheral
            assert bytes(be.ecp.peripheral.received) == data
            assert (await be.inb(hi + 2)) & 0x09 == 0x01  # dmaEn off, FIFO empty
            assert be.ecp.tc_seen == 2

    asyncio.run(go())


def test_reverse_ecp_mode_source_and_starve():
    m, ecp = port(EcpConfig(starve=20, rate=1_000_000))
    m.io_write(0x77A, 0x34)
    m.io_write(0x37A, 0x2C)  # reverse
    m.io_write(0x77A, 0x74)  # ECP reverse, serviceIntr set
    program(m, 3, 0x44, 0x40000, 32)  # I/O -> memory
    m.io_write(0x77A, 0x7C)
    m.io_write(0x77A, 0x78)
    m.run_until_idle()
    assert ecp.peripheral.sent == 20 and m.mem_read(0x40000, 20) == bytes(range(20))
    assert m.channel(3).cur_count == 11 and not m.channel(3).tc  # the source ran dry: no TC


# --- the backend's options and capability ----------------------------------------------------


def test_sim_options_and_capability():
    be = open_backend("sim:?ecp=1")
    assert isinstance(be, SimBackend) and be.ecp is not None
    assert Capability.ECP in be.capabilities
    assert be.capabilities.details["ecp"] == {"base": 0x378, "dma": 3, "irq": 7, "test_dma": True, "threshold": 8}
    assert Capability.ECP not in open_backend("sim").capabilities
    be2 = open_backend("sim:?ecp=0x278&ecp_dma=1&ecp_irq=5&ecp_test_dma=0&ecp_stall=1&ecp_starve=4&ecp_rate=1000")
    assert isinstance(be2, SimBackend) and be2.ecp is not None
    assert be2.ecp.config == EcpConfig(base=0x278, dma=1, irq=5, test_dma=False, stall=True, starve=4, rate=1000)
    assert be2.machine.decodes(0x27F) and be2.machine.decodes(0x67A) and not be2.machine.decodes(0x67B)


@pytest.mark.parametrize(("url", "match"), [
    ("sim:?ecp=0x300", "base 0x300"),
    ("sim:?ecp=1&ecp_dma=2", "ecp_dma='2': expected 1 or 3"),
    ("sim:?ecp=1&ecp_irq=9", "ecp_irq='9': expected 5 or 7"),
    ("sim:?ecp_dma=1", "needs ecp=1"),
    ("sim:?ecp=1&ecp_test_dma=maybe", "expected 0 or 1"),
    ("sim:?ecp=1&ecp_dma=1&sb16=1", "DMA channel 1 already"),
    ("sim:?ecp=1&ecp_threshold=17", "threshold 17"),
])
def test_bad_options_are_one_line_errors(url: str, match: str):
    with pytest.raises(BackendOptionError, match=match):
        open_backend(url)


def test_config_refuses_what_no_super_io_offers():
    with pytest.raises(DeviceError, match="channel 1 or 3"):
        EcpConfig(dma=0)


def test_program_through_the_backend_ops():
    async def go() -> list[int]:
        async with open_backend("sim:?ecp=1") as be:
            return list(await be.execute([Out(0x77A, 0xF4), In(0x778), In(0x779), Out(0x77A, 0x14), In(0x77A)]))

    assert asyncio.run(go()) == [0x10, 0x0B, 0x15]


# --- the measurement of the closing note ---------------------------------------------------------


def test_64k_test_mode_loopback_throughput():
    """64 KiB through the tFIFO: DMA fills it from memory, the CPU drains it 16 bytes at a time,
    the bytes come back in order (docs/reference/devices.md §1.5: the tFIFO moves data at the maximum ISA rate)."""
    m, ecp = port()
    data = bytes((i * 31 + 7) & 0xFF for i in range(0x10000))
    m.mem_write(0x20000, data)
    m.io_write(0x77A, 0xC4)
    program(m, 3, 0x48, 0x20000, 0x10000)
    t0, wall0 = m.now_ns, time.perf_counter()
    m.io_write(0x77A, 0xCC)
    m.io_write(0x77A, 0xC8)
    out = bytearray()
    while len(out) < len(data):
        assert not m.io_read(0x77A) & 0x01, "the DMA keeps the tFIFO filled"
        out += bytes(m.io_read(0x778) for _ in range(16))
    virtual_ms, wall_s = (m.now_ns - t0) / 1e6, time.perf_counter() - wall0
    assert out == data and m.channel(3).tc and ecp.tc_seen == 1
    assert m.io_read(0x77A) & 0x04
    print(f"64 KiB test-mode loopback: {virtual_ms:.1f} ms virtual, {wall_s:.2f} s wall")
    assert virtual_ms < 200


def test_mode_enum_covers_every_ecr_mode():
    assert [mo.value for mo in Mode] == list(range(8))
