"""The backend interface: port I/O and physical memory, asynchronously, over any transport.

Backends know ports and memory, not DMA rules (those live in :mod:`hil.dma`). The one primitive
is :meth:`Backend.execute`; every convenience method is a one-program wrapper around it, so a
backend only has to implement ``_execute`` (and ``_settle``) to get the whole interface, and
``check`` for what it refuses: that runs once over the whole program before any of it does.

Interrupt lines (capability ``irq``): ``await wait_irq(n)`` and ``await irq_state()`` are
programs (:class:`~hil.ops.WaitIrq`, :class:`~hil.ops.IrqState`), one round trip each.
``irq_level(n)`` and ``irq_count(n)`` are synchronous and answer from the state the backend last
observed, which each backend keeps current in its own way (:meth:`Backend._irq_lines`): the
simulator's is the machine itself, whose virtual time moves only inside programs, so it is the
state at the end of the last program; QEMU's is the event stream qtest reports as it happens;
an agent's is the :class:`~hil.ops.IrqLines` its client appends to every program, so again the
state at the end of the last program. A backend without the capability refuses all four with
:class:`~hil.errors.UnsupportedOperationError`.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import enum
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextvars import ContextVar
from dataclasses import field
from types import TracebackType
from typing import Any, ClassVar, Protocol

from hil.errors import (
    BackendClosedError,
    BackendNotOpenError,
    BatchError,
    HilError,
    InvalidAccessError,
    UnsupportedOperationError,
)
from hil.log import get_logger
from hil.ops import (
    Delay,
    In,
    IrqLines,
    IrqState,
    MemFill,
    MemRead,
    MemWrite,
    Op,
    Out,
    Poll,
    Result,
    Settle,
    WaitIrq,
    check_program,
    row_of,
    wait_us,
)
from hil.records import dataclass

log = get_logger("hil.backend")

class StepLabel(Protocol):
    """What a runner says of the step it is running (a :class:`hil.script.model.Step`)."""

    def describe(self) -> str:
        """The step as a report names it: ``step 7 (out)``."""


#: The script and step whose programs a backend is running (the runner sets them; None outside
#: a script). Context variables rather than arguments of ``execute``, so the interface stays one
#: primitive and a wrapper (``replay:``) can name the step in what it reports without every layer
#: in between passing it on. The step object itself is stored, not its text: setting it is one
#: cheap call per step, and only a report formats it (:func:`current_step`).
CURRENT_SCRIPT: ContextVar[str | None] = ContextVar("hil_current_script", default=None)
CURRENT_STEP: ContextVar[StepLabel | None] = ContextVar("hil_current_step", default=None)


def current_step() -> str | None:
    """``"floppy-read step 7 (out)"``: the script step running now, if a runner said."""
    step = CURRENT_STEP.get()
    if step is None:
        return None
    script = CURRENT_SCRIPT.get()
    return f"{script} {step.describe()}" if script else step.describe()


@dataclass(frozen=True, slots=True)
class _Queued:
    """A program :meth:`Backend.batched` holds back: its ops, who gets its results, and the
    step (or whatever the user set as :attr:`Backend.batch_tag`) it came from."""

    ops: tuple[Op, ...]
    sink: Callable[[list[Result]], None] | None
    tag: object


class Capability(enum.Enum):
    """What a backend can do beyond port I/O and memory."""

    VIRTUAL_TIME = "virtual_time"  #: time advances only when the backend is driven
    DEVICES = "devices"  #: simulated DREQ sources/sinks, through the device ops (DevAttach, DevDreq, DevState, ...)
    DREQ = "dreq"  #: a request line can be driven from the host
    IRQ = "irq"  #: interrupt lines are observable
    RESET_DETECT = "reset_detect"  #: the far side reports resets (boot nonce)
    REAL_TIMING = "real_timing"  #: timings are those of silicon
    FDC = "fdc"  #: a floppy controller with a disk at 0x3F0-0x3F7, DMA 2, IRQ 6 (qemu: and sim: with floppy=)
    SB16 = "sb16"  #: a Sound Blaster 16 at 220h on DMA 1/5 (qemu: with sb16=1)
    ECP = "ecp"  #: an ECP parallel port (FIFO, ECR, DMA; sim: with ecp=1; QEMU has none)

#: the ISA devices a script can name in ``requires``, with the ports a driver touches on each: an
#: agent advertises the ones its I/O backend has and its default allow-list opens their ports
#: (docs/agent-protocol.md §3 'Info block'; docs/reference/devices.md §2.1 FDC, §5 SB16)
DEVICE_PORTS: dict[Capability, range] = {Capability.FDC: range(0x3F0, 0x3F8), Capability.SB16: range(0x220, 0x230)}
DEVICE_CAPABILITIES = tuple(DEVICE_PORTS)
#: the ISA IRQ line each of those devices raises (docs/reference/devices.md §2.1, §5)
DEVICE_IRQ: dict[Capability, int] = {Capability.FDC: 6, Capability.SB16: 5}


@dataclass(frozen=True)
class Capabilities:
    backend: str  #: scheme, e.g. "sim"
    identity: str  #: human identity, e.g. "sim profile=intel mem=16MiB"
    features: frozenset[Capability] = frozenset()
    memory_window: tuple[int, int] = (0, 0)  #: [start, end) of physical memory reachable
    details: dict[str, Any] = field(default_factory=dict)

    def __contains__(self, cap: object) -> bool:
        return cap in self.features

    def to_json(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "identity": self.identity,
            "features": sorted(f.value for f in self.features),
            "memory_window": list(self.memory_window),
            **({"details": self.details} if self.details else {}),
        }


def _check_duration(step: int, what: str, us: object) -> None:
    if not isinstance(us, (int, float)) or isinstance(us, bool) or not math.isfinite(us) or us < 0:
        raise InvalidAccessError(f"program step {step}: {what} {us!r} us must be a finite, non-negative number")


ResetListener = Callable[["Backend"], Awaitable[None]]


class Backend(abc.ABC):
    """Asynchronous access to one machine's I/O ports and physical memory.

    Use as ``async with open_backend(url) as be:``. ``execute`` is atomic per backend: programs
    from concurrent tasks never interleave, which matters because the 8237's byte-pointer
    flip-flop makes interleaved register accesses silently wrong (docs/reference/hil-lessons.md §1.1).
    """

    scheme: ClassVar[str] = ""
    #: each program costs a round trip (a link to an agent): inside :meth:`batched`, programs
    #: that read nothing wait for the next one that does, and a runner may queue its reads too
    #: (:meth:`submit`), so a script's steps travel as a few programs. Elsewhere (the simulator,
    #: QEMU's qtest socket) a program is as cheap as its ops and batching changes nothing.
    ROUND_TRIPS: ClassVar[bool] = False

    def __init__(self, url: str) -> None:
        self.url = url
        self._lock = asyncio.Lock()
        self._closed = False
        self._opened = False
        self._reset_listeners: list[ResetListener] = []
        self._batch: list[_Queued] | None = None  #: inside batched(): programs not sent yet
        self.batch_tag: object = None  #: what queued programs are recorded as coming from (a step)

    # --- life cycle ---------------------------------------------------------------------

    async def open(self) -> None:
        """Connect / start whatever the backend needs. Idempotent."""
        if not self._opened:
            await self._open()
            self._opened = True

    async def _open(self) -> None:  # optional hook
        pass

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._close()

    async def _close(self) -> None:  # optional hook
        pass

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def opened(self) -> bool:
        """``open()`` has completed (and stays True after ``close()``: see :attr:`closed`)."""
        return self._opened

    def _check_open(self) -> None:
        """Refuse use after ``close()`` and before ``open()`` alike on every backend (the
        simulator could run unopened, a board cannot: a program must not learn otherwise)."""
        if self._closed:
            raise BackendClosedError(self.url)
        if not self.opened:
            raise BackendNotOpenError(self.url)

    async def __aenter__(self) -> Backend:
        await self.open()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # --- the primitive ------------------------------------------------------------------

    #: operations ``_execute`` understands; a ``Settle`` outside this set runs as ``_settle``
    OPS: ClassVar[tuple[type, ...]] = (Out, In, MemWrite, MemRead, MemFill, Delay, Poll)

    async def execute(self, ops: Sequence[Op]) -> list[Result]:
        """Run ``ops`` in order, atomically; return the results of the reading operations.

        :meth:`check` sees the whole program before its first op runs: one refused op runs none
        of them, wherever it is, even after a ``Settle`` at which the program is split below.
        Inside :meth:`batched`, a program that reads nothing is checked and queued, and returns
        at once; one that reads is sent with everything queued before it.
        """
        if self._batch is not None:
            if not any(row_of(op).result is not None for op in ops):
                await self._enqueue(ops, None)
                return []
            box: list[list[Result]] = []
            await self._enqueue(ops, box.append)
            await self.flush()
            return box[0]
        return await self._program(ops)

    # --- batching (round-trip backends) ----------------------------------------------------

    @contextlib.asynccontextmanager
    async def batched(self) -> AsyncIterator[None]:
        """Let consecutive programs travel as one (see :data:`ROUND_TRIPS`); what is queued is
        sent when a program reads, on :meth:`flush`, and at the end, also when the block ends
        with an error (what was queued before it had run, without batching, by then). Cancelled,
        the queue is dropped: nothing more reaches the machine. No-op where programs are cheap."""
        if not self.ROUND_TRIPS or self._batch is not None:
            yield
            return
        self._batch = []
        try:
            yield
        except (asyncio.CancelledError, KeyboardInterrupt):
            self._batch = None
            raise
        except BaseException:
            await self.flush()
            raise
        else:
            await self.flush()
        finally:
            self._batch = None

    async def submit(self, ops: Sequence[Op], sink: Callable[[list[Result]], None]) -> None:
        """Run ``ops`` now or, inside :meth:`batched`, with the next program sent; ``sink`` gets
        their results either way. For reads no later op depends on (a script's observations)."""
        if self._batch is None:
            sink(await self.execute(ops))
        else:
            await self._enqueue(ops, sink)

    async def _enqueue(self, ops: Sequence[Op], sink: Callable[[list[Result]], None] | None) -> None:
        """Refuse now what would be refused when sent (the step that queued it is the one in
        error); send the queue first where adding ``ops`` would make it too long to go as one."""
        self._check_open()
        self._check_queued(ops)
        batch = self._batch
        assert batch is not None  # inside batched()
        if batch and not self._fits(sum(wait_us(op) for q in batch for op in q.ops) + sum(wait_us(op) for op in ops)):
            await self.flush()
        batch.append(_Queued(tuple(ops), sink, self.batch_tag))

    def _check_queued(self, ops: Sequence[Op]) -> None:
        """The refusals :meth:`execute` would make of ``ops`` alone (a backend adds its own)."""
        self.check(ops)

    def _fits(self, wait_us: float) -> bool:
        """Whether a program whose delays and timeouts add up to ``wait_us`` may go as one."""
        return True

    async def flush(self) -> None:
        """Send what :meth:`batched` has queued, as one program, and hand each queued part its
        results. A failure is raised as :class:`~hil.errors.BatchError` naming the queued part
        it belongs to (by the op index the error carries, else the last part)."""
        batch = self._batch
        if not batch:
            return
        batch_ops = [op for q in batch for op in q.ops]
        self._batch = []
        try:
            results = await self._program(batch_ops)
        except HilError as e:
            index = getattr(e, "index", None)
            culprit = batch[-1]
            if isinstance(index, int) and 0 <= index < len(batch_ops):
                start = 0
                for q in batch:
                    if index < start + len(q.ops):
                        culprit = q
                        break
                    start += len(q.ops)
            raise BatchError(culprit.tag, e) from e
        at = 0
        for q in batch:
            n = sum(1 for op in q.ops if row_of(op).result is not None)
            if q.sink is not None:
                q.sink(results[at:at + n])
            at += n

    async def _program(self, ops: Sequence[Op]) -> list[Result]:
        """One program, sent now: what :meth:`execute` does outside :meth:`batched`."""
        self._check_open()
        self.check(ops)
        async with self._lock:
            if Settle in self.OPS or not any(isinstance(op, Settle) for op in ops):
                return await self._execute(ops)
            results: list[Result] = []  # settle between the parts, all under the one lock
            start = 0
            for i, op in enumerate(ops):
                if isinstance(op, Settle):
                    if start < i:
                        results += await self._execute(ops[start:i])
                    await self._settle(op.timeout_us / 1e6)
                    start = i + 1
            if start < len(ops):
                results += await self._execute(ops[start:])
            return results

    def check(self, ops: Sequence[Op]) -> None:
        """Refuse ``ops`` unless all of it may run; run nothing.

        :meth:`execute` calls this once over the whole program before anything reaches the
        machine, so every refusal is decided here, never in ``_execute``: ``_execute`` may get
        the program in parts (split at each ``Settle``) and would refuse a later part after the
        earlier ones had run. A backend adds its own refusals (allow-list, port widths, memory
        window, ...) by overriding this and calling ``super().check(ops)`` first. A check touches
        nothing; where an earlier op changes what a later one may do (a device a sim program
        attaches), it follows the program rather than the state before it.

        Here: every step must be an operation this backend runs, and every duration a finite,
        non-negative number of microseconds (``Delay(inf)`` would sleep forever on hardware).
        """
        check_program(ops)
        irq: bool | None = None  #: the capability, asked once per check (a backend builds its capabilities afresh)
        for i, op in enumerate(ops):  # refuse before anything runs, rather than skip what cannot be done
            row = row_of(op)
            if row.irq and irq is None:
                irq = Capability.IRQ in self.capabilities
            if row.irq and not irq:
                raise UnsupportedOperationError(self._no_irq(type(op).__name__), index=i, op=type(op).__name__)
            if not isinstance(op, self.OPS) and not isinstance(op, Settle):
                raise UnsupportedOperationError(
                    f"backend {self.url} cannot run {type(op).__name__}"
                    + (": simulated devices need a sim: backend (or an agent serving one)" if row.device else "")
                )
            for name, get in row.times:
                _check_duration(i, name, get(op))

    @abc.abstractmethod
    async def _execute(self, ops: Sequence[Op]) -> list[Result]: ...

    @property
    @abc.abstractmethod
    def capabilities(self) -> Capabilities: ...

    def virtual_time_ns(self) -> int | None:
        """The backend's own clock in nanoseconds where its time is virtual (the simulator), so
        journals of the same script compare in time too; None where time is the wall's."""
        return None

    async def settle(self, timeout_s: float | None = None) -> None:
        """Return once no DMA activity can progress any more."""
        self._check_open()
        await self.flush()  # inside batched(): what was queued first
        async with self._lock:
            await self._settle(timeout_s)

    @abc.abstractmethod
    async def _settle(self, timeout_s: float | None) -> None: ...

    # --- reset notification (agent reboot, QEMU restart, ...) -----------------------------

    def add_reset_listener(self, listener: ResetListener) -> None:
        """Call ``listener(backend)`` after the far side was found reset (state lost)."""
        self._reset_listeners.append(listener)

    def remove_reset_listener(self, listener: ResetListener) -> None:
        self._reset_listeners.remove(listener)

    async def _notify_reset(self) -> None:
        log.warning("backend_reset_detected", backend=self.url)
        for listener in list(self._reset_listeners):
            await listener(self)

    # --- conveniences, each one program -----------------------------------------------------

    async def outb(self, port: int, value: int) -> None:
        await self.execute((Out(port, value, 8),))

    async def outw(self, port: int, value: int) -> None:
        await self.execute((Out(port, value, 16),))

    async def inb(self, port: int) -> int:
        return (await self.execute((In(port, 8),)))[0]  # type: ignore[return-value]  # an In's result is an int

    async def inw(self, port: int) -> int:
        return (await self.execute((In(port, 16),)))[0]  # type: ignore[return-value]  # an In's result is an int

    async def write_mem(self, addr: int, data: bytes) -> None:
        await self.execute((MemWrite(addr, bytes(data)),))

    async def read_mem(self, addr: int, length: int) -> bytes:
        return (await self.execute((MemRead(addr, length),)))[0]  # type: ignore[return-value]  # a MemRead's is bytes

    async def fill_mem(self, addr: int, length: int, value: int = 0) -> None:
        await self.execute((MemFill(addr, length, value),))

    async def delay(self, us: float) -> None:
        await self.execute((Delay(us),))

    # --- interrupt lines (capability ``irq``) ------------------------------------------------

    def _no_irq(self, what: str) -> str:
        return (f"backend {self.url} cannot run {what}: it has no capability 'irq' (interrupt lines are "
                f"observable on sim:, qemu: and agents serving them)")

    def _require_irq(self, what: str) -> None:
        self._check_open()
        if Capability.IRQ not in self.capabilities:
            raise UnsupportedOperationError(self._no_irq(what), op=what)

    def _irq_lines(self) -> IrqLines:
        """The IRQ lines as last observed (see the module docstring); backends with capability
        ``irq`` override this, the others never reach it (:meth:`_require_irq` refuses first)."""
        raise UnsupportedOperationError(self._no_irq("irq_level/irq_count"))

    def irq_level(self, n: int) -> bool:
        """The level of IRQ ``n`` as last observed (no round trip)."""
        self._require_irq("irq_level")
        return self._irq_lines().level(n)

    def irq_count(self, n: int) -> int:
        """Rising edges of IRQ ``n`` since reset (qemu: since the backend opened), as last observed."""
        self._require_irq("irq_count")
        return self._irq_lines().count(n)

    async def irq_state(self) -> IrqLines:
        """Every line's level and count now: one :class:`~hil.ops.IrqState` program."""
        self._require_irq("irq_state")
        return (await self.execute((IrqState(),)))[0]  # type: ignore[return-value]  # an IrqState's result is IrqLines

    async def wait_irq(self, n: int, level: bool = True, timeout: float = 1.0) -> bool:
        """Wait until IRQ ``n`` is at ``level`` (virtual time on a simulator); False after
        ``timeout`` seconds. One :class:`~hil.ops.WaitIrq` program."""
        self._require_irq("wait_irq")
        op = WaitIrq(n, bool(level), timeout * 1e6)
        lines = (await self.execute((op,)))[0]
        assert isinstance(lines, IrqLines)  # a WaitIrq's result
        return op.reached(lines)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}{' closed' if self._closed else ''}>"
