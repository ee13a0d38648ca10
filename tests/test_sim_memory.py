"""The model's lazily allocated memory (:mod:`hil.sim.memory`) against a plain ``bytearray``
(issue 16), on seeded random sessions.

Two ``sim:`` backends of the same profile and size run the same session: one with the memory
the machine makes (an anonymous mapping), one whose memory was swapped for ``bytearray(size)``
before anything touched it. A session mixes memory ops in and out of range (``MemRead``,
``MemWrite``, ``MemFill`` and the backend's ``read_mem`` / ``write_mem`` / ``fill_mem``), DMA
sessions of :mod:`tests.test_sim_dma_fastpaths` (device to memory and back, block, demand and
single mode, decrementing, past the end of memory), memory-to-memory copies on DMA1, bus masters
writing on cascade channels, and resets. After every step both must agree on the result or the
refusal, the machine's state (registers, time, the sha256 of memory), the warnings given, and
what the tracer was shown.
"""

from __future__ import annotations

import mmap
import random

import pytest
from test_sim_dma_fastpaths import outcome, random_session, state

from hil.backends.sim import SimBackend
from hil.dma import IsaDma
from hil.ops import MemFill, MemRead, MemWrite, Out, PowerReset
from hil.ports import DMA1, DMA2, MASK_SET, PAGE_PORT
from hil.sim.devices import BusMaster
from hil.sim.memory import zeroed

SIZES = [1 << 16, 0x18000, 0x2F001, 1 << 18]  #: the smallest URL size, and ends inside a page


class Shown:
    """A tracer keeping what each chunk showed it (the data comes from memory on a read)."""

    def __init__(self) -> None:
        self.chunks: list[tuple[object, ...]] = []

    def moved(self, channel: int, phys: int, step: int, units: int, size: int, data: object, direction: object) -> None:
        self.chunks.append((channel, phys, step, units, size, None if data is None else bytes(data), direction))  # type: ignore[call-overload]  # a buffer

    def granted(self, *args: object) -> None:
        pass

    def fired(self) -> None:
        pass

    def sample(self, t: int | None = None) -> None:
        pass

    def op_done(self, port: int | None = None, value: int = 0, *, write: bool = False, width: int = 8) -> None:
        pass


def span(rng: random.Random, size: int) -> tuple[int, int]:
    """An address and length: mostly inside memory, sometimes across or past its end, or empty."""
    match rng.choice(["in", "in", "in", "end", "past", "empty"]):
        case "in":
            addr = rng.randrange(size)
            return addr, rng.randint(1, min(5000, size - addr))
        case "end":
            addr = rng.randrange(max(0, size - 3000), size)
            return addr, rng.randint(1, 6000)
        case "past":
            return rng.randrange(size, size + 0x10000), rng.randint(1, 300)
    return rng.randrange(size + 1), 0


def memory_steps(rng: random.Random, size: int) -> list[tuple[object, ...]]:
    steps: list[tuple[object, ...]] = []
    for _ in range(rng.randint(1, 3)):
        addr, length = span(rng, size)
        match rng.choice(["op-read", "op-write", "op-fill", "read", "write", "fill", "m2m", "master", "reset"]):
            case "op-read":
                steps.append(("exec", [MemRead(addr, length)]))
            case "op-write":
                steps.append(("exec", [MemWrite(addr, rng.randbytes(length))]))
            case "op-fill":
                steps.append(("exec", [MemFill(addr, length, rng.randrange(256))]))
            case "read":
                steps.append(("read", addr, length))
            case "write":
                steps.append(("write", addr, rng.randbytes(length)))
            case "fill":
                steps.append(("fill", addr, length, rng.randrange(256)))
            case "m2m":
                steps.append(("m2m", rng.randrange(size + 0x4000), rng.randrange(size + 0x4000), rng.randint(1, 3000),
                              rng.random() < 0.2, rng.random() < 0.2))
            case "master":
                steps.append(("master", rng.choice([0, 1, 2, 3, 5, 6, 7]), addr, rng.randbytes(min(length, 4000))))
            case _:
                steps.append(("exec", [PowerReset()]))
    return steps


def m2m_program(src: int, dst: int, n: int, src_down: bool, hold: bool) -> list[Out]:
    """DMA1 channel 0 -> 1, memory to memory, started by a software request on channel 0
    (docs/reference/8237.md §3.8), each channel with its own page."""
    ops = [Out(DMA1.master_clear, 0), Out(DMA1.command, 0x01 | (0x02 if hold else 0))]
    for ch, phys, mode in ((0, src, 0x88 | (0x20 if src_down else 0)), (1, dst, 0x84)):
        ops += [Out(DMA1.mode, mode | ch), Out(PAGE_PORT[ch], (phys >> 16) & 0xFF),
                Out(DMA1.addr(ch), phys & 0xFF), Out(DMA1.addr(ch), (phys >> 8) & 0xFF),
                Out(DMA1.count(ch), (n - 1) & 0xFF), Out(DMA1.count(ch), ((n - 1) >> 8) & 0xFF)]
    return [*ops, Out(DMA1.request, 0 | MASK_SET)]


