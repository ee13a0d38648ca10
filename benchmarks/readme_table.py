"""Regenerate README.md's benchmark table from one run of the benchmarks.

Run from the repository root: python benchmarks/readme_table.py [--repeat K] [--from FILE]
It runs bench_sim.py, bench_runner.py, bench_link.py and bench_qemu.py (skipped without QEMU)
with ``--json``, then replaces the table between the ``bench-table`` markers in README.md with
one row per figure: median, min-max, its floor, the ratio and whether the target is met.
``--from FILE`` rebuilds the table from a JSON file an earlier run wrote, without measuring.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
README = HERE.parent / "README.md"
BEGIN, END = "<!-- bench-table: begin (benchmarks/readme_table.py) -->", "<!-- bench-table: end -->"
BENCHES = ["bench_sim.py", "bench_runner.py", "bench_link.py", "bench_qemu.py"]


def fmt(x: float | None) -> str:
    if x is None:
        return ""
    return f"{x:,.3g}" if abs(x) < 1000 else f"{x:,.0f}"


def table(rows: list[dict[str, object]]) -> str:
    lines = ["| figure | median (min-max) | floor, measured in the same run | ratio | target | met |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        samples = r["samples"]
        assert isinstance(samples, list)
        unit = r["unit"]
        value = f"{fmt(r['median'])} {unit} ({fmt(min(samples))}-{fmt(max(samples))})"  # type: ignore[arg-type]
        floor = f"{r['floor_name']}: {fmt(r['floor_median'])} {unit}" if r["floor"] else "—"  # type: ignore[arg-type]
        ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else "—"
        met = {True: "yes", False: "no", None: ""}[r["met"]]  # type: ignore[index]
        lines.append(f"| {r['name']} | {value} | {floor} | {ratio} | {r['target'] or ''} | {met} |")
    return "\n".join(lines)


def measure(repeat: int, out: Path) -> None:
    for bench in BENCHES:
        print(f"running {bench} ...", file=sys.stderr)
        subprocess.run([sys.executable, bench, "--repeat", str(repeat), "--json", str(out)], cwd=HERE, check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--from", dest="source", metavar="FILE", help="rebuild from this JSON instead of measuring")
    a = ap.parse_args()
    if a.source:
        rows = json.loads(Path(a.source).read_text())
    else:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "figures.json"
            measure(a.repeat, out)
            rows = json.loads(out.read_text())
    text = README.read_text(encoding="utf-8")
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    README.write_text(text[:start] + "\n" + table(rows) + "\n" + text[end:], encoding="utf-8")
    print(table(rows))


if __name__ == "__main__":
    main()
