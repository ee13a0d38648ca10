"""Compare runs of the same script on different backends, step by step.

Observations are aligned by step path (stable across backends because repeats and includes
are expanded at load). Each divergence is reported with its step, what was read, every
backend's value and a decoded meaning ("status: TC2 set on sim, clear on qemu"). Tolerances:
a step's ``diff_mask`` / ``may_differ`` in the script, and named known-deviation lists (TOML)
that match a pair of backends by URL, scheme or profile.
"""

from __future__ import annotations

import fnmatch
import tomllib
from dataclasses import field
from pathlib import Path
from typing import Any

from hil.errors import (
    DeviationFileError as DeviationFileError,  # defined there; importable from here as before
)
from hil.journal import (
    DeviceObs,
    ErrorObs,
    InObs,
    IrqObs,
    Observation,
    ReadObs,
    ResidueObs,
    RunResult,
    WaitIrqObs,
    WaitTcObs,
)
from hil.ports import PortRole, Reg, decode_port, port_names
from hil.records import dataclass
from hil.script.model import escape_controls


@dataclass(frozen=True)
class Deviation:
    """A known, explained difference between two kinds of backend."""

    name: str
    between: tuple[str, str]
    reason: str
    reference: str = ""
    script: str = "*"
    step: str = "*"
    op: str = "*"
    port: int | None = None
    diff_mask: int | None = None  #: compare only these bits instead of tolerating everything

    def matches(self, script: str, obs: Observation, tags_a: set[str], tags_b: set[str]) -> bool:
        return self.applies(script, tags_a, tags_b) and self.covers(obs)

    def applies(self, script: str, tags_a: set[str], tags_b: set[str]) -> bool:
        """The part of :meth:`matches` that is the same for every observation of two runs of
        ``script``: :func:`compare` asks it once per pair of runs, not per observation."""
        x, y = self.between
        pair = (x in tags_a and y in tags_b) or (y in tags_a and x in tags_b)
        return pair and fnmatch.fnmatchcase(script, self.script)

    def covers(self, obs: Observation) -> bool:
        """The part of :meth:`matches` about the observation itself."""
        return (
            fnmatch.fnmatchcase(obs.step, self.step)
            and fnmatch.fnmatchcase(obs.op, self.op)
            and (self.port is None or (isinstance(obs, InObs) and obs.port == self.port))
        )


def load_deviations(path: str | Path) -> list[Deviation]:
    file = Path(path)
    try:
        doc = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DeviationFileError(f"{file}: known-deviations file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise DeviationFileError(f"{file}: not valid TOML: {e}") from None
    names = port_names()
    out = []
    entries = doc.get("deviation", [])
    if not isinstance(entries, list):
        raise DeviationFileError(f"{file}: 'deviation' must be [[deviation]] tables")
    for i, d in enumerate(entries, start=1):
        where = f"{file}: deviation {i}"
        if not isinstance(d, dict):
            raise DeviationFileError(f"{where}: expected a [[deviation]] table")
        extra = set(d) - {"name", "between", "reason", "reference", "script", "step", "op", "port", "diff_mask"}
        if extra:
            raise DeviationFileError(f"{where}: unknown key {sorted(extra)[0]!r}")
        for key in ("name", "between", "reason"):
            if key not in d:
                raise DeviationFileError(f"{where}: missing required key {key!r}")
        between = d["between"]
        if not (isinstance(between, list) and len(between) == 2 and all(isinstance(b, str) for b in between)):
            raise DeviationFileError(f"{where}: key 'between' must be two backend labels, e.g. [\"intel\", \"qemu\"]")
        port = d.get("port")
        if isinstance(port, str):
            if port not in names:
                raise DeviationFileError(f"{where}: key 'port': unknown register name {port!r}")
            port = names[port]
        elif port is not None and type(port) is not int:
            raise DeviationFileError(f"{where}: key 'port' must be a number or a register name")
        mask = d.get("diff_mask")
        if mask is not None and type(mask) is not int:
            raise DeviationFileError(f"{where}: key 'diff_mask' must be an integer")
        out.append(Deviation(str(d["name"]), (between[0], between[1]), str(d["reason"]), str(d.get("reference", "")),
                             str(d.get("script", "*")), str(d.get("step", "*")), str(d.get("op", "*")), port, mask))
    return out


@dataclass
class Divergence:
    script: str
    step: str
    op: str
    what: str  #: what was observed, e.g. "in 0x08 (DMA1 status)"
    values: dict[str, str]  #: backend -> value, digests in full
    meaning: str
    tolerated: str | None = None  #: why it does not count (known deviation / may_differ)
    name: str = ""  #: the step's name, as ``hil run`` shows it

    @property
    def label(self) -> str:
        return f"step {self.step}" + (f" ({self.name})" if self.name else "")

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None and not (k == "name" and v == "")}


