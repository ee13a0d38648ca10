"""What every benchmark prints: a figure beside its floor measured in the same run, as a ratio,
min/median/max over repeats (issue 16). The machine is shared and noisy: a figure and its floor
are measured alternately, so both see the same conditions, and the ratio of the medians is the
number compared with the target.

``--json FILE`` (each bench script) appends the figures to FILE; ``readme_table.py`` turns
them into the README's table.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class Figure:
    """``samples`` of one figure and ``floor`` of its floor, in ``unit``; ``target`` is a ratio
    bound (``ratio <= 10``), an absolute one on the figure (``value <= 0.15``), or a minimum of a
    throughput (``value >= 100``); ``higher`` marks throughputs (more is better)."""

    name: str
    unit: str
    samples: list[float]
    floor_name: str = ""
    floor: list[float] = field(default_factory=list)
    target: str = ""
    higher: bool = False
    before: float | None = None  #: the median before issue 16, where the same run measured it
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def floor_median(self) -> float | None:
        return statistics.median(self.floor) if self.floor else None

    @property
    def ratio(self) -> float | None:
        f = self.floor_median
        if not f:
            return None
        return f / self.median if self.higher else self.median / f

    def met(self) -> bool | None:
        if not self.target:
            return None
        what, op, bound = self.target.split()
        value = self.ratio if what == "ratio" else self.median
        if value is None:
            return None
        return value <= float(bound) if op == "<=" else value >= float(bound)

    def line(self) -> str:
        lo, hi = min(self.samples), max(self.samples)
        text = f"{self.name}: {_fmt(self.median)} {self.unit} (min {_fmt(lo)}, max {_fmt(hi)}, n={len(self.samples)})"
        if self.floor:
            text += (f"; floor {self.floor_name}: {_fmt(self.floor_median or 0)} {self.unit} "
                     f"(min {_fmt(min(self.floor))}, max {_fmt(max(self.floor))})")
        if self.ratio is not None:
            text += f"; ratio {self.ratio:.2f}"
        if self.target:
            text += f"; target {self.target}: {'met' if self.met() else 'NOT met'}"
        if self.note:
            text += f" [{self.note}]"
        return text


def _fmt(x: float) -> str:
    return f"{x:,.3g}" if abs(x) < 1000 else f"{x:,.0f}"


def alternate(figure: Callable[[], float], floor: Callable[[], float], repeat: int) -> tuple[list[float], list[float]]:
    """``repeat`` samples of each, taken in turn."""
    a, b = [], []
    for _ in range(repeat):
        b.append(floor())
        a.append(figure())
    return a, b


def timed(fn: Callable[[], object], n: int = 1) -> float:
    """Seconds per call of ``fn``, over ``n`` calls."""
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def report(figures: list[Figure], json_path: str | None) -> None:
    for f in figures:
        print(f.line())
    if json_path:
        path = Path(json_path)
        old = json.loads(path.read_text()) if path.exists() else []
        rows = [{**asdict(f), "median": f.median, "floor_median": f.floor_median, "ratio": f.ratio, "met": f.met()}
                for f in figures]
        path.write_text(json.dumps(old + rows, indent=1))
