"""Results of a script run: observations, and the JSONL journal they are written to as they happen.

The journal is flushed line by line, so a run that is killed or fails keeps everything up to
that point; :func:`read_journal` accepts a truncated last line. ``hil diff`` compares journals,
whether it just wrote them or they were saved from a bench weeks ago.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

JOURNAL_VERSION = 1
SHOWN_BYTES = 32  #: hex bytes of data shown in a one-line description


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, with an ellipsis when something was cut."""
    return text if len(text) <= limit else text[:limit] + "…"


@dataclass
class Observation:
    """One thing a step saw. Only the fields that apply to the op are set."""

    step: str  #: path label of the step ("3", "5[2].1")
    op: str
    index: int = -1  #: flat step index
    name: str = ""
    port: int | None = None
    width: int | None = None
    channel: int | None = None
    addr: int | None = None
    length: int | None = None
    value: int | None = None  #: in, residue, wait_tc (residue)
    tc: bool | None = None  #: wait_tc
    data: str | None = None  #: hex, for recorded reads and sink contents
    digest: str | None = None
    expect: int | str | None = None
    mask: int | None = None
    ok: bool | None = None  #: None = nothing expected
    diff_mask: int | None = None
    may_differ: bool = False
    error: str | None = None
    t: float = 0.0  #: seconds since the run started (wall)
    vt_ns: int | None = None  #: virtual time, on virtual-time backends

    def to_json(self) -> dict[str, Any]:
        # ``ok`` and ``tc`` are tri-state: False is an observation (a failed expectation, no
        # terminal count), not an absent field, so only None, an empty name and the default
        # ``may_differ`` are left out.
        return {k: v for k, v in self.__dict__.items()
                if v is not None and not (k == "name" and v == "") and not (k == "may_differ" and v is False)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Observation:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})

    @property
    def label(self) -> str:
        """How reports name the step: ``step 7 (its name)``, the same in ``hil run`` and ``hil diff``."""
        return f"step {self.step}" + (f" ({self.name})" if self.name else "")

    def describe(self) -> str:
        """One line: what the step saw and, when it did not hold, what was expected."""
        if self.error:
            return f"error: {self.error}"
        match self.op:
            case "in":
                shown = f"read 0x{self.value:02X}" if self.value is not None else "no value"
                if self.expect is not None:
                    shown += f", expected 0x{self.expect:02X}" + (
                        f" under mask 0x{self.mask:02X}" if self.mask not in (None, 0xFF, 0xFFFF) else "")
                return f"in 0x{self.port:02X}: {shown}"
            case "read":
                head = clip(self.data or "", 2 * SHOWN_BYTES)
                text = f"read 0x{self.addr:X}+{self.length}: " + (f"{head} " if head else "") + f"{self.digest}"
                return text + (f", expected {clip(str(self.expect), 2 * SHOWN_BYTES)}" if self.ok is False else "")
            case "wait_tc":
                return f"wait_tc ch{self.channel}: tc={'yes' if self.tc else 'no'} residue {self.value} of {self.length}"
            case "residue":
                return f"residue ch{self.channel}: {self.value}" + (
                    f", expected {self.expect}" if self.expect is not None else "")
            case "device":
                return f"device ch{self.channel}: {self.length} bytes moved, {'TC seen' if self.tc else 'no TC'}" + (
                    f", digest {self.digest}" if self.digest else "")
        return self.op


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


class Journal:
    """Append-only JSONL writer; every record is flushed as soon as it is written."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: IO[str] | None = open(self.path, "w", encoding="utf-8")  # noqa: SIM115

    def _write(self, record: dict[str, Any]) -> None:
        if self._fh is None:
            return
        self._fh.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._fh.flush()

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
            "started": _dt.datetime.now(_dt.timezone.utc).isoformat(),
            "pid": os.getpid(),
        })

    def observation(self, obs: Observation) -> None:
        self._write({"type": "obs", **obs.to_json()})

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


class JournalError(ValueError):
    pass


def read_journal(path: str | Path) -> RunResult:
    """Load a journal; a missing ``end`` record leaves ``status == "running"`` (cut short)."""
    result: RunResult | None = None
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                break  # a line cut by a kill: everything before it stands
            kind = rec.get("type")
            if kind == "header":
                result = RunResult(rec["script"], rec.get("file", ""), rec["backend"], rec.get("identity", ""),
                                   rec.get("capabilities", {}), steps_total=rec.get("steps", 0))
            elif result is None:
                raise JournalError(f"{path}:{lineno}: journal does not start with a header record")
            elif kind == "obs":
                rec.pop("type")
                result.observations.append(Observation.from_json(rec))
            elif kind == "end":
                result.status, result.error, result.elapsed = rec["status"], rec.get("error"), rec.get("elapsed", 0.0)
    if result is None:
        raise JournalError(f"{path}: empty journal")
    return result
