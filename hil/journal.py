"""Results of a script run: observations, and the JSONL journal they are written to as they happen.

The journal is flushed line by line, so a run that is killed or fails keeps everything up to
that point. :func:`read_journal` keeps every good record: a truncated last line (a kill) or a
damaged line anywhere is skipped and reported (``file:line: why``) in the result's ``problems``,
never a reason to drop the records after it. ``hil diff`` compares journals, whether it just
wrote them or they were saved from a bench weeks ago.
"""

from __future__ import annotations

import datetime as _dt
import errno
import hashlib
import io
import json
import operator
import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import field, fields
from pathlib import Path
from typing import IO, Any, ClassVar

from hil import oserrors
from hil.errors import (
    JournalError as JournalError,  # defined there; importable from here as before
)
from hil.records import dataclass

JOURNAL_VERSION = 1
SHOWN_BYTES = 32  #: hex bytes of data shown in a one-line description


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, with an ellipsis when something was cut."""
    return text if len(text) <= limit else text[:limit] + "…"


#: the keys of an observation record, in the order every kind writes them (docs/scripts.md "The
#: journal"): a kind writes those of its fields that are set, so records stay comparable by eye
RECORD_KEYS = ("step", "op", "index", "name", "port", "width", "channel", "irq", "addr", "length", "value", "level",
               "count", "reached", "tc", "data", "digest", "expect", "mask", "ok", "diff_mask", "may_differ", "error",
               "t", "vt_ns")


@dataclass
class Observation:
    """One thing a step saw; each kind of observation is a subclass with the fields it has. The
    base holds what every kind has: which step, how ``hil diff`` may treat it, when it was made.
    A field is None where a journal lacks it (an observation is also read back from old files)."""

    op: ClassVar[str] = ""  #: the op of the step that saw it (and the record's ``op``)
    step: str  #: path label of the step ("3", "5[2].1")
    index: int = -1  #: flat step index
    name: str = ""
    ok: bool | None = None  #: None = nothing expected
    diff_mask: int | None = None
    may_differ: bool = False
    t: float = 0.0  #: seconds since the run started (wall)
    vt_ns: int | None = None  #: virtual time, on virtual-time backends

    @property
    def error(self) -> str | None:
        """Why the step could not run (:class:`ErrorObs`); None for what a step saw."""
        return None

    def to_json(self) -> dict[str, Any]:
        return self._fill({})

    def _fill(self, record: dict[str, Any]) -> dict[str, Any]:
        """``record`` with this observation's keys added (a journal passes one that already has
        its ``type``: one dict per record, not two).

        ``ok`` and ``tc`` are tri-state: False is an observation (a failed expectation, no
        terminal count), not an absent field, so only None, an empty name and the default
        ``may_differ`` are left out."""
        for key in _record_keys(type(self)):
            if (v := getattr(self, key)) is not None:
                record[key] = v
        if record.get("name") == "":
            del record["name"]
        if record.get("may_differ") is False:
            del record["may_differ"]
        return record

    @staticmethod
    def from_json(d: dict[str, Any]) -> Observation:
        """The observation a record holds, of the kind its ``op`` (or ``error``) says; fields
        the kind does not have (a newer writer's) are ignored. :class:`JournalError` for an op
        that observes nothing."""
        if d.get("error") is not None:
            kind: type[Observation] = ErrorObs
            d = {**d, "failed_op": d.get("op", ""), "message": d["error"]}
        elif (found := OBS_KINDS.get(d.get("op"))) is not None:  # type: ignore[arg-type]  # any JSON value
            kind = found
        else:
            raise JournalError(f"op {clip(repr(d.get('op')), 40)} records no observation")
        known = {f.name for f in fields(kind)}
        return kind(**{k: v for k, v in d.items() if k in known})

    @property
    def label(self) -> str:
        """How reports name the step: ``step 7 (its name)``, the same in ``hil run`` and ``hil diff``."""
        return f"step {self.step}" + (f" ({self.name})" if self.name else "")

    def describe(self) -> str:
        """One line: what the step saw and, when it did not hold, what was expected."""
        return self.op


@dataclass
class InObs(Observation):
    """An ``in`` step: the port's value, and with ``expect`` the check under ``mask``."""

    op: ClassVar[str] = "in"
    port: int | None = None
    width: int | None = None
    value: int | None = None
    expect: int | None = None
    mask: int | None = None

    def describe(self) -> str:
        shown = f"read 0x{self.value:02X}" if self.value is not None else "no value"
        if self.expect is not None:
            shown += f", expected 0x{self.expect:02X}" + (
                f" under mask 0x{self.mask:02X}" if self.mask not in (None, 0xFF, 0xFFFF) else "")
        return f"in 0x{self.port:02X}: {shown}"


@dataclass
class ReadObs(Observation):
    """A ``read`` step: the digest always, the bytes (hex) when recorded, what was expected."""

    op: ClassVar[str] = "read"
    addr: int | None = None
    length: int | None = None
    data: str | None = None
    digest: str | None = None
    expect: str | None = None  #: hex bytes or a digest

    def describe(self) -> str:
        head = clip(self.data or "", 2 * SHOWN_BYTES)
        text = f"read 0x{self.addr:X}+{self.length}: " + (f"{head} " if head else "") + f"{self.digest}"
        return text + (f", expected {clip(str(self.expect), 2 * SHOWN_BYTES)}" if self.ok is False else "")


@dataclass
class ResidueObs(Observation):
    """A ``residue`` step: the channel's residue in bytes."""

    op: ClassVar[str] = "residue"
    channel: int | None = None
    value: int | None = None
    expect: int | None = None

    def describe(self) -> str:
        return f"residue ch{self.channel}: {self.value}" + (f", expected {self.expect}" if self.expect is not None else "")


@dataclass
class WaitTcObs(Observation):
    """A ``wait_tc`` step: whether TC came, the residue (``value``) of the ``length`` programmed."""

    op: ClassVar[str] = "wait_tc"
    channel: int | None = None
    length: int | None = None
    value: int | None = None
    tc: bool | None = None
    expect: str | None = None  #: "complete" when expected

    def describe(self) -> str:
        return f"wait_tc ch{self.channel}: tc={'yes' if self.tc else 'no'} residue {self.value} of {self.length}"


@dataclass
class DeviceObs(Observation):
    """A device at the end of a run (step ``end.deviceN``): bytes moved (``length``), under- or
    overruns (``value``), TC seen; a sink also what it received (``data`` up to a limit, ``digest``)."""

    op: ClassVar[str] = "device"
    channel: int | None = None
    length: int | None = None
    value: int | None = None
    tc: bool | None = None
    data: str | None = None
    digest: str | None = None

    def describe(self) -> str:
        return f"device ch{self.channel}: {self.length} bytes moved, {'TC seen' if self.tc else 'no TC'}" + (
            f", digest {self.digest}" if self.digest else "")


@dataclass
class IrqObs(Observation):
    """An ``irq`` step: IRQ line ``irq``'s level and its rising edges since reset (``count``);
    ``expect`` says what was expected of them (``level=true count=2``)."""

    op: ClassVar[str] = "irq"
    irq: int | None = None
    level: bool | None = None
    count: int | None = None
    expect: str | None = None

    def shown(self) -> str:
        return f"level {'high' if self.level else 'low'}, {self.count} rising edge(s)"

    def describe(self) -> str:
        return f"{self.op} {self.irq}: {self.shown()}" + (f", expected {self.expect}" if self.expect else "")


@dataclass
class WaitIrqObs(IrqObs):
    """A ``wait_irq`` step: whether the line ``reached`` the level before the timeout, and the
    line's level and count when the wait ended; ``expect`` is ``reached`` or ``timeout``."""

    op: ClassVar[str] = "wait_irq"
    reached: bool | None = None

    def shown(self) -> str:
        return ("reached" if self.reached else "timed out") + f" ({super().shown()})"


@dataclass
class ErrorObs(Observation):
    """A step that could not run: the run's error, recorded at the step (``ok`` false)."""

    failed_op: str = ""  #: the step's op (the record's ``op``)
    message: str = ""  #: the record's ``error``

    @property
    def op(self) -> str:  # type: ignore[override]  # a ClassVar on the other kinds, the failed step's op here
        return self.failed_op

    @property
    def error(self) -> str | None:
        return self.message

    def describe(self) -> str:
        return f"error: {self.message}"


_KEYS: dict[type[Observation], tuple[str, ...]] = {}


def _record_keys(kind: type[Observation]) -> tuple[str, ...]:
    """The record keys an observation of ``kind`` has, in :data:`RECORD_KEYS` order (worked
    out once per kind: a journal writes one record per step)."""
    keys = _KEYS.get(kind)
    if keys is None:
        keys = _KEYS[kind] = tuple(key for key in RECORD_KEYS if hasattr(kind, key) or key in kind.__dataclass_fields__)
    return keys


#: the kinds of observation by the op that makes them (ErrorObs: any op)
OBS_KINDS: dict[str, type[Observation]] = {k.op: k for k in (InObs, ReadObs, ResidueObs, WaitTcObs, DeviceObs, IrqObs,
                                                               WaitIrqObs)}


@dataclass
class RunResult:
    script: str
    file: str
    backend: str  #: the URL it ran on
    identity: str = ""
    capabilities: dict[str, Any] = field(default_factory=dict)
    observations: list[Observation] = field(default_factory=list)
    #: passed | failed | error | interrupted (Ctrl-C, cancelled) | skipped (backend lacks a
    #: required capability; ``error`` says which) | running (journal cut short: killed)
    status: str = "running"
    error: str | None = None
    elapsed: float = 0.0
    steps_total: int = 0
    #: lines :func:`read_journal` skipped (damaged, cut short, not a record it knows), in order
    problems: list[JournalProblem] = field(default_factory=list)

    @property
    def failures(self) -> list[Observation]:
        """Failed expectations; a step that could not run is the run's error, not one of these."""
        return [o for o in self.observations if o.ok is False and not o.error]

    @property
    def tags(self) -> set[str]:
        """Labels known-deviation lists match against: URL, scheme, profile, and for an agent run
        the agent's own I/O backend (``details.io``), so an agent serving ``sim:?profile=qemu``
        matches what ``sim:?profile=qemu`` matches."""
        scheme = self.capabilities.get("backend", "")
        details = self.capabilities.get("details", {})
        profile, io = details.get("profile"), details.get("io")
        tags = {self.backend, scheme}
        for kind in (scheme, io):
            if kind:
                tags.add(kind)
                if profile:
                    tags |= {profile, f"{kind}:{profile}"}
        return {t for t in tags if t}


_DUMPS = json.JSONEncoder(separators=(",", ":")).encode  #: ``json.dumps(record, separators=(",", ":"))``
_STR = json.encoder.encode_basestring_ascii  #: how ``json.dumps`` writes a string (ensure_ascii)
_FLOAT = json.encoder.INFINITY


#: each record key as the encoder writes it, with its colon (the keys are few and fixed)
_KEY_TEXT = {key: _STR(key) + ":" for key in ("type", *RECORD_KEYS)}


def _encode(record: dict[str, Any]) -> str:
    """``json.dumps(record, separators=(",", ":"))`` for a flat record of strings, ints, bools,
    floats and None, the text ``json.dumps`` makes, at a third of its cost (it sets up an encoder
    per call); anything else (nested values, keys that are not strings) goes to ``json.dumps``.
    tests/test_journal_encode.py compares the two."""
    parts: list[str] = []
    add = parts.append
    for key, v in record.items():
        k = _KEY_TEXT.get(key)
        if k is None:
            if type(key) is not str:
                return _DUMPS(record)
            k = _STR(key) + ":"
        t = type(v)
        if t is int:
            add(k + int.__repr__(v))
        elif t is str:
            add(k + _STR(v))
        elif v is None:
            add(k + "null")
        elif t is bool:
            add(k + ("true" if v else "false"))
        elif t is float and v == v and v != _FLOAT and v != -_FLOAT:
            add(k + float.__repr__(v))
        else:
            return _DUMPS(record)
    return "{" + ",".join(parts) + "}"


_NAME, _MAY_DIFFER = _KEY_TEXT["name"], _KEY_TEXT["may_differ"]
#: per kind of observation: one getter of all its record keys' values, and the keys' texts
_OBS_TEXT: dict[type[Observation], tuple[Callable[[Observation], tuple[Any, ...]], tuple[str, ...]]] = {}


def _obs_text(obs: Observation) -> str:
    """``_encode(obs._fill({"type": "obs"}))``, the record of an observation, without the
    intermediate dict: the kind's values fetched in one call, the keys' texts made once per
    kind. Anything but flat values goes to that general path (tests/test_runner_fastpath.py
    compares the two)."""
    kind = type(obs)
    enc = _OBS_TEXT.get(kind)
    if enc is None:
        keys = _record_keys(kind)
        enc = _OBS_TEXT[kind] = (operator.attrgetter(*keys), tuple(_KEY_TEXT[k] for k in keys))
    get, texts = enc
    parts = ['{"type":"obs"']
    add = parts.append
    for k, v in zip(texts, get(obs)):
        if v is None:
            continue
        t = type(v)
        if t is int:
            add(k + int.__repr__(v))
        elif t is str:
            if v or k is not _NAME:  # an empty name is left out
                add(k + _STR(v))
        elif t is bool:
            if v or k is not _MAY_DIFFER:  # so is the default may_differ
                add(k + ("true" if v else "false"))
        elif t is float and v == v and v != _FLOAT and v != -_FLOAT:
            add(k + float.__repr__(v))
        else:
            return _encode(obs._fill({"type": "obs"}))
    return ",".join(parts) + "}"


def json_str(text: str) -> str:
    """``text`` as the journal writes a string (``json.dumps``, ensure_ascii)."""
    return _STR(text)


@dataclass(frozen=True)
class ObsFormat:
    """The journal line of every observation one step makes, worked out once for the step: the
    record's text as ``%``-formats, its constant keys written in, a ``%s`` for each key that
    differs from one observation to the next (given as the JSON text :func:`_encode` writes for
    it: an int as it is, a string through :func:`json_str`, a bool as ``"true"``/``"false"``),
    then ``t`` (``%r`` of the float) and, in :attr:`with_vt`, ``vt_ns``. A runner's compiled step
    fills it in for the price of one ``%``; tests/test_runner_fastpath.py holds it to
    :meth:`Journal.observation`'s text."""

    with_vt: str  #: the format when the observation has a ``vt_ns``
    without_vt: str  #: ... and when it has none


def obs_format(sample: Observation, slots: Sequence[str]) -> ObsFormat:
    """The :class:`ObsFormat` of observations like ``sample``: the same kind, every key equal
    or equally absent, except ``t``, ``vt_ns`` and the ``slots`` (present in ``sample``, in
    record key order), which differ."""
    record = sample._fill({"type": "obs"})
    keys = [k for k in record if k not in ("t", "vt_ns")]
    if list(record)[len(keys):] not in (["t"], ["t", "vt_ns"]) or [k for k in keys if k in slots] != list(slots):
        raise ValueError(f"slots {slots} are not keys of {record} in record order, before t")
    parts = []
    for key in keys:  # "type" and the RECORD_KEYS: names without a "%"
        value = "%s" if key in slots else _encode({key: record[key]})[len(_KEY_TEXT[key]) + 1:-1].replace("%", "%%")
        parts.append(_KEY_TEXT[key] + value)
    head = "{" + ",".join(parts) + ',"t":%r'
    return ObsFormat(head + ',"vt_ns":%s}', head + "}")


class Journal:
    """Append-only JSONL writer; every record is flushed as soon as it is written."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        _make_parent(self.path)
        try:
            # unbuffered: each record is one write(2) of its line, on disk for a reader (hil
            # diff, a killed run's post-mortem) as soon as it exists, without a flush per record
            self._fh: io.FileIO | None = open(self.path, "wb", buffering=0)
        except OSError as e:
            raise JournalError(f"journal {self.path}: cannot write it: {oserrors.file_reason(e)}") from None

    def _write(self, record: dict[str, Any]) -> None:
        self.write_line(_encode(record))

    def write_line(self, text: str) -> None:
        """One record's text (without its newline) as a line of the journal."""
        fh = self._fh
        if fh is None:
            return
        line = (text + "\n").encode("utf-8")
        try:
            n = fh.write(line)
            while n != len(line):  # a regular file takes it whole; a pipe or a device may take a part
                if not n:
                    raise OSError(errno.EIO, "the file took none of a record")
                line = line[n:]
                n = fh.write(line)
        except OSError as e:  # a full disk, a file that takes no writes: one line, not a traceback
            raise JournalError(f"journal {self.path}: cannot write it: {oserrors.file_reason(e)}") from None

    def header(self, result: RunResult) -> None:
        self._write({
            "type": "header",
            "version": JOURNAL_VERSION,
            "script": result.script,
            "file": result.file,
            "backend": result.backend,
            "identity": result.identity,
            "capabilities": result.capabilities,
            "steps": result.steps_total,
            "started": _dt.datetime.now(_dt.UTC).isoformat(),
            "pid": os.getpid(),
        })

    def observation(self, obs: Observation) -> None:
        self.write_line(_obs_text(obs))

    def end(self, result: RunResult) -> None:
        self._write({"type": "end", "status": result.status, "error": result.error,
                     "failures": len(result.failures), "elapsed": round(result.elapsed, 6)})

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def journal_names(files: Sequence[str | Path]) -> list[str]:
    """Journal file names for scripts run together: the script file's stem (``floppy-read.jsonl``),
    so a name does not depend on which other scripts a glob matched or in what order. Stems
    that collide get a short hash of the resolved path, which is order-independent too."""
    stems = ["".join(c if c.isalnum() or c in "-_." else "_" for c in Path(f).stem) for f in files]
    seen = Counter(stems)
    names = []
    for file, stem in zip(files, stems):
        if seen[stem] > 1:
            stem += "-" + hashlib.sha256(str(Path(file).resolve()).encode()).hexdigest()[:8]
        names.append(f"{stem}.jsonl")
    return names


def junit(results: Sequence[RunResult], name: str = "hil run") -> str:
    """A JUnit XML report of runs: one test case per script, in the style of ``hil diff --junit``.
    Failed expectations are a failure, a run that stopped (error, interrupted) an error, a skipped
    script a skipped case; each message is the line ``hil run`` prints."""
    import xml.etree.ElementTree as ET  # only for a report: not imported by every run

    suites = ET.Element("testsuites", name=name)
    by_backend: dict[str, list[RunResult]] = {}
    for r in results:
        by_backend.setdefault(r.backend, []).append(r)
    for backend, runs in by_backend.items():
        count = Counter(r.status for r in runs)
        suite = ET.SubElement(suites, "testsuite", name=f"{name} on {backend}", tests=str(len(runs)),
                              failures=str(count["failed"]), errors=str(count["error"] + count["interrupted"]),
                              skipped=str(count["skipped"]), time=f"{sum(r.elapsed for r in runs):.6f}")
        ET.SubElement(ET.SubElement(suite, "properties"), "property", name="backend", value=backend)
        for r in runs:
            case = ET.SubElement(suite, "testcase", classname=Path(r.file).stem or r.script, name=r.script,
                                 file=r.file, time=f"{r.elapsed:.6f}")
            fails = [f"FAIL {o.label}: {o.describe()}" for o in r.failures]
            match r.status:
                case "skipped":
                    ET.SubElement(case, "skipped", message=r.error or "skipped")
                case "failed":
                    ET.SubElement(case, "failure", message=f"{len(fails)} failed expectation(s)").text = "\n".join(fails)
                case "error" | "interrupted" | "running":
                    ET.SubElement(case, "error", message=r.error or r.status).text = "\n".join(fails) or None
    return ET.tostring(suites, encoding="unicode")


@dataclass(frozen=True)
class JournalProblem:
    """A line :func:`read_journal` skipped, and why."""

    file: str
    line: int
    why: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.why}"


