"""``hil doctor labgrid:…``: why a labgrid place cannot serve as a bench, and what to change.

In order: labgrid is installed, the coordinator answers, the place exists, its lock is free,
this user's, or held by a living run (a stale lock fails, with ``hil labgrid release`` as the
fix: the rule is :mod:`hil.labgrid.lock`), the place has one serial port for the agent, and,
when the place is free, the whole path works: acquire, the agent's HELLO, release.
"""

from __future__ import annotations

from typing import Any

from hil.doctor import CheckResult, Status, fail, from_error, ok
from hil.errors import HilError
from hil.labgrid.lock import LockState


async def labgrid_checks(url: Any, env: Any = None) -> list[CheckResult]:
    from hil.labgrid.address import parse_place_url
    from hil.labgrid.backend import LabgridBackend
    from hil.labgrid.session import Coordinator

    try:
        place_url = parse_place_url(url)
    except HilError as e:
        return [from_error("url", e)]
    name = place_url.place
    results = [ok("url", f"place {name!r} on coordinator {place_url.coordinator}")]
    try:
        from labgrid import __version__ as version
    except ImportError:
        return [*results, fail("labgrid", "the labgrid package is not installed", "pip install 'lpc-hil[labgrid]'")]
    results.append(ok("labgrid", f"labgrid {version}"))
    coordinator = Coordinator(place_url.coordinator)
    try:
        await coordinator.connect()
    except HilError as e:
        return [*results, fail("coordinator", str(e), "start labgrid-coordinator, or point LG_COORDINATOR at it")]
    try:
        results.append(ok("coordinator", f"{place_url.coordinator} answers; this client is {coordinator.me}"))
        try:
            info = coordinator.place(name)
        except HilError as e:
            return [*results, fail("place", str(e), f"labgrid-client -p {name} create, then add-match for its port")]
        tags = ", ".join(f"{k}={v}" for k, v in sorted(info.tags.items())) or "none"
        results.append(ok("place", f"{name} exists (tags: {tags})"))
        verdict = coordinator.verdict(name)
        match verdict.state:
            case LockState.STALE:
                results.append(fail("lock", f"stale lock: {verdict.reason}",
                                    f"hil labgrid release {name} (a labgrid: backend opening it takes it over too)"))
            case LockState.LIVE:
                results.append(CheckResult("lock", Status.WARN, f"busy: {verdict.reason}"))
            case LockState.OURS:
                results.append(ok("lock", verdict.reason))
            case LockState.FREE:
                results.append(ok("lock", "free"))
        try:
            port = coordinator.agent_port(name)
        except HilError as e:
            return [*results, from_error("serial port", e)]
        served = f"{port.host}:{port.port}" if port.port else "a TCP port once acquired"
        results.append(ok("serial port", f"{port.path} ({port.protocol}, {port.speed} baud) on {served}"
                                         + ("" if port.avail else " -- NOT available at the exporter")))
    finally:
        await coordinator.close()
    if verdict.state in (LockState.LIVE, LockState.STALE):  # a diagnosis takes over no lock
        why = "busy" if verdict.state is LockState.LIVE else "locked (stale)"
        results.append(CheckResult("agent", Status.SKIP, f"the place is {why}: its agent was not contacted"))
        return results
    backend = LabgridBackend(url.raw, place_url)
    try:
        async with backend:
            identity = backend.capabilities.identity
    except HilError as e:
        results.append(from_error("agent", e))
    else:
        results.append(ok("agent", f"{identity} (acquired, said HELLO, released)"))
    return results
