"""The simulator vs QEMU: the same register-heavy script and the same 64 KiB transfer, whole-run
wall time including start-up, reported as ratios (qemu: / sim). Prints figures, asserts nothing.

Run: python benchmarks/bench_qemu.py [--rounds N] [--repeat K]

* Register-heavy script: a transfer script of ``rounds`` x 14 port steps (program channel 1's
  address, count and page byte by byte, read them back through the flip-flop, mask and unmask,
  read status and page), no device, so it runs unchanged on ``sim`` and ``qemu:``. Every step is
  one ``execute()`` program, i.e. one qtest round trip on QEMU.
* 64 KiB transfer: channel 2 (single mode, I/O -> memory) fills a 64 KiB buffer at 0x20000 in
  four DMA programs of 36, 36, 36 and 20 sectors (one cylinder per FDC READ DATA with MT). On
  ``qemu:?floppy=generate`` QEMU's floppy controller supplies the sectors; on ``sim`` a source
  attached by a ``DevAttach`` op, holding the same image bytes, does. Same DMA programming, same
  checks (TC, residue 0, the 64 KiB equal to LBA 0..127 of the generated image).

Whole run = open the backend (QEMU: spawn, connect, first reply) + run + close. The best of
``--repeat`` runs is reported, with the start-up share separately; the register script's sim
and ``qemu:`` runs are taken in turn, so both see the same load on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from floors import Figure, report

from hil.backends import open_backend
from hil.backends.base import Backend
from hil.backends.qemu import QemuBackend, floppy_image, qemu_available
from hil.dma import DMA_MODE_READ, IsaDma
from hil.logconfig import configure
from hil.ops import DevAttach, In, Out
from hil.runner import run_script
from hil.script import load_script

REGISTER_SCRIPT = """
[script]
name = "bench-registers"
description = "register-heavy, no device: 14 port steps per round"

[[step]]
op = "repeat"
count = {rounds}

[[step.steps]]
op = "out"
port = "dma1.single_mask"
value = 0x05

[[step.steps]]
op = "out"
port = "dma1.clear_ff"
value = 0

[[step.steps]]
op = "out"
port = "ch1.addr"
value = 0x34

[[step.steps]]
op = "out"
port = "ch1.addr"
value = 0x12

[[step.steps]]
op = "out"
port = "ch1.count"
value = 0xFF

[[step.steps]]
op = "out"
port = "ch1.count"
value = 0x0F

[[step.steps]]
op = "out"
port = "ch1.page"
value = 0x04

[[step.steps]]
op = "out"
port = "dma1.clear_ff"
value = 0

[[step.steps]]
op = "in"
port = "ch1.addr"
expect = 0x34

[[step.steps]]
op = "in"
port = "ch1.addr"
expect = 0x12

[[step.steps]]
op = "in"
port = "ch1.count"
expect = 0xFF

[[step.steps]]
op = "in"
port = "ch1.count"
expect = 0x0F

[[step.steps]]
op = "in"
port = "ch1.page"
expect = 0x04

