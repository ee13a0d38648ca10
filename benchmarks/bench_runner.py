"""Runner overhead per step on the sim, and ``hil diff`` wall time for two sim backends vs one.

Run: python benchmarks/bench_runner.py [--steps N]. Prints figures and ratios; asserts nothing.
Target (issue 4): diff on two backends takes <= 1.2x the wall time of one, because each backend
runs in its own worker process.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from hil.backends import open_backend
from hil.logconfig import configure
from hil.runner import run_script
from hil.script import load_script
from hil.workers import run_on_backends

SCRIPT = """
[script]
name = "bench-{steps}"
requires = ["devices"]

[buffers.buf]
size = 4096
channel = 1

[[step]]
op = "repeat"
count = {rounds}

[[step.steps]]
op = "device"
channel = 1
kind = "source"
pattern = "5a a5"
length = 4096

[[step.steps]]
op = "program"
channel = 1
mode = "DMA_MODE_READ"
buffer = "buf"

[[step.steps]]
op = "wait_tc"
channel = 1

[[step.steps]]
op = "in"
port = "dma1.status"

[[step.steps]]
op = "in"
port = "ch1.page"
expect = "buf >> 16"

[[step.steps]]
op = "read"
buffer = "buf"
length = 64
"""


TRIVIAL = """
[script]
name = "overhead"

[[step]]
op = "repeat"
count = {count}
steps = [{{ op = "in", port = "ch1.page" }}, {{ op = "out", port = "ch1.page", value = 0x12 }}]
"""


async def raw_inb(n: int) -> float:
    async with open_backend("sim") as be:
        t0 = time.perf_counter()
        for _ in range(n):
            await be.inb(0x81)
        return (time.perf_counter() - t0) / n


async def main(steps: int) -> None:
    rounds = max(1, steps // 6)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.toml"
        path.write_text(SCRIPT.format(steps=rounds * 6, rounds=rounds))
        script = load_script(path)
        n = len(script.steps)
        async with open_backend("sim") as be:
            t0 = time.perf_counter()
            result = await run_script(script, be, journal=Path(tmp) / "j.jsonl")
            run_s = time.perf_counter() - t0
        assert result.status == "passed", result.error
        per_step = run_s / n
        print(f"runner, realistic mix (device, program, wait_tc moving 4 KiB, in, read): {n} steps in "
              f"{run_s * 1e3:.0f} ms = {per_step * 1e6:.1f} us/step")

        trivial = Path(tmp) / "trivial.toml"
        trivial.write_text(TRIVIAL.format(count=steps // 2))
        tscript = load_script(trivial)
        async with open_backend("sim") as be:
            t0 = time.perf_counter()
            await run_script(tscript, be, journal=Path(tmp) / "t.jsonl")
            t_run = (time.perf_counter() - t0) / len(tscript.steps)
        raw = await raw_inb(20000)
        print(f"runner overhead: {t_run * 1e6:.1f} us per in/out step with journal vs {raw * 1e6:.2f} us "
              f"for a bare backend.inb: {(t_run - raw) * 1e6:.1f} us overhead per step (ratio {t_run / raw:.1f}x)")

        for _ in range(1):  # warm the import cache of the worker interpreter
            await run_on_backends([script], ["sim"], journal_dir=Path(tmp) / "warm")
        t0 = time.perf_counter()
        await run_on_backends([script], ["sim"], journal_dir=Path(tmp) / "one")
        one = time.perf_counter() - t0
        t0 = time.perf_counter()
        await run_on_backends([script], ["sim", "sim:?profile=qemu"], journal_dir=Path(tmp) / "two")
        two = time.perf_counter() - t0
        print(f"hil diff workers: one backend {one:.2f} s, two backends {two:.2f} s, "
              f"ratio {two / one:.2f} (target <= 1.2)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=30000)
    configure("console", 0)
    asyncio.run(main(ap.parse_args().steps))
