"""The driver's and the simulator's DMA fast paths against their general paths, on seeded random
channel programs (issue 16).

Two ``sim:`` backends of the same profile run the same random session, step by step:

* the *fast* one as shipped: :meth:`IsaDma.program` with the driver's prebuilt byte writes, the
  port-only program check, the untraced op loop, the arbitration caches (DREQ lines kept as a
  bit set, "nothing can be serviced" kept across mask-set and masked-mode writes), and devices
  that hand out whole bursts (a source's view of its data);
* the *general* one: every programming step written out as fresh :class:`~hil.ops.Out` ops in
  Linux's order (``snd_dma_program``: docs/reference/linux-isa-dma.md §2(b), the port I/O of
  each call as §1.3 gives it), through the general program check (an ``OPS`` table that is not
  the shipped one) and the traced op loop (a tracer is set), with the DREQ lines read live from
  the devices, the idle cache dropped after every op, and devices that move one unit per call
  (the ``Device`` defaults the bulk calls must equal).

After every step both must agree on the results or the refusal, the controllers' registers, the
page registers, virtual time, memory and every device's counters and data.
"""

from __future__ import annotations

import hashlib
import random

import pytest

from hil.backends import open_backend
from hil.backends.sim import SimBackend, device_state
from hil.dma import IsaDma
from hil.ops import ALL_OPS, Delay, In, Op, Out, Result
from hil.ports import CASCADE_CHANNEL, CONTROLLERS, MASK_SET, Ctrl, channel_ports, controller_of
from hil.sim.devices import Device, Sink, Source

CHANNELS = [0, 1, 2, 3, 5, 6, 7]
MEM = 1 << 18  #: a small model memory: it is compared after every step (DMA past it is lost alike)


class UnitSource(Source):
    """A source moving one unit per call (``Device.supply_many``'s loop over ``supply``)."""

    supply_many = Device.supply_many  # type: ignore[assignment]  # the unit-by-unit default, on purpose


class UnitSink(Sink):
    """A sink taking one unit per call (``Device.accept_many``'s loop over ``accept``)."""

    accept_many = Device.accept_many  # type: ignore[assignment]  # the unit-by-unit default, on purpose


class GeneralSim(SimBackend):
    """The general path: the program check of any backend (``OPS`` is a copy, so the port-only
    scan does not apply) and, with :class:`Uncached` set as tracer, the traced op loop."""

    OPS = (*ALL_OPS,)  # equal, not the same object


class Uncached:
    """A tracer that records nothing and drops the machine's idle cache after every op, so that
    every port access and every settle arbitrates afresh."""

    def __init__(self, be: SimBackend) -> None:
        self.m = be.machine

    def moved(self, *args: object) -> None:
        pass

    def granted(self, *args: object) -> None:
        pass

    def fired(self) -> None:
        pass

    def sample(self, t: int | None = None) -> None:
        self.m._idle = False

    def op_done(self, port: int | None = None, value: int = 0, *, write: bool = False, width: int = 8) -> None:
        self.m._idle = False


def linux_program(channel: int, mode: int, phys: int, nbytes: int, enable: bool) -> list[Op]:
    """``snd_dma_program``'s port writes, spelled out with fresh ops (§2(b), §1.3)."""
    ctrl, ports, local = controller_of(channel), channel_ports(channel), channel & 3
    word = phys >> 1 if channel >= 4 else phys
    count = (nbytes - 1) & 0xFFFFFFFF
    if channel >= 4:
        count >>= 1
    ops: list[Op] = [Out(ctrl.single_mask, local | MASK_SET), Out(ctrl.clear_ff, 0), Out(ctrl.mode, mode | local)]
    if channel != CASCADE_CHANNEL:
        page = (phys >> 16) & 0xFF
        ops.append(Out(ports.page, page & 0xFE if channel >= 4 else page))
    ops += [Out(ports.addr, word & 0xFF), Out(ports.addr, (word >> 8) & 0xFF),
            Out(ports.count, count & 0xFF), Out(ports.count, (count >> 8) & 0xFF)]
    if enable:
        ops.append(Out(ctrl.single_mask, local))
    return ops


def state(be: SimBackend) -> tuple[object, ...]:
    m = be.machine
    devices = {ch: (device_state(d, 1 << 20), d.dreq, getattr(d, "pos", None)) for ch, d in sorted(m.devices.items())}
    return (m.dma1.snapshot(), m.dma2.snapshot(), bytes(m.pages), m.now_ns, m.idle_dma,
            hashlib.sha256(m.memory).hexdigest(), devices)