def _short(value: str) -> str:
    """Digests cut for a line of text (``sha256:`` and 12 hex digits); JSON and JUnit keep them whole."""
    return value[:19] + "…" if value.startswith("sha256:") and len(value) > 19 else value


@dataclass
class DiffReport:
    backends: list[str]
    scripts: list[str] = field(default_factory=list)
    divergences: list[Divergence] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  #: "SCRIPT on BACKEND, ...: needs fdc": not compared
    compared: int = 0  #: observations compared
    #: journal lines that could not be read ("file:line: why"); the rest was compared
    warnings: list[str] = field(default_factory=list)

    @property
    def counted(self) -> list[Divergence]:
        return [d for d in self.divergences if d.tolerated is None]

    @property
    def exit_code(self) -> int:
        return 2 if self.errors else 1 if self.counted else 0

    def format(self) -> str:
        """The report as text for a terminal. Names and messages may come from a journal saved
        anywhere, so every piece is printed with its control characters escaped (the loader's
        own :func:`~hil.script.model.escape_controls`): a name cannot drive the terminal."""
        e = escape_controls
        lines = []
        for d in self.divergences:
            tag = f"  (tolerated: {d.tolerated})" if d.tolerated else ""
            vals = ", ".join(f"{b}={_short(v)}" for b, v in d.values.items())
            lines.append(f"{e(d.script)}: {e(d.label)} {e(d.what)}: {e(vals)}\n    {e(d.meaning)}{e(tag)}")
        lines += [f"warning: {e(w)}" for w in self.warnings]
        lines += [f"skipped: {e(s)}" for s in self.skipped]
        lines += [f"error: {e(err)}" for err in self.errors]
        counted, tolerated = len(self.counted), len(self.divergences) - len(self.counted)
        verdict = "ERROR" if self.errors else "DIVERGED" if counted else "EQUAL"
        lines.append(f"{verdict}: {len(self.scripts)} script(s) on {len(self.backends)} backends "
                     f"({e(', '.join(self.backends))}), {self.compared} observations compared, "
                     f"{counted} divergence(s), {tolerated} tolerated"
                     + (f", {len(self.skipped)} skipped" if self.skipped else "")
                     + (f", {len(self.warnings)} unreadable journal line(s)" if self.warnings else ""))
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {"backends": self.backends, "scripts": self.scripts, "compared": self.compared,
                "exit_code": self.exit_code, "errors": self.errors, "skipped": self.skipped,
                "warnings": self.warnings, "divergences": [d.to_json() for d in self.divergences]}

    def to_junit(self) -> str:
        import xml.etree.ElementTree as ET  # only under --junit

        suites = ET.Element("testsuites", name="hil diff")
        by_script: dict[str, list[Divergence]] = {s: [] for s in self.scripts}
        for d in self.divergences:
            by_script.setdefault(d.script, []).append(d)
        skipped = {script: s for script in by_script for s in self.skipped if s.startswith(f"{script} on ")}
        for script, divs in by_script.items():
            counted = [d for d in divs if d.tolerated is None]
            suite = ET.SubElement(suites, "testsuite", name=escape_controls(script), tests=str(max(1, len(divs))),
                                  failures=str(len(counted)), errors="0")
            ET.SubElement(ET.SubElement(suite, "properties"), "property", name="backends",
                          value=" ".join(self.backends))
            if script in skipped and not divs:
                suite.set("skipped", "1")
                ET.SubElement(ET.SubElement(suite, "testcase", classname=escape_controls(script), name="not compared"),
                              "skipped", message=escape_controls(skipped[script]))
            elif not divs:
                ET.SubElement(suite, "testcase", classname=escape_controls(script), name="all steps equal")
            for d in divs:
                case = ET.SubElement(suite, "testcase", classname=escape_controls(script),
                                     name=escape_controls(f"{d.label} {d.what}"))
                text = f"{', '.join(f'{b}={v}' for b, v in d.values.items())}: {d.meaning}"
                if d.tolerated:
                    ET.SubElement(case, "skipped", message=f"tolerated: {d.tolerated}")
                else:
                    ET.SubElement(case, "failure", message=d.meaning).text = text
        for e in self.errors:
            suite = ET.SubElement(suites, "testsuite", name="errors", tests="1", failures="0", errors="1")
            ET.SubElement(ET.SubElement(suite, "testcase", name="run"), "error", message=escape_controls(e))
        return ET.tostring(suites, encoding="unicode")


