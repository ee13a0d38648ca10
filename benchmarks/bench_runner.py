"""The runner and ``hil run`` against their floors, measured in the same run (issue 16).

Run: python benchmarks/bench_runner.py [--steps N] [--repeat K] [--json FILE]. Prints figures
and ratios; asserts nothing.

* runner overhead per ``in``/``out`` step with a journal: the step's time less the backend's
  own op (a bare ``await be.inb`` / ``be.outb`` on the same simulator), target <= 3 us;
* the share of a long run's time spent inside the backend (its methods timed from outside),
  for the realistic mix (device, program, wait_tc moving 4 KiB, in, read) and for bare in/out
  steps, target >= 60% on the realistic mix;
* ``hil run`` of a one-step script as a whole process vs ``python -c pass`` (both with
  bytecode cached), target <= 0.15 s; beside it, what of that is asyncio's import alone, and the
  same command in-process once everything is imported (parse, open, load, prepare, run with a
  journal) vs ``asyncio.run()`` of an empty coroutine;
* ``hil diff`` on two sim backends vs one (issue 4: <= 1.2x).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from floors import Figure, report

from hil.backends import open_backend
from hil.backends.sim import SimBackend
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

ONE_STEP = '[script]\nname = "one"\n\n[[step]]\nop = "in"\nport = "ch1.page"\n'
TIMED = ("execute", "inb", "outb", "inw", "outw", "read_mem", "write_mem", "settle", "delay")


async def bare_in_out(n: int) -> float:
    """Seconds of one bare backend op, averaged over inb and outb as the trivial script mixes them."""
    async with open_backend("sim") as be:
        t0 = time.perf_counter()
        for _ in range(n // 2):
            await be.inb(0x83)
            await be.outb(0x83, 0x12)
        return (time.perf_counter() - t0) / n


async def run_timed(path: Path, journal: Path) -> tuple[float, float, int]:
    """(run seconds, seconds inside the backend's methods, steps) for one run of ``path``."""
    script = load_script(path)
    spent = [0.0]
    depth = [0]  #: a convenience calling execute() is timed once, from the outside
    originals = {name: getattr(SimBackend, name) for name in TIMED}

    def wrap(fn):  # type: ignore[no-untyped-def]  # a bench helper
        async def timed(*args, **kw):  # type: ignore[no-untyped-def]
            depth[0] += 1
            t0 = time.perf_counter()
            try:
                return await fn(*args, **kw)
            finally:
                depth[0] -= 1
                if not depth[0]:
                    spent[0] += time.perf_counter() - t0
        return timed

    for name, fn in originals.items():
        setattr(SimBackend, name, wrap(fn))
    try:
        async with open_backend("sim") as be:
            t0 = time.perf_counter()
            result = await run_script(script, be, journal=journal)
            elapsed = time.perf_counter() - t0
    finally:
        for name, fn in originals.items():
            setattr(SimBackend, name, fn)
    assert result.status == "passed", result.error
    return elapsed, spent[0], len(script.steps)


async def run_plain(path: Path, journal: Path) -> tuple[float, int]:
    script = load_script(path)
    async with open_backend("sim") as be:
        t0 = time.perf_counter()
        await run_script(script, be, journal=journal)
        return time.perf_counter() - t0, len(script.steps)


def whole_process(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def in_process(argv: list[str]) -> float:
    """Seconds of ``hil ARGV`` called in this process (its modules imported already); it runs
    its own event loop, so call it from a thread of its own."""
    from hil.cli import main as hil_main

    with contextlib.redirect_stdout(io.StringIO()):
        t0 = time.perf_counter()
        code = hil_main(argv)
        elapsed = time.perf_counter() - t0
    assert code == 0, code
    return elapsed


def empty_loop() -> float:
    async def nothing() -> None:
        pass

    t0 = time.perf_counter()
    asyncio.run(nothing())
    return time.perf_counter() - t0


async def main(steps: int, repeat: int, json_path: str | None) -> None:
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        trivial = base / "trivial.toml"
        trivial.write_text(TRIVIAL.format(count=steps // 2))
        mix = base / "mix.toml"
        rounds = max(1, steps // 6)
        mix.write_text(SCRIPT.format(steps=rounds * 6, rounds=rounds))

        per_step, bare = [], []
        for _ in range(repeat):
            bare.append(await bare_in_out(20_000) * 1e6)
            elapsed, n = await run_plain(trivial, base / "t.jsonl")
            per_step.append(elapsed / n * 1e6)
        overhead = [s - b for s, b in zip(per_step, bare)]
        figures.append(Figure("runner overhead per in/out step, journal on (step less the backend's op)", "us",
                              overhead, "the backend's own op (bare inb/outb)", bare, "value <= 3"))

        for name, path, target in (("realistic mix", mix, "value >= 60"), ("bare in/out steps", trivial, "")):
            shares, per = [], []
            for _ in range(max(1, repeat // 2)):
                elapsed, spent, n = await run_timed(path, base / "s.jsonl")
                shares.append(100 * spent / elapsed)
                per.append(elapsed / n * 1e6)
            figures.append(Figure(f"share of a {n}-step run in the backend, {name} ({sum(per) / len(per):.1f} us/step)",
                                  "%", shares, target=target, higher=True))

        one = base / "one.toml"
        one.write_text(ONE_STEP)
        env = {**os.environ, "PYTHONPYCACHEPREFIX": str(base / "pyc")}
        env.pop("PYTHONDONTWRITEBYTECODE", None)  # an installed package has its bytecode cached
        hil = [sys.executable, "-m", "hil", "run", "-q", "-b", "sim", str(one)]
        whole_process(hil, env)  # compile once
        proc, floor = [], []
        for _ in range(repeat):
            floor.append(whole_process([sys.executable, "-c", "pass"], env))
            proc.append(whole_process(hil, env))
        figures.append(Figure("`hil run` of a 1-step script, whole process", "s", proc, "`python -c pass`", floor,
                              "value <= 0.15"))
        aio, floor = [], []
        for _ in range(repeat):
            floor.append(whole_process([sys.executable, "-c", "pass"], env))
            aio.append(whole_process([sys.executable, "-c", "import asyncio"], env))
        figures.append(Figure("`hil run` start-up: `import asyncio` alone, whole process", "s", aio, "`python -c pass`",
                              floor))
        argv = ["run", "-q", "-b", "sim", "--journal", str(base / "one.jsonl"), str(one)]
        await asyncio.to_thread(in_process, argv)  # imports everything the command uses
        inner, floor = [], []
        for _ in range(repeat * 4):
            floor.append(await asyncio.to_thread(empty_loop) * 1e3)
            inner.append(await asyncio.to_thread(in_process, argv) * 1e3)
        figures.append(Figure("`hil run` of a 1-step script with a journal, in-process after its imports", "ms", inner,
                              "`asyncio.run()` of an empty coroutine", floor))

        script = load_script(mix)
        await run_on_backends([script], ["sim"], journal_dir=base / "warm")
        one_t, two_t = [], []
        for _ in range(repeat):  # seconds-long samples on a shared machine: as many as the others
            t0 = time.perf_counter()
            await run_on_backends([script], ["sim"], journal_dir=base / "one")
            one_t.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            await run_on_backends([script], ["sim", "sim:?profile=qemu"], journal_dir=base / "two")
            two_t.append(time.perf_counter() - t0)
        figures.append(Figure("`hil diff` workers, two sim backends", "s", two_t, "one backend", one_t, "ratio <= 1.2"))
    report(figures, json_path)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=30000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", metavar="FILE", help="append the figures to FILE (see readme_table.py)")
    configure("console", 0)
    a = ap.parse_args()
    asyncio.run(main(a.steps, a.repeat, a.json))
