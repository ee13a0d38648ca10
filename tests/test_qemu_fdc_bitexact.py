"""Bit-exact check of the simulator's floppy controller (``qemu`` profile) against QEMU 7.2's.

Random FDC programs (hil/qemu/fdcprog.py: READ / WRITE / VERIFY of random C/H/R/N/EOT/MT on a
randomly programmed channel 2, with masks before, during and after the command, and the other
commands around them) run on ``qemu:?floppy=generate`` and ``sim:?profile=qemu&floppy=generate``
in one QEMU: every register read and result byte, the IRQ 6 line after every segment (rising
edges since the program began and level: the edge order), the DMA registers, the memory window
the transfer can reach and the whole disk image must be identical. A difference is a bug in the
profile (hil/sim/fdc.py, hil/sim/machine.py): fix the model, never the comparison.

Knobs (environment): ``HIL_FDC_PROGRAMS`` (default 600; CI runs at least 500), ``HIL_FDC_SEED``
(default 82077).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from hil.backends import open_backend
from hil.backends.base import Backend
from hil.backends.qemu import qemu_available
from hil.ops import In, MemRead, Out
from hil.qemu.fdcprog import FdcProgram, command, random_fdc_programs, reset_segments, results
from hil.testing import require

PROGRAMS = int(os.environ.get("HIL_FDC_PROGRAMS", "600"))
SEED = int(os.environ.get("HIL_FDC_SEED", "82077"), 0)
SIM = "sim:?profile=qemu&floppy=generate"
QEMU = "qemu:?floppy=generate"


def need_qemu() -> None:
    ok, why = qemu_available()
    require(ok, "qemu-system-x86_64 (QEMU 7.2 or later)", why)


def irq6(be: Backend) -> tuple[int, bool]:
    """(rising edges, level) of IRQ 6: the backend's irq API where it has one, else (the sim
    backend, until it grows be.irq_*) the machine's."""
    if hasattr(be, "irq_count"):
        return be.irq_count(6), be.irq_level(6)
    machine = be.machine  # type: ignore[attr-defined]  # the sim backend's model
    return machine.irq_count(6), machine.irq_level(6)


def disk_digest(be: Backend) -> str:
    """The whole image drive A holds: the QEMU image file, the model's disk."""
    path = getattr(be, "floppy_path", None)
    if path is not None:
        data = Path(path).read_bytes()
    else:
        data = bytes(be.fdc.drives[0].disk.data)  # type: ignore[attr-defined]  # the sim backend's FDC
    return hashlib.sha256(data).hexdigest()


async def run(be: Backend, program: FdcProgram) -> list[object]:
    """Every result of every segment, then the IRQ 6 state after it (edges counted from the
    program's start), then the disk digest."""
    start = irq6(be)[0]
    out: list[object] = []
    for seg in program.full():
        out.append(await be.execute(seg))
        count, level = irq6(be)
        out.append(("irq6", count - start, level))
    out.append(await asyncio.to_thread(disk_digest, be))
    return out


def describe(program: FdcProgram, got: list[object], want: list[object]) -> str:
    segments = program.full()
    for i, (a, b) in enumerate(zip(got, want)):
        if a != b:
            seg = segments[i // 2] if i // 2 < len(segments) else "disk image"
            return (f"program {program.index} (seed {program.seed}), item {i}: QEMU {a!r}\n  model {b!r}\n"
                    f"  segment: {seg}\n  program: {program.notation()}\n"
                    f"  replay: HIL_FDC_SEED={program.seed} python -c \"from hil.qemu.fdcprog import "
                    f"random_fdc_program; print(random_fdc_program({program.seed}, {program.index}).notation())\"")
    return "lengths differ"


async def check(programs: list[FdcProgram]) -> int:
    async with open_backend(QEMU) as qemu, open_backend(SIM) as sim:
        for program in programs:
            got = await run(qemu, program)
            want = await run(sim, program)
            if got != want:
                pytest.fail(f"the qemu profile's FDC differs from QEMU:\n{describe(program, got, want)}", pytrace=False)
    return len(programs)


async def test_random_fdc_programs_are_bit_exact():
    need_qemu()
    assert PROGRAMS >= 1
    assert await check(random_fdc_programs(SEED, PROGRAMS)) == PROGRAMS


def test_generator_is_reproducible_and_covers_the_commands():
    a, b = random_fdc_programs(3, 200), random_fdc_programs(3, 200)
    assert a == b and random_fdc_programs(4, 1) != a[:1]
    writes = [op.value for p in a for s in p.segments for op in s if isinstance(op, Out) and op.port == 0x3F5]
    for opcode in (0x46, 0x66, 0xC6, 0xE6, 0x45, 0xC5, 0x56, 0xD6, 0x0F, 0x07, 0x08, 0x04, 0x10, 0x0E, 0x13, 0x03, 0x4D):
        assert opcode in writes, hex(opcode)
    modes = {op.value for p in a for s in p.segments for op in s if isinstance(op, Out) and op.port == 0x0B}
    assert {m & 0x0C for m in modes} == {0x00, 0x04, 0x08} and any(m & 0x20 for m in modes) and any(m & 0x10 for m in modes)
    assert all(isinstance(p.segments[-1][-1], MemRead) for p in a)


async def test_reset_segments_reach_the_same_fdc_state_on_both():
    """The per-program reset leaves both controllers in command phase, no interrupt, at cylinder 0."""
    need_qemu()
    probe = [command(0x0E) + results(10), [In(0x3F4), In(0x3F2), In(0x3F7)]]
    async with open_backend(QEMU) as qemu, open_backend(SIM) as sim:
        for be in (qemu, sim):
            await be.execute(command(0x0F, 0, 33) + command(0x08) + results(2))
        answers = []
        for be in (qemu, sim):
            for seg in reset_segments():
                await be.execute(seg)
            answers.append([await be.execute(seg) for seg in probe] + [irq6(be)[1]])
        assert answers[0] == answers[1]
        assert answers[0][1] == [0x80, 0x1C, 0x00] and answers[0][2] is False
        assert answers[0][0][2::2][:4] == [0, 0, 0, 0]  # DUMPREG: PCNs


def test_sim_writes_back_only_through_the_backend(tmp_path: Path):
    """floppy=PATH: the model's disk is in memory; the backend writes changed sectors back."""
    from hil.sim.fdc import generated_image

    image = tmp_path / "a.img"
    image.write_bytes(generated_image())

    async def go() -> None:
        async with open_backend(f"sim:?profile=qemu&floppy={image}") as be:
            await be.execute([Out(0x3F2, 0x1C), Out(0x0A, 0x06), Out(0x0C, 0), Out(0x0B, 0x4A), Out(0x04, 0),
                              Out(0x04, 0x40), Out(0x81, 2), Out(0x05, 0xFF), Out(0x05, 0x01), Out(0x0A, 0x02)])
            await be.fill_mem(0x24000, 512, 0xA5)
            await be.execute([Out(0x3F5, b) for b in (0x45, 0, 0, 0, 3, 2, 3, 0x1B, 0xFF)] + [In(0x3F5)] * 7)
    asyncio.run(go())
    assert image.read_bytes()[2 * 512:3 * 512] == b"\xa5" * 512
    assert image.read_bytes()[3 * 512:] == generated_image()[3 * 512:]