[[step.steps]]
op = "in"
port = "dma1.status"
"""

BUF = 0x20000
SECTOR = 512
CHUNKS = (36, 36, 36, 20)  #: sectors per DMA program: three full cylinders (2 heads x 18), then 20
IMAGE = floppy_image()


async def whole_run(url: str, body) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """(whole-run wall seconds, start-up seconds) for open + body(backend) + close."""
    t0 = time.perf_counter()
    async with open_backend(url) as be:
        t_open = time.perf_counter() - t0
        await body(be)
    return time.perf_counter() - t0, t_open


def register_body(path: Path):  # type: ignore[no-untyped-def]
    script = load_script(path)

    async def body(be: Backend) -> None:
        result = await run_script(script, be)
        assert result.status == "passed", (result.error, result.failures[:3])

    return body, len(script.steps)


async def fdc_read(be: Backend, cylinder: int) -> None:
    """SEEK to ``cylinder``, SENSE INTERRUPT, then READ DATA with MT from head 0 sector 1 to the
    end of head 1 (EOT 18): the DMA count ends it at TC after fewer sectors (docs/reference/qemu-qtest.md §6.3)."""
    await be.execute([Out(0x3F5, b) for b in (0x0F, 0x00, cylinder, 0x08)] + [In(0x3F5), In(0x3F5)])
    results = await be.execute([Out(0x3F5, b) for b in (0xE6, 0x00, cylinder, 0, 1, 2, 18, 0x1B, 0xFF)]
                               + [In(0x3F5) for _ in range(7)])
    if results[0] & 0xC0:  # type: ignore[operator]
        raise RuntimeError(f"READ DATA failed: result {bytes(results).hex()}")  # type: ignore[arg-type]


def transfer_body(qemu: bool):  # type: ignore[no-untyped-def]
    async def body(be: Backend) -> None:
        dma = IsaDma(be)
        await dma.request_dma(2, "bench")
        if qemu:
            await be.outb(0x3F2, 0x1C)  # DOR: drive 0, DMA, motor on
        lba = 0
        for cyl, n in enumerate(CHUNKS):
            nbytes = n * SECTOR
            phys = BUF + lba * SECTOR
            if not qemu:
                await be.execute([DevAttach(2, "source", IMAGE[lba * SECTOR:lba * SECTOR + nbytes])])
            async with dma.claim_dma_lock():
                await dma.program(2, DMA_MODE_READ, phys, nbytes)
            if qemu:
                await fdc_read(be, cyl)
            done = await dma.wait_dma_done(2, timeout=2.0)
            assert done.complete, done
            lba += n
        data = await be.read_mem(BUF, 0x10000)
        assert data == IMAGE[:0x10000], "the 64 KiB differ from the image"
        await dma.free_dma(2)

    return body


def show(label: str, sim: tuple[float, float], qemu: tuple[float, float], extra: str = "") -> None:
    (s_all, s_open), (q_all, q_open) = sim, qemu
    print(f"{label}:\n"
          f"  sim    whole run {s_all * 1e3:8.1f} ms (start-up {s_open * 1e3:6.2f} ms)\n"
          f"  qemu:  whole run {q_all * 1e3:8.1f} ms (start-up {q_open * 1e3:6.2f} ms)\n"
          f"  ratio qemu:/sim {q_all / s_all:6.1f}x whole run, {(q_all - q_open) / max(s_all - s_open, 1e-9):6.1f}x "
          f"without start-up{extra}")


async def main(rounds: int, repeat: int, json_path: str | None = None) -> None:
    ok, why = qemu_available()
    if not ok:
        print(f"qemu: not available: {why}")
        return
    best = min  # best of N: the least disturbed run
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "registers.toml"
        path.write_text(REGISTER_SCRIPT.format(rounds=rounds))
        body, steps = register_body(path)
        sims, qemus = [], []
        for _ in range(repeat):  # in turn, so both see the same load on a shared machine (floors.py)
            sims.append(await whole_run("sim", body))
            qemus.append(await whole_run("qemu:", body))
        sim, qemu = best(sims), best(qemus)
        figures = [Figure(f"same register script ({steps} steps) on `qemu:` vs sim, whole run", "ms",
                          [q[0] * 1e3 for q in qemus], "the same run on sim", [s[0] * 1e3 for s in sims],
                          "ratio >= 20")]
        show(f"register-heavy script ({steps} steps, one round trip each)", sim, qemu,
             f"\n  per step: sim {(sim[0] - sim[1]) / steps * 1e6:.1f} us, qemu: {(qemu[0] - qemu[1]) / steps * 1e6:.1f} us")

        sim = best([await whole_run("sim", transfer_body(False)) for _ in range(repeat)])
        qemu = best([await whole_run("qemu:?floppy=generate", transfer_body(True)) for _ in range(repeat)])
        show("64 KiB transfer on channel 2 (4 DMA programs; sim Source vs QEMU's FDC)", sim, qemu,
             f"\n  throughput without start-up: sim {65536 / (sim[0] - sim[1]) / 1e6:.1f} MB/s, "
             f"qemu: {65536 / (qemu[0] - qemu[1]) / 1e6:.1f} MB/s")

        starts = []
        for _ in range(max(5, repeat)):
            be = open_backend("qemu:")
            t0 = time.perf_counter()
            await be.open()
            starts.append(time.perf_counter() - t0)
            assert isinstance(be, QemuBackend)
            t0 = time.perf_counter()
            await be.close()
            starts[-1] = (starts[-1], time.perf_counter() - t0)  # type: ignore[call-overload]
        opens = sorted(s for s, _ in starts)  # type: ignore[misc]
        closes = sorted(c for _, c in starts)  # type: ignore[misc]
        print(f"qemu: open (spawn -> first reply) median {opens[len(opens) // 2] * 1e3:.1f} ms, "
              f"close median {closes[len(closes) // 2] * 1e3:.1f} ms")

        async with open_backend("qemu:") as be:
            n = 20000
            t0 = time.perf_counter()
            for _ in range(2000):
                await be.inb(0x09)
            single = 2000 / (time.perf_counter() - t0)
            t0 = time.perf_counter()
            await be.execute([In(0x09)] * n)
            piped = n / (time.perf_counter() - t0)
            data = bytes(range(256)) * 256
            t0 = time.perf_counter()
            for _ in range(20):
                await be.write_mem(0x100000, data)
            wr = 20 * 65536 / (time.perf_counter() - t0) / 2**20
            t0 = time.perf_counter()
            for _ in range(20):
                await be.read_mem(0x100000, 65536)
            rd = 20 * 65536 / (time.perf_counter() - t0) / 2**20
        print(f"qemu: {single / 1e3:.0f}k single inb/s, {piped / 1e3:.0f}k pipelined inb/s, "
              f"b64write {wr:.0f} MiB/s, b64read {rd:.0f} MiB/s")
    report(figures, json_path)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=500, help="rounds of 14 register steps (default 500)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure, best reported (default 3)")
    ap.add_argument("--json", metavar="FILE", help="append the sim-vs-qemu figure to FILE (see readme_table.py)")
    args = ap.parse_args()
    configure("console", 0)
    asyncio.run(main(args.rounds, args.repeat, args.json))
