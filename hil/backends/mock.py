"""``MockBackend(handler)``: a backend whose every op is answered by a function of the test's.

In the manner of httpx's ``MockTransport``: the handler gets each op of a program in order and
returns its result (an int for ``In``/``Poll``, bytes for ``MemRead``, a ``DeviceState`` for
``DevState``, an ``IrqLines`` for ``IrqState``/``WaitIrq``, None for the rest) or raises, which
is how a test makes a fault at exactly one op without a simulator. The handler sees ops, not
whole programs, so that a reply is written for one op and the mock, not every handler,
assembles the program's result list and checks it (a handler that returns a wrong kind of
result is named with the op it answered). Programs
stay visible as programs: :attr:`MockBackend.programs` keeps each one ``execute`` ran.

Everything else is the common interface: the mock opens and closes like any backend, and its
``check`` refuses what every backend refuses, with the same classes (docs in README.md,
"Errors"): ops outside ``ops``, memory outside ``memory_window``. So a handler only answers; it
never needs to re-implement a refusal.

There is no ``mock:`` URL scheme by default: a mock is nothing without its handler. To reach
one by URL (``hil run -b``, the runner, the CLI in-process), bind a handler to a scheme with
:func:`register_mock`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from hil.backends import register_backend
from hil.backends.base import Backend, Capabilities, Capability
from hil.errors import BackendError, MemoryRangeError
from hil.ops import ALL_OPS, IrqLines, Op, Result, Settle, is_reading, memory_access, port_access, spec_of

#: what a handler returns for one op: its result, or None for an op that reads nothing
Handler = Callable[[Op], Result | None]


class MockBackend(Backend):
    """Answers each op with ``handler(op)``. ``ops``: the operations it accepts (the others are
    refused as unsupported before any runs); ``memory_window``: [start, end) of the memory it
    reaches; ``features``: the capabilities it claims."""

    scheme = "mock"

    def __init__(
        self,
        handler: Handler,
        *,
        url: str = "mock:",
        ops: tuple[type, ...] = ALL_OPS,
        memory_window: tuple[int, int] = (0, 16 << 20),
        features: frozenset[Capability] = frozenset(),
        identity: str = "mock",
    ) -> None:
        super().__init__(url)
        self.handler = handler
        self.OPS = ops  # type: ignore[misc]  # a per-instance OPS: the ClassVar is the default
        self.memory_window = memory_window
        self.features = features
        self.identity = identity
        self.programs: list[tuple[Op, ...]] = []  #: every program execute() ran, in order
        self._irq = IrqLines()  #: the last IrqLines the handler answered (irq_level/irq_count with ``irq``)

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(backend=self.scheme, identity=self.identity, features=self.features,
                            memory_window=self.memory_window)

    def check(self, ops: Sequence[Op]) -> None:
        """The base refusals, and memory outside ``memory_window`` as every backend refuses it."""
        super().check(ops)
        start, end = self.memory_window
        for i, op in enumerate(ops):
            area = memory_access(op)
            if area is not None and (area.addr < start or area.addr + area.length > end):
                raise MemoryRangeError(area.addr, area.length, end, "the mock's memory window",
                                       windows=[range(start, end)], index=i)

    async def _execute(self, ops: Sequence[Op]) -> list[Result]:
        self.programs.append(tuple(ops))
        results: list[Result] = []
        for op in ops:
            result = self.handler(op)
            if is_reading(op):
                results.append(checked := _checked(op, result))
                if isinstance(checked, IrqLines):
                    self._irq = checked
            elif result is not None:
                raise BackendError(f"mock handler returned {result!r} for {op!r}, which reads nothing")
        return results

    def _irq_lines(self) -> IrqLines:
        return self._irq

    async def _settle(self, timeout_s: float | None) -> None:
        """Only reached when ``ops`` leaves out Settle: the handler still sees it, as an op."""
        self.handler(Settle(10e6 if timeout_s is None else timeout_s * 1e6))


def _checked(op: Op, result: Result | None) -> Result:
    """``result`` if it is what ``op`` reads (the op table's result type, an int within the port
    width, bytes of the length read); a handler's mistake is named with its op."""
    spec, io, area = spec_of(op), port_access(op), memory_access(op)
    want = spec.result if spec is not None else None
    fits = (want is not None and isinstance(result, want) and not isinstance(result, bool)
            and not (isinstance(result, int) and io is not None and not 0 <= result < 1 << io.width)
            and not (isinstance(result, bytes) and area is not None and len(result) != area.length))
    if not fits or result is None:
        raise BackendError(f"mock handler returned {result!r} for {op!r}")
    return result


def register_mock(scheme: str, handler: Handler, description: str = "a mock backend (tests)", **options: object) -> None:
    """Make ``open_backend(f"{scheme}:")`` give a :class:`MockBackend` answering with ``handler``
    (``options`` as for the constructor), for code that opens backends by URL."""
    register_backend(scheme, lambda url: MockBackend(handler, url=url.raw, **options), description)  # type: ignore[arg-type]  # options are MockBackend's keywords


__all__ = ["Handler", "MockBackend", "register_mock"]