async def run_memory_step(be: SimBackend, step: tuple[object, ...]) -> object:
    match step:
        case ("exec", list(ops)):
            return await be.execute(ops)
        case ("read", int(addr), int(length)):
            return await be.read_mem(addr, length)
        case ("write", int(addr), bytes(data)):
            await be.write_mem(addr, data)
            return None
        case ("fill", int(addr), int(length), int(value)):
            await be.fill_mem(addr, length, value)
            return None
        case ("m2m", int(src), int(dst), int(n), bool(down), bool(hold)):
            await be.execute(m2m_program(src, dst, n, down, hold))
            await be.settle(0.01)
            return None
        case ("master", int(ch), int(addr), bytes(data)):
            be.machine.attach(ch, BusMaster(500, data=data, addr=addr))
            ctrl = DMA1 if ch < 4 else DMA2
            await be.execute([Out(ctrl.mode, 0xC0 | (ch & 3)), Out(ctrl.single_mask, ch & 3)])
            await be.settle(0.01)
            return None
    raise AssertionError(f"unknown step {step!r}")


async def memory_outcome(be: SimBackend, step: tuple[object, ...]) -> tuple[str, object]:
    try:
        result = await run_memory_step(be, step)
    except Exception as e:  # the refusal itself is compared
        return type(e).__name__, str(e)
    return "ok", result


def session(rng: random.Random, size: int) -> list[tuple[str, tuple[object, ...]]]:
    steps: list[tuple[str, tuple[object, ...]]] = [("dma", s) for s in random_session(rng)]
    for _ in range(rng.randint(4, 12)):
        at = rng.randint(0, len(steps))
        steps[at:at] = [("mem", s) for s in memory_steps(rng, size)]
    return steps


def full_state(be: SimBackend, tracer: Shown) -> tuple[object, ...]:
    m = be.machine
    return (*state(be), len(m.memory), sorted(m._warned), tracer.chunks)


@pytest.mark.parametrize("profile", ["intel", "qemu"])
@pytest.mark.parametrize("seed", range(60))
async def test_lazy_memory_equals_a_bytearray(profile: str, seed: int) -> None:
    rng = random.Random(f"memory-{profile}-{seed}")
    size = rng.choice(SIZES)
    steps = session(rng, size)
    lazy = SimBackend(profile=profile, mem_size=size)
    plain = SimBackend(profile=profile, mem_size=size)
    plain.machine.memory = bytearray(size)  # the general path: nothing has touched it yet
    assert isinstance(lazy.machine.memory, mmap.mmap)
    async with lazy, plain:
        shown = (Shown(), Shown())
        lazy.machine.tracer, plain.machine.tracer = shown
        ldma, pdma = IsaDma(lazy, unchecked=True), IsaDma(plain, unchecked=True)
        async with ldma.claim_dma_lock(), pdma.claim_dma_lock():
            for i, (kind, step) in enumerate(steps):
                if kind == "dma":
                    got = await outcome(lazy, ldma, step, fast=True)
                    want = await outcome(plain, pdma, step, fast=True)
                else:
                    got = await memory_outcome(lazy, step)
                    want = await memory_outcome(plain, step)
                assert got == want, (i, step)
                assert full_state(lazy, shown[0]) == full_state(plain, shown[1]), (i, step)
        assert bytes(lazy.machine.memory) == bytes(plain.machine.memory)


def test_the_sessions_reach_every_kind_of_access() -> None:
    """The comparison above means something only if the sessions do what they claim: memory
    ops in and past range, memory-to-memory copies, bus masters and resets, over many sizes."""
    kinds: set[object] = set()
    for profile in ("intel", "qemu"):
        for seed in range(60):
            rng = random.Random(f"memory-{profile}-{seed}")
            size = rng.choice(SIZES)
            for kind, step in session(rng, size):
                if kind == "mem":
                    kinds.add(step[0] if step[0] != "exec" else type(step[1][0]).__name__)  # type: ignore[index]
                    if step[0] == "read" and int(step[1]) + int(step[2]) > size:  # type: ignore[call-overload]
                        kinds.add("read past the end")
                elif step[0] == "program":
                    kinds.add("dma program")
                kinds.add(size)
    assert kinds >= {"MemRead", "MemWrite", "MemFill", "PowerReset", "read", "write", "fill", "m2m", "master",
                     "read past the end", "dma program", *SIZES}


def test_zeroed_is_zero_and_keeps_its_length() -> None:
    mem = zeroed(0x18000)
    assert len(mem) == 0x18000 and bytes(mem) == bytes(0x18000)
    mem[0x17FFE:0x18000] = b"\x01\x02"
    assert mem[0x17FFF] == 2 and mem[0x17FFE:0x18010] == b"\x01\x02"  # a slice past the end is clipped
    with pytest.raises(IndexError):
        mem[0x17FFF:0x18001] = b"ab"  # a mapping never grows: writers clip first
    assert len(mem) == 0x18000
    assert zeroed(0) == bytearray()
    with pytest.raises(ValueError):
        zeroed(-1)


async def test_the_memory_steps_move_data() -> None:
    """The memory-to-memory and bus-master steps of a session really write memory (on the AT;
    QEMU's i8257 has neither), so the comparison covers their writes."""
    be = SimBackend(mem_size=1 << 18)
    async with be:
        await be.write_mem(0x1000, bytes(range(1, 200)))
        assert await memory_outcome(be, ("m2m", 0x1000, 0x3000, 199, False, False)) == ("ok", None)
        assert await be.read_mem(0x3000, 199) == bytes(range(1, 200))
        for ch, addr in ((5, 0x5000), (1, 0x6000)):
            assert await memory_outcome(be, ("master", ch, addr, b"xyz")) == ("ok", None)
            assert await be.read_mem(addr, 3) == b"xyz"
