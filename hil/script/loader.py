"""Load and validate transfer scripts (TOML, read with :mod:`tomllib`). Format: docs/scripts.md."""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hil import dma as _dma
from hil.ports import CASCADE_CHANNEL, port_names
from hil.script.expr import Expr, ExprError, parse
from hil.script.model import (
    BufferSpec,
    Op,
    Script,
    ScriptError,
    ScriptIncludeError,
    ScriptNameError,
    ScriptRangeError,
    ScriptStructureError,
    ScriptSyntaxError,
    ScriptTypeError,
    Step,
    Tolerance,
)

#: names every expression may use besides variables and buffers
CONSTANTS: dict[str, int] = {
    "DMA_MODE_READ": _dma.DMA_MODE_READ,
    "DMA_MODE_WRITE": _dma.DMA_MODE_WRITE,
    "DMA_MODE_CASCADE": _dma.DMA_MODE_CASCADE,
    "DMA_AUTOINIT": _dma.DMA_AUTOINIT,
    "DEMAND": 0x00,
    "SINGLE": 0x40,
    "BLOCK": 0x80,
    "CASCADE": 0xC0,
    "VERIFY": 0x00,
    "IO_TO_MEM": 0x04,
    "MEM_TO_IO": 0x08,
    "AUTOINIT": 0x10,
    "DECREMENT": 0x20,
}
PORTS = port_names()
MAX_REPEAT = 1_000_000
MAX_DATA = 16 << 20
TOLERANCE_KEYS = ("diff_mask", "may_differ", "note")  #: a repeat or include passes these down
COMMON_KEYS = {"op", "name", *TOLERANCE_KEYS}
ADDR_KEYS = {"addr", "buffer", "offset"}
DATA_KEYS = {"hex", "pattern", "text", "file", "length"}

# key -> (kind, required)
SPECS: dict[Op, dict[str, tuple[str, bool]]] = {
    Op.OUT: {"port": ("port", True), "value": ("value", True), "width": ("width", False)},
    Op.IN: {"port": ("port", True), "width": ("width", False), "expect": ("value", False), "mask": ("value", False)},
    Op.FILL: {"pattern": ("hexstr", False), "length": ("length", False), **{k: ("addr", False) for k in ADDR_KEYS}},
    Op.WRITE: {**{k: ("data", False) for k in DATA_KEYS}, **{k: ("addr", False) for k in ADDR_KEYS}},
    Op.READ: {"length": ("length", False), "expect_hex": ("hexstr", False), "expect_digest": ("digest", False),
              "record": ("record", False), **{k: ("addr", False) for k in ADDR_KEYS}},
    Op.PROGRAM: {"channel": ("channel", True), "mode": ("mode", True), "length": ("length", False),
                 "enable": ("bool", False), "unchecked": ("bool", False), **{k: ("addr", False) for k in ADDR_KEYS}},
    Op.ENABLE: {"channel": ("channel", True), "unchecked": ("bool", False)},
    Op.DISABLE: {"channel": ("channel", True)},
    Op.RESIDUE: {"channel": ("channel", True), "expect": ("int", False)},
    Op.WAIT_TC: {"channel": ("channel", True), "timeout": ("seconds", False), "expect_complete": ("bool", False)},
    Op.DEVICE: {"channel": ("channel", True), "kind": ("device_kind", True), "dreq": ("bool", False),
                "capacity": ("int", False), **{k: ("data", False) for k in DATA_KEYS}},
    Op.DREQ: {"channel": ("channel", True), "level": ("bool", True)},
    Op.DELAY: {"us": ("micros", True)},
    Op.SETTLE: {"timeout": ("seconds", False)},
    Op.SUSPEND: {},
    Op.RESUME: {"lose_state": ("bool", False)},
    Op.REPEAT: {"count": ("count", True), "steps": ("steps", True)},
    Op.INCLUDE: {"file": ("str", True)},
}


