"""Run a transfer script on any backend and record what every step saw.

Everything that can be checked without hardware is checked first: capabilities, buffer
placement (the DMA zone does it without I/O), every expression and range, and every rule a
step would otherwise meet only when it runs (:func:`check_steps`: DMA buffer rules, the
backend's memory window, a ``dreq`` before its device). Only then do steps run, in order, each
observation going to the journal the moment it exists.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import field
from pathlib import Path
from typing import Any

from hil.backends.base import CURRENT_SCRIPT, CURRENT_STEP, Backend, Capability
from hil.dma import DmaSnapshot, IsaDma, forget_host_state
from hil.errors import (
    AddressLimitError,
    AlignmentError,
    BatchError,
    BoundaryCrossingError,
    DmaRuleError,
    HilError,
    TransferLengthError,
)
from hil.journal import (
    DeviceObs,
    ErrorObs,
    InObs,
    IrqObs,
    Journal,
    Observation,
    ObsFormat,
    ReadObs,
    ResidueObs,
    RunResult,
    WaitIrqObs,
    WaitTcObs,
    json_str,
    obs_format,
)
from hil.log import get_logger
from hil.ops import (
    IRQ_LINES,
    DevAttach,
    DevDreq,
    DeviceState,
    DevState,
    In as InOp,
    IrqLines,
    IrqState,
    MemRead,
    PowerReset,
    WaitIrq as WaitIrqOp,
)
from hil.ports import MODE_DECREMENT, ModeSelect
from hil.records import dataclass
from hil.rules import check_buffer
from hil.script.loader import bind_all, digest
from hil.script.model import (
    Node,
    Script,
    ScriptCapabilityError,
    ScriptError,
    ScriptRangeError,
    Step,
    StepList,
)
from hil.script.steps import (
    Delay,
    Device,
    Disable,
    Dreq,
    Enable,
    Fill,
    In,
    Irq,
    Out,
    Program,
    Read,
    Residue,
    Resume,
    Settle,
    StepArgs,
    Suspend,
    WaitIrq,
    WaitTc,
    Write,
)

log = get_logger("hil.runner")

ZONE_START = 0x10000  #: leave the low 64 KiB (IVT, BDA, boot code on a real target) alone
RECORD_LIMIT = 4096  #: reads longer than this are recorded as a digest unless asked otherwise
#: Longest stretch of steps between yields to the event loop. On the simulator no await ever
#: suspends, so without a yield a Ctrl-C (asyncio cancels the main task) would wait for the end.
YIELD_EVERY_S = 0.01

Progress = Callable[[int, int, Step], None]


class _EndOfScript:
    """The label of the programs a run makes after its last step (reading the devices)."""

    def describe(self) -> str:
        return "end of script (device state)"


_END_OF_SCRIPT = _EndOfScript()


@dataclass
class _State:
    dma: IsaDma
    unchecked: IsaDma
    devices: dict[int, str] = field(default_factory=dict)  #: channel -> device kind
    snapshot: DmaSnapshot | None = None
    requested: set[int] = field(default_factory=set)
    #: each IRQ line's rising edges when the script started: the journal counts edges since then,
    #: so a script's counts are the same on a fresh machine and on one an earlier script used
    #: (an agent's or a board's, whose lines count from power-on)
    irq_base: tuple[int, ...] = (0,) * IRQ_LINES

    def edges(self, lines: IrqLines, line: int) -> int:
        return lines.count(line) - self.irq_base[line]


def missing_capabilities(script: Script, backend: Backend) -> list[str]:
    """The capabilities in the script's ``requires`` that the backend lacks: the script is not
    applicable there (``hil run`` skips it). An unknown capability name is an error."""
    known = {c.value for c in Capability}
    for need in script.requires:
        if need not in known:
            raise ScriptCapabilityError(script.file, None, "script.requires",
                                        f"unknown capability {need!r}; known: {', '.join(c.value for c in Capability)}")
    have = {c.value for c in backend.capabilities.features}
    return [need for need in script.requires if need not in have]


def check_capabilities(script: Script, backend: Backend) -> None:
    have = {c.value for c in backend.capabilities.features}
    missing = missing_capabilities(script, backend)
    if missing:
        raise ScriptCapabilityError(script.file, None, "script.requires",
                                    f"backend {backend.url} lacks capability {missing[0]!r} "
                                    f"(it has: {', '.join(sorted(have)) or 'none'})")
    steps = script.steps
    # each written step once: a repeat's passes need what its first does
    for step in steps.first_passes() if isinstance(steps, StepList) else steps:
        need = step.args.needs()
        if need and need not in have:
            raise ScriptCapabilityError(step.file, step.path, "op",
                                        f"{step.op.value} needs capability {need!r}, which backend {backend.url} lacks",
                                        step.op.value)


def place_buffers(script: Script, backend: Backend) -> dict[str, int]:
    """Fixed buffers are checked against the rules and the backend's memory window; the rest
    come from a DMA zone, in declaration order, so every backend with the same memory window
    gets the same addresses. Zone buffers never overlap a fixed one."""
    lo, hi = backend.capabilities.memory_window
    out: dict[str, int] = {}
    fixed = [(s.at, s.at + s.size) for s in script.buffers.values() if s.at is not None]
    zone = None
    for spec in script.buffers.values():
        try:
            if spec.at is not None:
                check_buffer(spec.channel, spec.at, spec.size)
                if not (lo <= spec.at and spec.at + spec.size <= hi):
                    raise HilError(f"0x{spec.at:X}..0x{spec.at + spec.size - 1:X} is outside the memory of "
                                   f"{backend.url} (0x{lo:X}..0x{hi - 1:X})")
                out[spec.name] = spec.at
                continue
            if zone is None:
                from hil.buffers import DmaZone  # only a script with zone buffers needs the allocator

                zone = DmaZone(start=max(lo, ZONE_START), end=min(hi, 1 << 24))
            while True:  # extents that collide with a fixed buffer stay allocated, never used
                buf = zone.alloc_nowait(spec.size, spec.channel)
                if not any(buf.phys < end and start < buf.phys + buf.size for start, end in fixed):
                    break
            out[spec.name] = buf.phys
        except HilError as e:
            raise ScriptRangeError(script.file, None, f"buffers.{spec.name}",
                                   f"cannot place {spec.size} bytes for channel {spec.channel}: {e}") from None
    return out


def prepare(script: Script, backend: Backend) -> list[StepArgs]:
    """Second validation phase, no I/O: capabilities, buffer placement, every bound value and
    :func:`check_steps`. Returns each step's bound arguments; raises :class:`ScriptError`."""
    check_capabilities(script, backend)
    buffers = place_buffers(script, backend)
    bound = bind_all(script, buffers)
    check_steps(script, backend, bound)
    return bound


