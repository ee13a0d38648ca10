"""Results of a script run: observations, and the JSONL journal they are written to as they happen.

The journal is flushed line by line, so a run that is killed or fails keeps everything up to
that point; :func:`read_journal` accepts a truncated last line. ``hil diff`` compares journals,
whether it just wrote them or they were saved from a bench weeks ago.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

JOURNAL_VERSION = 1


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


@dataclass
class RunResult:
    script: str
    file: str
    backend: str  #: the URL it ran on
    identity: str = ""
    capabilities: dict[str, Any] = field(default_factory=dict)
    observations: list[Observation] = field(default_factory=list)
    status: str = "running"  #: passed | failed | error | running (journal cut short)
    error: str | None = None
    elapsed: float = 0.0
    steps_total: int = 0

    @property
    def failures(self) -> list[Observation]:
        return [o for o in self.observations if o.ok is False]

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
