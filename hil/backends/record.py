"""``record:URL``: run on any backend and write the session to a JSONL file, for ``replay:``.

URL grammar: ``record:INNER[#FILE]``. Everything after ``record:`` up to an optional ``#`` is
the wrapped backend's URL, exactly as it would be written alone (``record:sim:?floppy=generate``,
``record:agent+tcp://127.0.0.1:7777``); the fragment is the output file, default
``hil-record.jsonl`` in the working directory. ``hil run --record FILE`` and the pytest option
``--hil-record FILE`` build the same wrapper.

The file (one JSON object per line, docs in README.md "Record and replay"): a ``session`` line
with the wrapped URL and its capabilities, then one line per ``execute()`` program, in the
order they ran, with the ops, the results or the typed error, the script step that issued it
(:data:`hil.backends.base.CURRENT_STEP`), the virtual clock and the IRQ lines after it; a
``settle`` line per ``settle()``. Order is global and strict (docs/reference/hil-lessons.md
§1.8): the 8237's flip-flop and status bits make a reordered replay wrong. Opening another
``record:`` backend on the same file in the same process appends a new ``session`` (``hil run``
opens a fresh simulator per script); the first open in a process starts the file anew.

Lines are buffered and written off the event loop (``asyncio.to_thread``) every
:data:`FLUSH_LINES` lines and at close.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hil
from hil.backends import BackendURL, open_backend
from hil.backends.base import Backend, Capabilities, Capability, current_step
from hil.backends.opjson import op_to_json, result_to_json
from hil.errors import BackendOptionError, HilError, JournalError, error_record
from hil.ops import ALL_OPS, IrqLines, Op, Result
from hil.oserrors import file_reason

FORMAT = "hil-record/1"
DEFAULT_FILE = "hil-record.jsonl"
FLUSH_LINES = 256

#: resolved path -> its log: every recorder on one file in this process shares one, so sessions
#: that overlap in time (``hil run`` keeps its first backend open while a fresh one runs) still
#: come out one after another, in the order their programs ran
_LOGS: dict[Path, SessionLog] = {}


def split_url(raw: str) -> tuple[str, str]:
    """``record:INNER#FILE`` -> (INNER, FILE)."""
    body = raw.strip()[len("record:"):]
    inner, sep, file = body.partition("#")
    if not inner:
        raise BackendOptionError(raw, "record: needs the URL of the backend to record, e.g. record:sim#run.jsonl")
    return inner, (file if sep and file else DEFAULT_FILE)


def from_url(url: BackendURL) -> RecordBackend:
    inner, file = split_url(url.raw)
    return RecordBackend(open_backend(inner), file)


class SessionLog:
    """The JSONL lines of one record file, written in order, off the event loop."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lines: list[str] = []
        self._started = False  #: the file was written by this log: later flushes append
        self._queue: deque[list[str]] = deque()  #: flushed lines not yet in the file, in order
        self._thread_lock = threading.Lock()

    @classmethod
    def for_path(cls, path: str | Path) -> SessionLog:
        key = Path(path).resolve()
        log = _LOGS.get(key)
        if log is None:
            log = _LOGS[key] = cls(path)
        return log

    def add(self, record: dict[str, Any]) -> None:
        self._lines.append(json.dumps(record, separators=(",", ":")))

    async def flush(self, *, force: bool = False) -> None:
        if not self._lines or (not force and len(self._lines) < FLUSH_LINES):
            return
        self._queue.append(self._lines)
        self._lines = []
        try:
            await asyncio.to_thread(self._write)
        except OSError as e:
            raise JournalError(f"record file {self.path}: cannot write: {file_reason(e)}") from None

    def _write(self) -> None:
        """In a worker thread: whatever is queued, in order (two flushes in flight cannot swap)."""
        with self._thread_lock:
            if not self.path.parent.exists():
                self.path.parent.mkdir(parents=True)
            while self._queue:
                lines = self._queue.popleft()
                with self.path.open("a" if self._started else "w", encoding="utf-8") as f:
                    f.write("\n".join(lines) + "\n")
                self._started = True


class RecordBackend(Backend):
    """Forward to ``inner`` and log every program, result and error (see the module docstring).

    Like :class:`hil.backends.recording.RecordingBackend` it is the backend interface and
    nothing more; unlike it, it logs to a file, logs errors, and numbers settles with programs."""

    scheme = "record"
    OPS = ALL_OPS  #: forwarded: the inner backend decides

    def __init__(self, inner: Backend, file: str | Path = DEFAULT_FILE) -> None:
        super().__init__(f"record:{inner.url}#{file}")
        self.inner = inner
        self.log = SessionLog.for_path(file)
        self.programs = 0  #: programs (and settles) recorded so far
        inner.add_reset_listener(self._inner_reset)

    @property
    def file(self) -> Path:
        return self.log.path

    async def _inner_reset(self, _inner: Backend) -> None:
        self.log.add({"kind": "reset", "program": self.programs})
        for listener in list(self._reset_listeners):
            await listener(self)

    async def _open(self) -> None:
        await self.inner.open()
        self.log.add({"kind": "session", "format": FORMAT, "hil": hil.__version__, "url": self.inner.url,
                      "capabilities": self.inner.capabilities.to_json(), "vt_ns": self.inner.virtual_time_ns()})
        await self.log.flush(force=True)  # the file exists (and is checked writable) once the backend is open

    async def _close(self) -> None:
        try:
            await self.inner.close()
        finally:
            await self.log.flush(force=True)

    @property
    def capabilities(self) -> Capabilities:
        return self.inner.capabilities

    def virtual_time_ns(self) -> int | None:
        return self.inner.virtual_time_ns()

    def _irq_lines(self) -> IrqLines:
        return self.inner._irq_lines()

    def check(self, ops: Sequence[Op]) -> None:
        self.inner.check(ops)

    def _after(self) -> dict[str, Any]:
        """What a replay answers between programs: the clock and the last observed IRQ lines."""
        out: dict[str, Any] = {"vt_ns": self.inner.virtual_time_ns()}
        if Capability.IRQ in self.inner.capabilities:
            lines = self.inner._irq_lines()
            out["irq"] = [lines.levels, list(lines.counts)]
        return out

    async def execute(self, ops: Sequence[Op]) -> list[Result]:
        self._check_open()
        ops = list(ops)
        async with self._lock:
            record: dict[str, Any] = {"kind": "program", "program": self.programs, "step": current_step(),
                                      "ops": [op_to_json(op) for op in ops]}
            self.programs += 1
            try:
                results = await self.inner.execute(ops)
            except HilError as e:
                record["error"] = error_record(e)
                self.log.add(record | self._after())
                await self.log.flush()
                raise
            record["results"] = [result_to_json(r) for r in results]
            self.log.add(record | self._after())
            await self.log.flush()
            return results

    async def _execute(self, ops: Sequence[Op]) -> list[Result]:
        return await self.inner.execute(ops)  # not reached: execute is overridden

    async def settle(self, timeout_s: float | None = None) -> None:
        self._check_open()
        async with self._lock:
            record: dict[str, Any] = {"kind": "settle", "program": self.programs, "step": current_step(),
                                      "timeout_s": timeout_s}
            self.programs += 1
            try:
                await self.inner.settle(timeout_s)
            except HilError as e:
                record["error"] = error_record(e)
                self.log.add(record | self._after())
                raise
            self.log.add(record | self._after())
            await self.log.flush()

    async def _settle(self, timeout_s: float | None) -> None:
        await self.inner.settle(timeout_s)


__all__ = ["DEFAULT_FILE", "FORMAT", "RecordBackend", "SessionLog", "from_url", "split_url"]