def _rule(e: DmaRuleError, addr: int) -> tuple[str, str]:
    """The DMA-ISA-LPC rule a :func:`~hil.rules.check_buffer` error is about, and the step key
    holding the value that broke it (docs/reference/linux-isa-dma.md §3 rules 4, 5, 17)."""
    match e:
        case AddressLimitError():
            return "rule 4, the low 16 MiB", "addr"
        case BoundaryCrossingError():
            return "rule 5, no 64/128 KiB crossing", "addr"
        case AlignmentError():
            return "rule 17, 16-bit alignment", "addr" if addr % 2 else "length"
        case TransferLengthError():
            return "length 1..64K units per programming", "length"
    return type(e).__name__, "channel"


@dataclass
class _Static:
    """What is known before anything runs, step by step: which channels have a device and what
    each channel was last programmed with (the runner's IsaDma shadow, which starts empty)."""

    devices: set[int] = field(default_factory=set)
    programmed: dict[int, tuple[int, int, int, bool]] = field(default_factory=dict)  #: mode, addr, length, unchecked


def check_steps(script: Script, backend: Backend, bound: list[StepArgs]) -> None:
    """Refuse, before the first access, every step that would fail when it runs for a reason
    the script and the backend already decide: a ``program`` breaking a buffer rule (the one
    implementation in :mod:`hil.rules`, as :meth:`IsaDma.program` would apply it), a memory
    step outside the backend's memory window, a ``dreq`` on a channel no earlier step attached
    a device to, an ``enable`` of a channel no earlier step programmed. Without this an earlier
    ``out`` had already reached the machine when the run stopped.

    A repeat's body is checked in its first pass: its arguments are the same in every pass,
    devices are only ever added, so a later pass can fail only where the first did (an
    ``enable`` after an ``unchecked`` program in the same body is then checked at run time)."""
    lo, hi = backend.capabilities.memory_window
    st = _Static()

    def check(step: Step, a: StepArgs) -> None:
        def fail(key: str, message: str) -> ScriptError:
            return ScriptRangeError(step.file, step.path, key, message + "; refused before anything ran", step.op.value)

        match a:
            case Program(channel=ch, mode=mode, addr=int(addr), length=length, unchecked=unchecked):
                st.programmed[ch] = (mode, addr, length, unchecked)
                if unchecked or mode >> 6 == ModeSelect.CASCADE:
                    return  # what IsaDma.program leaves unchecked
                try:
                    check_buffer(ch, addr, length, decrement=bool(mode & MODE_DECREMENT))
                except DmaRuleError as e:
                    rule, key = _rule(e, addr)
                    raise fail(key, f"DMA-ISA-LPC {rule}: {e}") from None
            case Enable(channel=ch, unchecked=False):
                if ch not in st.programmed:
                    raise fail("channel", f"channel {ch} is enabled before any program step set it up")
                mode, addr, length, unchecked = st.programmed[ch]
                if unchecked and mode >> 6 != ModeSelect.CASCADE:
                    try:
                        check_buffer(ch, addr, length, decrement=bool(mode & MODE_DECREMENT))
                    except DmaRuleError as e:
                        rule, _ = _rule(e, addr)
                        raise fail("channel", f"enabling what an unchecked program set up breaks "
                                              f"DMA-ISA-LPC {rule}: {e}") from None
            case Read(addr=int(addr), length=length) | Write(addr=int(addr), length=length) | Fill(
                    addr=int(addr), length=length):
                if not (lo <= addr and addr + length <= hi):
                    raise fail("addr", f"memory 0x{addr:X}+{length} is outside the memory window of "
                                       f"{backend.url} (0x{lo:X}..0x{max(lo, hi - 1):X})")
            case Device(channel=ch):
                st.devices.add(ch)
            case Dreq(channel=ch) if ch not in st.devices:
                raise fail("channel", f"no device attached to channel {ch} (add a device step before it)")

    steps = script.steps
    if not isinstance(steps, StepList):
        for step, args in zip(steps, bound):
            check(step, args)
        return
    for step in steps.first_passes():
        check(step, bound[step.index])