def _make_parent(path: Path, *, create: bool = True) -> None:
    """Create the directories above ``path`` (or, ``create=False``, make sure they could be),
    naming the first one that cannot be (a file where a directory should be, no permission)
    rather than failing with an OSError."""
    parent = path.parent
    if parent.is_dir():
        return
    existing = next((a for a in parent.parents if a.exists()), None)  # the nearest that exists
    if parent.exists() or (existing is not None and not existing.is_dir()):
        raise JournalError(f"journal {path}: {parent if parent.exists() else existing} is not a directory")
    if not create:
        if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
            raise JournalError(f"journal {path}: cannot create directory {parent}: {existing} is not writable")
        return
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise JournalError(f"journal {path}: cannot create directory {parent}: {oserrors.file_reason(e)}") from None


def check_journal_path(path: str | Path) -> Path:
    """Make sure a journal can be written at ``path`` before anything runs (``hil run`` checks
    every journal it will write first), leaving no trace: its directory exists or could be
    created, and the file, if its directory exists, opens for writing (a file this check
    creates is removed again; an existing one is not changed)."""
    p = Path(path)
    if p.is_dir():
        raise JournalError(f"journal {p}: is a directory; give a file name")
    if p.resolve().parts[1:2] in (("proc",), ("sys",)):  # they open for writing, then fail each write
        raise JournalError(f"journal {p}: is a kernel interface file, not a place for a journal")
    if p.exists() and not (p.is_file() or p.is_char_device() or p.is_fifo()):
        raise JournalError(f"journal {p}: is not a regular file")
    _make_parent(p, create=False)
    if not p.parent.is_dir():
        return p  # created when the journal is
    existed = p.exists()
    try:  # non-blocking: a FIFO without a reader is refused at once rather than waited on
        fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK, 0o644)
    except OSError as e:
        raise JournalError(f"journal {p}: cannot write it: {oserrors.file_reason(e)}") from None
    os.close(fd)
    if not existed:
        p.unlink(missing_ok=True)
    return p


