"""The driver's shortened paths in :mod:`hil.dma` against the general ones, on seeded random
sessions (issue 16).

* :meth:`IsaDma.claim_dma_lock` is a small class, where it was a context-manager generator;
* :meth:`IsaDma._run` takes the DMA lock itself, where it used to enter ``_locked`` and
  ``claim_dma_lock`` (two context-manager generators);
* :meth:`IsaDma.wait_dma_done` polls with that ``_run`` and its TC bookkeeping inlined, and
  sends its closing ``disable_dma`` / ``clear_dma_ff`` / ``get_dma_residue`` as one program.

:class:`GeneralDma` is the driver as it was: ``_run`` through ``_locked``, and ``wait_dma_done``
calling ``read_status``, ``_take_tc`` and the three API calls, each its own program, and
``claim_dma_lock`` the generator it was. Two
simulators run the same random session, one per driver: transfers on one or two channels at a
time (waits in turn or concurrently, the lock held by the caller or not, a device that stops
short so the wait times out, autoinit, status reads that see other channels' TC bits first).
Both must agree on every result or refusal, on the port traffic in order (the shipped driver's
programs are the general one's, with the closing three joined into one), the driver's state
(shadow, flip-flops, remembered TC bits, claims, warnings, the lock free), and the machine's.
"""

from __future__ import annotations

import asyncio
import copy
import random
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import pytest

from hil.backends.base import Capability
from hil.backends.sim import SimBackend
from hil.dma import DMA_AUTOINIT, IsaDma, TransferResult
from hil.errors import LockError, TransferIncompleteError
from hil.ops import In, Op, Out, Result
from hil.ports import CONTROLLERS, Ctrl
from hil.rules import check_channel
from hil.sim.devices import Sink, Source

CHANNELS = [0, 1, 2, 3, 5, 6, 7]


class GeneralDma(IsaDma):
    """The general path: every lock through the context managers, every call its own program."""

    @asynccontextmanager
    async def claim_dma_lock(self) -> AsyncIterator[None]:  # the generator it was
        state = self._state
        if state.owner is not None and state.owner is asyncio.current_task():
            raise LockError(None, "claim_dma_lock is not recursive: this task already holds it")
        async with state.lock:
            state.owner = asyncio.current_task()
            try:
                yield
            finally:
                state.owner = None

    async def _run(self, what: str, ops: Sequence[Op], *, warn: bool = True) -> list[int]:
        async with self._locked(what, warn=warn):
            return await self.backend.execute(ops)  # type: ignore[return-value]  # port I/O only

    async def read_status(self, ctrl: Ctrl) -> int:
        status = (await self._run("read_status", [In(CONTROLLERS[ctrl].status)], warn=False))[0]
        self._state.pending_tc[int(ctrl)] |= status & 0x0F
        return status

    async def wait_dma_done(
        self, channel: int, timeout: float = 1.0, *, poll_us: float = 100.0, check: bool = True
    ) -> TransferResult:
        check_channel(channel)
        sh = self._state.shadow.channels[channel]
        expected = sh.nbytes or 0
        autoinit = bool(sh.mode is not None and sh.mode & DMA_AUTOINIT)
        virtual = Capability.VIRTUAL_TIME in self.backend.capabilities
        loop = asyncio.get_running_loop()
        start, waited = loop.time(), 0.0
        ctrl = Ctrl.DMA2 if channel >= 4 else Ctrl.DMA1
        tc = False
        interval = poll_us
        longest = max(poll_us, timeout * 1e6 / 16)
        while True:
            await self.read_status(ctrl)
            if self._take_tc(channel):
                tc = True
                break
            elapsed = waited if virtual else loop.time() - start
            if elapsed >= timeout:
                break
            step = min(interval, max(0.0, (timeout - elapsed) * 1e6))
            await self.backend.delay(step)
            waited += step / 1e6
            interval = min(interval * 2, longest)
        be = self.backend
        assert isinstance(be, Recording)
        start = len(be.programs)
        async with self._locked("wait_dma_done", warn=False):
            if not autoinit:
                await self.disable_dma(channel)
            await self.clear_dma_ff(channel)
            residue = await self.get_dma_residue(channel)
        be.closings.append((start, len(be.programs)))
        elapsed = waited if virtual else loop.time() - start
        result = TransferResult(channel, tc, 0 if autoinit and tc else residue, expected, elapsed)
        if check and not result.complete:
            raise TransferIncompleteError(channel, residue, expected, timeout)
        return result