_GENERAL, _OUT, _IN = 0, 1, 2  #: how a compiled step runs: through _run_step, or as a bare out / in


@dataclass(frozen=True, slots=True, eq=False)
class _Leaf:
    """A written step compiled once for a run. An ``out`` or ``in`` with bound operands, on a
    backend whose programs are not round trips, runs in the loop itself: the backend's method
    found once, the observation's record text made ready (:class:`~hil.journal.ObsFormat`);
    every other step goes through :func:`_run_step` as in the general loop."""

    step: Step  #: the template: its path is relative to the body it is written in
    args: StepArgs
    kind: int = _GENERAL
    name: str = ""  #: the step's name and tolerance, looked up once
    diff_mask: int | None = None
    may_differ: bool = False
    op: Callable[..., Awaitable[Any]] | None = None  #: the backend's outb/outw or inb/inw
    port: int = 0
    value: int = 0  #: an out's value
    width: int = 8
    expect: int | None = None  #: an in's expected value, compared under ``mask``
    mask: int = 0
    fmt: ObsFormat | None = None  #: an in's record


@dataclass(frozen=True, slots=True, eq=False)
class _Group:
    """A repeat or an include of compiled steps (:class:`~hil.script.model.StepGroup`)."""

    label: str
    count: int | None
    body: tuple[_Leaf | _Group, ...]
    body_len: int
    size: int


def _compile(nodes: tuple[Node, ...], bound: list[StepArgs], index: int, be: Backend) -> tuple[_Leaf | _Group, ...]:
    """The compiled form of ``nodes``, whose first step is flat step ``index``: each written
    step once, with the arguments :func:`prepare` bound for its first pass (every pass has
    the same); a body that never runs (a repeat of count 0) stays empty."""
    out: list[_Leaf | _Group] = []
    for node in nodes:
        if isinstance(node, Step):
            out.append(_leaf(node, bound[index], be))
            index += 1
            continue
        body = _compile(node.body, bound, index, be) if node.count != 0 else ()
        out.append(_Group(node.label, node.count, body, node.body_len, node.size))
        index += node.size
    return tuple(out)