def random_mode(rng: random.Random, kind: str | None) -> int:
    select = rng.choice([0, 1, 2, 2, 1, 3]) << 6  # demand, single, block (twice as often), cascade
    ttype = rng.choice([1, 2, 0, 3])  # write (I/O -> memory), read, verify, illegal
    if kind is not None and rng.random() < 0.7:  # mostly the direction of the device there
        ttype = 1 if kind == "source" else 2
    return select | ttype << 2 | rng.choice([0, 0x20]) | rng.choice([0, 0, 0x10])  # decrement, autoinit


def random_session(rng: random.Random) -> list[tuple[object, ...]]:
    steps: list[tuple[object, ...]] = []
    kinds: dict[int, str] = {}
    for ch in rng.sample(CHANNELS, rng.randint(1, 4)):
        if rng.random() < 0.6:
            kinds[ch] = "source"
            steps.append(("source", ch, rng.randbytes(rng.randint(0, 700)), rng.random() < 0.85))
        else:
            kinds[ch] = "sink"
            steps.append(("sink", ch, rng.random() < 0.85, rng.choice([None, None, rng.randint(0, 600)])))
    for _ in range(rng.randint(5, 30)):
        ch = rng.choice(list(kinds)) if rng.random() < 0.8 else rng.choice(CHANNELS)
        roll = rng.random()
        if roll < 0.40:
            size = rng.randint(1, 600)
            phys = rng.randrange(0, MEM + 0x8000) if rng.random() < 0.9 else rng.randrange(0, 1 << 24)
            steps.append(("program", ch, random_mode(rng, kinds.get(ch)), phys, size, rng.random() < 0.9))
        elif roll < 0.60:
            steps.append(("settle", rng.choice([0.001, 0.01])))
        elif roll < 0.68:
            steps.append(("delay", rng.choice([1, 10, 100, 1000])))
        elif roll < 0.74:
            steps.append(("status", rng.choice(list(Ctrl))))
        elif roll < 0.80:
            steps.append(("residue", ch))
        elif roll < 0.85:
            steps.append(("dreq", ch, rng.random() < 0.5))
        elif roll < 0.88:
            steps.append(("mask", ch, rng.random() < 0.5))
        elif roll < 0.91:  # rotating priority, compressed timing, disable, DREQ sense, DACK sense
            steps.append(("command", rng.choice(list(Ctrl)), rng.choice([0, 0, 0x10, 0x08, 0x04, 0x40, 0x80])))
        else:
            steps += raw_writes(rng)
    return steps


def raw_writes(rng: random.Random) -> list[tuple[object, ...]]:
    """A few control writes in a row, of the kinds that decide whether anything can be serviced
    (and the order matters: a software request, then a mode write on the masked channel;
    channel 4 put in or out of cascade mode, or masked, while DMA1 requests)."""
    out: list[tuple[object, ...]] = []
    for _ in range(rng.randint(1, 4)):
        ctrl = rng.choice(CONTROLLERS)
        local = rng.randrange(4)
        match rng.choice(["request", "mode", "mode", "mask", "other"]):
            case "request":
                out.append(("raw", ctrl.request, local | rng.choice([MASK_SET, MASK_SET, 0])))
            case "mode":
                select = rng.choice([0, 1, 2, 3])
                out.append(("raw", ctrl.mode, select << 6 | rng.randrange(0, 64, 4) | local))
            case "mask":
                out.append(("raw", ctrl.single_mask, local | rng.choice([MASK_SET, 0])))
            case _:
                out.append(("raw", ctrl.reg(rng.randint(8, 15)), rng.randrange(256)))
    return out


