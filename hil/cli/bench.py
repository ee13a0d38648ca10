"""``hil bench link``: agent link figures against the link's physical minimum."""

from __future__ import annotations

import argparse
import json

from hil.backends import open_backend


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks: 'hil bench link' measures the agent link",
                       description="Measure channel programming, a register dump and a 64 KiB read through an "
                                   "agent link, as ratios to the physical minimum of the link, and raw ops/s over "
                                   "a pty. Without --backend the link is simulated (--baud, --latency-ms).")
    p.add_argument("what", choices=("link",))
    p.add_argument("--backend", "-b", metavar="URL", help="a real agent+... link to measure instead")
    p.add_argument("--baud", type=int, default=3_000_000, help="simulated (or real) link baud rate")
    p.add_argument("--latency-ms", type=float, default=1.0, help="simulated one-way latency (FT232H, latency timer 1)")
    p.add_argument("--log-format", choices=("console", "json"), default="console")
    p.add_argument("-v", "--verbose", action="count", default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench)


async def cmd_bench(args: argparse.Namespace) -> int:
    from hil.agent.bench import bench_backend, bench_pty, bench_shaped

    if args.backend:
        async with open_backend(args.backend) as be:
            figures = await bench_backend(be, args.baud, args.latency_ms / 1e3)  # type: ignore[arg-type]
        single = batched = None
    else:
        figures = await bench_shaped(args.baud, args.latency_ms / 1e3)
        single, batched = await bench_pty()
    if args.json:
        print(json.dumps({"figures": [{"name": f.name, "seconds": f.seconds, "minimum": f.minimum,
                                       "ratio": f.ratio, "round_trips": f.round_trips} for f in figures],
                          "pty_programs_per_s": single, "pty_ops_per_s": batched}))
        return 0
    link = args.backend or f"simulated {args.baud} baud, {args.latency_ms:g} ms latency each way"
    print(f"link: {link}")
    for f in figures:
        print("  " + f.line())
    if single is not None:
        print(f"  pty, no shaping: {single:,.0f} one-op programs/s; {batched:,.0f} ops/s in 100-op programs")
    return 0