def _leaf(step: Step, a: StepArgs, be: Backend) -> _Leaf:
    cls = type(a)
    if cls is Out:
        assert isinstance(a, Out)  # for mypy: cls is the class itself
        if type(a.port) is int and type(a.value) is int:
            return _Leaf(step, a, _OUT, op=be.outw if a.width == 16 else be.outb, port=a.port, value=a.value)
    elif cls is In:
        assert isinstance(a, In)
        port, mask, expect = a.port, a.mask, a.expect
        if type(port) is int and type(mask) is int and (expect is None or type(expect) is int):
            tol = step.tolerance
            if expect is None:  # as _in_obs makes them, then observe and emit
                sample = InObs("", 0, step.name, port=port, width=a.width, value=0)
                slots: tuple[str, ...] = ("step", "index", "value")
            else:
                sample = InObs("", 0, step.name, port=port, width=a.width, value=0, expect=expect, mask=mask, ok=True)
                slots = ("step", "index", "value", "ok")
            sample.diff_mask, sample.may_differ = tol.diff_mask, tol.may_differ
            return _Leaf(step, a, _IN, step.name, tol.diff_mask, tol.may_differ, be.inw if a.width == 16 else be.inb,
                         port, width=a.width, expect=expect, mask=mask, fmt=obs_format(sample, slots))
    return _Leaf(step, a)


class _Cursor:
    """Where a compiled run is: the step running now, made a :class:`Step` only when something
    reports it (an error, an interrupt, a backend naming the step through ``CURRENT_STEP``)."""

    __slots__ = ("index", "leaf", "prefix")

    def __init__(self) -> None:
        self.leaf: _Leaf | None = None
        self.index, self.prefix = -1, ""  #: the step's flat index, and the label of the body it is in

    def step(self) -> Step | None:
        leaf = self.leaf
        return None if leaf is None else leaf.step.placed(self.index, self.prefix + leaf.step.path)

    def describe(self) -> str:
        step = self.step()
        return _END_OF_SCRIPT.describe() if step is None else step.describe()


def start_fresh(backend: Backend) -> None:
    """Let the next script on an already used ``backend`` start with the host-side state a
    fresh backend has: no channel claims, an empty controller shadow, no remembered TC bits
    (:func:`hil.dma.forget_host_state`). ``hil run`` keeps one backend for its scripts where
    opening another would be a second connection (an agent: it said BUSY while the first one
    was still closing); the machine behind it (memory, registers, an agent's simulated
    devices) carries over from script to script, as hardware's always does."""
    forget_host_state(backend)


def _start(script: Script, backend: Backend, journal: Journal | str | Path | None) -> tuple[RunResult, Journal | None, bool]:
    caps = backend.capabilities
    result = RunResult(script.name, script.file, backend.url, caps.identity, caps.to_json(),
                       steps_total=len(script.steps))
    match journal:
        case None | Journal():
            jr, own_journal = journal, False
        case _:
            jr, own_journal = Journal(journal), True
    if jr is not None:
        jr.header(result)
    return result, jr, own_journal


def record_skip(script: Script, backend: Backend, needs: list[str], *,
                journal: Journal | str | Path | None = None) -> RunResult:
    """A script the backend cannot run (it lacks ``needs``): a ``skipped`` result, journaled
    like a run (header and end record), so ``hil diff`` can tell "not applicable" from "lost"."""
    result, jr, own_journal = _start(script, backend, journal)
    result.status, result.error = "skipped", f"needs {', '.join(needs)}"
    if jr is not None:
        jr.end(result)
        if own_journal:
            jr.close()
    log.info("run_skipped", script=script.name, backend=backend.url, needs=needs)
    return result