def check_journal_dir(path: str | Path) -> Path:
    """``--journal-dir``: a directory, or one that could be created."""
    d = Path(path)
    if d.exists() and not d.is_dir():
        raise JournalError(f"journal directory {d}: is not a directory")
    _make_parent(d / "x.jsonl", create=False)
    return d


#: what each record field may hold, from the annotations of :class:`Observation`; a record with
#: another type is damaged (a ``"step": 5`` would break the comparison far from its cause)
_TYPES: dict[str, tuple[type, ...]] = {"int": (int,), "str": (str,), "bool": (bool,), "float": (int, float)}
_STATUSES = {"passed", "failed", "error", "interrupted", "skipped", "running"}


def _field_types(annotation: str) -> tuple[type, ...]:
    parts = [t.strip() for t in annotation.split("|")]
    return tuple(t for part in parts for t in _TYPES.get(part, ())) + ((type(None),) if "None" in parts else ())


def _obs_types() -> dict[str, tuple[type, ...]]:
    """Each record key with every type some kind of observation gives it."""
    out: dict[str, tuple[type, ...]] = {"op": (str,), "error": (str, type(None))}
    for kind in OBS_KINDS.values():
        for f in fields(kind):
            out[f.name] = tuple(dict.fromkeys(out.get(f.name, ()) + _field_types(str(f.type))))
    null = type(None)  # last, as the annotations write it: "int/str/null"
    return {key: tuple(t for t in out[key] if t is not null) + ((null,) if null in out[key] else ())
            for key in RECORD_KEYS}


