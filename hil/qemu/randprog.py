"""Random register programs over the DMA and page ports, for checking a model against QEMU.

A program is a list of byte-wide :class:`~hil.ops.Out` / :class:`~hil.ops.In`
operations on the ports the PC/AT DMA subsystem owns (both controllers with DMA2's odd aliases,
DMA1's undecoded 0x10-0x1F mirror block, the whole page file 0x80-0x8F); optionally some 16-bit
accesses too (``wide=``), which check how QEMU dispatches a word access to byte registers. No
device takes part, so the reads depend on register semantics only: the flip-flop, base/current
registers, masks, requests, status, master clear, mode direction bits, page latches.

Every program is run after :data:`RESET_OPS`, a sequence both sides agree brings them to the
same known state, followed by :data:`STATE_READS` (so the reset state is compared too). The
generator is weighted towards what is easy to get wrong: flip-flop order, lone low-byte writes,
reads between writes, masks and requests, decrement mode, master clear.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from hil.ops import In, Op, Out, port_access
from hil.ports import DMA1, DMA2, PAGE_FILE, PAGE_PORT, ControllerPorts, Reg
from hil.records import dataclass

#: channel register ports: DMA1 0x00-0x07, DMA2 0xC0-0xCF including the odd aliases
CHANNEL_PORTS = tuple(range(0x00, 0x08)) + tuple(range(0xC0, 0xD0))
#: control ports: DMA1 0x08-0x0F, DMA2 0xD0-0xDF including the odd aliases
CONTROL_PORTS = tuple(range(0x08, 0x10)) + tuple(range(0xD0, 0xE0))
MIRROR_PORTS = tuple(range(0x10, 0x20))  #: the AT's DMA1 mirror; QEMU does not decode it
PAGE_PORTS = tuple(PAGE_FILE)
ALL_PORTS = CHANNEL_PORTS + CONTROL_PORTS + MIRROR_PORTS + PAGE_PORTS


def _ctl(ctrl_ports: ControllerPorts, reg: Reg) -> int:
    return ctrl_ports.reg(reg)


def _channel_reads(ctrl: ControllerPorts) -> tuple[Op, ...]:
    """A FF clear, then each channel's address and count as low/high pairs."""
    return (
        Out(ctrl.clear_ff, 0),
        *(In(p) for local in range(4) for p in (ctrl.addr(local),) * 2 + (ctrl.count(local),) * 2),
    )


#: brings both controllers to one known state from any state reachable by port writes: master
#: clear (FF 0, mask 0xFF, status 0, command 0), every base register 0 written low/high (which
#: also restarts the channel), every mode 0 (plus the channel bits), every page 0, master clear.
RESET_OPS: tuple[Op, ...] = (
    Out(DMA1.master_clear, 0),
    Out(DMA2.master_clear, 0),
    *(Out(p, 0) for ctrl in (DMA1, DMA2) for local in range(4) for p in (ctrl.addr(local),) * 2
      + (ctrl.count(local),) * 2),
    *(Out(ctrl.mode, local) for ctrl in (DMA1, DMA2) for local in range(4)),
    *(Out(PAGE_PORT[ch], 0) for ch in range(8)),
    Out(DMA1.master_clear, 0),
    Out(DMA2.master_clear, 0),
)

#: every register a program can read, each address/count as a low/high pair after a FF clear,
#: then the control ports (status last: reading it clears the TC bits) and the page file
STATE_READS: tuple[Op, ...] = (
    *(op for ctrl in (DMA1, DMA2) for op in _channel_reads(ctrl)),
    *(In(p) for p in CONTROL_PORTS if p not in (DMA1.status, DMA2.status, DMA2.status + 1)),
    In(DMA1.status), In(DMA2.status),
    *(In(p) for p in MIRROR_PORTS),
    *(In(p) for p in PAGE_PORTS),
)


@dataclass(frozen=True)
class Program:
    seed: int
    index: int
    ops: tuple[Op, ...]

    def full(self) -> list[Op]:
        """Reset, reset-state reads, the random part, final state reads."""
        return [*RESET_OPS, *STATE_READS, *self.ops, *STATE_READS]

    def notation(self) -> str:
        """docs/reference/qemu-qtest.md notation: ``0a←06; in 09; ...``."""
        return format_ops(self.ops)


def format_ops(ops: Sequence[Op]) -> str:
    """The port accesses of ``ops`` (random programs hold nothing else) in that notation."""
    parts = []
    for op in ops:
        io = port_access(op)
        if io is None:
            continue
        wide = "w" if io.width == 16 else ""
        parts.append(f"{io.port:02x}←{wide}{io.value:0{4 if wide else 2}x}" if io.write else f"in{wide} {io.port:02x}")
    return "; ".join(parts)


def _value(rng: random.Random) -> int:
    r = rng.random()
    if r < 0.15:
        return 0
    if r < 0.25:
        return 0xFF
    return rng.randrange(256)