class _Ctx:
    """Where we are, for error messages."""

    def __init__(self, file: Path, path: str | None = None, op: str | None = None) -> None:
        self.file, self.path, self.op = file, path, op

    def err(self, cls: type[ScriptError], key: str | None, message: str) -> ScriptError:
        return cls(self.file, self.path, key, message, self.op)


def load_script(path: str | Path, *, variables: Mapping[str, int] | None = None) -> Script:
    """Read ``path``; ``variables`` override the script's ``[vars]`` (``hil run --var``)."""
    file = Path(path)
    doc = _read_toml(file, _Ctx(file))
    ctx = _Ctx(file)
    unknown = set(doc) - {"script", "vars", "buffers", "step"}
    if unknown:
        raise ctx.err(ScriptStructureError, sorted(unknown)[0],
                      "unknown top-level table; expected [script], [vars], [buffers] and [[step]]")
    header = doc.get("script")
    if not isinstance(header, dict):
        raise ctx.err(ScriptStructureError, "script", "missing [script] table with at least name = \"...\"")
    extra = set(header) - {"name", "description", "requires"}
    if extra:
        raise ctx.err(ScriptStructureError, f"script.{sorted(extra)[0]}", "unknown key; [script] has name, description, requires")
    name = header.get("name")
    if not isinstance(name, str) or not name:
        raise ctx.err(ScriptTypeError, "script.name", "expected a non-empty string")
    requires = header.get("requires", [])
    if not isinstance(requires, list) or not all(isinstance(r, str) for r in requires):
        raise ctx.err(ScriptTypeError, "script.requires", "expected a list of capability names, e.g. [\"devices\"]")
    script = Script(name=name, file=str(file), description=str(header.get("description", "")),
                    requires=tuple(requires))
    script.variables = _load_vars(doc.get("vars", {}), ctx, variables or {})
    script.buffers = _load_buffers(doc.get("buffers", {}), ctx, script.variables)
    raw_steps = doc.get("step", [])
    if not isinstance(raw_steps, list) or not raw_steps:
        raise ctx.err(ScriptStructureError, "step", "a script needs at least one [[step]]")
    loader = _StepLoader(script)
    loader.load_list(raw_steps, file, prefix="", stack=(file.resolve(),))
    return script


def _read_toml(file: Path, ctx: _Ctx) -> dict[str, Any]:
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ctx.err(ScriptIncludeError, None, "file not found") from None
    except OSError as e:
        raise ctx.err(ScriptIncludeError, None, f"cannot read: {e.strerror}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ctx.err(ScriptSyntaxError, None, f"not valid TOML: {e}") from None


def _env_names(variables: Mapping[str, int]) -> dict[str, int]:
    return {**CONSTANTS, **PORTS, **variables}


def _load_vars(table: object, ctx: _Ctx, overrides: Mapping[str, int]) -> dict[str, int]:
    if not isinstance(table, dict):
        raise ctx.err(ScriptTypeError, "vars", "expected a table of name = integer or expression")
    out: dict[str, int] = {}
    for key in overrides:
        if key not in table:
            raise ctx.err(ScriptNameError, f"vars.{key}", "overridden variable is not declared in [vars]")
    for key, value in table.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) or key in CONSTANTS:
            raise ctx.err(ScriptNameError, f"vars.{key}", "variable names are identifiers and may not shadow a constant")
        if key in overrides:
            out[key] = overrides[key]
            continue
        out[key] = _static_int(value, ctx, f"vars.{key}", _env_names(out))
    return out


def _static_int(value: object, ctx: _Ctx, key: str, env: Mapping[str, int]) -> int:
    if type(value) is int:
        return value
    if isinstance(value, str):
        try:
            expr = parse(value)
            return expr.evaluate(env)
        except ExprError as e:
            text = str(e)
            cls = (ScriptNameError if "unknown name" in text
                   else ScriptRangeError if "division by zero" in text or "shift by" in text else ScriptTypeError)
            raise ctx.err(cls, key, text) from None
    raise ctx.err(ScriptTypeError, key, f"expected an integer or an expression string, got {type(value).__name__}")


