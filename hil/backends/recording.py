"""A backend wrapper that records every operation and its result, in order.

Order is everything for the 8237 (the flip-flop, TC bits cleared by a status read), so the
record is one strictly sequential list, as Glasgow's replay does and chipsec's does not
(docs/reference/hil-lessons.md §1.8). Tests use it to compare emitted port traffic with the Linux traces in
docs/reference/linux-isa-dma.md; journals and replays build on the same entries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hil.backends.base import Backend, Capabilities
from hil.backends.ops import ALL_OPS, READING_OPS, In, Op, Out, Poll, Result


@dataclass(frozen=True, slots=True)
class TraceEntry:
    op: Op
    result: Result | None
    program: int  #: index of the execute() call the op belonged to


class RecordingBackend(Backend):
    """Forward to ``inner`` and keep ``trace``; ``programs`` counts round trips."""

    scheme = "recording"
    OPS = ALL_OPS  #: forwarded: the inner backend decides

    def __init__(self, inner: Backend) -> None:
        super().__init__(f"recording+{inner.url}")
        self.inner = inner
        self.trace: list[TraceEntry] = []
        self.programs = 0

    def __getattr__(self, name: str) -> Any:  # expose e.g. ``machine`` of a sim backend
        return getattr(self.inner, name)

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

    def check(self, ops: Sequence[Op]) -> None:
        """What the inner backend refuses (``execute`` forwards whole programs to it)."""
        self.inner.check(ops)

    async def _execute(self, ops: Sequence[Op]) -> list[Result]:
        results = await self.inner.execute(ops)
        it = iter(results)
        for op in ops:
            self.trace.append(TraceEntry(op, next(it) if isinstance(op, READING_OPS) else None, self.programs))
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
            op = entry.op
            if isinstance(op, Out):
                out.append(("W", op.port, op.value))
            elif isinstance(op, (In, Poll)):
                out.append(("R", op.port, entry.result))  # type: ignore[arg-type]  # an In's or Poll's is an int
        return out
