"""Load and validate transfer scripts (TOML, read with :mod:`tomllib`). Format: docs/scripts.md.

A script is input from whoever wrote it, so loading it must not reach beyond it or cost without
bound: data and include files are regular files of bounded size under the script's directory
(or an allowed one), and the expanded step count, the bytes the steps hold and move, the
nesting and the size of every expression and name are limited (docs/scripts.md "Limits").
Every refusal is a :class:`ScriptError` naming file, step, key and rule.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import stat
import tomllib
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

from hil import dma as _dma
from hil.ports import CASCADE_CHANNEL, port_names
from hil.records import dataclass
from hil.script.expr import MAX_MAGNITUDE, Expr, ExprError, ExprLimitError, ExprNameError, parse
from hil.script.model import (
    CONTROL_CHARS,
    BufferSpec,
    Node,
    Op,
    Script,
    ScriptError,
    ScriptFileError,
    ScriptIncludeError,
    ScriptLimitError,
    ScriptNameError,
    ScriptRangeError,
    ScriptStructureError,
    ScriptSyntaxError,
    ScriptTypeError,
    Step,
    StepGroup,
    StepList,
    Tolerance,
)
from hil.script.steps import KINDS, MAX_DATA, Arg, Kind, StepArgs, allowed_keys, step_args

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
# --- limits (docs/scripts.md "Limits"): what a script may cost before anything runs -------------
MAX_STEPS = 2_000_000  #: flat steps after expanding every repeat and include (a full repeat and more)
MAX_HELD_BYTES = 64 << 20  #: data bytes the loaded steps hold in memory (each written step once)
MAX_MOVED_BYTES = 1 << 30  #: bytes all expanded write, fill, read and device steps move
MAX_NESTING = 16  #: repeats and includes inside each other
MAX_TOML_DEPTH = 32  #: arrays and tables inside each other in one file
MAX_SCRIPT_BYTES = 8 << 20  #: size of a script or fragment file
MAX_NAME = 200  #: characters of a script or step name
MAX_IDENT = 64  #: characters of a variable or buffer name
MAX_TEXT = 4096  #: characters of a description or note
TOLERANCE_KEYS = ("diff_mask", "may_differ", "note")  #: a repeat or include passes these down
COMMON_KEYS = {"op", "name", *TOLERANCE_KEYS}
class _Ctx:
    """Where we are, for error messages."""

    def __init__(self, file: Path, path: str | None = None, op: str | None = None) -> None:
        self.file, self.path, self.op = file, path, op

    def err(self, cls: type[ScriptError], key: str | None, message: str) -> ScriptError:
        return cls(self.file, self.path, key, message, self.op)


class _Files:
    """Where data and include files may come from, and how they are read: a resolved path (no
    symlink left) under one of ``roots``, a regular file (never a device, FIFO or socket, which
    read forever or block), at most ``limit`` bytes, read through a descriptor checked again
    after opening so that a file swapped in between cannot slip past."""

    def __init__(self, roots: Iterable[Path]) -> None:
        self.roots = tuple(dict.fromkeys(roots))

    def _roots_text(self) -> str:
        return ", ".join(str(r) for r in self.roots)

    def read(self, ctx: _Ctx, key: str, name: str, base: Path, limit: int, what: str) -> tuple[Path, bytes]:
        """``name`` (relative to ``base``) as (resolved path, bytes); ScriptError on any rule."""
        def fail(rule: str, message: str) -> ScriptFileError:
            return ScriptFileError(ctx.file, ctx.path, key, message, ctx.op, rule=rule)

        if "\0" in name:
            raise fail("path", f"{name!r}: a file name cannot contain a NUL byte")
        if CONTROL_CHARS.search(name):  # a fragment's name becomes part of its steps' path labels
            raise fail("path", f"{name!r}: a file name in a script may not contain control characters")
        try:
            resolved = (base / name).resolve(strict=True)
        except FileNotFoundError:
            raise ctx.err(ScriptIncludeError, key, f"cannot read {name!r}: {what} not found (expected a file "
                                                   f"at {(base / name).resolve()})") from None
        except RuntimeError:  # Python 3.11 reports a symlink loop this way
            raise fail("path", f"{name!r}: symlink loop") from None
        except OSError as e:
            if e.errno == 40:  # ELOOP
                raise fail("path", f"{name!r}: symlink loop") from None
            raise ctx.err(ScriptIncludeError, key, f"cannot read {name!r}: {e.strerror}") from None
        if not any(resolved.is_relative_to(root) for root in self.roots):
            raise fail("directory", f"{name!r} is {resolved}, outside the script's directory tree "
                                    f"({self._roots_text()}); a {what} must lie under it "
                                    f"(widen with allow_paths, hil run --allow-path DIR)")
        return resolved, self.read_regular(resolved, limit, what, lambda rule, m: fail(rule, f"{name!r}: {m}"))

    @staticmethod
    def read_regular(path: Path, limit: int, what: str, fail: Any) -> bytes:
        """The bytes of ``path`` if it is a regular file of at most ``limit`` bytes."""
        def check(st: os.stat_result) -> None:
            if not stat.S_ISREG(st.st_mode):
                kind = ("a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode)
                        else "a character device" if stat.S_ISCHR(st.st_mode)
                        else "a block device" if stat.S_ISBLK(st.st_mode)
                        else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a file")
                raise fail("regular", f"{path} is {kind}; a {what} must be a regular file")
            if st.st_size > limit:
                raise fail("size", f"{path} is {st.st_size} bytes, more than the {limit} a {what} may have")

        try:
            check(os.stat(path))  # before opening: opening a device can act on it
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
                         | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            raise fail("exists", f"{what} not found") from None
        except OSError as e:
            raise fail("readable", f"cannot read: {e.strerror}") from None
        with os.fdopen(fd, "rb") as f:
            check(os.fstat(fd))
            data = f.read(limit + 1)
        if len(data) > limit:
            raise fail("size", f"{path} grew past the {limit} bytes a {what} may have while being read")
        return data


def load_script(path: str | Path, *, variables: Mapping[str, int] | None = None,
                allow_paths: Iterable[str | Path] = ()) -> Script:
    """Read ``path``; ``variables`` override the script's ``[vars]`` (``hil run --var``).

    Data and include files must lie under the script's own directory, or under one of
    ``allow_paths`` (``hil run --allow-path DIR``); symlinks are followed first, so a link out
    of the tree is refused too."""
    file = Path(path)
    if "\0" in str(file):
        raise ScriptFileError(str(file).replace("\0", "\\0"), None, None, "a file name cannot contain a NUL byte",
                              rule="path")
    try:
        roots = [file.resolve().parent, *(Path(p).resolve() for p in allow_paths)]
    except (OSError, RuntimeError, ValueError) as e:
        raise ScriptFileError(file, None, None, f"cannot resolve the script or an allowed path: {e}",
                              rule="path") from None
    files = _Files(roots)
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
    _check_text(name, ctx, "script.name", MAX_NAME)
    description = header.get("description", "")
    if not isinstance(description, str):
        raise ctx.err(ScriptTypeError, "script.description", "expected a string")
    _check_text(description, ctx, "script.description", MAX_TEXT, allow="\n\t")
    requires = header.get("requires", [])
    if not isinstance(requires, list) or not all(isinstance(r, str) for r in requires):
        raise ctx.err(ScriptTypeError, "script.requires", "expected a list of capability names, e.g. [\"devices\"]")
    script = Script(name=name, file=str(file), description=description, requires=tuple(requires))
    script.variables = _load_vars(doc.get("vars", {}), ctx, variables or {})
    script.buffers = _load_buffers(doc.get("buffers", {}), ctx, script.variables)
    raw_steps = doc.get("step", [])
    if not isinstance(raw_steps, list) or not raw_steps:
        raise ctx.err(ScriptStructureError, "step", "a script needs at least one [[step]]")
    loader = _StepLoader(script, files)
    body = loader.load_list(raw_steps, file, prefix="", stack=(file.resolve(),), depth=0)
    script.steps = StepList(body.nodes)
    return script


def _check_text(text: str, ctx: _Ctx, key: str, limit: int, allow: str = "") -> None:
    """Names and notes reach terminals and reports: bounded, and no control characters (an ANSI
    escape in a name would drive the terminal that prints it)."""
    if len(text) > limit:
        raise ScriptLimitError(ctx.file, ctx.path, key, f"{len(text)} characters, more than the {limit} allowed",
                               ctx.op, limit="name length", maximum=limit)
    bad = next((c for c in CONTROL_CHARS.findall(text) if c not in allow), None)
    if bad is not None:
        raise ctx.err(ScriptTypeError, key, f"contains the control character {bad!r} "
                                            f"at position {text.index(bad)}; names and notes must be printable")


def _read_toml(file: Path, ctx: _Ctx) -> dict[str, Any]:
    """The script named on the command line: a regular file of bounded size (any directory)."""
    def fail(rule: str, message: str) -> ScriptFileError:
        return ScriptFileError(ctx.file, ctx.path, None, message, ctx.op, rule=rule)

    try:
        exists = file.exists() or file.is_symlink()
    except OSError as e:
        raise fail("path", f"cannot read: {e.strerror}") from None
    if not exists:
        raise ctx.err(ScriptIncludeError, None, "file not found")
    return _parse_toml(_Files.read_regular(file, MAX_SCRIPT_BYTES, "script file", fail), ctx)


def _parse_toml(raw: bytes, ctx: _Ctx) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ctx.err(ScriptSyntaxError, None, f"not valid TOML: not UTF-8 ({e.reason} at byte {e.start})") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ctx.err(ScriptSyntaxError, None, f"not valid TOML: {e}") from None
    except RecursionError:
        raise ScriptLimitError(ctx.file, None, None, f"arrays or tables nested more than {MAX_TOML_DEPTH} deep",
                               limit="TOML nesting", maximum=MAX_TOML_DEPTH) from None
    _check_depth(doc, ctx)
    return doc


def _check_depth(doc: dict[str, Any], ctx: _Ctx) -> None:
    """Refuse values nested deeper than MAX_TOML_DEPTH, iteratively: nothing later recurses on
    a document deeper than that."""
    todo: list[tuple[object, int]] = [(doc, 0)]
    while todo:
        value, depth = todo.pop()
        if depth > MAX_TOML_DEPTH:
            raise ScriptLimitError(ctx.file, None, None, f"arrays or tables nested more than {MAX_TOML_DEPTH} deep",
                                   limit="TOML nesting", maximum=MAX_TOML_DEPTH)
        if isinstance(value, dict):
            todo.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            todo.extend((v, depth + 1) for v in value)


def _env_names(variables: Mapping[str, int]) -> dict[str, int]:
    return {**CONSTANTS, **PORTS, **variables}


def _check_ident(name: str, ctx: _Ctx, key: str) -> None:
    if len(name) > MAX_IDENT:
        raise ScriptLimitError(ctx.file, ctx.path, f"{key[:key.index('.') + 1]}{name[:20]}...",
                               f"a {len(name)}-character name, more than the {MAX_IDENT} allowed", ctx.op,
                               limit="name length", maximum=MAX_IDENT)


def _load_vars(table: object, ctx: _Ctx, overrides: Mapping[str, int]) -> dict[str, int]:
    if not isinstance(table, dict):
        raise ctx.err(ScriptTypeError, "vars", "expected a table of name = integer or expression")
    out: dict[str, int] = {}
    for key in overrides:
        if key not in table:
            raise ctx.err(ScriptNameError, f"vars.{key}", "overridden variable is not declared in [vars]")
    for key, value in table.items():
        _check_ident(key, ctx, f"vars.{key}")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) or key in CONSTANTS:
            raise ctx.err(ScriptNameError, f"vars.{key}", "variable names are identifiers and may not shadow a constant")
        if key in overrides:
            if not -MAX_MAGNITUDE <= overrides[key] <= MAX_MAGNITUDE:
                raise ctx.err(ScriptRangeError, f"vars.{key}", "the override exceeds 64 bits")
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
        except ExprLimitError as e:
            raise _expr_limit(ctx, key, e) from None
        except ExprError as e:
            text = str(e)
            cls = (ScriptNameError if "unknown name" in text
                   else ScriptRangeError if "division by zero" in text or "shift by" in text else ScriptTypeError)
            raise ctx.err(cls, key, text) from None
    raise ctx.err(ScriptTypeError, key, f"expected an integer or an expression string, got {type(value).__name__}")


def _expr_limit(ctx: _Ctx, key: str, e: ExprLimitError) -> ScriptLimitError:
    return ScriptLimitError(ctx.file, ctx.path, key, str(e), ctx.op, limit="expression size")


def _load_buffers(table: object, ctx: _Ctx, variables: dict[str, int]) -> dict[str, BufferSpec]:
    if not isinstance(table, dict):
        raise ctx.err(ScriptTypeError, "buffers", "expected [buffers.NAME] tables with size and channel")
    out: dict[str, BufferSpec] = {}
    env = _env_names(variables)
    for name, spec in table.items():
        key = f"buffers.{name}"
        _check_ident(name, ctx, key)
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or name in env:
            raise ctx.err(ScriptNameError, key,
                          "buffer names are identifiers and may not shadow a variable, constant or register")
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
        if at is not None:
            for other in out.values():
                if other.at is not None and other.at < at + size and at < other.at + other.size:
                    raise ctx.err(ScriptRangeError, f"{key}.at",
                                  f"buffer {name!r} at 0x{at:X}..0x{at + size - 1:X} overlaps buffer {other.name!r} "
                                  f"at 0x{other.at:X}..0x{other.at + other.size - 1:X}; fixed buffers may not overlap")
        out[name] = BufferSpec(name, size, channel, at)
    return out


@dataclass(frozen=True, eq=False)
class _Body:
    """A loaded list of steps: its nodes, and what one pass of it costs."""

    nodes: tuple[Node, ...]
    steps: int  #: flat steps
    moved: int  #: bytes its write, fill, read and device steps move
    depth: int  #: repeats and includes nested inside it


@dataclass(frozen=True)
class _Field:
    """One field of a step class, as :meth:`_StepLoader.read_field` needs it."""

    name: str
    arg: Arg
    keys: tuple[str, ...]
    default: Any
    cls: type[StepArgs]


@cache
def _keys(op: Op) -> dict[str, bool]:
    return allowed_keys(KINDS[op])


class _StepLoader:
    def __init__(self, script: Script, files: _Files) -> None:
        self.script = script
        self.files = files
        self.env_names = set(_env_names(script.variables)) | set(script.buffers)
        self.held = 0  #: data bytes held by the templates made so far
        #: a fragment included again (with the same inherited tolerances) is the same body:
        #: loaded and checked once, so fan-out costs nothing until the step limit refuses it
        self.fragments: dict[tuple[Path, str], _Body] = {}

    def limit(self, ctx: _Ctx, key: str | None, message: str, limit: str, maximum: int) -> ScriptLimitError:
        return ScriptLimitError(ctx.file, ctx.path, key, message, ctx.op, limit=limit, maximum=maximum)

    def load_list(self, raw: list[Any], file: Path, prefix: str, stack: tuple[Path, ...], depth: int,
                  inherited: dict[str, Any] | None = None) -> _Body:
        """Load one list of steps into nodes (repeats and includes stay one node each).
        ``prefix`` labels errors with the path of the first place the list runs at;
        ``inherited``: tolerance keys (diff_mask, may_differ, note) of the enclosing repeat or
        include, which apply to every step inside unless the step sets its own."""
        nodes: list[Node] = []
        steps = moved = inner_depth = 0
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
            spec = _keys(op)
            unknown = set(table) - COMMON_KEYS - set(spec)
            if unknown:
                allowed = ", ".join(sorted(set(spec) | COMMON_KEYS))
                raise ctx.err(ScriptStructureError, sorted(unknown)[0], f"unknown key for {op.value}; allowed: {allowed}")
            for key, required in spec.items():
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
                if "note" in passed_on:
                    self.text(passed_on["note"], ctx, "note", MAX_TEXT)
                if depth >= MAX_NESTING:
                    raise self.limit(ctx, "steps" if op is Op.REPEAT else "file",
                                     f"repeats and includes nested more than {MAX_NESTING} deep",
                                     "nesting", MAX_NESTING)
            node: Node
            limit_key: str | None
            if op is Op.REPEAT:
                count = self.static(table["count"], ctx, "count", 0, MAX_REPEAT)
                inner = table["steps"]
                if not isinstance(inner, list) or not inner:
                    raise ctx.err(ScriptTypeError, "steps", "expected a non-empty list of step tables")
                body = self.load_list(inner, file, f"{path}[1].", stack, depth + 1, passed_on)
                node = StepGroup(str(i), count, body.nodes, body.steps)
                node_steps, node_moved, node_depth = count * body.steps, count * body.moved, body.depth + 1
                limit_key = "count"
            elif op is Op.INCLUDE:
                target = table["file"]
                if not isinstance(target, str):
                    raise ctx.err(ScriptTypeError, "file", "expected a path string")
                body = self.include(target, ctx, file, path, stack, depth, passed_on)
                node = StepGroup(f"{i}:{Path(target).name}/", None, body.nodes, body.steps)
                node_steps, node_moved, node_depth = body.steps, body.moved, body.depth + 1
                limit_key = "file"
            else:
                args = self.load_args(op, table, ctx, file)
                tol = Tolerance(
                    diff_mask=self.static(table["diff_mask"], ctx, "diff_mask", 0, 0xFFFF) if "diff_mask" in table else None,
                    may_differ=self.boolean(table.get("may_differ", False), ctx, "may_differ"),
                    note=self.text(table.get("note", ""), ctx, "note", MAX_TEXT),
                )
                name = self.text(table.get("name", ""), ctx, "name", MAX_NAME)
                node = Step(-1, str(i), args, tol, str(file), name)
                node_steps, node_moved, node_depth, limit_key = 1, args.moved(), 0, None
            steps += node_steps
            moved += node_moved
            inner_depth = max(inner_depth, node_depth)
            if steps > MAX_STEPS:
                raise self.limit(ctx, limit_key, f"the script expands to more than {MAX_STEPS:,} steps "
                                           f"({steps:,} so far)", "expanded steps", MAX_STEPS)
            if moved > MAX_MOVED_BYTES:
                raise self.limit(ctx, limit_key, f"the expanded steps move more than {MAX_MOVED_BYTES:,} bytes "
                                           f"({moved:,} so far)", "moved bytes", MAX_MOVED_BYTES)
            nodes.append(node)
        return _Body(tuple(nodes), steps, moved, inner_depth)

    def include(self, target: str, ctx: _Ctx, file: Path, path: str, stack: tuple[Path, ...], depth: int,
                passed_on: dict[str, Any]) -> _Body:
        if CONTROL_CHARS.search(target):  # NUL included; the name becomes part of path labels
            what = "cannot contain a NUL byte" if "\0" in target else "may not contain control characters"
            raise ScriptFileError(ctx.file, ctx.path, "file", f"{target!r}: a file name in a script {what}",
                                  ctx.op, rule="path")
        try:
            inc = (file.parent / target).resolve()
        except (OSError, RuntimeError):
            inc = file.parent / target  # a loop: _Files.read below says so
        if inc in stack:
            raise ctx.err(ScriptIncludeError, "file", f"{target!r} includes itself (cycle)")
        cache_key = (inc, repr(sorted(passed_on.items())))
        cached = self.fragments.get(cache_key)
        if cached is not None:
            if depth + 1 + cached.depth > MAX_NESTING:
                raise self.limit(ctx, "file", f"repeats and includes nested more than {MAX_NESTING} deep",
                                 "nesting", MAX_NESTING)
            return cached
        inc, raw = self.files.read(ctx, "file", target, file.parent, MAX_SCRIPT_BYTES, "fragment")
        doc = _parse_toml(raw, _Ctx(inc))
        if set(doc) - {"step"} or not isinstance(doc.get("step"), list):
            raise ctx.err(ScriptIncludeError, "file", f"{target!r}: a fragment holds only [[step]] tables")
        body = self.load_list(doc["step"], inc, f"{path}:{Path(target).name}/", (*stack, inc), depth + 1, passed_on)
        self.fragments[cache_key] = body
        return body

    def text(self, value: object, ctx: _Ctx, key: str, limit: int) -> str:
        if not isinstance(value, str):
            raise ctx.err(ScriptTypeError, key, "expected a string")
        _check_text(value, ctx, key, limit)
        return value

    def hold(self, data: bytes, ctx: _Ctx, key: str) -> bytes:
        self.held += len(data)
        if self.held > MAX_HELD_BYTES:
            raise self.limit(ctx, key, f"the script's data comes to more than {MAX_HELD_BYTES:,} bytes "
                                       f"({self.held:,} so far)", "held bytes", MAX_HELD_BYTES)
        return data

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
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ctx.err(ScriptTypeError, key, f"expected a number 0..{hi:g}, got {value!r}")
        if not 0 <= value <= hi:
            raise ctx.err(ScriptRangeError, key, f"expected a number 0..{hi:g}, got {value!r}")
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
        except ExprLimitError as e:
            raise _expr_limit(ctx, key, e) from None
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
        except ExprLimitError as e:
            raise _expr_limit(ctx, key, e) from None
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
            _, data = self.files.read(ctx, "file", name, file.parent, MAX_DATA, "data file")
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
        return self.hold(data, ctx, kind)

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

    def load_args(self, op: Op, t: dict[str, Any], ctx: _Ctx, file: Path) -> StepArgs:
        """The typed arguments of a step: each field of its class read by the reader of its
        :class:`~hil.script.steps.Kind`, in field order, so the first error is the first field's.
        A reader may set later fields too (an address sets ``length`` and ``buffer``)."""
        cls = KINDS[op]
        got: dict[str, Any] = {}
        for f, a, keys in step_args(cls):
            if f.name in got:
                continue
            if a.kind is Kind.DERIVED:
                if f.default is not dataclasses.MISSING:
                    got[f.name] = f.default
                continue
            got[f.name] = self.read_field(_Field(f.name, a, keys, f.default, cls), t, ctx, file, got)
        return cls(**got)

    def read_field(self, f: _Field, t: dict[str, Any], ctx: _Ctx, file: Path, got: dict[str, Any]) -> Any:
        """One field's value from the step table ``t`` (``got``: the fields read before it)."""
        key, present = f.name, f.name in t
        match f.arg.kind:
            case Kind.WIDTH:
                width = self.static(t[key], ctx, key, 8, 16) if present else f.default
                if width not in (8, 16):
                    raise ctx.err(ScriptRangeError, key, f"width {width}: use 8 or 16")
                return width
            case Kind.PORT:
                return self.deferred(t[key], ctx, key, 0, 0xFFFF - (got["width"] == 16))
            case Kind.VALUE:
                vmax = (1 << got["width"]) - 1
                if present:
                    return self.deferred(t[key], ctx, key, 0, vmax)
                return vmax if f.default is dataclasses.MISSING else f.default
            case Kind.ADDRESS:
                self.address(t, ctx, got, need_length=not any(a.kind is Kind.DATA for _, a, _ in step_args(f.cls)))
                return got["addr"]
            case Kind.PATTERN:
                pattern = self.hexbytes(t[key], ctx, key) if present else f.default
                if not pattern:
                    raise ctx.err(ScriptRangeError, key, "an empty pattern fills nothing")
                return pattern
            case Kind.EXPECT_HEX:
                if not present:
                    return f.default
                expect = self.hold(self.hexbytes(t[key], ctx, key), ctx, key)
                if len(expect) != got["length"]:
                    raise ctx.err(ScriptRangeError, key, f"{len(expect)} bytes expected but length is {got['length']}")
                return expect
            case Kind.DIGEST:
                if not present:
                    return f.default
                d = t[key]
                if not isinstance(d, str) or not re.fullmatch(r"sha256:[0-9a-f]{64}", d):
                    raise ctx.err(ScriptTypeError, key, "expected \"sha256:<64 lowercase hex digits>\"")
                return d
            case Kind.RECORD:
                rec = t.get(key, "bytes" if got["length"] <= 4096 else "digest")
                if rec not in ("bytes", "digest"):
                    raise ctx.err(ScriptRangeError, key, f"{rec!r}: use \"bytes\" or \"digest\"")
                return rec
            case Kind.CHANNEL:
                ch = self.static(t[key], ctx, key, 0, 7)
                if ch == CASCADE_CHANNEL and not f.arg.cascade:
                    raise ctx.err(ScriptRangeError, key, "channel 4 is the cascade: it carries no transfers")
                return ch
            case Kind.MODE:
                return self.mode(t[key], ctx)
            case Kind.BOOL:
                return self.boolean(t[key], ctx, key) if present else f.default
            case Kind.INT:
                return self.static(t[key], ctx, key, 0, int(f.arg.hi or 0)) if present else f.default
            case Kind.NUMBER:
                return self.number(t[key], ctx, key, f.arg.hi or 0) if present else f.default
            case Kind.OUTCOME:
                if not present:
                    return f.default
                outcome = t[key]
                if outcome not in ("reached", "timeout", "any"):
                    raise ctx.err(ScriptRangeError, key, f"{outcome!r}: use \"reached\", \"timeout\" or \"any\"")
                return None if outcome == "any" else outcome
            case Kind.DEVICE_KIND:
                kind = t[key]
                if kind not in ("source", "sink"):
                    raise ctx.err(ScriptRangeError, key, f"{kind!r}: use \"source\" or \"sink\"")
                return kind
            case Kind.DATA:  # with a length field of its own, and an address
                data = self.data(t, ctx, file, got.get("length"))
                got["length"] = len(data)
                if "buffer" in t and "length" not in t:
                    self.within_buffer(ctx, t, len(data), next(k for k in ("hex", "pattern", "text", "file") if k in t))
                return data
            case Kind.SOURCE_DATA:
                if got["kind"] == "source":
                    length = self.static(t["length"], ctx, "length", 0, MAX_DATA) if "length" in t else None
                    return self.data(t, ctx, file, length)
                bad = set(t) & set(f.keys)
                if bad:
                    raise ctx.err(ScriptStructureError, sorted(bad)[0], "a sink takes no data; use capacity")
                return f.default
            case Kind.CAPACITY:
                if got["kind"] == "source" or not present:
                    return f.default
                return self.static(t[key], ctx, key, 0, int(f.arg.hi or 0))
        raise AssertionError(f"{f.cls.__name__}.{key}: kind {f.arg.kind} is read by load_list")  # Repeat, Include

    def mode(self, value: object, ctx: _Ctx) -> int:
        if isinstance(value, dict):
            extra = set(value) - {"select", "transfer", "autoinit", "decrement"}
            if extra:
                raise ctx.err(ScriptStructureError, f"mode.{sorted(extra)[0]}",
                              "unknown key; mode has select, transfer, autoinit, decrement")
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