_OBS_TYPES = _obs_types()


def _type_ok(value: object, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool) and bool not in types:
        return False  # JSON true is not a number here
    return isinstance(value, types)


def _bad_field(rec: dict[str, Any], expected: dict[str, tuple[type, ...]], required: tuple[str, ...]) -> str | None:
    for key in required:
        if key not in rec:
            return f"missing field {key!r}"
    for key, types in expected.items():
        if key in rec and types and not _type_ok(rec[key], types):
            names = "/".join("null" if t is type(None) else t.__name__ for t in types)
            return f"field {key!r} is {type(rec[key]).__name__} {clip(repr(rec[key]), 40)}, expected {names}"
    return None


_HEADER_TYPES: dict[str, tuple[type, ...]] = {"script": (str,), "file": (str,), "backend": (str,), "identity": (str,),
                                              "capabilities": (dict,), "steps": (int,)}
_END_TYPES: dict[str, tuple[type, ...]] = {"status": (str,), "error": (str, type(None)), "elapsed": (int, float)}


def read_journal(path: str | Path) -> RunResult:
    """Load a journal; a missing ``end`` record leaves ``status == "running"`` (cut short).

    Every line that is not a good record is skipped and listed in ``problems`` with its line
    number and why, and reading goes on: a damaged line in the middle loses that record, not
    every one after it. Only a file with no usable header is refused (:class:`JournalError`):
    without one nothing says which script or backend the records belong to."""
    result: RunResult | None = None
    problems: list[JournalProblem] = []
    name = str(path)
    try:
        fh = open(path, "rb")  # line by line: a journal can be larger than memory
    except OSError as e:
        raise JournalError(f"{name}: cannot read it: {oserrors.file_reason(e)}") from None
    with fh:
        for lineno, raw in enumerate(_lines(fh, name), start=1):
            rec = _record(raw, lineno, name, problems)
            if rec is None:
                continue
            result = _take(rec, lineno, name, result, problems)
    if result is None:
        if problems:
            raise JournalError(f"{problems[0]}; no header record: not a journal")
        raise JournalError(f"{name}: empty journal")
    result.problems = problems
    return result