def _load_buffers(table: object, ctx: _Ctx, variables: dict[str, int]) -> dict[str, BufferSpec]:
    if not isinstance(table, dict):
        raise ctx.err(ScriptTypeError, "buffers", "expected [buffers.NAME] tables with size and channel")
    out: dict[str, BufferSpec] = {}
    env = _env_names(variables)
    for name, spec in table.items():
        key = f"buffers.{name}"
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or name in env:
            raise ctx.err(ScriptNameError, key, "buffer names are identifiers and may not shadow a variable, constant or register")
        if not isinstance(spec, dict):
            raise ctx.err(ScriptTypeError, key, "expected a table with size, channel and optionally at")
        extra = set(spec) - {"size", "channel", "at"}
        if extra:
            raise ctx.err(ScriptStructureError, f"{key}.{sorted(extra)[0]}", "unknown key; a buffer has size, channel, at")
        for req in ("size", "channel"):
            if req not in spec:
                raise ctx.err(ScriptStructureError, f"{key}.{req}", "missing required key")
        size = _static_int(spec["size"], ctx, f"{key}.size", env)
        channel = _static_int(spec["channel"], ctx, f"{key}.channel", env)
        if channel not in range(8) or channel == CASCADE_CHANNEL:
            raise ctx.err(ScriptRangeError, f"{key}.channel", f"channel {channel} is not a data channel (0-3, 5-7)")
        limit = 0x20000 if channel >= 4 else 0x10000
        if not 1 <= size <= limit:
            raise ctx.err(ScriptRangeError, f"{key}.size", f"size {size} is outside 1..{limit} for channel {channel}")
        at = _static_int(spec["at"], ctx, f"{key}.at", env) if "at" in spec else None
        out[name] = BufferSpec(name, size, channel, at)
    return out


