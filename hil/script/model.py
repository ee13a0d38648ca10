"""Transfer-script data model and its errors.

A script is validated in two phases, both before any hardware is touched: loading checks the
TOML structure, keys, types and every value that does not depend on where buffers land;
binding (after the DMA zone has placed the named buffers, which needs no I/O) evaluates the
remaining expressions and checks their ranges. Every error names the file, the step, the key
and what was expected.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hil.errors import HilError


class ScriptError(HilError):
    """A transfer script is wrong. ``file``, ``step`` (path label), ``key`` say where."""

    def __init__(self, file: str | Path, step: str | None, key: str | None, message: str, op: str | None = None):
        where = str(file)
        if step is not None:
            where += f": step {step}" + (f" ({op})" if op else "")
        if key is not None:
            where += f": key {key!r}"
        super().__init__(f"{where}: {message}")
        self.file, self.step, self.key, self.detail = str(file), step, key, message


class ScriptSyntaxError(ScriptError):
    """The file is not valid TOML."""


class ScriptStructureError(ScriptError):
    """Unknown op, unknown key, missing key, misplaced table."""


class ScriptTypeError(ScriptError):
    """A value has the wrong type."""


class ScriptRangeError(ScriptError):
    """A value is out of range for its key."""


class ScriptNameError(ScriptError):
    """An expression names an unknown variable, buffer or register."""


class ScriptIncludeError(ScriptError):
    """An included fragment is missing or includes itself."""


class ScriptCapabilityError(ScriptError):
    """The backend lacks a capability the script or a step requires."""


class Op(str, enum.Enum):
    OUT = "out"
    IN = "in"
    FILL = "fill"
    WRITE = "write"
    READ = "read"
    PROGRAM = "program"
    ENABLE = "enable"
    DISABLE = "disable"
    RESIDUE = "residue"
    WAIT_TC = "wait_tc"
    DEVICE = "device"
    DREQ = "dreq"
    DELAY = "delay"
    SETTLE = "settle"
    SUSPEND = "suspend"
    RESUME = "resume"
    REPEAT = "repeat"
    INCLUDE = "include"


#: steps that need a backend capability beyond port I/O and memory
OP_CAPABILITY = {Op.DEVICE: "devices", Op.DREQ: "dreq"}


@dataclass(frozen=True)
class Tolerance:
    """How ``hil diff`` may treat this step's observation."""

    diff_mask: int | None = None  #: compare only these bits
    may_differ: bool = False  #: timing-dependent: report, never count as a divergence
    note: str = ""


@dataclass(frozen=True)
class Step:
    """One flat step (repeats and includes are expanded at load)."""

    index: int  #: position in the flat list, 0-based
    path: str  #: stable label for reports and alignment: "3", "5[2].1", "4:reset.toml/2"
    op: Op
    args: dict[str, Any]  #: key -> int | Expr | bytes | bool | float | str
    tolerance: Tolerance
    file: str
    name: str = ""

    def describe(self) -> str:
        return f"step {self.path} ({self.op.value}{': ' + self.name if self.name else ''})"


@dataclass(frozen=True)
class BufferSpec:
    name: str
    size: int
    channel: int
    at: int | None = None  #: fixed physical address, else the zone places it


@dataclass
class Script:
    name: str
    file: str
    description: str = ""
    requires: tuple[str, ...] = ()
    variables: dict[str, int] = field(default_factory=dict)
    buffers: dict[str, BufferSpec] = field(default_factory=dict)
    steps: list[Step] = field(default_factory=list)
