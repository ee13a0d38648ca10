"""The ``hil`` command. Errors the package raises on purpose print as one line, exit status 2."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from hil import __version__
from hil.backends import available_backends, open_backend
from hil.backends.base import Backend, Capability
from hil.errors import HilError
from hil.journal import Observation
from hil.logconfig import configure


def _int(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (use 0x.. for hex)") from None


def _common(p: argparse.ArgumentParser, *, backend: bool = True) -> None:
    if backend:
        p.add_argument("--backend", "-b", default="sim", metavar="URL",
                       help="backend URL (default: sim; e.g. sim:?profile=qemu)")
    p.add_argument("--log-format", choices=("console", "json"), default="console", help="structlog output format")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hil", description="Hardware-in-the-loop bridge to the PC/AT ISA/LPC 8237A DMA controller."
    )
    parser.add_argument("--version", action="version", version=f"lpc-hil {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="run a floppy-style DMA transfer and show what moved and the registers",
                       description="Program channel 2 with the Linux floppy sequence, let a simulated device "
                                   "send a sector into memory, then print the data, the residue and every register.")
    _common(p)
    p.add_argument("--bytes", type=_int, default=512, help="transfer length (default 512)")
    p.add_argument("--addr", type=_int, default=0x23400, help="physical buffer address (default 0x23400)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("backends", help="list backend URL schemes and their capabilities")
    _common(p, backend=False)
    p.set_defaults(func=cmd_backends)

    p = sub.add_parser("regs", help="read and decode every readable DMA register (clears status TC bits)")
    _common(p)
    p.set_defaults(func=cmd_regs)

    p = sub.add_parser("peek", help="read an I/O port")
    _common(p)
    p.add_argument("port", type=_int)
    p.add_argument("--width", type=int, choices=(8, 16), default=8)
    p.set_defaults(func=cmd_peek)

    p = sub.add_parser("poke", help="write an I/O port")
    _common(p)
    p.add_argument("port", type=_int)
    p.add_argument("value", type=_int)
    p.add_argument("--width", type=int, choices=(8, 16), default=8)
    p.set_defaults(func=cmd_poke)

    p = sub.add_parser("run", help="run transfer scripts on a backend",
                       description="Validate every script, then run each on the backend (a fresh connection "
                                   "per script), journaling every observation as it happens. Exit status: "
                                   "0 all expectations met, 1 an expectation failed, 2 error.")
    _common(p)
    p.add_argument("scripts", nargs="+", metavar="SCRIPT", help="transfer script (.toml)")
    p.add_argument("--journal", metavar="FILE", help="JSONL journal (one script only)")
    p.add_argument("--journal-dir", metavar="DIR", help="one JSONL journal per script in DIR")
    p.add_argument("--var", action="append", default=[], metavar="NAME=VALUE", help="override a script variable")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the summary line per script")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("diff", help="run scripts on several backends concurrently and compare step by step",
                       description="Run the scripts on every --backend at once (one worker process per backend, "
                                   "so wall time is that of the slowest), or compare saved journals (--journal), "
                                   "and report every divergence with its meaning. Exit status: 0 equal, "
                                   "1 diverged, 2 error.")
    p.add_argument("scripts", nargs="*", metavar="SCRIPT")
    p.add_argument("--backend", "-b", action="append", default=[], metavar="URL", help="a backend (give two or more)")
    p.add_argument("--journal", action="append", default=[], metavar="FILE", help="compare saved journals instead")
    p.add_argument("--deviations", metavar="FILE", help="known-deviations list (TOML)")
    p.add_argument("--journal-dir", metavar="DIR", help="keep the workers' journals in DIR")
    p.add_argument("--junit", metavar="FILE", help="also write a JUnit XML report")
    p.add_argument("--var", action="append", default=[], metavar="NAME=VALUE", help="override a script variable")
    _common(p, backend=False)
    p.set_defaults(func=cmd_diff)

    p = sub.add_parser("agent", help="serve port I/O and memory to a host over a link (the far end of agent+...)",
                       description="Run the reference agent: execute programs sent by an agent+... backend on an "
                                   "I/O backend (sim for tests, devport on a Linux target), within an allow-list.")
    p.add_argument("--io", default="sim", metavar="URL", help="I/O backend: sim, sim:?profile=qemu, devport:?... (default sim)")
    p.add_argument("--listen", required=True, metavar="WHERE",
                   help="tcp://127.0.0.1:PORT, serial:///dev/ttyS0?baud=N, or pty (prints the slave path)")
    p.add_argument("--allow", metavar="FILE", help="allow-list TOML (default: the DMA controllers and page registers)")
    p.add_argument("--window", action="append", default=[], metavar="START-END",
                   help="physical memory window the host may use, END exclusive, e.g. 0x10000-0x90000 "
                        "(repeatable; default: the I/O backend's window, for sim all of its memory)")
    p.add_argument("--token", default="", help="token clients must present (required beyond loopback)")
    p.add_argument("--name", default="hil-agent", help="agent name reported in HELLO")
    p.add_argument("--log-format", choices=("console", "json"), default="console", help="structlog output format")
    p.add_argument("-v", "--verbose", action="count", default=0)
    p.set_defaults(func=cmd_agent)

    p = sub.add_parser("doctor", help="check that a backend URL can reach its target, and say how to fix what cannot",
                       description="Run the diagnostics registered for the URL's scheme (devport: kernel lockdown, "
                                   "CAP_SYS_RAWIO, /dev/port, the /dev/mem window and its reservation; sim: opens). "
                                   "Exit status: 0 all checks passed, 1 a check failed.")
    p.add_argument("url", nargs="?", default="sim", metavar="URL", help="backend URL (default: sim)")
    _common(p, backend=False)
    p.set_defaults(func=cmd_doctor)

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
    return parser


async def _with_backend(url: str, body: Callable[[Backend], Coroutine[Any, Any, int]]) -> int:
    async with open_backend(url) as backend:
        return await body(backend)


def _out(args: argparse.Namespace, text: str, data: object) -> None:
    print(json.dumps(data) if args.json else text)


async def cmd_demo(args: argparse.Namespace) -> int:
    from hil.dma import DMA_MODE_READ, IsaDma
    from hil.regs import read_registers
    from hil.sim.devices import Source

    async def body(be: Backend) -> int:
        if Capability.DEVICES not in be.capabilities:
            raise HilError(f"demo needs a backend with simulated devices (sim:), not {be.url}")
        payload = bytes((i * 7 + 1) & 0xFF for i in range(args.bytes))
        source = Source(payload)
        be.machine.attach(2, source)  # type: ignore[attr-defined]
        dma = IsaDma(be)
        await dma.request_dma(2, "floppy")
        async with dma.claim_dma_lock():
            await dma.disable_dma(2)
            await dma.clear_dma_ff(2)
            await dma.set_dma_mode(2, DMA_MODE_READ)
            await dma.set_dma_addr(2, args.addr)
            await dma.set_dma_count(2, args.bytes)
            await dma.enable_dma(2)
        result = await dma.wait_dma_done(2, timeout=1.0)
        await dma.free_dma(2)
        moved = await be.read_mem(args.addr, args.bytes)
        regs = await read_registers(be)
        ok = moved == payload
        if args.json:
            print(json.dumps({"channel": 2, "addr": args.addr, "bytes": args.bytes, "tc": result.tc,
                              "residue": result.residue, "data_ok": ok, "registers": regs.to_json()}))
        else:
            print(f"backend: {be.capabilities.identity}")
            print(f"channel 2, mode 0x{DMA_MODE_READ | 2:02X} (single, I/O->memory), {args.bytes} bytes "
                  f"-> 0x{args.addr:06X}")
            print(f"terminal count: {'yes' if result.tc else 'NO'}; residue {result.residue} bytes; "
                  f"{len(moved)} bytes in memory {'match' if ok else 'DO NOT match'} what the device sent")
            for off in range(0, min(len(moved), 64), 16):
                print(f"  {args.addr + off:06X}: {moved[off:off + 16].hex(' ')}")
            if len(moved) > 64:
                print(f"  ... ({len(moved) - 64} more bytes)")
            print(regs.format())
        return 0 if ok and result.complete else 1

    return await _with_backend(args.backend, body)


async def cmd_backends(args: argparse.Namespace) -> int:
    schemes = available_backends()
    rows = {}
    for scheme, desc in schemes.items():
        caps: list[str] = []
        try:
            be = open_backend(f"{scheme}:")
            caps = sorted(c.value for c in be.capabilities.features)
            await be.close()
        except HilError:
            caps = ["(needs a URL with target details)"]
        rows[scheme] = {"description": desc, "capabilities": caps}
    text = "\n".join(f"{s + ':':10} {r['description']}\n{'':10} capabilities: {', '.join(r['capabilities'])}"
                     for s, r in rows.items())
    _out(args, text, rows)
    return 0


async def cmd_regs(args: argparse.Namespace) -> int:
    from hil.regs import read_registers

    async def body(be: Backend) -> int:
        dump = await read_registers(be)
        _out(args, dump.format(), dump.to_json())
        return 0

    return await _with_backend(args.backend, body)


async def cmd_peek(args: argparse.Namespace) -> int:
    async def body(be: Backend) -> int:
        value = await (be.inw(args.port) if args.width == 16 else be.inb(args.port))
        digits = args.width // 4
        _out(args, f"0x{args.port:04X} -> 0x{value:0{digits}X}", {"port": args.port, "value": value})
        return 0

    return await _with_backend(args.backend, body)


async def cmd_poke(args: argparse.Namespace) -> int:
    async def body(be: Backend) -> int:
        await (be.outw(args.port, args.value) if args.width == 16 else be.outb(args.port, args.value))
        _out(args, f"0x{args.port:04X} <- 0x{args.value:X}", {"port": args.port, "value": args.value})
        return 0

    return await _with_backend(args.backend, body)


def _variables(items: list[str]) -> dict[str, int]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            out[name.strip()] = int(value, 0)
        except ValueError:
            raise HilError(f"--var {item!r}: expected NAME=INTEGER (0x.. for hex)") from None
        if not sep:
            raise HilError(f"--var {item!r}: expected NAME=INTEGER")
    return out


def _describe_obs(o: Observation) -> str:
    if o.error:
        return f"error: {o.error}"
    if o.op == "in":
        shown = f"read 0x{o.value:02X}" if o.value is not None else "no value"
        if o.expect is not None:
            shown += f", expected 0x{o.expect:02X}" + (f" under mask 0x{o.mask:02X}" if o.mask not in (None, 0xFF, 0xFFFF) else "")
        return f"in 0x{o.port:02X}: {shown}"
    if o.op == "read":
        head = (o.data or "")[:32]
        return f"read 0x{o.addr:X}+{o.length}: {head}{'…' if o.data and len(o.data) > 32 else ''} {o.digest}" + (
            f", expected {str(o.expect)[:32]}" if o.ok is False else "")
    if o.op == "wait_tc":
        return f"wait_tc ch{o.channel}: tc={'yes' if o.tc else 'no'} residue {o.value} of {o.length}"
    if o.op == "residue":
        return f"residue ch{o.channel}: {o.value}" + (f", expected {o.expect}" if o.expect is not None else "")
    if o.op == "device":
        return f"device ch{o.channel}: {o.length} bytes moved, {'TC seen' if o.tc else 'no TC'}" + (
            f", digest {o.digest}" if o.digest else "")
    return o.op


def _progress(label: str) -> Callable[[int, int, Any], None] | None:
    if not sys.stderr.isatty():
        return None

    def show(i: int, n: int, step: Any) -> None:
        sys.stderr.write(f"\r{label}: step {i + 1}/{n} ({step.op.value})   ")
        sys.stderr.flush()
        if i + 1 == n:
            sys.stderr.write("\r" + " " * (len(label) + 40) + "\r")

    return show


async def cmd_run(args: argparse.Namespace) -> int:
    from hil.runner import prepare, run_script
    from hil.script import load_script
    from hil.workers import journal_name

    if args.journal and len(args.scripts) > 1:
        raise HilError("--journal takes one script; use --journal-dir for several")
    variables = _variables(args.var)
    scripts = [load_script(path, variables=variables) for path in args.scripts]  # validate all first
    async with open_backend(args.backend) as be:  # ... and bind all against the backend: no I/O yet
        for script in scripts:
            prepare(script, be)
    worst = 0
    summaries = []
    for i, script in enumerate(scripts):
        journal = args.journal or (str(Path(args.journal_dir) / journal_name(i, script)) if args.journal_dir else None)
        async with open_backend(args.backend) as be:
            result = await run_script(script, be, journal=journal, progress=_progress(script.name))
        code = {"passed": 0, "failed": 1}.get(result.status, 2)
        worst = max(worst, code)
        summaries.append({"script": script.name, "file": script.file, "backend": result.backend,
                          "status": result.status, "error": result.error, "failures": len(result.failures),
                          "observations": [o.to_json() for o in result.observations], "journal": journal})
        if not args.json:
            print(f"{script.name} on {result.backend}: {result.status.upper()} — {len(script.steps)} steps, "
                  f"{len(result.observations)} observations, {len(result.failures)} failed expectation(s), "
                  f"{result.elapsed * 1e3:.1f} ms" + (f"\n  {result.error}" if result.error else ""))
            for o in result.observations:
                if o.ok is False or (args.verbose and not args.quiet):
                    mark = "FAIL" if o.ok is False else "ok  " if o.ok else "    "
                    label = f"step {o.step}" + (f" ({o.name})" if o.name else "")
                    print(f"  {mark} {label}: {_describe_obs(o)}")
    if args.json:
        print(json.dumps(summaries))
    return worst


async def cmd_diff(args: argparse.Namespace) -> int:
    from hil.diff import DiffReport, compare, load_deviations
    from hil.journal import read_journal
    from hil.script import load_script
    from hil.workers import run_on_backends

    deviations = load_deviations(args.deviations) if args.deviations else []
    if args.journal:
        if args.scripts or args.backend:
            raise HilError("give either saved journals (--journal) or scripts with --backend, not both")
        if len(args.journal) < 2:
            raise HilError("--journal: give at least two journals to compare")
        groups: dict[str, list] = {}
        for path in args.journal:
            try:
                r = read_journal(path)
            except (OSError, ValueError) as e:
                raise HilError(f"--journal {path}: {e}") from None
            groups.setdefault(r.script, []).append(r)
        report = DiffReport(backends=sorted({r.backend for rs in groups.values() for r in rs}))
        for rs in groups.values():
            if len(rs) < 2:
                report.errors.append(f"{rs[0].script}: only one journal, nothing to compare with")
            compare(rs, deviations, report)
    else:
        if len(args.backend) < 2:
            raise HilError("diff needs two or more --backend URLs (or --journal files)")
        if not args.scripts:
            raise HilError("diff needs at least one SCRIPT")
        variables = _variables(args.var)
        scripts = [load_script(path, variables=variables) for path in args.scripts]
        for url in args.backend:
            open_backend(url)  # a bad URL fails here, before any worker starts

        def done(url: str, rc: int) -> None:
            if sys.stderr.isatty():
                sys.stderr.write(f"{url}: finished ({'ok' if rc == 0 else 'expectations failed' if rc == 1 else 'error'})\n")

        worker_errors: dict[int, str] = {}
        grid = await run_on_backends(scripts, args.backend, journal_dir=args.journal_dir, variables=args.var,
                                     on_done=done, errors=worker_errors)
        report = DiffReport(backends=list(args.backend))
        for s, script in enumerate(scripts):
            runs = [grid[b][s] for b in range(len(args.backend))]
            missing = [b for b, r in enumerate(runs) if r is None]
            if missing:
                why = "; ".join(f"{args.backend[b]}: {worker_errors.get(b, 'worker failed to start')}" for b in missing)
                report.errors.append(f"{script.name}: no journal ({why})")
                continue
            compare(runs, deviations, report)  # type: ignore[arg-type]
    if args.junit:
        Path(args.junit).write_text(report.to_junit(), encoding="utf-8")
    print(json.dumps(report.to_json()) if args.json else report.format())
    return report.exit_code


async def cmd_agent(args: argparse.Namespace) -> int:
    from hil.agent.server import AgentCore, serve
    from hil.allowlist import AllowList, parse_window

    allow = AllowList.from_toml(args.allow) if args.allow else AllowList.default()
    windows = [parse_window(w) for w in args.window]
    async with open_backend(args.io) as io:
        if windows:
            allow = allow.with_memory(windows)
        elif not allow.memory:
            lo, hi = io.capabilities.memory_window  # the I/O backend's own window (sim: all of it)
            if hi <= lo:
                raise HilError("give --window START-END (or [memory] windows in --allow): the agent needs to know "
                               "which physical memory the host may use")
            allow = allow.with_memory([range(lo, hi)])
        core = AgentCore(io, allow, name=args.name, token=args.token.encode())

        def ready(address: str) -> None:
            print(address, flush=True)

        await serve(core, args.listen, ready=ready)
    return 0


async def cmd_doctor(args: argparse.Namespace) -> int:
    from hil.doctor import run_doctor

    report = await run_doctor(args.url)
    print(json.dumps(report.to_json()) if args.json else report.format())
    return report.exit_code


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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure(args.log_format, args.verbose)
    try:
        return asyncio.run(args.func(args))
    except HilError as e:
        print(f"hil {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
