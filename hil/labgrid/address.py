"""``labgrid:`` URLs, place selectors and the place tags lpc-hil reads: text only, no I/O.

URLs: ``labgrid://COORDINATOR/PLACE`` or ``labgrid:?place=NAME``, the coordinator then coming
from ``LG_COORDINATOR`` (default ``127.0.0.1:20408``, labgrid's own default and port;
docs/reference/labgrid.md §1). Options: ``wait`` (seconds to wait for a busy place, default 0),
``lease`` (seconds, see :mod:`hil.labgrid.lock`) and the agent link's own options, passed on.

Place tags lpc-hil defines (labgrid tag keys are lower-case letters, digits and ``_``, checked
as a prefix by labgrid 26.x, so ``hil-io`` and ``hil_io`` are both accepted; either spelling
is read here):

* ``hil-io=sim|devport|qemu``: the I/O the place's agent serves; checked against what the agent
  reports in its HELLO, so a place whose matches point at the wrong port is an error, not a run
  on the wrong machine;
* ``hil-profile=intel|qemu``: the agent's simulator profile, checked the same way;
* ``hil-fdc=1``, ``hil-sb16=1``, ``hil-ecp=1``: devices the agent must advertise;
* ``hil-port=NAME``: which serial resource of the place is the agent's, when it has several
  (resource name or the match's rename).

Selectors (``hil run --place``): terms joined by ``,``, all of which must hold: ``name=GLOB``
(place name, shell pattern), ``tag=KEY`` (the place has tag KEY, any value), ``KEY=VALUE``
(tag KEY has VALUE).
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Mapping
from dataclasses import field
from urllib.parse import urlsplit

from hil.backends import BackendURL
from hil.backends.base import Capability
from hil.errors import BackendOptionError
from hil.labgrid.lock import DEFAULT_LEASE_S
from hil.records import dataclass

COORDINATOR_ENV = "LG_COORDINATOR"
DEFAULT_COORDINATOR = "127.0.0.1:20408"
DEFAULT_PORT = 20408

#: the agent link options a labgrid: URL passes on (hil.agent.client.OPTIONS, minus baud: the port's speed)
AGENT_OPTIONS = ("timeout", "retries", "window", "max_payload", "token", "keep")
OPTIONS = {
    "place": "place name (labgrid:?place=NAME; or labgrid://COORDINATOR/NAME)",
    "wait": "seconds to wait while the place is busy (default 0: fail at once)",
    "lease": f"seconds the lock is vouched for between renewals (default {DEFAULT_LEASE_S:g})",
    **{k: "passed to the agent link" for k in AGENT_OPTIONS},
}

#: tag (either spelling) -> the device capability the agent must advertise
DEVICE_TAGS = {"fdc": Capability.FDC, "sb16": Capability.SB16, "ecp": Capability.ECP}


def tag(tags: Mapping[str, str], name: str) -> str | None:
    """Tag ``hil-NAME`` or ``hil_NAME``."""
    value = tags.get(f"hil-{name}")
    return value if value is not None else tags.get(f"hil_{name}")


def coordinator_address(text: str | None = None) -> str:
    """``HOST:PORT`` with the port made explicit (as labgrid's exporter does); ``text`` None or
    empty: ``LG_COORDINATOR``, else the default."""
    address = (text or os.environ.get(COORDINATOR_ENV, "") or DEFAULT_COORDINATOR).strip()
    try:
        port = urlsplit(f"//{address}").port
    except ValueError as e:
        raise BackendOptionError(address, f"coordinator address: {e}") from None
    return address if port is not None else f"{address}:{DEFAULT_PORT}"


@dataclass(frozen=True)
class PlaceURL:
    raw: str
    coordinator: str
    place: str
    wait_s: float = 0.0
    lease_s: float = DEFAULT_LEASE_S
    agent_options: dict[str, str] = field(default_factory=dict)

    @property
    def canonical(self) -> str:
        """The URL with the coordinator written out, as a worker process is handed it."""
        query = "&".join(f"{k}={v}" for k, v in self.agent_options.items())
        return f"labgrid://{self.coordinator}/{self.place}" + (f"?{query}" if query else "")


def parse_place_url(url: BackendURL) -> PlaceURL:
    opts = url.take(OPTIONS)
    path_place = url.path.strip("/")
    place = opts.pop("place", "") or path_place
    if path_place and place != path_place:
        raise BackendOptionError(url.raw, f"two places: {path_place!r} in the path and place={place!r}")
    if not place:
        raise BackendOptionError(url.raw, "labgrid: needs a place: labgrid:?place=NAME or labgrid://COORDINATOR/NAME")
    if "/" in place:
        raise BackendOptionError(url.raw, f"place {place!r}: a place name has no '/'")
    try:
        wait = float(opts.pop("wait", 0))
        lease = float(opts.pop("lease", DEFAULT_LEASE_S))
    except ValueError as e:
        raise BackendOptionError(url.raw, f"bad option value: {e}") from None
    if not (wait >= 0 and lease >= 3):
        raise BackendOptionError(url.raw, "wait must be >= 0 and lease >= 3 seconds")
    return PlaceURL(url.raw, coordinator_address(url.authority or None), place, wait, lease, opts)


@dataclass(frozen=True)
class Selector:
    """A place selector: every term must hold (see the module docstring)."""

    text: str
    names: tuple[str, ...] = ()
    has: tuple[str, ...] = ()
    equal: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, text: str) -> Selector:
        names, has, equal = [], [], []
        for term in (t.strip() for t in text.split(",")):
            key, sep, value = term.partition("=")
            if not sep or not key or not value:
                raise BackendOptionError(text, f"selector term {term!r}: expected name=GLOB, tag=KEY or KEY=VALUE")
            match key:
                case "name":
                    names.append(value)
                case "tag":
                    has.append(value)
                case _:
                    equal.append((key, value))
        return cls(text, tuple(names), tuple(has), tuple(equal))

    def matches(self, name: str, tags: Mapping[str, str]) -> bool:
        return (all(fnmatch.fnmatchcase(name, g) for g in self.names)
                and all(k in tags for k in self.has)
                and all(tags.get(k) == v for k, v in self.equal))