# --- comparing --------------------------------------------------------------------------------


def _what(o: Observation) -> str:
    match o:
        case InObs(port=int(port)):
            return f"in 0x{port:02X} ({decode_port(port).describe(write=False)})"
        case ResidueObs() | WaitTcObs():
            return f"{o.op} channel {o.channel}"
        case ReadObs(addr=int(addr)):
            return f"read 0x{addr:X}+{o.length}"
        case DeviceObs():
            return f"device on channel {o.channel} at end of run"
        case IrqObs():
            return f"{o.op} IRQ {o.irq}"
    return o.op


def _show(o: Observation | None) -> str:
    match o:
        case None:
            return "(missing)"
        case ErrorObs(message=message) if message:
            return f"error: {message}"
        case ReadObs():
            return o.digest or "?"
        case DeviceObs(digest=str(d)) if d:
            return d
        case WaitTcObs():
            return f"tc={'yes' if o.tc else 'no'} residue={o.value}"
        case IrqObs():
            return o.shown()
        case InObs(value=int(v)):
            return f"0x{v:0{4 if o.width == 16 else 2}X}"
        case ResidueObs(value=int(v)) | DeviceObs(value=int(v)):
            return str(v)
    return "-"


def _bits(bits: int, first: int) -> str:
    return ",".join(str(first + i) for i in range(4) if bits & (1 << i))