async def run_step(be: SimBackend, dma: IsaDma, step: tuple[object, ...], *, fast: bool) -> object:
    m = be.machine
    match step:
        case ("source", int(ch), bytes(data), bool(dreq)):
            m.attach(ch, (Source if fast else UnitSource)(data, dreq=dreq))
            return None
        case ("sink", int(ch), bool(dreq), capacity):
            m.attach(ch, (Sink if fast else UnitSink)(dreq, capacity))  # type: ignore[arg-type]  # int | None
            return None
        case ("program", int(ch), int(mode), int(phys), int(size), bool(enable)):
            if fast:
                return await dma.program(ch, mode, phys, size, enable=enable)
            await be.execute(linux_program(ch, mode, phys, size, enable))
            return None
        case ("settle", float(limit)):
            return await be.settle(limit)
        case ("delay", int(us)):
            return await be.execute([Delay(us)])
        case ("status", ctrl):
            if fast:
                return await dma.read_status(ctrl)  # type: ignore[arg-type]  # a Ctrl
            return (await be.execute([In(CONTROLLERS[ctrl].status)]))[0]  # type: ignore[index]  # a Ctrl
        case ("residue", int(ch)):
            if fast:
                await dma.clear_dma_ff(ch)
                return await dma.get_dma_residue(ch)
            ctrl, count = controller_of(ch), channel_ports(ch).count
            lsb, msb = await be.execute([Out(ctrl.clear_ff, 0), In(count), In(count)])
            residue = (1 + int(lsb) + (int(msb) << 8)) & 0xFFFF  # type: ignore[call-overload]  # ints
            return residue << 1 if ch >= 4 else residue
        case ("dreq", int(ch), bool(level)):
            if ch in m.devices:
                m.devices[ch].dreq = level
            return None
        case ("mask", int(ch), bool(masked)):
            if fast:
                return await (dma.disable_dma(ch) if masked else dma.enable_dma(ch))
            await be.execute([Out(controller_of(ch).single_mask, (ch & 3) | (MASK_SET if masked else 0))])
            return None
        case ("command", ctrl, int(value)):
            if fast:
                return await dma.set_dma_command(ctrl, value)  # type: ignore[arg-type]  # a Ctrl
            await be.execute([Out(CONTROLLERS[ctrl].command, value)])  # type: ignore[index]  # a Ctrl
            return None
        case ("raw", int(port), int(value)):
            return await be.outb(port, value)
    raise AssertionError(f"unknown step {step!r}")


async def outcome(be: SimBackend, dma: IsaDma, step: tuple[object, ...], *, fast: bool) -> tuple[str, object]:
    try:
        result: object = await run_step(be, dma, step, fast=fast)
    except Exception as e:  # the refusal itself is compared
        return type(e).__name__, str(e)
    return "ok", result


class Recording(SimBackend):
    """The shipped backend, keeping every program it was given (to compare the ops too)."""

    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]  # SimBackend's own options
        self.programs: list[list[Op]] = []

    async def execute(self, ops: list[Op]) -> list[Result]:  # type: ignore[override]  # a list is a Sequence
        self.programs.append(list(ops))
        return await super().execute(ops)


@pytest.mark.parametrize("profile", ["intel", "qemu"])
@pytest.mark.parametrize("seed", range(150))
async def test_dma_fast_paths_equal_the_general_ones(profile: str, seed: int) -> None:
    rng = random.Random(f"{profile}-{seed}")
    steps = random_session(rng)
    fast = Recording(profile=profile, mem_size=MEM)
    slow = GeneralSim(profile=profile, mem_size=MEM)
    async with fast, slow:
        slow.machine.tracer = Uncached(slow)
        slow.machine._live_lines = True  # every DREQ line read from its device, not the bit set
        fdma = IsaDma(fast, unchecked=True)
        sdma = IsaDma(slow, unchecked=True)
        async with fdma.claim_dma_lock(), sdma.claim_dma_lock():
            for i, step in enumerate(steps):
                fast.programs.clear()
                got = await outcome(fast, fdma, step, fast=True)
                want = await outcome(slow, sdma, step, fast=False)
                if step[0] == "program" and got[0] == "ok":
                    assert fast.programs == [linux_program(*step[1:])], (i, step)  # type: ignore[arg-type]
                assert got == want, (i, step)
                assert state(fast) == state(slow), (i, step)


async def test_the_general_side_really_takes_the_general_paths() -> None:
    """The comparison above means something only if the general backend avoids every fast path:
    the traced loop runs (the tracer sees each op), the program check is the general one, and
    the unit-by-unit devices are asked once per unit."""
    calls: list[int] = []

    class Counting(UnitSource):
        def supply(self, channel: int, width: int) -> int:
            calls.append(width)
            return super().supply(channel, width)

    async with GeneralSim(mem_size=MEM) as be:
        seen: list[int | None] = []
        tracer = Uncached(be)
        tracer.op_done = lambda port=None, value=0, **kw: seen.append(port)  # type: ignore[method-assign]
        be.machine.tracer = tracer
        be.machine.attach(5, Counting(bytes(range(8))))
        await be.execute(linux_program(5, 0x84, 0x1000, 8, True))  # block, I/O -> memory
        await be.settle()
        assert len(seen) == 9 and calls == [16] * 4
        assert be.machine.memory[0x1000:0x1008] == bytes(range(8))
    async with open_backend("sim") as be:
        assert isinstance(be, SimBackend)
        assert type(be).OPS is ALL_OPS and GeneralSim.OPS is not ALL_OPS and GeneralSim.OPS == ALL_OPS