def _lines(fh: IO[bytes], name: str) -> Iterator[bytes]:
    try:
        yield from fh
    except OSError as e:  # e.g. a directory, or an I/O error part way
        raise JournalError(f"{name}: cannot read it: {oserrors.file_reason(e)}") from None


def _record(raw: bytes, lineno: int, name: str, problems: list[JournalProblem]) -> dict[str, Any] | None:
    """One line as a record, or None (blank, or skipped with the reason in ``problems``)."""
    line = raw.strip()
    if not line:
        return None
    try:
        rec = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        problems.append(JournalProblem(name, lineno, "not UTF-8 text"))
        return None
    except (json.JSONDecodeError, RecursionError) as e:
        cut = not raw.endswith(b"\n")  # only the last line lacks its newline: the writer was stopped mid-line
        why = "line cut short (the run was killed?)" if cut else f"not JSON ({getattr(e, 'msg', 'nested too deep')})"
        problems.append(JournalProblem(name, lineno, why))
        return None
    if not isinstance(rec, dict):
        problems.append(JournalProblem(name, lineno, f"not a record: {clip(line.decode(), 40)}"))
        return None
    return rec


def _take(rec: dict[str, Any], lineno: int, name: str, result: RunResult | None,
          problems: list[JournalProblem]) -> RunResult | None:
    """Apply one record to ``result`` (which the header record makes); return it."""

    def skip(why: str) -> RunResult | None:
        problems.append(JournalProblem(name, lineno, why))
        return result

    kind = rec.get("type")
    if kind == "header":
        why = _bad_field(rec, _HEADER_TYPES, ("script", "backend"))
        if why and result is None:
            raise JournalError(f"{name}:{lineno}: header record: {why}")
        if why or result is not None:
            return skip(f"header record: {why}" if why else "a second header record (ignored)")
        return RunResult(rec["script"], rec.get("file", ""), rec["backend"], rec.get("identity", ""),
                         rec.get("capabilities", {}), steps_total=rec.get("steps", 0))
    if result is None:
        raise JournalError(f"{name}:{lineno}: journal does not start with a header record")
    match kind:
        case "obs":
            why = _bad_field(rec, _OBS_TYPES, ("step", "op"))
            if why:
                return skip(f"observation record: {why}")
            try:
                obs = Observation.from_json({k: v for k, v in rec.items() if k != "type"})
            except JournalError as e:
                return skip(f"observation record: {e}")
            result.observations.append(obs)
        case "end":
            why = _bad_field(rec, _END_TYPES, ("status",))
            if why is None and rec["status"] not in _STATUSES:
                why = f"unknown status {clip(repr(rec['status']), 40)}"
            if why:
                return skip(f"end record: {why}")
            result.status, result.error, result.elapsed = rec["status"], rec.get("error"), rec.get("elapsed", 0.0)
        case _:
            return skip(f"unknown record type {clip(repr(kind), 40)}")
    return result
