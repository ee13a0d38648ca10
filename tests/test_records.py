"""``hil.records.dataclass`` against :func:`dataclasses.dataclass` (issue 16: its methods are
built on first use to spare the import, and must behave as the standard ones).

Seeded random class shapes (fields with and without defaults and factories, ``init``/``repr``/
``compare``/``hash`` flags, ``kw_only``, ``frozen``, ``slots``, ``eq``, a ``__post_init__``,
a base class, methods of the class's own) are written as source and made twice, once by each
decorator; the twins are then built with random arguments (wrong ones too) and compared on
everything a caller sees.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import inspect
import pickle
import random
import re
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from hil import records

ROOT = Path(__file__).resolve().parent.parent
NAN = float("nan")  #: one object, so that both twins hold the same NaN
VALUES: list[object] = [0, 1, -3, 2.5, NAN, "", "x", (), (1, 2), None, True]


def _literal(value: object) -> str:
    return "NAN" if value is NAN else repr(value)


def _field_source(rnd: random.Random, name: str, need_default: bool) -> tuple[str, bool]:
    """One field line, and whether it has a default."""
    kind = rnd.choice(["plain", "default", "factory"] if not need_default else ["default", "factory"])
    args = []
    if kind == "default":
        args.append(f"default={_literal(rnd.choice(VALUES))}")
    elif kind == "factory":
        args.append(f"default_factory={rnd.choice(['list', 'tuple', 'dict'])}")
    for flag in ("repr", "compare"):
        if rnd.random() < 0.2:
            args.append(f"{flag}=False")
    if rnd.random() < 0.15:
        args.append(f"hash={rnd.choice([True, False])}")
    if kind != "plain" and rnd.random() < 0.15:
        args.append("init=False")
    if rnd.random() < 0.1:
        args.append("kw_only=True")
    return f"    {name}: object = field({', '.join(args)})\n", kind != "plain"


def _class_source(rnd: random.Random, name: str, base: str | None, frozen: bool, first: int) -> str:
    params = [f"frozen={frozen}"]
    for flag in ("slots", "kw_only"):
        if rnd.random() < 0.4:
            params.append(f"{flag}=True")
    if rnd.random() < 0.15:
        params.append("eq=False")
    if rnd.random() < 0.1:
        params.append("repr=False")
    lines = [f"@dataclass({', '.join(params)})\n", f"class {name}{f'({base})' if base else ''}:\n"]
    if rnd.random() < 0.7:
        lines.append(f'    """{name} for a test."""\n')
    seen_default = False
    for i in range(rnd.randint(0, 4)):
        line, has_default = _field_source(rnd, f"f{first + i}", need_default=seen_default and rnd.random() < 0.9)
        seen_default = seen_default or has_default
        lines.append(line)
    if rnd.random() < 0.25:
        setter = "object.__setattr__(self, 'seen', True)" if frozen else "self.seen = True"
        lines.append(f"    def __post_init__(self) -> None:\n        {setter}\n")
    match rnd.random():
        case r if r < 0.08:
            lines.append("    def __repr__(self) -> str:\n        return 'own'\n")
        case r if r < 0.16:
            lines.append("    def __eq__(self, other: object) -> bool:\n        return other is self\n")
        case r if r < 0.22:
            lines.append("    def __hash__(self) -> int:\n        return 7\n")
    lines.append("    pass\n")
    return "".join(lines)


def _make_twins(seed: int) -> tuple[str, dict[str, Any], dict[str, Any]]:
    rnd = random.Random(seed)
    frozen = rnd.random() < 0.6
    src = _class_source(rnd, "Base", None, frozen, 0)
    if rnd.random() < 0.5:
        src += _class_source(rnd, "C", "Base", frozen, 10)
    else:
        src += "C = Base\n"
    made = []
    for decorator in (dataclasses.dataclass, records.dataclass):
        module = types.ModuleType("twins")  # dataclasses looks the module up; one name for both twins
        namespace: dict[str, Any] = module.__dict__
        namespace.update(dataclass=decorator, field=dataclasses.field, NAN=NAN)
        sys.modules[module.__name__] = module
        try:
            exec(src, namespace)  # the generated class source
        except Exception as exc:  # compared between the twins below
            namespace["error"] = (type(exc), str(exc))
        finally:
            del sys.modules[module.__name__]
        made.append(namespace)
    return src, made[0], made[1]


def _outcome(fn: Any) -> Any:
    try:
        return ("ok", fn())
    except Exception as exc:  # compared between the twins
        return ("raised", type(exc), str(exc))


def _view(obj: object) -> tuple[object, ...]:
    """What a caller can see of an instance, for comparison across twins."""
    cls = type(obj)
    match cls.__hash__:
        case None:
            hashed: object = "unhashable"
        case object.__hash__:
            hashed = "identity"
        case _:
            hashed = _outcome(lambda: hash(obj))
    shown = [(f.name, repr(getattr(obj, f.name, "<unset>"))) for f in dataclasses.fields(obj)]  # type: ignore[arg-type]
    return (re.sub(r" at 0x[0-9a-f]+", "", repr(obj)), shown,
            hashed, getattr(obj, "seen", None), cls.__match_args__, hasattr(cls, "__slots__"),
            str(inspect.signature(cls)), repr(cls.__dataclass_params__))  # type: ignore[attr-defined]  # a dataclass


@pytest.mark.parametrize("seed", range(400))
def test_twins_behave_alike(seed: int) -> None:
    src, stock, ours = _make_twins(seed)
    assert stock.get("error") == ours.get("error"), src
    if "error" in stock:
        return
    rnd = random.Random(seed * 7919)
    built: list[tuple[object, object]] = []
    for _ in range(12):
        name = rnd.choice(["Base", "C"])  # instances of both, compared across
        a, b = stock[name], ours[name]
        n = rnd.randint(0, 6)
        args = [rnd.choice(VALUES) for _ in range(n)]
        kwargs = {f"f{rnd.randint(0, 13)}": rnd.choice(VALUES) for _ in range(rnd.randint(0, 3))}
        if rnd.random() < 0.2:
            kwargs["nope"] = 1
        x, y = _outcome(lambda: a(*args, **kwargs)), _outcome(lambda: b(*args, **kwargs))
        assert x[0] == y[0], src
        if x[0] == "raised":
            assert x[1:] == y[1:], src
            continue
        assert _view(x[1]) == _view(y[1]), src
        built.append((x[1], y[1]))
    for (x1, y1) in built:
        for (x2, y2) in built:
            assert _outcome(lambda: x1 == x2) == _outcome(lambda: y1 == y2), src
            assert _outcome(lambda: x1 != x2) == _outcome(lambda: y1 != y2), src
        assert (x1 == 5) == (y1 == 5)
        for duplicate in (copy.copy, copy.deepcopy):
            assert _outcome(lambda: _view(duplicate(x1))) == _outcome(lambda: _view(duplicate(y1))), src
        if dataclasses.fields(x1):  # type: ignore[arg-type]
            name = rnd.choice(dataclasses.fields(x1)).name  # type: ignore[arg-type]
            change = rnd.choice(VALUES)
            got = _outcome(lambda: _view(dataclasses.replace(x1, **{name: change})))  # type: ignore[type-var]
            assert got == _outcome(lambda: _view(dataclasses.replace(y1, **{name: change}))), src  # type: ignore[type-var]
            for action in (lambda o: setattr(o, name, 1), lambda o: delattr(o, name)):
                assert _outcome(lambda: action(copy.copy(x1))) == _outcome(lambda: action(copy.copy(y1))), src
        assert _outcome(lambda: dataclasses.asdict(x1)) == _outcome(lambda: dataclasses.asdict(y1)), src  # type: ignore[call-overload]


def test_frozen_inheritance_rules() -> None:
    @records.dataclass(frozen=True)
    class Frozen:
        """A frozen base."""

        a: int = 0

    @records.dataclass
    class Thawed:
        """A plain base."""

        a: int = 0

    with pytest.raises(TypeError, match="cannot inherit non-frozen dataclass from a frozen one"):
        records.dataclass(type("Sub", (Frozen,), {"__annotations__": {"b": "int"}, "b": 1}))
    with pytest.raises(TypeError, match="cannot inherit frozen dataclass from a non-frozen one"):
        records.dataclass(frozen=True)(type("Sub", (Thawed,), {"__annotations__": {"b": "int"}, "b": 1}))


def test_frozen_hierarchies_mix_with_the_standard_decorator() -> None:
    @dataclasses.dataclass(frozen=True)
    class Stock:
        """A frozen base from dataclasses."""

        a: int = 0

    @records.dataclass(frozen=True, slots=True)
    class Ours(Stock):
        """Ours over it."""

        b: int = 1

    @dataclasses.dataclass(frozen=True)
    class StockAgain(Ours):
        """And dataclasses over ours."""

        c: int = 2

    assert StockAgain(5) == StockAgain(5, 1, 2) and Ours(3).a == 3
    assert Ours.__dataclass_params__.frozen and Stock.__dataclass_params__.frozen  # type: ignore[attr-defined]
    with pytest.raises(dataclasses.FrozenInstanceError):
        Ours().a = 1  # type: ignore[misc]


def test_guards_cannot_be_overwritten() -> None:
    with pytest.raises(TypeError, match="Cannot overwrite attribute __setattr__ in class Own"):
        records.dataclass(frozen=True)(type("Own", (), {"__setattr__": lambda self, n, v: None}))


def test_init_is_compiled_on_first_use_only() -> None:
    @records.dataclass(frozen=True, slots=True)
    class Late:
        """Built later."""

        a: int
        b: int = 2

    stand_in = Late.__init__
    assert Late(1) == Late(1, 2)
    assert Late.__init__ is not stand_in
    assert str(inspect.signature(Late)) == "(a: 'int', b: 'int' = 2) -> None"


def test_package_classes_pickle_and_copy() -> None:
    from hil.ops import In, Out
    from hil.script import steps

    ops: list[object] = [In(0x81), Out(0x0A, 0x05), Out(0xC4, 0x1234, width=16), steps.In(port=0x81, mask=0xFF)]
    for op in ops:
        assert pickle.loads(pickle.dumps(op)) == op
        assert copy.deepcopy(op) == op and hash(copy.copy(op)) == hash(op)
        with pytest.raises(dataclasses.FrozenInstanceError):
            op.port = 1  # type: ignore[attr-defined]


def test_package_uses_these_dataclasses() -> None:
    """Every dataclass of the package comes from here, so no class pays the import-time compile
    and frozen classes of both kinds never meet in one hierarchy."""
    offenders = []
    for path in sorted((ROOT / "hil").rglob("*.py")):
        if path.name == "records.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module == "dataclasses":
                if any(alias.name == "dataclass" for alias in node.names):
                    offenders.append(str(path.relative_to(ROOT)))
            if isinstance(node, ast.Attribute) and node.attr == "dataclass" and isinstance(node.value, ast.Name):
                if node.value.id == "dataclasses":
                    offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []
