"""Transfer-script data model and its errors.

A script is validated in two phases, both before any hardware is touched: loading checks the
TOML structure, keys, types and every value that does not depend on where buffers land;
binding (after the DMA zone has placed the named buffers, which needs no I/O) evaluates the
remaining expressions and checks their ranges. Every error names the file, the step, the key
and what was expected.

A loaded script keeps a repeat as one node (:class:`StepList`): its body is validated once and
the flat steps, with their indices and path labels, are made as they are iterated, so a
million-step repeat costs what one step costs at load.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import field
from typing import overload

from hil.errors import (  # the script errors were defined here; their names stay importable from here
    CONTROL_CHARS as CONTROL_CHARS,
    ScriptCapabilityError as ScriptCapabilityError,
    ScriptError as ScriptError,
    ScriptFileError as ScriptFileError,
    ScriptIncludeError as ScriptIncludeError,
    ScriptLimitError as ScriptLimitError,
    ScriptNameError as ScriptNameError,
    ScriptRangeError as ScriptRangeError,
    ScriptStructureError as ScriptStructureError,
    ScriptSyntaxError as ScriptSyntaxError,
    ScriptTypeError as ScriptTypeError,
    escape_controls as escape_controls,
)
from hil.records import dataclass
from hil.script.steps import Op, StepArgs


@dataclass(frozen=True)
class Tolerance:
    """How ``hil diff`` may treat this step's observation."""

    diff_mask: int | None = None  #: compare only these bits
    may_differ: bool = False  #: timing-dependent: report, never count as a divergence
    note: str = ""


@dataclass(frozen=True)
class Step:
    """One flat step. The loader keeps one template per written step (path relative to its
    repeat or include body); :class:`StepList` places a copy at each position it runs at."""

    index: int  #: position in the flat list, 0-based
    path: str  #: stable label for reports and alignment: "3", "5[2].1", "4:reset.toml/2"
    args: StepArgs  #: the typed arguments; its class is the step's kind
    tolerance: Tolerance
    file: str
    name: str = ""

    @property
    def op(self) -> Op:
        return self.args.op

    def describe(self) -> str:
        return f"step {self.path} ({self.op.value}{': ' + self.name if self.name else ''})"

    def placed(self, index: int, path: str) -> Step:
        """This template at flat position ``index`` with label ``path``. Shares ``args`` and
        ``tolerance`` (nothing mutates them); skips the frozen ``__init__``, which costs twice as
        much, because a million-step repeat makes a million of these per pass."""
        step = object.__new__(Step)
        fields = step.__dict__
        fields.update(self.__dict__)
        fields["index"], fields["path"] = index, path
        return step


@dataclass(frozen=True, eq=False)
class StepGroup:
    """A repeat (``count`` times its body) or an include (``count`` None: its body once) as one
    node. ``label`` is the group's own label in its body: ``"3"`` for a repeat, whose iterations
    are labelled ``3[1].``, ``3[2].``; ``"3:frag.toml/"`` for an include."""

    label: str
    count: int | None
    body: tuple[Step | StepGroup, ...]
    body_len: int  #: flat steps in one pass of the body

    @property
    def size(self) -> int:
        return self.body_len * (1 if self.count is None else self.count)


Node = Step | StepGroup


def _walk(nodes: Sequence[Node], prefix: str, index: int) -> Iterator[Step]:
    for node in nodes:
        if type(node) is Step:
            yield node.placed(index, prefix + node.path)
            index += 1
            continue
        assert isinstance(node, StepGroup)
        if node.count is None:
            yield from _walk(node.body, prefix + node.label, index)
        else:
            for n in range(1, node.count + 1):
                yield from _walk(node.body, f"{prefix}{node.label}[{n}].", index + (n - 1) * node.body_len)
        index += node.size


class StepList(Sequence[Step]):
    """The flat steps of a script, made on demand from the loaded tree: iteration, ``len`` and
    indexing behave as for the list of every expanded step, in memory that grows with the
    script's text, not with its repeat counts."""

    def __init__(self, nodes: Sequence[Node] = ()) -> None:
        self.nodes: tuple[Node, ...] = tuple(nodes)
        self._len = sum(n.size if isinstance(n, StepGroup) else 1 for n in self.nodes)

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[Step]:
        return _walk(self.nodes, "", 0)

    @overload
    def __getitem__(self, i: int) -> Step: ...
    @overload
    def __getitem__(self, i: slice) -> list[Step]: ...
    def __getitem__(self, i: int | slice) -> Step | list[Step]:
        if isinstance(i, slice):
            start, stop, stride = i.indices(self._len)
            if stride == 1:
                return list(itertools.islice(self, start, stop))
            return [self[k] for k in range(start, stop, stride)]
        if i < 0:
            i += self._len
        if not 0 <= i < self._len:
            raise IndexError("step index out of range")
        nodes, prefix, left = self.nodes, "", i
        while True:
            for node in nodes:
                if type(node) is Step:
                    if left == 0:
                        return node.placed(i, prefix + node.path)
                    left -= 1
                    continue
                assert isinstance(node, StepGroup)
                if left >= node.size:
                    left -= node.size
                    continue
                if node.count is None:
                    prefix += node.label
                else:
                    n, left = divmod(left, node.body_len)
                    prefix = f"{prefix}{node.label}[{n + 1}]."
                nodes = node.body
                break

    def first_passes(self) -> Iterator[Step]:
        """Each step as it runs in the first pass of its repeats, with that pass's index and
        label (a repeat of count 0 has none): for checks whose answer is the same in every
        pass, at the cost of one pass, not of the whole run."""

        def walk(nodes: tuple[Node, ...], prefix: str, index: int) -> Iterator[Step]:
            for node in nodes:
                if type(node) is Step:
                    yield node.placed(index, prefix + node.path)
                    index += 1
                    continue
                assert isinstance(node, StepGroup)
                if node.count is None:
                    yield from walk(node.body, prefix + node.label, index)
                elif node.count:
                    yield from walk(node.body, f"{prefix}{node.label}[1].", index)
                index += node.size

        return walk(self.nodes, "", 0)

    def templates(self) -> Iterator[Step]:
        """Each written step once (a repeated body's steps are not repeated), for checks whose
        answer cannot differ between iterations."""
        stack = [iter(self.nodes)]
        seen: set[int] = set()
        while stack:
            for node in stack[-1]:
                if isinstance(node, Step):
                    yield node
                elif id(node.body) not in seen:
                    seen.add(id(node.body))
                    stack.append(iter(node.body))
                    break
            else:
                stack.pop()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (StepList, list, tuple)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # unhashable: mutable, and equal to lists

    def __repr__(self) -> str:
        return f"StepList({self._len} steps, {len(self.nodes)} top-level nodes)"


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
    steps: Sequence[Step] = field(default_factory=list)  #: a :class:`StepList` once loaded