class Recording(SimBackend):
    """A simulator keeping every program it ran, with the task that sent it."""

    def __init__(self) -> None:
        super().__init__()
        self.programs: list[tuple[str, tuple[Op, ...]]] = []
        self.closings: list[tuple[int, int]] = []  #: the general driver's closing programs, [start, end)

    async def execute(self, ops: Sequence[Op]) -> list[Result]:
        task = asyncio.current_task()
        self.programs.append((task.get_name() if task else "", tuple(ops)))
        return await super().execute(ops)


def joined(be: Recording) -> list[tuple[str, tuple[Op, ...]]]:
    """The general driver's programs with each closing sequence (marked as it ran) joined into one."""
    out = list(be.programs)
    for start, end in reversed(be.closings):
        out[start:end] = [(out[start][0], tuple(op for _, p in out[start:end] for op in p))]
    return out


def random_mode(rng: random.Random) -> int:
    select = rng.choice([0, 1, 1, 2]) << 6  # demand, single, block
    ttype = rng.choice([1, 1, 2, 2, 0])  # write (I/O -> memory), read, verify
    return select | ttype << 2 | rng.choice([0, 0, 0x20]) | rng.choice([0, 0, 0, DMA_AUTOINIT])


def random_session(rng: random.Random) -> list[tuple[object, ...]]:
    steps: list[tuple[object, ...]] = []
    if rng.random() < 0.3:  # a wait before anything was programmed: the flip-flops are unknown
        steps.append(("wait", rng.choice(CHANNELS), rng.random() < 0.5))
    for _ in range(rng.randint(2, 6)):
        chans = rng.sample(CHANNELS, rng.choice([1, 1, 2]))
        jobs = []
        for ch in chans:
            unit = 2 if ch >= 4 else 1
            nbytes = rng.randint(1, 600) * unit
            short = rng.random() < 0.25  # the device runs dry: the wait times out
            size = nbytes - rng.randint(1, nbytes // unit) * unit if short and nbytes > unit else nbytes
            base = (0x20000 if ch >= 4 else 0x10000) * rng.randint(1, 6)
            jobs.append((ch, random_mode(rng), base + rng.randrange(0x800, 0x4000, 2), nbytes, rng.randbytes(size),
                         rng.random() < 0.8, rng.choice([0.0005, 0.002, 0.01]), rng.choice([10.0, 50.0, 100.0]),
                         rng.random() < 0.5))
        steps.append(("transfer", jobs, rng.random() < 0.5, rng.random() < 0.3, rng.random() < 0.3))
        if rng.random() < 0.3:
            steps.append(("status", rng.choice(list(Ctrl))))
        if rng.random() < 0.2:
            steps.append(("residue", rng.choice(CHANNELS)))
    return steps


async def run_job(dma: IsaDma, job: tuple[object, ...], hold: bool) -> tuple[str, object]:
    ch, _mode, _phys, _n, _data, _dreq, timeout, poll_us, check = job
    try:
        if hold:
            async with dma.claim_dma_lock():
                r = await dma.wait_dma_done(ch, timeout, poll_us=poll_us, check=check)  # type: ignore[arg-type]
        else:
            r = await dma.wait_dma_done(ch, timeout, poll_us=poll_us, check=check)  # type: ignore[arg-type]
    except Exception as e:  # the refusal itself is compared
        return type(e).__name__, str(e)
    return "ok", (r.channel, r.tc, r.residue, r.expected, round(r.elapsed_s, 9))


async def run_step(be: Recording, dma: IsaDma, step: tuple[object, ...]) -> object:
    match step:
        case ("transfer", list(jobs), bool(concurrent), bool(hold), bool(stale)):
            for ch, mode, phys, n, data, dreq, *_ in jobs:
                kind = Sink(dreq, len(data)) if (mode >> 2) & 3 == 2 else Source(data, dreq=dreq)
                be.machine.attach(ch, kind)
                async with dma.claim_dma_lock():
                    await dma.program(ch, mode, phys, n)
            if stale:  # a status read first: the TC bits it sees must be kept for the waiters
                await be.delay(300)  # not settle: an autoinit channel never settles
                await dma.read_status(Ctrl.DMA1)
                await dma.read_status(Ctrl.DMA2)
            if concurrent:
                tasks = [asyncio.create_task(run_job(dma, job, hold), name=f"w{i}") for i, job in enumerate(jobs)]
                return [await t for t in tasks]
            return [await run_job(dma, job, hold) for job in jobs]
        case ("wait", int(ch), bool(check)):
            return await run_job(dma, (ch, 0, 0, 0, b"", True, 0.0005, 100.0, check), False)
        case ("status", ctrl):
            return await dma.read_status(ctrl)  # type: ignore[arg-type]  # a Ctrl
        case ("residue", int(ch)):
            async with dma.claim_dma_lock():
                await dma.clear_dma_ff(ch)
                return await dma.get_dma_residue(ch)
    raise AssertionError(f"unknown step {step!r}")


def driver_state(dma: IsaDma) -> tuple[object, ...]:
    st = dma._state
    return (copy.deepcopy(st.shadow), list(st.ff), list(st.pending_tc), dict(st.busy), set(st.warned),
            st.lock.locked(), st.owner)


def machine_state(be: SimBackend) -> tuple[object, ...]:
    m = be.machine
    return m.dma1.snapshot(), m.dma2.snapshot(), bytes(m.pages), m.now_ns


@pytest.mark.parametrize("seed", range(120))
async def test_the_driver_paths_equal_the_general_ones(seed: int) -> None:
    rng = random.Random(f"driver-{seed}")
    steps = random_session(rng)
    fast_be, slow_be = Recording(), Recording()
    async with fast_be, slow_be:
        unchecked = rng.random() < 0.2
        fast, slow = IsaDma(fast_be, unchecked=unchecked), GeneralDma(slow_be, unchecked=unchecked)
        for d in (fast, slow):
            for ch in CHANNELS:
                await d.request_dma(ch, f"dev{ch}")
        for i, step in enumerate(steps):
            for be in (fast_be, slow_be):
                be.programs.clear()
                be.closings.clear()
            got = await run_step(fast_be, fast, step)
            want = await run_step(slow_be, slow, step)
            assert got == want, (i, step)
            assert fast_be.programs == joined(slow_be), (i, step)
            assert driver_state(fast) == driver_state(slow), (i, step)
            assert machine_state(fast_be) == machine_state(slow_be), (i, step)


def test_the_sessions_reach_every_case() -> None:
    """The comparison means something only if the sessions reach TC, time-outs, autoinit,
    concurrent waits, waits inside the caller's lock and waits with the flip-flops unknown."""
    seen: set[str] = set()
    for seed in range(120):
        for step in random_session(random.Random(f"driver-{seed}")):
            if step[0] == "wait":
                seen.add("unprogrammed")
            if step[0] != "transfer":
                continue
            jobs, concurrent, hold, stale = step[1:]
            seen |= {"concurrent"} if concurrent and len(jobs) > 1 else set()  # type: ignore[arg-type]
            seen |= {"hold"} if hold else set()
            seen |= {"stale"} if stale else set()
            for _ch, mode, _p, n, data, *_ in jobs:  # type: ignore[attr-defined]
                seen.add("autoinit" if mode & DMA_AUTOINIT else "once")
                seen.add("short" if len(data) < n else "full")
    assert seen == {"concurrent", "hold", "stale", "autoinit", "once", "short", "full", "unprogrammed"}


async def test_without_the_lock_the_first_call_warns_once_and_the_lock_is_taken() -> None:
    """_run's own lock: the one-time warning, the lock held (by this task) while the program
    runs, and a caller's lock reused without a second acquire."""
    seen: list[tuple[bool, object]] = []

    class Probe(SimBackend):
        async def execute(self, ops: Sequence[Op]) -> list[Result]:
            st = dma._state
            seen.append((st.lock.locked(), st.owner is asyncio.current_task()))
            return await super().execute(ops)

    async with Probe() as be:
        dma = IsaDma(be)
        await dma.clear_dma_ff(1)
        assert "nolock" in dma._state.warned and seen == [(True, True)]
        async with dma.claim_dma_lock():
            await dma.clear_dma_ff(1)
        assert seen == [(True, True), (True, True)] and not dma._state.lock.locked() and dma._state.owner is None


async def test_wait_dma_done_closes_with_one_program() -> None:
    """The closing disable, clear_ff, residue: one program, Linux's ports in Linux's order
    (docs/reference/linux-isa-dma.md §2(c))."""
    be = Recording()
    async with be:
        dma = IsaDma(be)
        await dma.request_dma(1, "x")
        be.machine.attach(1, Source(bytes(64)))
        async with dma.claim_dma_lock():
            await dma.program(1, 0x44, 0x10000, 64)
        be.programs.clear()
        r = await dma.wait_dma_done(1)
        assert r.complete
        assert be.programs[-1][1] == (Out(0x0A, 5), Out(0x0C, 0), In(0x03), In(0x03))
