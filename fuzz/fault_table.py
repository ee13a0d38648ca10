"""Completion table of agent runs through the fault proxy of tests/test_agent_link.py.

    python fuzz/fault_table.py [RUNS_PER_RATE] [--per-byte]

Each run: 20 small programs and a 4 KiB write read back, through a TCP relay that drops,
corrupts, duplicates and delays 16-byte chunks, each with probability RATE (with --per-byte:
each byte is lost, bit-flipped or doubled with probability RATE in all, a noisy UART). Prints per rate the
runs completed, wrong values and doubled writes (the last two must be 0).
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_agent_link import fault_run


async def main(n: int, per_byte: bool) -> None:
    import logging

    import structlog
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    print(f"{'rate':>5} {'completed':>10} {'wrong':>6} {'doubled':>8} {'time':>7}")
    for rate in (0.0, 0.01, 0.02, 0.05):
        t0 = time.monotonic()
        runs = [await fault_run(rate, 1000 + seed, per_byte=per_byte) for seed in range(n)]
        done = sum(r.completed for r in runs)
        print(f"{rate:5.0%} {done:>4}/{n:<5} {sum(r.wrong_values for r in runs):>6} "
              f"{sum(r.doubled_writes for r in runs):>8} {time.monotonic() - t0:6.1f}s", flush=True)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--per-byte"]
    asyncio.run(main(int(args[0]) if args else 30, "--per-byte" in sys.argv))
