"""Random floppy-controller programs, for checking the simulator's FDC model against QEMU's.

A program resets the FDC and both DMA controllers to a known state (:func:`reset_segments`),
programs channel 2 at random (single / block / demand / cascade select, write / read / verify
transfer type, autoinit, decrement, addresses and pages, counts around sector sizes), fills the
memory window the transfer can reach, then runs one or more FDC commands: READ DATA, WRITE DATA
and VERIFY with random C/H/R/N/EOT/MT/DTL, mixed with SEEK, RECALIBRATE, SENSE INTERRUPT STATUS
(valid and invalid), SENSE DRIVE STATUS, SPECIFY, CONFIGURE, DUMPREG, VERSION, LOCK, FORMAT TRACK,
invalid opcodes and register reads (MSR, DOR, DIR, SRB, TDR). The channel is unmasked before
the command, or only after it with MSR and DMA status reads in between (masked mid-transfer),
and sometimes masked again. Every result byte and register read is compared, and so are the
DMA registers afterwards (:data:`hil.qemu.randprog.STATE_READS`) and the memory window.

A program is a list of *segments*: the ops of one segment go to a backend in one program, and
the IRQ 6 line (rising-edge count since the program began, level) is compared after each, so
the interrupt's edges are compared in order against the port accesses that cause them.

Left out, because the model of them cannot be compared: READ ID (its 20 ms timer runs on QEMU's
virtual clock, which a halted guest under qtest does not advance in step with the simulator),
drive 1 (QEMU invents an empty drive when it is first selected), TDR's boot select and PIO mode
(refused by the model), DMA request-register writes on channel 2, and pages whose window would
reach QEMU's VGA or BIOS areas (0xA0000-0xFFFFF).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from hil.ops import In, MemFill, MemRead, Op, Out
from hil.qemu.randprog import RESET_OPS, STATE_READS, format_ops
from hil.records import dataclass

FDC_DOR, FDC_MSR, FDC_FIFO, FDC_DIR = 0x3F2, 0x3F4, 0x3F5, 0x3F7
#: bytes QEMU 7.2's command table maps to no command (its "unknown" entry): all give ST0 0x80
INVALID_OPCODES = (0x00, 0x01, 0x0B, 0x1B, 0x20, 0x3E, 0x40, 0x60, 0x77, 0x90, 0xA1, 0xFF)
PAGES = (*range(1, 9), *range(0x11, 0x7F))


def command(*values: int) -> list[Op]:
    """An FDC command: MSR polled before every byte, as a driver does (docs/reference/qemu-qtest.md §6)."""
    return [op for v in values for op in (In(FDC_MSR), Out(FDC_FIFO, v))]


def results(n: int) -> list[Op]:
    return [op for _ in range(n) for op in (In(FDC_MSR), In(FDC_FIFO))]


def reset_segments() -> list[list[Op]]:
    """The FDC and DMA reset every program starts from: a DOR reset (an interrupt, then the four
    SENSE INTERRUPT STATUS of docs/reference/devices.md §2.2), data rate 500 kb/s, CONFIGURE and
    SPECIFY back to defaults, FORMAT TRACK with 18 sectors (QEMU's FORMAT sets the drive's
    sectors per track), motor on; then hil.qemu.randprog's DMA reset."""
    segs: list[list[Op]] = [[Out(FDC_DOR, 0x08)], [Out(FDC_DOR, 0x0C)]]
    for _ in range(4):
        segs.append(command(0x08) + results(2))
    segs.append([Out(FDC_MSR, 0x00), Out(FDC_DIR, 0x00)])
    segs.append(command(0x13, 0x00, 0x60, 0x00) + command(0x03, 0xAF, 0x02))
    segs.append(command(0x4D, 0x00, 0x02, 18, 0x1B, 0xF6) + results(7))
    segs.append([Out(FDC_DOR, 0x1C), *RESET_OPS])
    return segs


@dataclass(frozen=True)
class FdcProgram:
    seed: int
    index: int
    segments: tuple[tuple[Op, ...], ...]

    def full(self) -> list[list[Op]]:
        return [*reset_segments(), *(list(s) for s in self.segments)]

    def notation(self) -> str:
        return " | ".join(format_ops(s) for s in self.segments)


def _pick(rng: random.Random, common: Sequence[int], rare: Sequence[int], p_rare: float = 0.12) -> int:
    return rng.choice(rare) if rng.random() < p_rare else rng.choice(common)


def _dma_setup(rng: random.Random) -> tuple[list[Op], tuple[int, int], bool]:
    """Channel 2 programmed at random (left masked); returns the ops, the memory window the
    transfer can touch, and whether the mode is verify."""
    select = rng.choice((0x00, 0x40, 0x40, 0x80, 0xC0))
    ttype = rng.choice((0x04, 0x04, 0x08, 0x08, 0x00))
    mode = select | ttype | rng.choice((0, 0x10)) | (0x20 if rng.random() < 0.25 else 0) | 2
    count = rng.choice((511, 511, 1023, 255, 100, 0, 600, 1535, 2047, 4095, 9215, rng.randrange(0x2400)))
    addr = rng.choice((rng.randrange(0x10000), 0xFF00, 0x0000, 0x3000, 0xFE00, 0x8000))
    page = rng.choice(PAGES)
    phys = page << 16 | addr
    size = count + 1
    if mode & 0x20:
        lo, hi = phys - size - 16, phys + 16
    else:
        lo, hi = phys - 16, phys + size + 16
    ops: list[Op] = [Out(0x0A, 0x06), Out(0x0C, 0), Out(0x0B, mode), Out(0x04, addr & 0xFF), Out(0x04, addr >> 8),
                     Out(0x81, page), Out(0x05, count & 0xFF), Out(0x05, count >> 8),
                     MemFill(lo, hi - lo, rng.choice((0xEE, 0x00, 0x5A)))]
    return ops, (lo, hi), ttype == 0


