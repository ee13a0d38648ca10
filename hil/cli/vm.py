"""``hil vm``: the rehearsal VM's kernel, image, and commands run inside it (``vm:`` backend)."""

from __future__ import annotations

import argparse
import asyncio
import json

from hil.errors import HilError

CAPABILITIES = {"CAP_SYS_RAWIO": 17}


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("vm",
                       description="The rehearsal VM of the vm: backend (README 'Rehearse a bench in a VM').")
    _common(p, argparse.SUPPRESS)  # here or after WHAT: 'hil vm --json image' as 'hil vm image --json'
    p.set_defaults(log_format="console", verbose=0, json=False)
    what = p.add_subparsers(dest="what", required=True, metavar="WHAT",
                            help="fetch-kernel, kernel, image or run (each has --help)")
    for name, text in (("fetch-kernel", "download Debian's linux-image-amd64 kernel into the cache, without installing it"),
                       ("kernel", "print the kernel vm: would boot"),
                       ("image", "build (or find cached) the guest image from this host's Python and package")):
        q = what.add_parser(name, help=text, description=text)
        if name == "image":
            q.add_argument("--force", action="store_true", help="rebuild even if cached")
        _common(q, argparse.SUPPRESS)
        q.set_defaults(func=cmd_vm)
    r = what.add_parser("run", help="boot a VM and run COMMAND inside it as root, then power off",
                        description="Boot a VM and run COMMAND in it as root (a leading 'hil' runs the guest's hil), "
                                    "e.g. `hil vm run -- hil doctor devport:?window=0x10000-0x90000`. Exit status: "
                                    "the command's.")
    r.add_argument("--url", default="vm:", metavar="URL",
                   help="the VM's options as a vm: URL (window=, reserve=0, floppy=, mem=, kernel=)")
    r.add_argument("--drop-cap", action="append", default=[], choices=sorted(CAPABILITIES),
                   help="remove a capability from the command's bounding set (repeatable)")
    _common(r, argparse.SUPPRESS)
    r.add_argument("guest_argv", nargs=argparse.REMAINDER, metavar="COMMAND",
                   help="the command, after --")
    r.set_defaults(func=cmd_vm)


def _common(p: argparse.ArgumentParser, default: str) -> None:
    """The common options; their defaults are the ``vm`` parser's, so that a subcommand's parser
    does not overwrite what was given before the subcommand's name."""
    p.add_argument("--log-format", choices=("console", "json"), default=default, help="structlog output format")
    p.add_argument("-v", "--verbose", action="count", default=default, help="more log output (-vv for debug)")
    p.add_argument("--json", action="store_true", default=default, help="machine-readable output on stdout")


async def cmd_vm(args: argparse.Namespace) -> int:
    from hil.vm import image, kernel

    match args.what:
        case "fetch-kernel":
            path = await asyncio.to_thread(kernel.fetch_debian_kernel)
            print(json.dumps({"kernel": str(path)}) if args.json else path)
            return 0
        case "kernel":
            path = kernel.find_kernel()
            print(json.dumps({"kernel": str(path)}) if args.json else path)
            return 0
        case "image":
            img = await asyncio.to_thread(image.build, None, force=args.force)
            if args.json:
                print(json.dumps({"image": str(img.path), "size": img.size, "built": img.built}))
            else:
                print(f"{img.path} ({img.size / 1e6:.1f} MB, {'built' if img.built else 'cached'})")
            return 0
        case _:
            return await _run(args)


async def _run(args: argparse.Namespace) -> int:
    from hil.backends import BackendURL
    from hil.vm.backend import parse_config, run_commands

    argv = args.guest_argv[1:] if args.guest_argv[:1] == ["--"] else list(args.guest_argv)
    if not argv:
        raise HilError("hil vm run: give the command to run in the guest, e.g. hil vm run -- hil doctor devport:")
    results = await run_commands(parse_config(BackendURL.parse(args.url)),
                                 [{"argv": argv, "drop_caps": [CAPABILITIES[c] for c in args.drop_cap]}])
    result = results[0]
    if args.json:
        print(json.dumps({"rc": result.rc, "stdout": result.stdout, "stderr": result.stderr, "seconds": result.seconds}))
    else:
        print(result.stdout, end="")
        if result.stderr:
            print(result.stderr, end="")
    return result.rc