async def run_script(
    script: Script,
    backend: Backend,
    *,
    journal: Journal | str | Path | None = None,
    progress: Progress | None = None,
    prepared: list[StepArgs] | None = None,
    compiled: bool = True,
) -> RunResult:
    """Run ``script`` on an opened ``backend``; never raises for what the run finds (the
    result's ``status`` says), only for a script that cannot run at all (:class:`ScriptError`).

    ``prepared`` is what :func:`prepare` returned for this script on this kind of backend, to
    skip binding it again. Cancelled (or interrupted by KeyboardInterrupt), the run ends its
    journal with status ``interrupted`` naming the step, then re-raises.

    Where programs are not round trips, the loaded script's steps are compiled once
    (:func:`_compile`) and run without making a :class:`Step` per step; ``compiled=False``
    runs the general loop, step by step, which tests/test_runner_fastpath.py holds the
    compiled one to (the same journal, result and machine state).
    """
    bound = prepare(script, backend) if prepared is None else prepared
    result, jr, own_journal = _start(script, backend, journal)
    state = _State(IsaDma(backend), IsaDma(backend, unchecked=True))
    if Capability.IRQ in backend.capabilities:  # as last observed: no round trip of its own
        state.irq_base = tuple(backend.irq_count(n) for n in range(IRQ_LINES))
    t0 = last_yield = time.perf_counter()
    current: Step | None = None

    def emit(obs: Observation) -> None:
        obs.t = round(time.perf_counter() - t0, 6)
        obs.vt_ns = backend.virtual_time_ns()
        result.observations.append(obs)
        if jr is not None:
            jr.observation(obs)

    def observe(step: Step, obs: Observation) -> None:
        obs.diff_mask = step.tolerance.diff_mask
        obs.may_differ = step.tolerance.may_differ
        emit(obs)

    def fail(step: Step, e: HilError) -> None:
        emit(ErrorObs(step.path, step.index, step.name, ok=False, failed_op=step.op.value, message=str(e)))
        result.status, result.error = "error", f"{step.describe()}: {e}"
        log.info("step_failed", step=step.path, op=step.op.value, error=str(e))  # the result reports it

    # Where a program is a round trip (an agent), steps travel together (Backend.batched): a
    # write waits for the next program that reads, a step's own reads are queued with their
    # observation made when the results come back (observe, in step order all the same), and
    # an error in a combined program is reported on the step it belongs to (BatchError).
    later = observe if backend.ROUND_TRIPS else None
    steps = script.steps
    plan = _compile(steps.nodes, bound, 0, backend) if (
        compiled and later is None and isinstance(steps, StepList)) else None
    cursor = _Cursor()
    total = len(steps)
    clock, vtime, record = time.perf_counter, backend.virtual_time_ns, result.observations.append
    OUT, IN = _OUT, _IN  # constants, as closure cells: cheaper than globals per step

    async def walk(nodes: tuple[_Leaf | _Group, ...], prefix: str, index: int) -> bool:
        """Run compiled ``nodes`` from flat step ``index``; False once a step failed (reported)."""
        nonlocal last_yield
        for node in nodes:
            if isinstance(node, _Group):
                if node.count is None:
                    if not await walk(node.body, prefix + node.label, index):
                        return False
                else:
                    for n in range(1, node.count + 1):
                        if not await walk(node.body, f"{prefix}{node.label}[{n}].", index + (n - 1) * node.body_len):
                            return False
                index += node.size
                continue
            cursor.leaf, cursor.index, cursor.prefix = node, index, prefix
            if progress is not None:
                progress(index, total, node.step.placed(index, prefix + node.step.path))
            now = clock()
            if now - last_yield >= YIELD_EVERY_S:
                await asyncio.sleep(0)  # a pending cancellation (Ctrl-C) is delivered here
                last_yield = now
            kind = node.kind
            try:
                if kind == OUT:
                    await node.op(node.port, node.value)  # type: ignore[misc]  # an _OUT leaf has its op
                    index += 1
                    continue
                if kind == IN:
                    value = await node.op(node.port)  # type: ignore[misc]  # an _IN leaf has its op
                else:
                    step = node.step.placed(index, prefix + node.step.path)
                    obs = await _run_step(step, node.args, backend, state, script)
            except HilError as e:
                fail(*await _failed(backend, node.step.placed(index, prefix + node.step.path), e))
                return False
            if kind != IN:
                if obs is not None:
                    observe(step, obs)
                index += 1
                continue
            # an in's observation, as _in_obs, observe and emit make it (positional: the fields of
            # Observation, then InObs's port, width, value, expect, mask; a keyword call costs twice)
            expect, path = node.expect, prefix + node.step.path
            t = round(clock() - t0, 6)
            vt = vtime()
            if expect is None:
                obs = InObs(path, index, node.name, None, node.diff_mask, node.may_differ, t, vt,
                            node.port, node.width, value)
            else:
                mask = node.mask
                ok = (value & mask) == (expect & mask)
                obs = InObs(path, index, node.name, ok, node.diff_mask, node.may_differ, t, vt,
                            node.port, node.width, value, expect, mask)
            record(obs)
            if jr is not None:
                if type(value) is not int:  # what the format does not cover
                    jr.observation(obs)
                else:  # the format's slots: step, index, value (and ok), then t (and vt_ns)
                    fmt = node.fmt
                    assert fmt is not None  # an _IN leaf has its format
                    if expect is None:
                        text = (fmt.with_vt % (json_str(path), index, value, t, vt) if vt is not None
                                else fmt.without_vt % (json_str(path), index, value, t))
                    else:
                        text = (fmt.with_vt % (json_str(path), index, value, "true" if ok else "false", t, vt)
                                if vt is not None else
                                fmt.without_vt % (json_str(path), index, value, "true" if ok else "false", t))
                    jr.write_line(text)
            index += 1
        return True

    def where() -> Step | None:
        return cursor.step() if plan is not None else current

    log.info("run_start", script=script.name, backend=backend.url, steps=total)
    script_token, step_token = CURRENT_SCRIPT.set(script.name), CURRENT_STEP.set(None)
    try:
        async with backend.batched():
            last: Step | None = None
            if plan is not None:
                CURRENT_STEP.set(cursor)
                done = await walk(plan, "", 0)
                last = cursor.step()
            else:
                done = True
                for step, args in zip(steps, bound):
                    current = last = step
                    CURRENT_STEP.set(step)
                    if progress is not None:
                        progress(step.index, total, step)
                    now = time.perf_counter()
                    if now - last_yield >= YIELD_EVERY_S:
                        await asyncio.sleep(0)  # a pending cancellation (Ctrl-C) is delivered here
                        last_yield = now
                    try:
                        if later is not None:
                            backend.batch_tag = step
                        obs = await _run_step(step, args, backend, state, script, later)
                    except HilError as e:
                        fail(*await _failed(backend, step, e))
                        done = False
                        break
                    if obs is not None:
                        observe(step, obs)
            if done:
                current, cursor.leaf = None, None
                CURRENT_STEP.set(_END_OF_SCRIPT)
                try:
                    await backend.flush()  # the last steps' observations, before the status
                except BatchError as e:
                    if last is None:
                        raise
                    fail(*_culprit(last, e))
                else:
                    if state.devices:
                        channels = sorted(state.devices)
                        states = await backend.execute([DevState(ch, RECORD_LIMIT) for ch in channels])
                        for ch, dev_state in zip(channels, states):
                            emit(_device_observation(ch, dev_state))  # type: ignore[arg-type]  # a DevState's result
                    result.status = "failed" if result.failures else "passed"
            for ch in sorted(state.requested):
                await state.dma.free_dma(ch)
    except (asyncio.CancelledError, KeyboardInterrupt):
        at = where()
        result.status = "interrupted"
        result.error = "interrupted" + (f" at {at.describe()}" if at is not None else " at the end")
        raise
    except Exception as e:  # not something a run finds: a bug, or an error outside HilError
        at = where()
        result.status = "error"
        result.error = (f"{at.describe()}: " if at is not None else "") + f"{type(e).__name__}: {e}"
        raise
    finally:
        CURRENT_STEP.reset(step_token)
        CURRENT_SCRIPT.reset(script_token)
        result.elapsed = time.perf_counter() - t0
        if jr is not None:
            jr.end(result)
            if own_journal:
                jr.close()
        log.info("run_end", script=script.name, backend=backend.url, status=result.status,
                 failures=len(result.failures), elapsed=round(result.elapsed, 4))
    return result


