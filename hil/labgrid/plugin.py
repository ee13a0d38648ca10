"""What a pytest plugin needs from labgrid: waiting for a busy place, and ``--lg-env`` files.

:func:`wait_for_place` waits while a place is held by someone else and gives the reason to skip
with once the wait is over. :func:`lg_env_url` turns a labgrid environment file (the YAML that
labgrid's own plugin takes with ``--lg-env`` or ``LG_ENV``) into the ``labgrid:`` URL of one of
its targets: the target's ``RemotePlace`` names the place, the coordinator comes from the
caller, the file's ``coordinator_address`` option, ``LG_COORDINATOR`` or the default, in that
order, as labgrid resolves it (docs/reference/labgrid.md §5). It reads the file at once (a
plugin calls it while configuring, before any event loop runs).

With labgrid installed, labgrid's own pytest plugin (entry point ``pytest11: labgrid``) is loaded
and defines ``--lg-env`` (dest ``lg_env``, fallback ``LG_ENV``) and ``--lg-coordinator`` (dest
``lg_coordinator``): a plugin reads those and must not add them again. A bench fixture, for a
``--hil-backend`` URL or one from ``--lg-env``::

    url = lg_env_backend(getattr(config.option, "lg_env", None),
                         getattr(config.option, "lg_coordinator", None)) or config.option.hil_backend
    reason = await wait_for_place(url, timeout_s=60)   # None at once for sim:, qemu:, agent+...
    if reason is not None:
        pytest.skip(reason)
    try:
        backend = open_backend(url); await backend.open()   # acquires the place
    except PlaceBusyError as e:                        # taken between the wait and the acquire
        pytest.skip(str(e))

(``labgrid:...?wait=S`` makes the open itself wait, closing that gap.)
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from hil.backends import BackendURL
from hil.errors import LabgridError, LabgridMissingError
from hil.labgrid.address import COORDINATOR_ENV, coordinator_address, parse_place_url
from hil.labgrid.session import Coordinator

LG_ENV = "LG_ENV"  #: labgrid's environment-file variable
POLL_S = 0.25  #: how often a waiting caller looks at the place again (the tables update by push)


async def wait_for_place(url: str, timeout_s: float) -> str | None:
    """Wait up to ``timeout_s`` seconds until the place of ``url`` may be used by this run (free,
    this user's, or held by a stale lock); None then, else the reason to skip with. A URL that is
    not ``labgrid:`` has no place to wait for: None at once. An unknown place or an unreachable
    coordinator is an error (:class:`LabgridError`), not a reason to skip."""
    parsed = BackendURL.parse(url)
    if parsed.scheme != "labgrid":
        return None
    place = parse_place_url(parsed)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(0.0, timeout_s)
    async with Coordinator(place.coordinator) as coordinator:
        while True:
            verdict = coordinator.verdict(place.place)
            if verdict.usable:
                return None
            if loop.time() >= deadline:
                return f"labgrid place {place.place!r} still busy after {timeout_s:g} s: {verdict.reason}"
            await asyncio.sleep(min(POLL_S, max(0.0, deadline - loop.time())))


def lg_env_urls(path: str | os.PathLike[str], coordinator: str | None = None) -> dict[str, str]:
    """Target name -> ``labgrid:`` URL for each target of the environment file that has a
    ``RemotePlace``; ``coordinator`` (labgrid's ``--lg-coordinator``) overrides the file's."""
    try:
        from labgrid.config import Config
        from labgrid.exceptions import InvalidConfigError, NoConfigFoundError
        from labgrid.factory import target_factory
    except ImportError as e:
        raise LabgridMissingError(f"--lg-env needs the labgrid package ({e}); install lpc-hil[labgrid]") from None
    try:
        config: Any = Config(str(path))
    except (InvalidConfigError, NoConfigFoundError) as e:
        raise LabgridError(f"labgrid environment {path}: {e}") from None
    address = coordinator_address(coordinator or config.get_option("coordinator_address", "")
                                  or os.environ.get(COORDINATOR_ENV) or None)
    urls: dict[str, str] = {}
    for target, target_config in (config.get_targets() or {}).items():
        try:
            resources, _ = target_factory.normalize_config(target_config or {})
        except (InvalidConfigError, AttributeError, TypeError, ValueError) as e:
            raise LabgridError(f"labgrid environment {path}: target {target!r}: {e}") from None
        for name, (args,) in resources.get("RemotePlace", {}).items():
            place = (args or {}).get("name") or name
            if not place:
                raise LabgridError(f"labgrid environment {path}: target {target!r}: RemotePlace without a name")
            urls[str(target)] = f"labgrid://{address}/{place}"
            break
    return urls


def lg_env_url(path: str | os.PathLike[str], target: str = "main", coordinator: str | None = None) -> str:
    """The ``labgrid:`` URL of ``target`` (labgrid's default role is ``main``) in the environment file."""
    urls = lg_env_urls(path, coordinator)
    if target not in urls:
        found = ", ".join(sorted(urls)) or "none"
        raise LabgridError(f"labgrid environment {Path(path)}: no target {target!r} with a RemotePlace "
                           f"(targets with one: {found})")
    return urls[target]


def lg_env_backend(lg_env: str | None, lg_coordinator: str | None = None, target: str = "main") -> str | None:
    """The ``labgrid:`` URL for pytest's ``--lg-env``/``--lg-coordinator`` values (``LG_ENV`` when
    ``lg_env`` is None, as labgrid's plugin does); None when neither names an environment file."""
    path = lg_env or os.environ.get(LG_ENV) or None
    return lg_env_url(path, target, lg_coordinator) if path else None


__all__ = ["lg_env_backend", "lg_env_url", "lg_env_urls", "wait_for_place"]
