"""``hil backends``: what URL schemes there are and what each can do."""

from __future__ import annotations

import argparse

from hil.backends import available_backends, open_backend
from hil.cli.common import add_common, out
from hil.errors import HilError


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("backends")
    add_common(p, backend=False)
    p.set_defaults(func=cmd_backends)


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
    out(args, text, rows)
    return 0
