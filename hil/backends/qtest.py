"""The qtest line protocol of QEMU (docs/reference/qemu-qtest.md §3-§4), as an asyncio client.

One request per line, one reply per line, strictly in request order; asynchronous ``IRQ raise N``
/ ``IRQ lower N`` lines may arrive before or between replies once ``irq_intercept_in`` is on.
:class:`QtestClient` runs one reader task that hands replies to the oldest outstanding batch and
records IRQ lines, so a writer can pipeline thousands of requests: it never has more than
:data:`MAX_INFLIGHT_LINES` unanswered (QEMU writes replies with a blocking write; a client that
sends without reading would deadlock against it, §3.4).

A malformed request makes QEMU hit a ``g_assert`` and abort the whole process (§3.3), so every
request is built here from checked integers by the ``fmt_*`` helpers and nothing else is sent.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import re
import time
from collections.abc import Sequence
from dataclasses import field

from hil import oserrors
from hil.errors import InvalidAccessError, QemuExitedError, QtestError
from hil.log import get_logger
from hil.records import dataclass

log = get_logger("hil.qtest")

CHUNK_LINES = 512  #: requests written per batch
CHUNK_BYTES = 96 * 1024  #: ... or fewer, when the lines are long (base64 memory transfers)
MAX_INFLIGHT_LINES = 2048  #: unanswered requests at most (docs/reference/qemu-qtest.md §3.4)
MEM_CHUNK = 48 * 1024  #: bytes per b64read/b64write request: a reply line stays < 64 KiB
READ_LIMIT = 1 << 20  #: StreamReader line limit
IRQ_EVENT_LIMIT = 10_000  #: IRQ events kept (oldest dropped)

_REPLY_INT = re.compile(r"OK 0x([0-9a-fA-F]+)")
_IRQ = re.compile(r"IRQ (raise|lower) (\d+)")


# --- request formatting: the only way a line is built -------------------------------------------


def _int(value: object, lo: int, hi: int, what: str) -> int:
    if type(value) is not int or not lo <= value <= hi:
        raise InvalidAccessError(f"qtest {what} {value!r} is outside 0x{lo:X}..0x{hi:X}")
    return value


_WIDTH_SUFFIX = {8: "b", 16: "w", 32: "l"}


def fmt_out(port: int, value: int, width: int = 8) -> str:
    suffix = _WIDTH_SUFFIX.get(width)
    if suffix is None:
        raise InvalidAccessError(f"qtest port width {width!r}: use 8, 16 or 32")
    _int(port, 0, 0xFFFF, "port")
    _int(value, 0, (1 << width) - 1, f"{width}-bit value")
    return f"out{suffix} 0x{port:x} 0x{value:x}\n"


def fmt_in(port: int, width: int = 8) -> str:
    suffix = _WIDTH_SUFFIX.get(width)
    if suffix is None:
        raise InvalidAccessError(f"qtest port width {width!r}: use 8, 16 or 32")
    _int(port, 0, 0xFFFF, "port")
    return f"in{suffix} 0x{port:x}\n"


def fmt_b64read(addr: int, length: int) -> str:
    _int(addr, 0, (1 << 64) - 1, "address")
    _int(length, 1, 1 << 30, "length")  # LEN 0 asserts in QEMU
    return f"b64read 0x{addr:x} 0x{length:x}\n"


def fmt_b64write(addr: int, data: bytes) -> str:
    _int(addr, 0, (1 << 64) - 1, "address")
    _int(len(data), 1, 1 << 30, "length")
    return f"b64write 0x{addr:x} 0x{len(data):x} {base64.b64encode(data).decode('ascii')}\n"


def fmt_memset(addr: int, length: int, value: int) -> str:
    _int(addr, 0, (1 << 64) - 1, "address")
    _int(length, 1, 1 << 30, "length")
    _int(value, 0, 0xFF, "fill byte")
    return f"memset 0x{addr:x} 0x{length:x} 0x{value:x}\n"


def parse_int_reply(reply: str, request: str) -> int:
    m = _REPLY_INT.fullmatch(reply)
    if m is None:
        raise QtestError(f"qtest: unexpected reply {reply!r} to {request.strip()!r}")
    return int(m.group(1), 16)


def parse_b64_reply(reply: str, request: str, length: int) -> bytes:
    if not reply.startswith("OK "):
        raise QtestError(f"qtest: unexpected reply {reply[:60]!r} to {request.strip()[:60]!r}")
    data = base64.b64decode(reply[3:])
    if len(data) != length:
        raise QtestError(f"qtest: {request.strip()[:40]!r} returned {len(data)} bytes, not {length}")
    return data


# --- the client --------------------------------------------------------------------------------


@dataclass
class IrqEvent:
    t: float  #: time.monotonic() when the line was read
    line: int  #: the GSI (FDC 6, SB16 5, PIT 0)
    level: bool


@dataclass
class _Batch:
    lines: list[str]
    future: asyncio.Future[list[str]]
    replies: list[str] = field(default_factory=list)


class QtestClient:
    """Pipelined qtest over an asyncio stream pair (QEMU is the socket's client)."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        irq_ignore: frozenset[int] = frozenset({0}),
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._pending: collections.deque[_Batch] = collections.deque()
        self._dead: BaseException | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.irq_levels: dict[int, bool] = {}
        self.irq_raises: collections.Counter[int] = collections.Counter()
        self.irq_events: collections.deque[IrqEvent] = collections.deque(maxlen=IRQ_EVENT_LIMIT)
        self.irq_ignore = irq_ignore  #: lines counted and tracked but not kept as events (PIT IRQ0)
        self._irq_changed = asyncio.Event()
        self.sent = 0  #: requests sent, for statistics

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._read_loop(), name="qtest-reader")

    @property
    def alive(self) -> bool:
        return self._dead is None

    # --- reading ------------------------------------------------------------------------
    async def _read_loop(self) -> None:
        try:
            while True:
                raw = await self._reader.readline()
                if not raw:
                    raise QemuExitedError("QEMU closed the qtest connection (it exited or aborted)")
                if not raw.endswith(b"\n"):
                    raise QemuExitedError("QEMU closed the qtest connection in the middle of a reply")
                line = raw[:-1].decode("ascii", errors="replace").rstrip("\r")
                if line.startswith("IRQ "):
                    self._irq(line)
                    continue
                if not (line.startswith("OK") or line.startswith("FAIL")):
                    raise QtestError(f"qtest: unexpected line from QEMU: {line[:80]!r}")
                if not self._pending:
                    raise QtestError(f"qtest: reply {line[:80]!r} with no request outstanding")
                batch = self._pending[0]
                batch.replies.append(line)
                if len(batch.replies) == len(batch.lines):
                    self._pending.popleft()
                    if not batch.future.done():
                        batch.future.set_result(batch.replies)
        except asyncio.CancelledError:
            self._fail(QemuExitedError("qtest connection closed"))
            raise
        except (QtestError, QemuExitedError) as e:
            self._fail(e)
        except (OSError, ValueError, asyncio.LimitOverrunError, asyncio.IncompleteReadError) as e:
            self._fail(oserrors.failure("", "qtest connection failed", e, QemuExitedError))

    def _fail(self, error: BaseException) -> None:
        if self._dead is None:
            self._dead = error
            if not self._closing:
                log.warning("qtest_connection_lost", error=str(error))
        while self._pending:
            batch = self._pending.popleft()
            if not batch.future.done():
                batch.future.set_exception(self._dead)
                batch.future.exception()  # mark retrieved: the writer may already have given up
        self._irq_changed.set()

    def _irq(self, line: str) -> None:
        m = _IRQ.fullmatch(line)
        if m is None:
            raise QtestError(f"qtest: malformed IRQ line {line!r}")
        level, n = m.group(1) == "raise", int(m.group(2))
        self.irq_levels[n] = level
        if level:
            self.irq_raises[n] += 1
        if n not in self.irq_ignore:
            self.irq_events.append(IrqEvent(time.monotonic(), n, level))
            log.debug("irq", line=n, level=level)
        self._irq_changed.set()

    async def wait_irq_change(self, timeout: float) -> None:
        self._irq_changed.clear()
        try:
            await asyncio.wait_for(self._irq_changed.wait(), timeout)
        except TimeoutError:
            pass

    # --- writing ------------------------------------------------------------------------
    def _check_alive(self) -> None:
        if self._dead is not None:
            raise self._dead

    def _submit(self, lines: list[str]) -> asyncio.Future[list[str]]:
        self._check_alive()
        fut: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        self._pending.append(_Batch(lines, fut))
        self._writer.write("".join(lines).encode("ascii"))
        self.sent += len(lines)
        return fut

    async def pipeline(self, lines: Sequence[str]) -> list[str]:
        """Send ``lines`` (each ending in a newline) and return their replies, in order.

        Replies are read while sending; at most :data:`MAX_INFLIGHT_LINES` are outstanding.
        A ``FAIL`` reply raises :class:`QtestError` once the whole pipeline has been answered,
        so the stream never gets out of step.
        """
        replies: list[str] = []
        outstanding: collections.deque[tuple[int, asyncio.Future[list[str]]]] = collections.deque()
        inflight = 0
        chunk: list[str] = []
        size = 0

        async def collect_oldest() -> None:
            nonlocal inflight
            n, fut = outstanding.popleft()
            replies.extend(await fut)
            inflight -= n

        async def flush() -> None:
            nonlocal chunk, size, inflight
            while outstanding and inflight + len(chunk) > MAX_INFLIGHT_LINES:
                await collect_oldest()
            outstanding.append((len(chunk), self._submit(chunk)))
            inflight += len(chunk)
            chunk, size = [], 0
            await self._writer.drain()

        try:
            for line in lines:
                chunk.append(line)
                size += len(line)
                if len(chunk) >= CHUNK_LINES or size >= CHUNK_BYTES:
                    await flush()
            if chunk:
                await flush()
            while outstanding:
                await collect_oldest()
        except (ConnectionError, OSError) as e:
            self._check_alive()
            raise oserrors.failure("", "qtest connection failed while sending", e, QemuExitedError) from None
        for request, reply in zip(lines, replies):
            if not reply.startswith("OK"):
                raise QtestError(f"QEMU refused {request.strip()[:80]!r}: {reply[:200]}")
        return replies

    async def command(self, line: str) -> str:
        return (await self.pipeline([line]))[0]

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # closing anyway
                pass
            self._task = None
        try:
            self._writer.close()
            await asyncio.wait_for(self._writer.wait_closed(), 1.0)
        except (TimeoutError, OSError, ConnectionError):
            pass
        self._fail(QemuExitedError("qtest connection closed"))


__all__ = [
    "MEM_CHUNK",
    "IrqEvent",
    "QemuExitedError",
    "QtestClient",
    "QtestError",
    "fmt_b64read",
    "fmt_b64write",
    "fmt_in",
    "fmt_memset",
    "fmt_out",
    "parse_b64_reply",
    "parse_int_reply",
]