def _data_command(rng: random.Random, cylinder: int) -> list[int]:
    kind = rng.choice(("read", "read", "write", "verify"))
    mt = 0x80 if rng.random() < 0.4 else 0
    base = {"read": 0x46 | (0x20 if rng.random() < 0.5 else 0), "write": 0x45, "verify": 0x56}[kind]
    head = 1 if rng.random() < 0.3 else 0
    c = _pick(rng, (cylinder, cylinder, rng.randrange(80)), (79, 80, 81, 0xFF))
    h = _pick(rng, (head,), (head ^ 1, 2, 0xFF), 0.08)
    r = _pick(rng, tuple(range(1, 19)), (0, 19, 0xFF), 0.08)
    n = _pick(rng, (2,), (0, 1, 3, 7), 0.15)
    eot = _pick(rng, (r, r, min(18, r + rng.randrange(4)), 18), (max(0, r - 1), 19, 0xFF, 1), 0.15)
    dtl = _pick(rng, (0xFF,), (0x00, 0x80, 0x40, rng.randrange(256)), 0.2)
    return [base | mt, (head << 2) | (0x80 if kind == "verify" and rng.random() < 0.5 else 0), c, h, r, n, eot, 0x1B, dtl]


def _register_reads(rng: random.Random) -> list[Op]:
    return [In(rng.choice((FDC_MSR, FDC_MSR, 0x3F2, FDC_DIR, 0x3F1, 0x3F3, 0x08))) for _ in range(rng.randrange(1, 4))]


def _misc_command(rng: random.Random) -> list[list[Op]]:
    r = rng.random()
    if r < 0.2:
        cyl = rng.randrange(82)
        return [command(0x0F, rng.choice((0, 4)), cyl), _register_reads(rng), command(0x08) + results(2)]
    if r < 0.3:
        return [command(0x07, 0x00), command(0x08) + results(2)]
    if r < 0.4:  # with no interrupt pending: invalid, one byte
        return [command(0x08) + results(rng.choice((1, 2)))]
    if r < 0.5:
        return [command(0x04, rng.choice((0, 4))) + results(1)]
    if r < 0.58:
        return [command(0x10) + results(1)]
    if r < 0.66:
        return [command(0x0E) + results(10)]
    if r < 0.72:
        return [command(rng.choice((0x14, 0x94))) + results(1)]
    if r < 0.78:
        return [command(0x13, 0x00, rng.choice((0x60, 0x20, 0x40, 0x0A, rng.randrange(128))), rng.randrange(4))]
    if r < 0.84:
        return [command(0x03, rng.randrange(256), rng.randrange(128) << 1)]
    if r < 0.88:
        return [command(rng.choice(INVALID_OPCODES)) + results(rng.choice((1, 2)))]
    if r < 0.91:  # a data rate the disk was not recorded at (DSR or CCR), sometimes back again
        port = rng.choice((FDC_MSR, FDC_DIR))
        return [[Out(port, rng.randrange(4))], _register_reads(rng)]
    if r < 0.94:  # a reset pulse (DOR or DSR): an interrupt, then the four SENSE INTERRUPT STATUS
        pulse: list[Op] = [Out(FDC_DOR, 0x18), Out(FDC_DOR, 0x1C)] if rng.random() < 0.5 else [Out(FDC_MSR, 0x80)]
        return [pulse, *([command(0x08) + results(2)] * rng.choice((2, 4, 5)))]
    if r < 0.96:  # bytes in the wrong phase: a FIFO read with nothing to read, a command over a result
        return [[In(FDC_FIFO), In(FDC_MSR)], command(0x10) + command(0x10) + results(2)]
    return [command(0x4D, rng.choice((0, 4)), 0x02, 18, 0x1B, rng.randrange(256)) + results(7)]


def random_fdc_program(seed: int, index: int) -> FdcProgram:
    rng = random.Random(f"fdc:{seed}:{index}")
    segs: list[list[Op]] = []
    cylinder = 0
    if rng.random() < 0.5:
        cylinder = rng.randrange(80)
        segs += [command(0x0F, 0x00, cylinder), command(0x08) + results(2)]
    for _ in range(rng.randrange(0, 3)):
        segs += _misc_command(rng)
    dma, (lo, hi), _verify = _dma_setup(rng)
    segs.append(dma)
    early = rng.random() < 0.6
    if early:
        segs.append([Out(0x0A, 0x02)])
    cmd = _data_command(rng, cylinder)
    for i in range(0, len(cmd) - 1):
        segs.append(command(cmd[i]))
    segs.append(command(cmd[-1]))
    segs.append(_register_reads(rng))
    if not early:
        segs.append([In(FDC_MSR), In(0x08), Out(0x0C, 0), In(0x05), In(0x05)])
        segs.append([Out(0x0A, 0x02)])
    if rng.random() < 0.3:
        segs.append([Out(0x0A, 0x06)])
    segs.append(results(rng.choice((7, 7, 7, 8, 3))))
    segs.append(_register_reads(rng))
    for _ in range(rng.randrange(0, 2)):
        segs += _misc_command(rng)
    segs.append([*STATE_READS, MemRead(lo, hi - lo)])
    return FdcProgram(seed, index, tuple(tuple(s) for s in segs))


def random_fdc_programs(seed: int, count: int, start: int = 0) -> list[FdcProgram]:
    """``count`` programs, reproducible from ``seed`` (program *i* depends on seed and i only)."""
    return [random_fdc_program(seed, i) for i in range(start, start + count)]