def bind(step: Step, buffers: Mapping[str, int], script: Script, env: Mapping[str, int] | None = None) -> StepArgs:
    """The arguments of ``step`` with their expressions evaluated now that buffers are placed,
    and their ranges checked. A step without expressions is returned as it is. ``env`` is
    the names the expressions see (:func:`bind_all` makes it once for all the steps)."""
    args = step.args
    pending = [(f.name, a.kind, v) for f, a, _ in _fields(type(args))
               if isinstance(v := getattr(args, f.name), Expr)]
    if not pending:
        return args
    if env is None:
        env = {**_env_names(script.variables), **buffers}
    out: dict[str, int] = {}
    for key, kind, value in pending:
        try:
            v = value.evaluate(env)
        except ExprLimitError as e:
            raise _expr_limit(_Ctx(Path(step.file), step.path, step.op.value), key, e) from None
        except ExprNameError as e:
            raise _Ctx(Path(step.file), step.path, step.op.value).err(ScriptNameError, key, str(e)) from None
        except ExprError as e:
            raise _Ctx(Path(step.file), step.path, step.op.value).err(ScriptRangeError, key, str(e)) from None
        match kind:
            case Kind.PORT:
                lo, hi = 0, 0xFFFF
            case Kind.VALUE:
                lo, hi = 0, (1 << getattr(args, "width", 8)) - 1
            case _:
                lo, hi = 0, (1 << 32) - 1
        if not lo <= v <= hi:
            raise _Ctx(Path(step.file), step.path, step.op.value).err(
                ScriptRangeError, key, f"{value.text!r} = {v} is outside {lo}..{hi}")
        out[key] = v
    return dataclasses.replace(args, **out)