def _meaning(o: Observation, a: Observation, b: Observation, la: str, lb: str, mask: int) -> str:
    """Explain a differing value in the register's own terms."""
    if a.error or b.error:
        failed, fine = (la, lb) if a.error else (lb, la)
        return f"the step failed on {failed} ({a.error or b.error}) but not on {fine}"
    match o, a, b:
        case InObs(port=int(port)), InObs(value=int(va)), InObs(value=int(vb)):
            return _port_meaning(port, va & mask, vb & mask, la, lb)
        case ResidueObs(), ResidueObs(), ResidueObs():
            return f"channel {o.channel} residue {a.value} bytes on {la}, {b.value} on {lb}"
        case WaitTcObs(), WaitTcObs(), WaitTcObs():
            if a.tc != b.tc:
                on, off = (la, lb) if a.tc else (lb, la)
                return f"channel {o.channel} reached terminal count on {on}, not on {off}"
            return f"channel {o.channel} residue after wait: {a.value} on {la}, {b.value} on {lb}"
        case WaitIrqObs(), WaitIrqObs(), WaitIrqObs() if a.reached != b.reached:
            on, off = (la, lb) if a.reached else (lb, la)
            return f"IRQ {o.irq} reached level {int(o.level or 0)} within the timeout on {on}, not on {off}"
        case IrqObs(), IrqObs(), IrqObs():
            if a.level != b.level:
                high, low = (la, lb) if a.level else (lb, la)
                return f"IRQ {o.irq} is high on {high}, low on {low}"
            return f"IRQ {o.irq} rose {a.count} time(s) on {la}, {b.count} on {lb}"
        case ReadObs() | DeviceObs(), ReadObs() | DeviceObs(), ReadObs() | DeviceObs():
            if a.data is not None and b.data is not None:
                da, db = bytes.fromhex(a.data), bytes.fromhex(b.data)
                n = sum(x != y for x, y in zip(da, db)) + abs(len(da) - len(db))
                first_off = next((i for i, (x, y) in enumerate(zip(da, db)) if x != y), min(len(da), len(db)))
                base = (o.addr if isinstance(o, ReadObs) else None) or 0
                return (f"{n} byte(s) differ, first at offset {first_off} (0x{base + first_off:X}): "
                        f"0x{da[first_off]:02X} on {la}, 0x{db[first_off]:02X} on {lb}"
                        if first_off < min(len(da), len(db)) else f"lengths differ: {len(da)} on {la}, {len(db)} on {lb}")
            if a.length != b.length:
                return f"lengths differ: {a.length} bytes on {la}, {b.length} on {lb} (digests {a.digest} vs {b.digest})"
            return f"contents differ (digests {a.digest} vs {b.digest})"
    return "values differ"


def _port_meaning(port: int, va: int, vb: int, la: str, lb: str) -> str:
    """Two values read from ``port`` (masked), explained by the register it is."""
    info = decode_port(port)
    first = 4 if info.ctrl is not None and info.ctrl == 1 else 0
    if info.role is PortRole.CONTROL and info.reg == Reg.STATUS_COMMAND:
        parts = []
        for shift, kind in ((0, "TC"), (4, "request")):
            for i in range(4):
                bit = 1 << (i + shift)
                if (va ^ vb) & bit:
                    on, off = (la, lb) if va & bit else (lb, la)
                    parts.append(f"{kind}{first + i} set on {on}, clear on {off}")
        return "status: " + "; ".join(parts)
    if info.role is PortRole.CONTROL and info.reg in (Reg.ALL_MASK, Reg.REQUEST):
        return (f"mask readback: masked channels {_bits(va, first) or 'none'} on {la}, "
                f"{_bits(vb, first) or 'none'} on {lb} (0x{va:02X} vs 0x{vb:02X})")
    if info.role in (PortRole.ADDRESS, PortRole.COUNT):
        return (f"channel {info.channel} current {info.role.value} byte differs: 0x{va:02X} on {la}, "
                f"0x{vb:02X} on {lb} (the flip-flop picks low/high byte)")
    if info.role is PortRole.PAGE:
        return f"page register byte: 0x{va:02X} on {la}, 0x{vb:02X} on {lb}"
    return f"0x{va:X} on {la}, 0x{vb:X} on {lb}"


def _differs(a: Observation, b: Observation, mask: int) -> bool:
    if bool(a.error) != bool(b.error):
        return True
    if a.error:
        return False  # both failed the same step: the run errors are reported separately
    match a, b:  # the kinds are disjoint classes (but WaitIrqObs before IrqObs): the commonest first
        case InObs(value=int(va)) | ResidueObs(value=int(va)), InObs(value=int(vb)) | ResidueObs(value=int(vb)):
            return (va & mask) != (vb & mask)
        case InObs() | ResidueObs(), InObs() | ResidueObs():
            return a.value != b.value  # one has no value
        case ReadObs(), ReadObs():
            return a.digest != b.digest
        case DeviceObs(), DeviceObs():
            return (a.digest, a.length, a.value, a.tc) != (b.digest, b.length, b.value, b.tc)
        case WaitTcObs(), WaitTcObs():
            return a.tc != b.tc or a.value != b.value
        case WaitIrqObs(), WaitIrqObs():
            return (a.reached, a.level, a.count) != (b.reached, b.level, b.count)
        case IrqObs(), IrqObs():
            return (a.level, a.count) != (b.level, b.count)
    return a != b