def _culprit(step: Step, e: BatchError) -> tuple[Step, HilError]:
    """The step a failed combined program's error belongs to, and the error itself."""
    return (e.tag if isinstance(e.tag, Step) else step), e.error


async def _failed(be: Backend, step: Step, e: HilError) -> tuple[Step, HilError]:
    """Which step failed, and how. What earlier steps queued is sent first, as it had run by
    then without batching; should that fail, the failure is theirs."""
    if isinstance(e, BatchError):
        return _culprit(step, e)
    try:
        await be.flush()
    except BatchError as earlier:
        return _culprit(step, earlier)
    return step, e


async def _irq_lines(be: Backend, op: IrqState | WaitIrqOp) -> IrqLines:
    """The lines after ``op``: one program, one round trip on a link."""
    lines = (await be.execute([op]))[0]
    assert isinstance(lines, IrqLines)  # an IrqState's or WaitIrq's result
    return lines


def _device_observation(ch: int, state: DeviceState) -> DeviceObs:
    """What a device saw, read through the backend (in process or behind an agent link)."""
    if state.kind == "sink":
        return DeviceObs(f"end.device{ch}", channel=ch, length=state.moved, value=state.overruns,
                         tc=state.tc_count > 0, digest=state.digest,
                         data=state.head.hex() if state.moved == len(state.head) else None)  # all of it, or a digest
    return DeviceObs(f"end.device{ch}", channel=ch, length=state.moved, value=state.underruns, tc=state.tc_count > 0)