def random_op(rng: random.Random) -> Op:
    r = rng.random()
    if r < 0.22:  # address/count byte writes
        return Out(rng.choice(CHANNEL_PORTS), _value(rng))
    if r < 0.44:  # address/count byte reads
        return In(rng.choice(CHANNEL_PORTS))
    ctrl = rng.choice((DMA1, DMA2))
    if r < 0.50:
        return Out(_ctl(ctrl, Reg.CLEAR_FF), _value(rng))
    if r < 0.56:  # mode: half of them with the decrement bit
        mode = rng.randrange(256)
        return Out(_ctl(ctrl, Reg.MODE), mode | 0x20 if rng.random() < 0.5 else mode & ~0x20)
    if r < 0.61:
        return Out(_ctl(ctrl, Reg.SINGLE_MASK), rng.randrange(8) | (rng.randrange(32) << 3 if rng.random() < 0.2 else 0))
    if r < 0.63:
        return Out(_ctl(ctrl, Reg.CLEAR_MASK), _value(rng))
    if r < 0.66:
        return Out(_ctl(ctrl, Reg.ALL_MASK), _value(rng))
    if r < 0.70:
        return Out(_ctl(ctrl, Reg.REQUEST), rng.randrange(8) | (rng.randrange(32) << 3 if rng.random() < 0.2 else 0))
    if r < 0.72:
        return Out(_ctl(ctrl, Reg.STATUS_COMMAND), rng.choice((0x00, 0x04, _value(rng))))
    if r < 0.74:
        return Out(_ctl(ctrl, Reg.TEMP_MASTER_CLEAR), _value(rng))
    if r < 0.80:
        return In(_ctl(ctrl, Reg.STATUS_COMMAND))
    if r < 0.84:  # the mask readback port (QEMU: 0x09 / 0xD2, and its alias 0xD3)
        alias = 1 if ctrl is DMA2 and rng.random() < 0.3 else 0
        return In(_ctl(ctrl, Reg.REQUEST) + alias)
    if r < 0.87:
        return In(rng.choice(CONTROL_PORTS))
    if r < 0.89:
        return Out(rng.choice(CONTROL_PORTS), _value(rng))
    if r < 0.94:
        return Out(rng.choice(PAGE_PORTS), _value(rng))
    if r < 0.98:
        return In(rng.choice(PAGE_PORTS))
    port = rng.choice(MIRROR_PORTS)
    return In(port) if rng.random() < 0.5 else Out(port, _value(rng))


#: just below DMA2: nothing decodes it, but a word access there reaches 0xC0 (QEMU splits a word
#: access at an odd port). Needs ``allow=0xBF-0xC0`` on the qemu backend.
BELOW_DMA2 = 0xBF
#: ports for 16-bit accesses: both bytes inside the DMA subsystem (not 0x1F, whose word access
#: reaches the interrupt controller at 0x20, nor 0x8F / 0xDF), plus :data:`BELOW_DMA2`
WIDE_PORTS = (*(p for p in ALL_PORTS if p + 1 in ALL_PORTS), BELOW_DMA2)


def random_wide_op(rng: random.Random) -> Op:
    port = rng.choice(WIDE_PORTS)
    return In(port, 16) if rng.random() < 0.5 else Out(port, rng.randrange(0x10000), 16)


def random_programs(seed: int, count: int, *, min_len: int = 1, max_len: int = 48,
                    wide: float = 0.0) -> list[Program]:
    """``count`` programs, reproducible from ``seed`` (program *i* depends on seed and i only).
    A fraction ``wide`` of the operations are 16-bit accesses (QEMU's word dispatch: needs
    ``qemu:?wide=pass``)."""
    out = []
    for i in range(count):
        rng = random.Random(f"{seed}:{i}:{wide}")
        n = rng.randint(min_len, max_len)
        ops = tuple(random_wide_op(rng) if wide and rng.random() < wide else random_op(rng) for _ in range(n))
        out.append(Program(seed, i, ops))
    return out


def reads_of(ops: Sequence[Op]) -> list[In]:
    return [op for op in ops if isinstance(op, In)]


@dataclass(frozen=True)
class Mismatch:
    program: Program
    position: int  #: index among the reads of program.full()
    op: In
    expected: int  #: QEMU's value
    got: int  #: the model's value
    phase: str  #: "reset state", "program" or "final state"

    def describe(self) -> str:
        digits = 4 if self.op.width == 16 else 2
        return (f"program {self.program.index} (seed {self.program.seed}), {self.phase} read #{self.position} "
                f"in{'w' if digits == 4 else ''} 0x{self.op.port:02X}: QEMU 0x{self.expected:0{digits}X}, "
                f"model 0x{self.got:0{digits}X}\n"
                f"  program: {self.program.notation()}")


def compare(program: Program, qemu: Sequence[int], model: Sequence[int]) -> Mismatch | None:
    """First read where the model's value differs from QEMU's, or None."""
    reads = reads_of(program.full())
    n_state = len(reads_of(STATE_READS))
    n_prog = len(reads_of(program.ops))
    for i, (op, a, b) in enumerate(zip(reads, qemu, model)):
        if a != b:
            phase = "reset state" if i < n_state else "program" if i < n_state + n_prog else "final state"
            pos = i if i < n_state else i - n_state if i < n_state + n_prog else i - n_state - n_prog
            return Mismatch(program, pos, op, a, b, phase)
    if len(qemu) != len(model):
        raise ValueError(f"program {program.index}: {len(qemu)} reads from QEMU, {len(model)} from the model")
    return None
