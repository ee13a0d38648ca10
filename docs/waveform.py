"""Render README's waveform picture from a VCD the simulator writes (part of the docs build).

    python docs/waveform.py            # runs configs/scripts/floppy-read.toml on sim:?floppy=generate
                                       # with a waveform, writes docs/images/floppy-read-tc.svg
    python docs/waveform.py --vcd F.vcd --start NS --end NS --out F.svg   # any VCD, any window

The picture is drawn from the VCD file alone (a small reader below, not the simulator's data),
as SVG written here: no plotting package needed. Regenerate it after a change to the tracer or
the model, and commit the SVG with the change.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import tempfile
from html import escape
from itertools import pairwise
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "images" / "floppy-read-tc.svg"
#: (signal, label) rows of the default picture: the last four bytes of the sector, TC, IRQ 6
ROWS = (
    ("pc.dma1.ch2.dreq", "ch2 DREQ"),
    ("pc.dma2.hrq", "HRQ"),
    ("pc.dma2.hlda", "HLDA"),
    ("pc.dma1.ch2.dack", "ch2 DACK"),
    ("pc.bus.memw", "MEMW"),
    ("pc.bus.data", "data"),
    ("pc.bus.address", "address"),
    ("pc.dma1.ch2.count", "ch2 count"),
    ("pc.dma1.ch2.eop", "ch2 EOP"),
    ("pc.dma1.ch2.tc", "ch2 TC bit"),
    ("pc.dma1.event", "dma1 event"),
    ("pc.pic.irq6", "IRQ 6"),
)
ROW_H, LABEL_W, WIDTH = 26, 110, 900

Change = tuple[int, int | str]


def read_changes(text: str, wanted: set[str]) -> tuple[dict[str, list[Change]], dict[str, int]]:
    """``path -> [(t, value)]`` and ``path -> width`` for the wanted signals of a VCD."""
    tokens = text.split()
    stack: list[str] = []
    ids: dict[str, list[str]] = {}
    widths: dict[str, int] = {}
    i = 0
    while tokens[i] != "$enddefinitions":
        tok = tokens[i]
        if tok == "$scope":
            stack.append(tokens[i + 2])
        elif tok == "$upscope":
            stack.pop()
        elif tok == "$var":
            path = ".".join([*stack, tokens[i + 4]])
            if path in wanted:
                ids.setdefault(tokens[i + 3], []).append(path)
                widths[path] = int(tokens[i + 2])
        i += 1
    changes: dict[str, list[Change]] = {p: [] for p in widths}
    t = 0
    i += 2
    while i < len(tokens):
        tok = tokens[i]
        i += 1
        value: int | str
        if tok.startswith("#"):
            t = int(tok[1:])
            continue
        if tok.startswith("$"):
            continue
        if tok[0] in "bs":
            ident = tokens[i]
            i += 1
            value = int(tok[1:], 2) if tok[0] == "b" else re.sub(r"\\x(..)", lambda m: chr(int(m[1], 16)), tok[1:])
        else:
            value, ident = int(tok[0] == "1"), tok[1:]
        for path in ids.get(ident, ()):
            changes[path].append((t, value))
    return changes, widths


def render(changes: dict[str, list[Change]], widths: dict[str, int], start: int, end: int, title: str) -> str:
    plot_w = WIDTH - LABEL_W - 10
    height = ROW_H * (len(ROWS) + 2) + 10

    def x(t: int) -> float:
        return LABEL_W + (min(max(t, start), end) - start) * plot_w / (end - start)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
           f'font-family="monospace" font-size="11">',
           f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
           f'<text x="6" y="16" font-size="12">{escape(title)}</text>']
    for row, (path, label) in enumerate(ROWS):
        y0 = ROW_H * (row + 1) + 6
        out.append(f'<text x="6" y="{y0 + 15}">{escape(label)}</text>')
        series = changes.get(path, [])
        before = [v for t, v in series if t <= start]
        value: int | str = before[-1] if before else 0
        points = [(start, value)] + [(t, v) for t, v in series if start < t < end]
        points.append((end, points[-1][1]))
        if widths.get(path, 1) == 1 and not isinstance(value, str):
            line = []
            for (t, v), (t2, _) in pairwise(points):
                y = y0 + (4 if v else 20)
                line += [f"{x(t):.1f},{y}", f"{x(t2):.1f},{y}"]
            out.append(f'<polyline points="{" ".join(line)}" fill="none" stroke="#1565c0" stroke-width="1.5"/>')
            continue
        for (t, v), (t2, _) in pairwise(points):
            x1, x2 = x(t), x(t2)
            if isinstance(v, str) and not v:
                out.append(f'<line x1="{x1:.1f}" y1="{y0 + 12}" x2="{x2:.1f}" y2="{y0 + 12}" stroke="#999"/>')
                continue
            out.append(f'<polygon points="{x1:.1f},{y0 + 12} {x1 + 2:.1f},{y0 + 4} {x2 - 2:.1f},{y0 + 4} '
                       f'{x2:.1f},{y0 + 12} {x2 - 2:.1f},{y0 + 20} {x1 + 2:.1f},{y0 + 20}" '
                       f'fill="#e3f2fd" stroke="#1565c0"/>')
            text = v if isinstance(v, str) else f"{v:X}"
            if (x2 - x1) > 7 * len(text) + 6:
                out.append(f'<text x="{x1 + 4:.1f}" y="{y0 + 16}">{escape(text)}</text>')
    axis_y = ROW_H * (len(ROWS) + 1) + 14
    for k in range(6):
        t = start + (end - start) * k // 5
        out.append(f'<line x1="{x(t):.1f}" y1="{ROW_H}" x2="{x(t):.1f}" y2="{axis_y - 10}" stroke="#ddd"/>')
        out.append(f'<text x="{x(t) - 20:.1f}" y="{axis_y}">{t / 1e6:.3f} ms</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


async def record_floppy_read(vcd: Path) -> None:
    sys.path.insert(0, str(ROOT))
    from hil.backends import open_backend
    from hil.runner import run_script
    from hil.script import load_script
    from hil.waves.vcd import waveform

    async with open_backend("sim:?floppy=generate") as be, waveform(be, vcd, title="floppy-read", gtkw=False):
        result = await run_script(load_script(ROOT / "configs" / "scripts" / "floppy-read.toml"), be)
    if result.status != "passed":
        raise SystemExit(f"floppy-read did not pass: {result.error}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vcd", type=Path, help="render this VCD (default: record floppy-read now)")
    p.add_argument("--start", type=int, help="window start, ns (default: 3 cycles before the TC)")
    p.add_argument("--end", type=int, help="window end, ns (default: just after IRQ 6 rises)")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        vcd = args.vcd or Path(tmp) / "floppy-read.vcd"
        if args.vcd is None:
            asyncio.run(record_floppy_read(vcd))
        changes, widths = read_changes(vcd.read_text(encoding="utf-8"), {path for path, _ in ROWS})
    dack = [t for t, v in changes["pc.dma1.ch2.dack"] if v == 1]
    eop = next(t for t, v in changes["pc.dma1.ch2.eop"] if v == 1)
    irq = next(t for t, v in changes["pc.pic.irq6"] if v == 1 and t >= eop)
    start = args.start if args.start is not None else dack[-4] - 2_000
    end = args.end if args.end is not None else irq + 4_000
    title = "floppy-read on sim:?floppy=generate: the last bytes of the sector, TC on channel 2, IRQ 6"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(changes, widths, start, end, title), encoding="utf-8")
    print(f"wrote {args.out} ({start} .. {end} ns)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
