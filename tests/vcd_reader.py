"""A small VCD reader for the tests, independent of pyvcd (which writes the files): IEEE 1800
§21.7's header (``$scope module NAME $end`` ... ``$upscope $end``, ``$var TYPE SIZE ID NAME
$end``) and value changes, read the way a viewer such as Surfer does.

Strict where viewers are: every ``$scope`` needs its ``$upscope``, every ``$var`` must sit in a
scope, ``$enddefinitions`` must close the header, timestamps never go backwards, every change
names a declared identifier.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field


class VcdFormatError(Exception):
    pass


@dataclass
class Var:
    path: str  #: dotted: scope names and the var's reference
    type: str
    size: int
    ident: str
    changes: list[tuple[int, int | str]] = field(default_factory=list)

    def value_at(self, t: int) -> int | str | None:
        value = None
        for when, v in self.changes:
            if when > t:
                break
            value = v
        return value

    def edges(self, level: int = 1) -> list[int]:
        """Times the var became ``level`` (from another value)."""
        out, last = [], None
        for when, v in self.changes:
            if v == level and last != level:
                out.append(when)
            last = v
        return out


@dataclass
class Vcd:
    timescale: str
    scopes: list[tuple[str, str]]  #: (type, dotted path) of each scope, in order
    vars: dict[str, Var]  #: by dotted path
    end: int


_UNESCAPE = re.compile(r"\\x([0-9a-fA-F]{2})")


def _string(token: str) -> str:
    return _UNESCAPE.sub(lambda m: chr(int(m.group(1), 16)), token)


def read_vcd(text: str) -> Vcd:
    tokens = text.split()
    i = 0
    stack: list[str] = []
    scopes: list[tuple[str, str]] = []
    by_id: dict[str, list[Var]] = {}
    out: dict[str, Var] = {}
    timescale = ""

    def until_end() -> list[str]:
        nonlocal i
        body = []
        while tokens[i] != "$end":
            body.append(tokens[i])
            i += 1
        i += 1
        return body

    while True:
        if i >= len(tokens):
            raise VcdFormatError("no $enddefinitions")
        tok = tokens[i]
        i += 1
        if tok == "$scope":
            kind, name = until_end()
            stack.append(name)
            scopes.append((kind, ".".join(stack)))
        elif tok == "$upscope":
            until_end()
            if not stack:
                raise VcdFormatError("$upscope without $scope")
            stack.pop()
        elif tok == "$var":
            body = until_end()
            if not stack:
                raise VcdFormatError(f"$var {body} outside any scope")
            var = Var(".".join([*stack, body[3]]), body[0], int(body[1]), body[2])
            out[var.path] = var
            by_id.setdefault(var.ident, []).append(var)
        elif tok == "$timescale":
            timescale = " ".join(until_end())
        elif tok == "$enddefinitions":
            until_end()
            break
        elif tok.startswith("$"):
            until_end()
        else:
            raise VcdFormatError(f"unexpected {tok!r} in the header")
    if stack:
        raise VcdFormatError(f"scopes not closed: {stack}")
    t = 0
    while i < len(tokens):
        tok = tokens[i]
        i += 1
        if tok.startswith("#"):
            now = int(tok[1:])
            if now < t:
                raise VcdFormatError(f"time goes backwards: #{now} after #{t}")
            t = now
            continue
        if tok in ("$dumpvars", "$end", "$dumpon", "$dumpoff", "$dumpall"):
            continue
        if tok[0] in "bB":
            value: int | str = int(tok[1:].replace("x", "0").replace("z", "0"), 2)
            ident = tokens[i]
            i += 1
        elif tok[0] in "sS":
            value = _string(tok[1:])
            ident = tokens[i]
            i += 1
        elif tok[0] in "01xzXZ":
            value, ident = (1 if tok[0] == "1" else 0), tok[1:]
        else:
            raise VcdFormatError(f"cannot read change {tok!r}")
        if ident not in by_id:
            raise VcdFormatError(f"change of undeclared identifier {ident!r}")
        for var in by_id[ident]:
            var.changes.append((t, value))
    return Vcd(timescale, scopes, out, t)