async def _ensure_requested(state: _State, channel: int, script: Script) -> None:
    if channel not in state.requested and state.dma.owner_of(channel) is None:
        await state.dma.request_dma(channel, f"script:{script.name}")
        state.requested.add(channel)


def _in_obs(step: Step, a: In, value: int) -> InObs:
    port, mask, expect = a.port, a.mask, a.expect
    assert isinstance(port, int) and isinstance(mask, int)  # bound
    if not isinstance(expect, int):
        return InObs(step.path, step.index, step.name, port=port, width=a.width, value=value)
    return InObs(step.path, step.index, step.name, port=port, width=a.width, value=value,
                 expect=expect, mask=mask, ok=(value & mask) == (expect & mask))


def _read_obs(step: Step, a: Read, data: bytes) -> ReadObs:
    assert isinstance(a.addr, int)  # bound
    read = ReadObs(step.path, step.index, step.name, addr=a.addr, length=a.length, digest=digest(data),
                   data=data.hex() if a.record == "bytes" else None)
    if a.expect_hex is not None:
        read.expect, read.ok = a.expect_hex.hex(), data == a.expect_hex
    if a.expect_digest is not None:
        read.expect = a.expect_digest
        read.ok = read.digest == a.expect_digest and read.ok is not False
    return read


def _wait_irq_obs(step: Step, a: WaitIrq, op: WaitIrqOp, st: _State, lines: IrqLines) -> WaitIrqObs:
    line, expect = a.irq, a.expect
    reached = op.reached(lines)
    return WaitIrqObs(step.path, step.index, step.name, irq=line, level=lines.level(line), count=st.edges(lines, line),
                      reached=reached, expect=expect, ok=None if expect is None else reached == (expect == "reached"))


def _irq_obs(step: Step, a: Irq, st: _State, lines: IrqLines) -> IrqObs:
    line = a.irq
    level, count = lines.level(line), st.edges(lines, line)
    wanted = {k: v for k, v in (("level", a.expect_level), ("count", a.expect_count)) if v is not None}
    if not wanted:
        return IrqObs(step.path, step.index, step.name, irq=line, level=level, count=count)
    return IrqObs(step.path, step.index, step.name, irq=line, level=level, count=count,
                  expect=" ".join(f"{k}={str(v).lower()}" for k, v in wanted.items()),
                  ok=wanted == {k: v for k, v in (("level", level), ("count", count)) if k in wanted})


Later = Callable[[Step, Observation], None]


