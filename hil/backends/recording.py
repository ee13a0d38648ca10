"""A backend wrapper that records every operation and its result, in order.

Order is everything for the 8237 (the flip-flop, TC bits cleared by a status read), so the
record is one strictly sequential list, as Glasgow's replay does and chipsec's does not
(docs/reference/hil-lessons.md §1.8). Tests use it to compare emitted port traffic with the Linux traces in
docs/reference/linux-isa-dma.md; journals and replays build on the same entries.
"""

from __future__ import annotations

from collections.abc import Sequence

from hil.backends.base import Backend, Capabilities
from hil.ops import ALL_OPS, IrqLines, Op, Result, is_reading, port_access
from hil.records import dataclass


@dataclass(frozen=True, slots=True)
class TraceEntry:
    op: Op
    result: Result | None
    program: int  #: index of the execute() call the op belonged to


class RecordingBackend(Backend):
    """Forward to ``inner`` and keep ``trace``; ``programs`` counts round trips.

    The wrapper is the :class:`Backend` interface and nothing more: open/close, ``check``,
    ``execute``, ``settle``, ``capabilities``, ``virtual_time_ns``, the last observed IRQ lines
    and reset notification each forward to ``inner`` by name, and the conveniences are the base class's one-op programs, so
    they are recorded too. Whatever else ``inner`` has (a simulator's ``machine``) stays out of
    reach, so code that works over a recording works over any backend, an agent's included.
    """

    scheme = "recording"
    OPS = ALL_OPS  #: forwarded: the inner backend decides

    def __init__(self, inner: Backend) -> None:
        super().__init__(f"recording+{inner.url}")
        self.inner = inner
        self.trace: list[TraceEntry] = []
        self.programs = 0
        inner.add_reset_listener(self._inner_reset)

    async def _inner_reset(self, _inner: Backend) -> None:
        """The far side of ``inner`` was reset: tell this wrapper's listeners, naming the wrapper
        (the one they registered with); ``inner`` already logged it."""
        for listener in list(self._reset_listeners):
            await listener(self)

    async def _open(self) -> None:
        await self.inner.open()

    async def _close(self) -> None:
        await self.inner.close()

    @property
    def opened(self) -> bool:
        """Open once ``inner`` is: wrapping a backend already in use records it as it is."""
        return self._opened or self.inner.opened

    @property
    def capabilities(self) -> Capabilities:
        return self.inner.capabilities

    def virtual_time_ns(self) -> int | None:
        return self.inner.virtual_time_ns()

    def _irq_lines(self) -> IrqLines:
        return self.inner._irq_lines()  # the inner backend's last observed lines (irq_level/irq_count)

    def check(self, ops: Sequence[Op]) -> None:
        """What the inner backend refuses (``execute`` forwards whole programs to it)."""
        self.inner.check(ops)

    async def _execute(self, ops: Sequence[Op]) -> list[Result]:
        results = await self.inner.execute(ops)
        it = iter(results)
        for op in ops:
            self.trace.append(TraceEntry(op, next(it) if is_reading(op) else None, self.programs))
        self.programs += 1
        return results

    async def _settle(self, timeout_s: float | None) -> None:
        await self.inner.settle(timeout_s)

    def clear(self) -> None:
        self.trace.clear()
        self.programs = 0

    def port_trace(self) -> list[tuple[str, int, int]]:
        """``("W", port, value)`` / ``("R", port, value)`` for every byte port access."""
        out: list[tuple[str, int, int]] = []
        for entry in self.trace:
            io = port_access(entry.op)
            if io is None:
                continue
            if io.write:
                out.append(("W", io.port, io.value))
            else:
                out.append(("R", io.port, entry.result))  # type: ignore[arg-type]  # an In's or Poll's is an int
        return out