class _StepLoader:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.env_names = set(_env_names(script.variables)) | set(script.buffers)

    def load_list(self, raw: list[Any], file: Path, prefix: str, stack: tuple[Path, ...],
                  inherited: dict[str, Any] | None = None) -> None:
        """``inherited``: tolerance keys (diff_mask, may_differ, note) of the enclosing repeat or
        include, which apply to every step inside unless the step sets its own."""
        for i, table in enumerate(raw, start=1):
            path = f"{prefix}{i}"
            ctx = _Ctx(file, path)
            if not isinstance(table, dict):
                raise ctx.err(ScriptStructureError, None, "a step is a table with an 'op' key")
            if "op" not in table:
                ops = ", ".join(o.value for o in Op)
                raise ctx.err(ScriptStructureError, "op", f"missing required key; expected one of: {ops}")
            op_name = table["op"]
            try:
                op = Op(op_name)
            except (ValueError, TypeError):
                ops = ", ".join(o.value for o in Op)
                raise ctx.err(ScriptStructureError, "op", f"unknown op {op_name!r}; ops: {ops}") from None
            ctx.op = op.value
            spec = SPECS[op]
            unknown = set(table) - COMMON_KEYS - set(spec)
            if unknown:
                allowed = ", ".join(sorted(set(spec) | COMMON_KEYS))
                raise ctx.err(ScriptStructureError, sorted(unknown)[0], f"unknown key for {op.value}; allowed: {allowed}")
            for key, (_, required) in spec.items():
                if required and key not in table:
                    raise ctx.err(ScriptStructureError, key, "missing required key")
            if isinstance(table, dict) and inherited:
                table = {**inherited, **table}
            passed_on = {k: table[k] for k in TOLERANCE_KEYS if k in table}
            if op in (Op.REPEAT, Op.INCLUDE):  # check them here, where they were written
                if "may_differ" in passed_on:
                    self.boolean(passed_on["may_differ"], ctx, "may_differ")
                if "diff_mask" in passed_on:
                    self.static(passed_on["diff_mask"], ctx, "diff_mask", 0, 0xFFFF)
            if op is Op.REPEAT:
                count = self.static(table["count"], ctx, "count", 0, MAX_REPEAT)
                inner = table["steps"]
                if not isinstance(inner, list) or not inner:
                    raise ctx.err(ScriptTypeError, "steps", "expected a non-empty list of step tables")
                for n in range(1, count + 1):
                    self.load_list(inner, file, f"{path}[{n}].", stack, passed_on)
                continue
            if op is Op.INCLUDE:
                target = table["file"]
                if not isinstance(target, str):
                    raise ctx.err(ScriptTypeError, "file", "expected a path string")
                inc = (file.parent / target).resolve()
                if inc in stack:
                    raise ctx.err(ScriptIncludeError, "file", f"{target!r} includes itself (cycle)")
                if not inc.is_file():
                    raise ctx.err(ScriptIncludeError, "file", f"{target!r}: included file not found "
                                                              f"(expected a fragment at {inc})")
                doc = _read_toml(inc, _Ctx(inc))
                if set(doc) - {"step"} or not isinstance(doc.get("step"), list):
                    raise ctx.err(ScriptIncludeError, "file", f"{target!r}: a fragment holds only [[step]] tables")
                self.load_list(doc["step"], inc, f"{path}:{Path(target).name}/", (*stack, inc), passed_on)
                continue
            args = self.load_args(op, table, ctx, file)
            tol = Tolerance(
                diff_mask=self.static(table["diff_mask"], ctx, "diff_mask", 0, 0xFFFF) if "diff_mask" in table else None,
                may_differ=self.boolean(table.get("may_differ", False), ctx, "may_differ"),
                note=str(table.get("note", "")),
            )
            name = table.get("name", "")
            if not isinstance(name, str):
                raise ctx.err(ScriptTypeError, "name", "expected a string")
            steps = self.script.steps
            steps.append(Step(len(steps), path, op, args, tol, str(file), name))

    # --- value kinds ----------------------------------------------------------------------
    def static(self, value: object, ctx: _Ctx, key: str, lo: int, hi: int) -> int:
        v = _static_int(value, ctx, key, _env_names(self.script.variables))
        if not lo <= v <= hi:
            raise ctx.err(ScriptRangeError, key, f"{v} is outside {lo}..{hi}")
        return v

    def boolean(self, value: object, ctx: _Ctx, key: str) -> bool:
        if not isinstance(value, bool):
            raise ctx.err(ScriptTypeError, key, f"expected true or false, got {value!r}")
        return value

    def number(self, value: object, ctx: _Ctx, key: str, hi: float) -> float:
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not is_number or not 0 <= value <= hi:  # type: ignore[operator]
            raise ctx.err(ScriptRangeError if is_number else ScriptTypeError, key,
                          f"expected a number 0..{hi:g}, got {value!r}")
        return float(value)

    def deferred(self, value: object, ctx: _Ctx, key: str, lo: int, hi: int) -> int | Expr:
        """An int now, or an expression naming buffers to evaluate at bind time."""
        if type(value) is int:
            if not lo <= value <= hi:
                raise ctx.err(ScriptRangeError, key, f"{value} (0x{value:X}) is outside 0x{lo:X}..0x{hi:X}")
            return value
        if not isinstance(value, str):
            raise ctx.err(ScriptTypeError, key, f"expected an integer or expression string, got {type(value).__name__}")
        if value.strip() in PORTS:
            return PORTS[value.strip()]
        try:
            expr = parse(value)
        except ExprError as e:
            raise ctx.err(ScriptTypeError, key, str(e)) from None
        missing = expr.names - self.env_names
        if missing:
            raise ctx.err(ScriptNameError, key, f"unknown name {sorted(missing)[0]!r} (not a variable, buffer, "
                                                f"register name such as ch2.count, or constant)")
        if expr.names & set(self.script.buffers):
            return expr
        try:
            v = expr.evaluate(_env_names(self.script.variables))
        except ExprError as e:
            raise ctx.err(ScriptRangeError, key, str(e)) from None
        if not lo <= v <= hi:
            raise ctx.err(ScriptRangeError, key, f"{value!r} = {v} (0x{v:X}) is outside 0x{lo:X}..0x{hi:X}")
        return v

    def hexbytes(self, value: object, ctx: _Ctx, key: str) -> bytes:
        if not isinstance(value, str):
            raise ctx.err(ScriptTypeError, key, "expected a hex string such as \"00 11 aa\"")
        try:
            data = bytes.fromhex(value.replace("_", " "))
        except ValueError:
            raise ctx.err(ScriptTypeError, key, f"{value[:40]!r} is not hex bytes") from None
        return data

    def data(self, table: dict[str, Any], ctx: _Ctx, file: Path, length: int | None) -> bytes:
        given = [k for k in ("hex", "pattern", "text", "file") if k in table]
        if len(given) != 1:
            raise ctx.err(ScriptStructureError, given[1] if given else "hex",
                          "give exactly one of hex, pattern (+ length), text or file")
        kind = given[0]
        if kind == "hex":
            data = self.hexbytes(table["hex"], ctx, "hex")
        elif kind == "text":
            if not isinstance(table["text"], str):
                raise ctx.err(ScriptTypeError, "text", "expected a string")
            data = table["text"].encode()
        elif kind == "file":
            name = table["file"]
            if not isinstance(name, str):
                raise ctx.err(ScriptTypeError, "file", "expected a path string")
            try:
                data = (file.parent / name).read_bytes()
            except OSError as e:
                raise ctx.err(ScriptIncludeError, "file", f"cannot read {name!r}: {e.strerror}") from None
        else:
            pattern = self.hexbytes(table["pattern"], ctx, "pattern")
            if not pattern:
                raise ctx.err(ScriptRangeError, "pattern", "an empty pattern repeats to nothing")
            if length is None:
                raise ctx.err(ScriptStructureError, "length", "a pattern needs a length")
            data = (pattern * (length // len(pattern) + 1))[:length]
        if length is not None and kind != "pattern" and len(data) != length:
            raise ctx.err(ScriptRangeError, "length", f"length {length} does not match the {len(data)} data bytes")
        if len(data) > MAX_DATA:
            raise ctx.err(ScriptRangeError, kind, f"{len(data)} bytes is more than {MAX_DATA}")
        return data

    def address(self, table: dict[str, Any], ctx: _Ctx, args: dict[str, Any], need_length: bool) -> None:
        if ("addr" in table) == ("buffer" in table):
            raise ctx.err(ScriptStructureError, "addr", "give exactly one of addr or buffer")
        offset = self.static(table.get("offset", 0), ctx, "offset", 0, 0x1FFFF)
        if "buffer" in table:
            buf = table["buffer"]
            if buf not in self.script.buffers:
                known = ", ".join(self.script.buffers) or "none declared"
                raise ctx.err(ScriptNameError, "buffer", f"unknown buffer {buf!r} (buffers: {known})")
            spec = self.script.buffers[buf]
            if offset >= spec.size:
                raise ctx.err(ScriptRangeError, "offset", f"offset {offset} is beyond buffer {buf!r} ({spec.size} bytes)")
            args["addr"] = parse(f"{buf} + {offset}")
            args["buffer"] = buf
            if need_length and "length" not in table:
                args["length"] = spec.size - offset
        else:
            if "offset" in table:
                raise ctx.err(ScriptStructureError, "offset", "offset applies to buffer, not addr")
            args["addr"] = self.deferred(table["addr"], ctx, "addr", 0, (1 << 32) - 1)
        if "length" in table:
            args["length"] = self.static(table["length"], ctx, "length", 0, MAX_DATA)
            if "buffer" in table:
                self.within_buffer(ctx, table, args["length"], "length")
        elif need_length and "length" not in args:
            raise ctx.err(ScriptStructureError, "length", "missing required key (or use buffer = ...)")

    def within_buffer(self, ctx: _Ctx, table: dict[str, Any], length: int, key: str) -> None:
        """A step addressed by ``buffer`` (+ ``offset``) must stay inside that buffer."""
        spec = self.script.buffers[table["buffer"]]
        offset = self.static(table.get("offset", 0), ctx, "offset", 0, 0x1FFFF)
        if offset + length > spec.size:
            raise ctx.err(ScriptRangeError, key, f"{length} bytes at offset {offset} run past the end of buffer "
                                                 f"{spec.name!r} ({spec.size} bytes)")

    def load_args(self, op: Op, t: dict[str, Any], ctx: _Ctx, file: Path) -> dict[str, Any]:
        a: dict[str, Any] = {}
        width = self.static(t.get("width", 8), ctx, "width", 8, 16) if "width" in t else 8
        if width not in (8, 16):
            raise ctx.err(ScriptRangeError, "width", f"width {width}: use 8 or 16")
        vmax = (1 << width) - 1
        if op in (Op.OUT, Op.IN):
            a["width"] = width
            a["port"] = self.deferred(t["port"], ctx, "port", 0, 0xFFFF - (width == 16))
        if op is Op.OUT:
            a["value"] = self.deferred(t["value"], ctx, "value", 0, vmax)
        if op is Op.IN:
            if "expect" in t:
                a["expect"] = self.deferred(t["expect"], ctx, "expect", 0, vmax)
            a["mask"] = self.deferred(t["mask"], ctx, "mask", 0, vmax) if "mask" in t else vmax
        if op in (Op.FILL, Op.WRITE, Op.READ, Op.PROGRAM):
            self.address(t, ctx, a, need_length=op is not Op.WRITE)
        if op is Op.FILL:
            a["pattern"] = self.hexbytes(t.get("pattern", "00"), ctx, "pattern")
            if not a["pattern"]:
                raise ctx.err(ScriptRangeError, "pattern", "an empty pattern fills nothing")
        if op is Op.WRITE:
            a["data"] = self.data(t, ctx, file, a.get("length"))
            a["length"] = len(a["data"])
            if "buffer" in t and "length" not in t:
                self.within_buffer(ctx, t, a["length"], next(k for k in ("hex", "pattern", "text", "file") if k in t))
        if op is Op.READ:
            if "expect_hex" in t:
                a["expect_hex"] = self.hexbytes(t["expect_hex"], ctx, "expect_hex")
                if len(a["expect_hex"]) != a["length"]:
                    raise ctx.err(ScriptRangeError, "expect_hex", f"{len(a['expect_hex'])} bytes expected but length is {a['length']}")
            if "expect_digest" in t:
                d = t["expect_digest"]
                if not isinstance(d, str) or not re.fullmatch(r"sha256:[0-9a-f]{64}", d):
                    raise ctx.err(ScriptTypeError, "expect_digest", "expected \"sha256:<64 lowercase hex digits>\"")
                a["expect_digest"] = d
            rec = t.get("record", "bytes" if a["length"] <= 4096 else "digest")
            if rec not in ("bytes", "digest"):
                raise ctx.err(ScriptRangeError, "record", f"{rec!r}: use \"bytes\" or \"digest\"")
            a["record"] = rec
        if "channel" in SPECS[op]:
            ch = self.static(t["channel"], ctx, "channel", 0, 7)
            if ch == CASCADE_CHANNEL and op is not Op.RESIDUE:
                raise ctx.err(ScriptRangeError, "channel", "channel 4 is the cascade: it carries no transfers")
            a["channel"] = ch
        if op is Op.PROGRAM:
            a["mode"] = self.mode(t["mode"], ctx)
            a["enable"] = self.boolean(t.get("enable", True), ctx, "enable")
            a["unchecked"] = self.boolean(t.get("unchecked", False), ctx, "unchecked")
        if op is Op.ENABLE:
            a["unchecked"] = self.boolean(t.get("unchecked", False), ctx, "unchecked")
        if op is Op.RESIDUE and "expect" in t:
            a["expect"] = self.static(t["expect"], ctx, "expect", 0, 0x20000)
        if op is Op.WAIT_TC:
            a["timeout"] = self.number(t.get("timeout", 1.0), ctx, "timeout", 3600)
            a["expect_complete"] = self.boolean(t.get("expect_complete", True), ctx, "expect_complete")
        if op is Op.DEVICE:
            kind = t["kind"]
            if kind not in ("source", "sink"):
                raise ctx.err(ScriptRangeError, "kind", f"{kind!r}: use \"source\" or \"sink\"")
            a["kind"] = kind
            a["dreq"] = self.boolean(t.get("dreq", True), ctx, "dreq")
            if kind == "source":
                length = self.static(t["length"], ctx, "length", 0, MAX_DATA) if "length" in t else None
                a["data"] = self.data(t, ctx, file, length)
            else:
                bad = set(t) & DATA_KEYS
                if bad:
                    raise ctx.err(ScriptStructureError, sorted(bad)[0], "a sink takes no data; use capacity")
                a["capacity"] = self.static(t["capacity"], ctx, "capacity", 0, MAX_DATA) if "capacity" in t else None
        if op is Op.DREQ:
            a["level"] = self.boolean(t["level"], ctx, "level")
        if op is Op.DELAY:
            a["us"] = self.number(t["us"], ctx, "us", 3.6e9)
        if op is Op.SETTLE:
            a["timeout"] = self.number(t["timeout"], ctx, "timeout", 3600) if "timeout" in t else None
        if op is Op.RESUME:
            a["lose_state"] = self.boolean(t.get("lose_state", False), ctx, "lose_state")
        return a

    def mode(self, value: object, ctx: _Ctx) -> int:
        if isinstance(value, dict):
            extra = set(value) - {"select", "transfer", "autoinit", "decrement"}
            if extra:
                raise ctx.err(ScriptStructureError, f"mode.{sorted(extra)[0]}", "unknown key; mode has select, transfer, autoinit, decrement")
            selects = {"demand": 0x00, "single": 0x40, "block": 0x80, "cascade": 0xC0}
            transfers = {"verify": 0x00, "io_to_mem": 0x04, "mem_to_io": 0x08}
            sel, tr = value.get("select", "single"), value.get("transfer", "verify")
            if sel not in selects:
                raise ctx.err(ScriptRangeError, "mode.select", f"{sel!r}: use one of {', '.join(selects)}")
            if tr not in transfers:
                raise ctx.err(ScriptRangeError, "mode.transfer", f"{tr!r}: use one of {', '.join(transfers)}")
            m = selects[sel] | transfers[tr]
            if self.boolean(value.get("autoinit", False), ctx, "mode.autoinit"):
                m |= 0x10
            if self.boolean(value.get("decrement", False), ctx, "mode.decrement"):
                m |= 0x20
            return m
        m = self.static(value, ctx, "mode", 0, 0xFF)
        if m & 3:
            raise ctx.err(ScriptRangeError, "mode", f"0x{m:02X} has channel bits set; the channel is ORed in")
        return m


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def bind(step: Step, buffers: Mapping[str, int], script: Script) -> dict[str, Any]:
    """Evaluate the expressions of ``step`` now that buffers are placed; check their ranges."""
    env = {**_env_names(script.variables), **buffers}
    ctx = _Ctx(Path(step.file), step.path, step.op.value)
    out = dict(step.args)
    limits: dict[str, tuple[int, int]] = {
        "addr": (0, (1 << 32) - 1),
        "port": (0, 0xFFFF),
        "value": (0, (1 << step.args.get("width", 8)) - 1),
        "expect": (0, (1 << step.args.get("width", 8)) - 1),
        "mask": (0, (1 << step.args.get("width", 8)) - 1),
    }
    for key, value in step.args.items():
        if isinstance(value, Expr):
            try:
                v = value.evaluate(env)
            except ExprError as e:
                cls = ScriptNameError if "unknown name" in str(e) else ScriptRangeError
                raise ctx.err(cls, key, str(e)) from None
            lo, hi = limits.get(key, (0, (1 << 32) - 1))
            if not lo <= v <= hi:
                raise ctx.err(ScriptRangeError, key, f"{value.text!r} = {v} is outside {lo}..{hi}")
            out[key] = v
    return out