def compare(results: list[RunResult], deviations: list[Deviation] | None = None,
            report: DiffReport | None = None) -> DiffReport:
    """Compare runs of one script; the first result is the reference."""
    labels = _labels(results)
    report = report or DiffReport(backends=labels)
    if not results:
        return report
    script = results[0].script
    if script not in report.scripts:
        report.scripts.append(script)
    for r in results:
        report.warnings += [f"{p} (line skipped)" for p in r.problems]
    why = {label: r.error or "skipped" for r, label in zip(results, labels) if r.status == "skipped"}
    if why:  # not applicable on some backend: nothing to compare
        if len(set(why.values())) == 1:
            report.skipped.append(f"{script} on {', '.join(why)}: {next(iter(why.values()))}")
        else:
            report.skipped.append(f"{script} on {', '.join(f'{label} ({e})' for label, e in why.items())}")
        return report
    for r, label in zip(results, labels):
        if r.status in ("error", "interrupted") and r.error:
            report.errors.append(f"{script} on {label}: {r.error}")
        elif r.status in ("running", "interrupted"):
            report.errors.append(f"{script} on {label}: journal ends before the run did (interrupted)")
    ref, ref_label = results[0], labels[0]
    ref_map = {(o.step, o.op): o for o in ref.observations}
    ref_tags = ref.tags  # a property that builds a set: once per run, not per observation
    for other, label in zip(results[1:], labels[1:]):
        other_map = {(o.step, o.op): o for o in other.observations}
        # the deviations that can hold between these two runs, in their order (the first that
        # covers an observation is the one reported): most name one script, or one pair of kinds
        candidates = [d for d in deviations or [] if d.applies(script, ref_tags, other.tags)]
        keys = list(ref_map) + [k for k in other_map if k not in ref_map]
        for key in keys:
            a, b = ref_map.get(key), other_map.get(key)
            o = a if a is not None and not a.error else b or a  # describe by a run where the step worked
            assert o is not None
            report.compared += 1
            if a is None or b is None:
                if {ref.status, other.status} & {"error", "interrupted", "running"}:
                    continue  # one run stopped early: reported as an error already
                report.divergences.append(Divergence(script, o.step, o.op, _what(o),
                                                     {ref_label: _show(a), label: _show(b)},
                                                     f"observed on {ref_label if a else label} only", name=o.name))
                continue
            mask = o.diff_mask if o.diff_mask is not None else 0xFFFF
            dev = next((d for d in candidates if d.covers(o)), None)
            if dev is not None and dev.diff_mask is not None:
                mask &= dev.diff_mask
            if not _differs(a, b, mask):
                continue
            tolerated = None
            if o.may_differ:
                tolerated = "may_differ (timing-dependent)"
            elif dev is not None and dev.diff_mask is None:
                tolerated = f"known deviation {dev.name}: {dev.reason}" + (f" [{dev.reference}]" if dev.reference else "")
            report.divergences.append(Divergence(script, o.step, o.op, _what(o),
                                                 {ref_label: _show(a), label: _show(b)},
                                                 _meaning(o, a, b, ref_label, label, mask), tolerated, o.name))
    return report


def _labels(results: list[RunResult]) -> list[str]:
    labels = [r.backend for r in results]
    if len(set(labels)) != len(labels):  # the same URL twice: number them
        labels = [f"{lab}#{i + 1}" for i, lab in enumerate(labels)]
    return labels