_FIELDS: dict[type[StepArgs], tuple[tuple[dataclasses.Field[Any], Arg, tuple[str, ...]], ...]] = {}


def _fields(cls: type[StepArgs]) -> tuple[tuple[dataclasses.Field[Any], Arg, tuple[str, ...]], ...]:
    """:func:`~hil.script.steps.step_args` of a step class, worked out once per class."""
    found = _FIELDS.get(cls)
    if found is None:
        found = _FIELDS[cls] = tuple(step_args(cls))
    return found


def bind_all(script: Script, buffers: Mapping[str, int]) -> list[StepArgs]:
    """:func:`bind` for every step of ``script``, in order. Every pass of a repeat has the same
    arguments, so a repeat's body is bound once (errors name its first pass, as a flat bind
    would find them) and its (frozen) arguments are shared by all passes: a million-step
    repeat binds one step, not a million."""
    steps = script.steps
    env = {**_env_names(script.variables), **buffers}  # once, not per step
    if not isinstance(steps, StepList):
        return [bind(step, buffers, script, env) for step in steps]
    done: dict[int, StepArgs] = {}  # id(template.args) -> bound; shared fragments too

    def walk(nodes: tuple[Node, ...], prefix: str) -> list[StepArgs]:
        out: list[StepArgs] = []
        for node in nodes:
            if isinstance(node, Step):
                args = done.get(id(node.args))
                if args is None:
                    args = done[id(node.args)] = bind(node.placed(-1, prefix + node.path), buffers, script, env)
                out.append(args)
            elif node.count is None:
                out += walk(node.body, prefix + node.label)
            elif node.count:
                out += walk(node.body, f"{prefix}{node.label}[1].") * node.count
        return out

    return walk(steps.nodes, "")
