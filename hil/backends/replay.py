"""``replay:FILE``: play a session recorded by ``record:`` back, with no machine behind it.

Each program must be the one recorded at that place, op for op; the first that differs raises
:class:`~hil.errors.ReplayMismatchError` naming the program index, the op (its class, port,
value), the script step that issued it now and the step that issued it when recorded. A
recorded error is raised again as its own class (:func:`hil.errors.error_from_record`), results,
capabilities, identity, the virtual clock and the IRQ lines come from the file, so a journal of a
replay equals the journal of the recorded run. A bench session recorded once is then a CI
fixture that needs neither the board nor the simulator.

A replay continues across opens within one process: the position in the file is kept per file,
so a ``hil run`` or a pytest session that opens its backend once per script replays the same
file it recorded that way. :func:`rewind` starts a file over.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hil.backends import BackendURL
from hil.backends.base import Backend, Capabilities, current_step
from hil.backends.opjson import capabilities_from_json, describe_op, op_from_json, result_from_json
from hil.backends.record import FORMAT
from hil.errors import BackendOptionError, RecordFormatError, ReplayMismatchError, error_from_record
from hil.log import get_logger
from hil.ops import ALL_OPS, IrqLines, Op, Result, check_program
from hil.oserrors import file_reason
from hil.records import dataclass

log = get_logger("hil.replay")


@dataclass
class _Tape:
    entries: list[dict[str, Any]]
    pos: int = 0  #: the next entry to play
    program: int = 0  #: programs played (the next one's index)


#: resolved path -> its tape: where the replay of that file stands in this process
_TAPES: dict[Path, _Tape] = {}


def rewind(path: str | Path) -> None:
    """Start the replay of ``path`` from its beginning at its next open."""
    _TAPES.pop(Path(path).resolve(), None)


def from_url(url: BackendURL) -> ReplayBackend:
    file = url.raw.strip()[len("replay:"):]
    if not file:
        raise BackendOptionError(url.raw, "replay: needs the file a record: session wrote, e.g. replay:run.jsonl")
    return ReplayBackend(file)


def _parse(path: Path, text: str) -> list[dict[str, Any]]:
    entries = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as e:
            raise RecordFormatError(f"not JSON: {e.msg}", file=str(path), line=n) from None
        if not isinstance(entry, dict) or entry.get("kind") not in ("session", "program", "settle", "reset"):
            raise RecordFormatError("not a line of a session record", file=str(path), line=n)
        if entry["kind"] == "session" and entry.get("format") != FORMAT:
            raise RecordFormatError(f"record format {entry.get('format')!r}; this version reads {FORMAT}",
                                    file=str(path), line=n)
        entry["line"] = n
        entries.append(entry)
    if not entries or entries[0]["kind"] != "session":
        raise RecordFormatError("a session record starts with a session line", file=str(path), line=1)
    return entries


class ReplayBackend(Backend):
    """Answers every program from the record file (see the module docstring)."""

    scheme = "replay"
    OPS = ALL_OPS  #: whatever was recorded

    def __init__(self, file: str | Path) -> None:
        super().__init__(f"replay:{file}")
        self.path = Path(file)
        self._tape: _Tape | None = None
        self._caps: Capabilities | None = None
        self._vt: int | None = None
        self._irq = IrqLines()
        self.recorded_url = ""  #: the URL of the session being replayed (its session line's)

    async def _open(self) -> None:
        key = self.path.resolve()
        tape = _TAPES.get(key)
        if tape is None:
            try:
                text = await asyncio.to_thread(self.path.read_text, encoding="utf-8")
            except OSError as e:
                raise BackendOptionError(self.url, f"cannot read the record: {file_reason(e)}") from None
            tape = _TAPES[key] = _Tape(_parse(self.path, text))
        self._tape = tape
        self._skip_markers()
        if self._caps is None:  # the tape is at its end: the last session's capabilities
            self._session(next(e for e in reversed(tape.entries) if e["kind"] == "session"))

    def _session(self, entry: dict[str, Any]) -> None:
        self.recorded_url = str(entry.get("url", ""))
        try:
            self._caps = capabilities_from_json(entry.get("capabilities"))
        except RecordFormatError as e:
            raise RecordFormatError(str(e), file=str(self.path), line=entry["line"]) from None
        self._vt = entry.get("vt_ns")

    def _skip_markers(self) -> list[dict[str, Any]]:
        """Pass session lines (taking their capabilities) and collect reset lines."""
        assert self._tape is not None
        resets = []
        tape = self._tape
        while tape.pos < len(tape.entries) and tape.entries[tape.pos]["kind"] in ("session", "reset"):
            entry = tape.entries[tape.pos]
            tape.pos += 1
            if entry["kind"] == "session":
                self._session(entry)
            else:
                resets.append(entry)
        return resets

    @property
    def capabilities(self) -> Capabilities:
        if self._caps is None:
            raise BackendOptionError(self.url, "the record is read when the backend opens")
        return self._caps

    @property
    def remaining(self) -> int:
        """Programs and settles recorded but not yet replayed."""
        tape = self._tape
        return 0 if tape is None else sum(e["kind"] in ("program", "settle") for e in tape.entries[tape.pos:])

    def virtual_time_ns(self) -> int | None:
        return self._vt

    def _irq_lines(self) -> IrqLines:
        return self._irq

    def check(self, ops: Sequence[Op]) -> None:
        check_program(ops)  # what the recorded backend refused is in the record, raised at its place

    def _fail(self, program: int, message: str, op_index: int | None = None, recorded_step: object = None) -> None:
        step = current_step()
        issued = f" (issued by {step})" if step else ""
        if recorded_step and recorded_step != step:
            issued += f" (recorded from {recorded_step})"
        raise ReplayMismatchError(f"replay {self.path}: program {program}{issued}: {message}",
                                  program=program, op_index=op_index, step=step)

    async def _next(self, kind: str, what: str) -> dict[str, Any]:
        assert self._tape is not None
        for _ in self._skip_markers():
            await self._notify_reset()
        tape = self._tape
        program = tape.program
        if tape.pos >= len(tape.entries):
            self._fail(program, f"the recording ended after {program} programs; got {what}")
        entry = tape.entries[tape.pos]
        if entry["kind"] != kind:
            recorded = (f"a settle({entry.get('timeout_s')})" if entry["kind"] == "settle"
                        else f"a program of {len(entry.get('ops', []))} ops")
            self._fail(program, f"recorded {recorded}, got {what}", None, entry.get("step"))
        tape.pos += 1
        tape.program += 1
        return entry

    def _finish(self, entry: dict[str, Any]) -> None:
        self._vt = entry.get("vt_ns", self._vt)
        irq = entry.get("irq")
        if isinstance(irq, list) and len(irq) == 2:
            self._irq = IrqLines(int(irq[0]), tuple(int(c) for c in irq[1]))
        if "error" in entry:
            raise error_from_record(entry["error"])

    async def execute(self, ops: Sequence[Op]) -> list[Result]:
        self._check_open()
        ops = list(ops)
        self.check(ops)
        first = describe_op(ops[0]) if ops else "nothing"
        entry = await self._next("program", f"a program of {len(ops)} ops (first: {first})")
        program = entry.get("program", self._tape.program - 1 if self._tape else 0)
        try:
            recorded = [op_from_json(o) for o in entry.get("ops", [])]
        except RecordFormatError as e:
            raise RecordFormatError(str(e), file=str(self.path), line=entry["line"]) from None
        for i, (want, got) in enumerate(zip(recorded, ops)):
            if want != got:
                self._fail(program, f"op {i} differs: recorded {describe_op(want)}, got {describe_op(got)}",
                           i, entry.get("step"))
        if len(recorded) != len(ops):
            i = min(len(recorded), len(ops))
            extra = (f"the recording has {describe_op(recorded[i])} there" if len(recorded) > len(ops)
                     else f"got {describe_op(ops[i])}, beyond the {len(recorded)} recorded")
            self._fail(program, f"op {i}: the program has {len(ops)} ops, the recording {len(recorded)}; {extra}",
                       i, entry.get("step"))
        self._finish(entry)
        try:
            return [result_from_json(r) for r in entry.get("results", [])]
        except RecordFormatError as e:
            raise RecordFormatError(str(e), file=str(self.path), line=entry["line"]) from None

    async def _execute(self, ops: Sequence[Op]) -> list[Result]:
        return await self.execute(ops)  # not reached: execute is overridden

    async def settle(self, timeout_s: float | None = None) -> None:
        self._check_open()
        entry = await self._next("settle", f"settle({timeout_s})")
        if entry.get("timeout_s") != timeout_s:
            self._fail(entry.get("program", 0), f"settle timeout differs: recorded {entry.get('timeout_s')}, "
                                                f"got {timeout_s}", None, entry.get("step"))
        self._finish(entry)

    async def _settle(self, timeout_s: float | None) -> None:
        await self.settle(timeout_s)

    async def _close(self) -> None:
        if self.remaining:
            log.warning("replay_not_finished", file=str(self.path), remaining=self.remaining)


__all__ = ["ReplayBackend", "from_url", "rewind"]
