"""Integer expressions in transfer scripts: ``"buf + 0x100"``, ``"DMA_MODE_READ | DMA_AUTOINIT"``,
``"ch2.count"``. Parsed with :mod:`ast` and evaluated over a whitelist of integer operators, so a
script can compute addresses without being able to run code, nor make the loader spend
unbounded time or memory: the text is at most :data:`MAX_EXPR_CHARS` long and every value,
intermediate ones included, stays within :data:`MAX_MAGNITUDE` (a squaring chain stops there).
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Mapping

from hil.errors import (
    ExprError as ExprError,  # defined there; importable from here as before
    ExprLimitError as ExprLimitError,
    ExprNameError as ExprNameError,
)
from hil.records import dataclass

_BINOPS: dict[type[ast.operator], Callable[[int, int], int]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.LShift: operator.lshift,
    ast.RShift: operator.rshift,
    ast.BitAnd: operator.and_,
    ast.BitOr: operator.or_,
    ast.BitXor: operator.xor,
}
_UNOPS: dict[type[ast.unaryop], Callable[[int], int]] = {
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
    ast.Invert: operator.invert,
}

MAX_EXPR_CHARS = 256  #: longer texts are refused before parsing (5,000 '-' overflow the parser)
MAX_MAGNITUDE = 1 << 64  #: no value in a script needs more; an address is at most 32 bits


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


@dataclass(frozen=True)
class Expr:
    """A parsed expression; ``names`` lists every name it refers to."""

    text: str
    tree: ast.expr
    names: frozenset[str]

    def evaluate(self, env: Mapping[str, int]) -> int:
        return _eval(self.tree, env, self.text)


def _eval(node: ast.AST, env: Mapping[str, int], text: str) -> int:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    name = _dotted(node)
    if name is not None:
        if name not in env:
            raise ExprNameError(f"unknown name {name!r} in {text!r}", name)
        return env[name]
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left, right = _eval(node.left, env, text), _eval(node.right, env, text)
        if isinstance(node.op, (ast.LShift, ast.RShift)) and not 0 <= right <= 64:
            raise ExprError(f"shift by {right} in {text!r}")
        if isinstance(node.op, (ast.FloorDiv, ast.Mod)) and right == 0:
            raise ExprError(f"division by zero in {text!r}")
        return _bounded(_BINOPS[type(node.op)](left, right), text)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNOPS:
        return _bounded(_UNOPS[type(node.op)](_eval(node.operand, env, text)), text)
    raise ExprError(f"{text!r}: only integers, names and + - * // % << >> & | ^ ~ are allowed")


def _bounded(value: int, text: str) -> int:
    if not -MAX_MAGNITUDE <= value <= MAX_MAGNITUDE:
        raise ExprLimitError(f"{text!r}: a value exceeds 64 bits (limit: magnitude 2**64)")
    return value


def parse(text: str) -> Expr:
    if len(text) > MAX_EXPR_CHARS:
        raise ExprLimitError(f"{text[:40]!r}...: {len(text)} characters, more than the "
                             f"{MAX_EXPR_CHARS} an expression may have")
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError:
        raise ExprError(f"{text!r} is not an integer expression") from None
    except (RecursionError, MemoryError):  # nesting the parser cannot hold, within the length limit
        raise ExprLimitError(f"{text[:40]!r}: nested too deeply to parse") from None
    names: set[str] = set()
    _names(tree, names)
    expr = Expr(text, tree, frozenset(names))
    _check_shape(tree, text)
    return expr


def _names(node: ast.AST, out: set[str]) -> None:
    name = _dotted(node)
    if name is not None:
        out.add(name)
        return
    for child in ast.iter_child_nodes(node):
        _names(child, out)


def _check_shape(node: ast.AST, text: str) -> None:
    if isinstance(node, ast.Constant):
        if type(node.value) is not int:
            raise ExprError(f"{text!r}: {node.value!r} is not an integer")
        return
    if _dotted(node) is not None:
        return
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        _check_shape(node.left, text)
        _check_shape(node.right, text)
        return
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNOPS:
        _check_shape(node.operand, text)
        return
    raise ExprError(f"{text!r}: only integers, names and + - * // % << >> & | ^ ~ are allowed")


Value = int | Expr