async def _run_step(step: Step, a: StepArgs, be: Backend, st: _State, script: Script,
                    later: Later | None = None) -> Observation | None:
    """Run one bound step; what it saw, if it observes anything. With ``later``, a step that
    only reads for its observation queues its ops (:meth:`Backend.submit`) and hands the
    observation to ``later`` when the results arrive, returning None."""
    # in and out first, outside the match: a class pattern with keyword sub-patterns costs a
    # microsecond and more each, as much as the port access itself on the simulator
    cls = type(a)
    if cls is Out:
        assert isinstance(a, Out)  # for mypy: cls is the class itself
        out_port, out_value = a.port, a.value
        if isinstance(out_port, int) and isinstance(out_value, int):
            await (be.outw(out_port, out_value) if a.width == 16 else be.outb(out_port, out_value))
            return None
    elif cls is In:
        assert isinstance(a, In)
        in_port, in_mask, in_width = a.port, a.mask, a.width
        if isinstance(in_port, int) and isinstance(in_mask, int):
            if later is not None:
                await be.submit([InOp(in_port, in_width)], lambda r: later(step, _in_obs(step, a, r[0])))  # type: ignore[arg-type]  # an In's result is an int
                return None
            return _in_obs(step, a, await (be.inw(in_port) if in_width == 16 else be.inb(in_port)))
    at = (step.path, step.index, step.name)
    match a:
        case Fill(addr=int(addr), length=length, pattern=pattern):
            await be.write_mem(addr, (pattern * (length // len(pattern) + 1))[:length])
        case Write(addr=int(addr), data=data):
            await be.write_mem(addr, data)
        case Read(addr=int(addr), length=length):
            if later is not None:
                await be.submit([MemRead(addr, length)], lambda r: later(step, _read_obs(step, a, r[0])))  # type: ignore[arg-type]  # a MemRead's result is bytes
                return None
            return _read_obs(step, a, await be.read_mem(addr, length))
        case Program(channel=ch, mode=mode, addr=int(addr), length=length, enable=enable, unchecked=unchecked):
            await _ensure_requested(st, ch, script)
            dma = st.unchecked if unchecked else st.dma
            async with st.dma.claim_dma_lock():
                await dma.program(ch, mode, addr, length, enable=enable)
        case Enable(channel=ch, unchecked=unchecked):
            await _ensure_requested(st, ch, script)
            async with st.dma.claim_dma_lock():
                await st.dma.enable_dma(ch, unchecked=unchecked or None)
        case Disable(channel=ch):
            async with st.dma.claim_dma_lock():
                await st.dma.disable_dma(ch)
        case Residue(channel=ch, expect=expect):
            async with st.dma.claim_dma_lock():
                await st.dma.clear_dma_ff(ch)
                value = await st.dma.get_dma_residue(ch)
            if expect is None:
                return ResidueObs(*at, channel=ch, value=value)
            return ResidueObs(*at, channel=ch, value=value, expect=expect, ok=value == expect)
        case WaitTc(channel=ch, timeout=timeout, expect_complete=expect_complete):
            r = await st.dma.wait_dma_done(ch, timeout, check=False)
            return WaitTcObs(*at, channel=ch, tc=r.tc, value=r.residue, length=r.expected,
                             expect="complete" if expect_complete else None, ok=r.complete if expect_complete else None)
        case Device(channel=ch, kind=kind, data=data, dreq=dreq, capacity=capacity):
            await be.execute([DevAttach(ch, kind, data, dreq, capacity)])
            st.devices[ch] = kind
        case Dreq(channel=ch, level=level):
            if ch not in st.devices:
                raise ScriptError(step.file, step.path, "channel", f"no device attached to channel {ch} "
                                  f"(add a device step first)", step.op.value)
            await be.execute([DevDreq(ch, level)])
        case Delay(us=us):
            await be.delay(us)
        case Settle(timeout=timeout):
            await be.settle(timeout)
        case WaitIrq(irq=line, level=level, timeout=timeout):
            op = WaitIrqOp(line, level, timeout * 1e6)
            if later is not None:
                await be.submit([op], lambda r: later(step, _wait_irq_obs(step, a, op, st, r[0])))  # type: ignore[arg-type]  # a WaitIrq's result is IrqLines
                return None
            return _wait_irq_obs(step, a, op, st, await _irq_lines(be, op))
        case Irq():
            if later is not None:
                await be.submit([IrqState()], lambda r: later(step, _irq_obs(step, a, st, r[0])))  # type: ignore[arg-type]  # an IrqState's result is IrqLines
                return None
            return _irq_obs(step, a, st, await _irq_lines(be, IrqState()))
        case Suspend():
            st.snapshot = await st.dma.suspend()
        case Resume(lose_state=lose_state):
            if lose_state:
                await be.execute([PowerReset()])
            await st.dma.resume(st.snapshot)
        case _:
            raise ScriptError(step.file, step.path, "op", f"op {step.op.value} cannot run here", step.op.value)
    return None
