"""One connection to a labgrid coordinator, through labgrid's own asyncio client session.

labgrid 26.x talks gRPC (``grpc.aio``) and its :class:`labgrid.remote.client.ClientSession`
runs on the caller's event loop: it keeps a stream open on which the coordinator pushes every
place and resource as it changes, so reading places and resources here is reading that
session's tables, and only acquire, release and tag changes are calls (awaited, never
blocking the loop; docs/reference/labgrid.md §2). What is read from labgrid becomes the small
dataclasses below, so the rest of lpc-hil never touches labgrid's objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import field
from typing import Any
from urllib.parse import urlsplit

from hil.errors import LabgridError, LabgridMissingError, PlaceBusyError
from hil.labgrid.address import tag
from hil.labgrid.lock import LEASE_TAG, PID_TAG, LockState, Verdict, judge
from hil.log import get_logger
from hil.records import dataclass

log = get_logger("hil.labgrid")

CONNECT_TIMEOUT_S = 10.0  #: to reach the coordinator and receive its tables
CALL_TIMEOUT_S = 30.0  #: one coordinator call (acquiring waits for the exporters to answer)
#: resource classes that carry a serial port a client can reach (USBSerialPort and RawSerialPort
#: are exported as NetworkSerialPort; docs/reference/labgrid.md §4)
SERIAL_CLASSES = ("NetworkSerialPort",)
#: keepalive as labgrid's own client sets it (a dead coordinator is noticed within ~20 s), plus a
#: connection of this channel's own (see :meth:`Coordinator.connect`)
CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 7500),
    ("grpc.keepalive_timeout_ms", 10000),
    ("grpc.http2.ping_timeout_ms", 10000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.use_local_subchannel_pool", 1),
]


@dataclass(frozen=True)
class PlaceInfo:
    name: str
    tags: dict[str, str]
    acquired: str | None  #: labgrid's ``host/user`` of the holder
    allowed: frozenset[str]
    comment: str
    resources: tuple[tuple[str, ...], ...]  #: acquired resources: (exporter, group, cls, name)
    matches: tuple[str, ...]


@dataclass(frozen=True)
class SerialPort:
    """A serial resource as the client sees it: where to connect and how."""

    exporter: str
    group: str
    cls: str
    name: str  #: the resource name, or the place match's rename
    host: str
    port: int | None  #: None until the exporter serves it (ser2net starts on acquire)
    speed: int
    protocol: str  #: ``rfc2217`` or ``raw``
    avail: bool
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> str:
        return f"{self.exporter}/{self.group}/{self.cls}/{self.name}"

    def agent_url(self, options: Mapping[str, str]) -> str:
        """The agent backend URL for this port: RFC 2217 for ser2net's telnet ports (labgrid's own
        serial driver ignores SET_CONTROL answers, which ser2net does not send), raw TCP otherwise."""
        extra = "".join(f"&{k}={v}" for k, v in options.items())
        if self.protocol == "rfc2217":
            return f"agent+rfc2217://{self.host}:{self.port}?ign_set_control&baud={self.speed}{extra}"
        return f"agent+tcp://{self.host}:{self.port}" + (f"?{extra[1:]}" if extra else "")


def _import_labgrid() -> Any:
    try:
        from labgrid.remote import client
    except ImportError as e:
        raise LabgridMissingError(f"labgrid: backends need the labgrid package ({e}); install lpc-hil[labgrid] "
                                  f"(pip install 'labgrid>=26')") from None
    return client


def _details(e: BaseException) -> str:
    details = getattr(e, "details", None)
    return str(details() if callable(details) else e)


class Coordinator:
    """A session with the coordinator at ``address``; ``async with`` connects and disconnects."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._session: Any = None
        self._pb: Any = None
        #: places this session acquired and has not given back: what a close must release even
        #: when it interrupted :meth:`take` between the acquire and its return
        self.held: set[str] = set()

    async def __aenter__(self) -> Coordinator:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        client = await asyncio.to_thread(_import_labgrid)  # labgrid and grpc take ~0.3 s to import
        import grpc
        from labgrid.remote.generated import labgrid_coordinator_pb2, labgrid_coordinator_pb2_grpc

        self._pb = labgrid_coordinator_pb2
        await self._reachable()
        session = client.ClientSession(self.address, asyncio.get_running_loop())
        # gRPC shares one TCP connection among a process's channels to the same address, and the
        # coordinator keeps one client session per peer address (it refuses a second one): two
        # backends in one process (or a backend and ``hil doctor``'s own look) need a connection
        # each. The session's channel is not connected yet; it is replaced by one of its own.
        await session.channel.close()
        session.channel = grpc.aio.insecure_channel(self.address, options=CHANNEL_OPTIONS)
        session.stub = labgrid_coordinator_pb2_grpc.CoordinatorStub(session.channel)
        try:
            await asyncio.wait_for(session.start(), CONNECT_TIMEOUT_S)
        except (client.Error, TimeoutError, OSError) as e:
            await self._stop(session)
            raise LabgridError(f"cannot reach the labgrid coordinator at {self.address} ({_details(e)}): is "
                               f"labgrid-coordinator running there? (LG_COORDINATOR or labgrid://HOST:PORT/PLACE)") from None
        self._session = session
        log.info("labgrid_connected", coordinator=self.address, me=self.me)

    async def _reachable(self) -> None:
        """One TCP connection first: a coordinator that is not there is then this one line, not
        labgrid's logged stream error followed by it."""
        parts = urlsplit(f"//{self.address}")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(parts.hostname, parts.port), CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError, ValueError) as e:
            raise LabgridError(f"cannot reach the labgrid coordinator at {self.address} ({e or 'timed out'}): is "
                               f"labgrid-coordinator running there? (LG_COORDINATOR or labgrid://HOST:PORT/PLACE)") from None
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()

    @staticmethod
    async def _stop(session: Any) -> None:
        try:
            await session.stop()
        finally:
            await session.close()

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await self._stop(session)

    @property
    def me(self) -> str:
        """This process's labgrid identity, ``host/user`` (LG_HOSTNAME and LG_USERNAME apply)."""
        s = self._live()
        return f"{s.gethostname()}/{s.getuser()}"

    def _live(self) -> Any:
        if self._session is None:
            raise LabgridError(f"labgrid coordinator {self.address}: not connected")
        if self._session.stopping.is_set():
            raise LabgridError(f"lost the connection to the labgrid coordinator at {self.address}")
        return self._session

    # --- reading the tables ---------------------------------------------------------------

    def places(self) -> dict[str, PlaceInfo]:
        return {name: self._info(p) for name, p in sorted(self._live().places.items())}

    def place(self, name: str) -> PlaceInfo:
        places = self._live().places
        if name not in places:
            known = ", ".join(sorted(places)) or "none"
            raise LabgridError(f"labgrid place {name!r} does not exist on {self.address} (places: {known})")
        return self._info(places[name])

    @staticmethod
    def _info(p: Any) -> PlaceInfo:
        return PlaceInfo(p.name, dict(p.tags), p.acquired or None, frozenset(p.allowed), p.comment or "",
                         tuple(tuple(r) for r in p.acquired_resources), tuple(repr(m) for m in p.matches))

    def verdict(self, name: str) -> Verdict:
        info = self.place(name)
        return judge(info.acquired, info.tags, self.me, time.time(), allowed=info.allowed)

    def serial_ports(self, name: str) -> list[SerialPort]:
        """The serial resources of place ``name`` (acquired ones once it is acquired, else every
        exported resource its matches select)."""
        session = self._live()
        place = session.places[name]
        paths = [tuple(r) for r in place.acquired_resources]
        if not paths:
            paths = [(e, g, r.cls, n) for e, groups in session.resources.items() for g, group in groups.items()
                     for n, r in group.items() if place.hasmatch((e, g, r.cls, n))]
        ports = []
        for exporter, group, cls, rname in sorted(paths):
            if cls not in SERIAL_CLASSES:
                continue
            entry = session.resources.get(exporter, {}).get(group, {}).get(rname)
            if entry is None:  # the exporter went away after the place was acquired
                continue
            match = place.getmatch((exporter, group, cls, rname))
            params = dict(entry.args)
            port = params.get("port")
            ports.append(SerialPort(exporter, group, cls, (match.rename if match and match.rename else rname),
                                    str(params.get("host", "")), int(port) if port else None,
                                    int(params.get("speed") or 115200), str(params.get("protocol") or "rfc2217"),
                                    bool(entry.avail), params))
        return ports

    def agent_port(self, name: str) -> SerialPort:
        """The serial port the place's agent listens on: the only one, or the one tag ``hil-port`` names."""
        ports = self.serial_ports(name)
        wanted = tag(self.place(name).tags, "port")
        if wanted is not None:
            chosen = [p for p in ports if wanted in (p.name, p.path)]
            if not chosen:
                raise LabgridError(f"labgrid place {name!r}: tag hil-port={wanted} names none of its serial ports "
                                   f"({', '.join(p.path for p in ports) or 'none'})")
            return chosen[0]
        if len(ports) == 1:
            return ports[0]
        if not ports:
            raise LabgridError(f"labgrid place {name!r} has no serial port (NetworkSerialPort) for the agent: add a "
                               f"match for the exporter's port (labgrid-client -p {name} add-match EXPORTER/GROUP/*)")
        raise LabgridError(f"labgrid place {name!r} has {len(ports)} serial ports "
                           f"({', '.join(p.path for p in ports)}): tag the agent's with hil-port=NAME")

    async def wait_port(self, name: str, timeout_s: float) -> SerialPort:
        """The agent's port once the exporter serves it (a port number, and available)."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            port = self.agent_port(name)
            if port.port is not None and port.avail:
                return port
            if asyncio.get_running_loop().time() >= deadline:
                state = "not available" if not port.avail else "given no TCP port"
                raise LabgridError(f"labgrid place {name!r}: serial port {port.path} is {state} by exporter "
                                   f"{port.exporter} after {timeout_s:g} s (exporter running? device present?)")
            await asyncio.sleep(0.1)

    async def sync(self) -> None:
        await self._call(self._live().sync_with_coordinator(), "sync")

    # --- calls ----------------------------------------------------------------------------

    async def _call(self, awaitable: Any, what: str) -> Any:
        import grpc  # labgrid's own dependency

        client = _import_labgrid()
        try:
            return await asyncio.wait_for(awaitable, CALL_TIMEOUT_S)
        except TimeoutError:
            raise LabgridError(f"labgrid coordinator {self.address}: {what} got no answer in {CALL_TIMEOUT_S:g} s") from None
        except (grpc.aio.AioRpcError, client.Error) as e:
            raise LabgridError(f"labgrid coordinator {self.address}: {what}: {_details(e)}") from None

    async def acquire(self, name: str) -> None:
        """Acquire place ``name``; :class:`PlaceBusyError` when someone else holds it."""
        s = self._live()
        try:
            await self._call(s.stub.AcquirePlace(self._pb.AcquirePlaceRequest(placename=name)), f"acquire {name}")
        except LabgridError as e:
            await self.sync()
            info = self.place(name)
            if info.acquired:
                raise PlaceBusyError(f"labgrid place {name!r} is busy: {self.verdict(name).reason}",
                                     place=name, holder=info.acquired) from None
            raise LabgridError(f"{e} (are its exporters connected and its resources free?)") from None
        self.held.add(name)
        await self.sync()

    async def release(self, name: str, *, holder: str | None = None) -> None:
        """Release place ``name`` (only while ``holder`` still holds it, when given)."""
        request = self._pb.ReleasePlaceRequest(placename=name, **({"fromuser": holder} if holder else {}))
        await self._call(self._live().stub.ReleasePlace(request), f"release {name}")
        await self.sync()

    async def set_tags(self, name: str, tags: Mapping[str, str]) -> None:
        """Set (value "" removes) tags of place ``name``."""
        request = self._pb.SetPlaceTagsRequest(placename=name, tags=dict(tags))
        await self._call(self._live().stub.SetPlaceTags(request), f"set tags of {name}")
        await self.sync()

    # --- the lpc-hil lock -----------------------------------------------------------------

    async def take(self, name: str, pid: int, lease_s: float, wait_s: float = 0.0) -> bool:
        """Hold place ``name`` for this run: acquire it (taking over a stale lock, waiting up to
        ``wait_s`` while it is busy) and tag it with ``pid`` and a lease; return False when it was
        already this user's outside lpc-hil (used as it is, released by nobody here)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            verdict = self.verdict(name)
            try:
                match verdict.state:
                    case LockState.OURS:
                        log.info("labgrid_place_used", place=name, holder=verdict.holder)
                        return False
                    case LockState.STALE:
                        log.warning("labgrid_stale_lock_taken_over", place=name, reason=verdict.reason)
                        await self.set_tags(name, {PID_TAG: "", LEASE_TAG: ""})
                        await self.release(name, holder=verdict.holder)
                        await self.acquire(name)
                    case LockState.FREE:
                        await self.acquire(name)
                    case LockState.LIVE:
                        raise PlaceBusyError(f"labgrid place {name!r} is busy: {verdict.reason}",
                                             place=name, holder=verdict.holder)
            except PlaceBusyError as e:
                if loop.time() >= deadline:
                    raise PlaceBusyError(f"{e}{f' (waited {wait_s:g} s)' if wait_s else ''}", place=name,
                                         holder=e.holder) from None
                await asyncio.sleep(min(0.5, max(0.0, deadline - loop.time())))
                continue
            break
        await self.renew(name, pid, lease_s)
        log.info("labgrid_place_acquired", place=name, pid=pid, lease_s=lease_s)
        return True

    async def renew(self, name: str, pid: int, lease_s: float) -> None:
        await self.set_tags(name, {PID_TAG: str(pid), LEASE_TAG: str(int(time.time() + lease_s))})

    async def give_back(self, name: str) -> None:
        """Remove this run's tags, then release: a lock is never left with a lease nobody renews
        (a run that dies in between leaves an untagged lock: held, never taken over)."""
        me = self.me
        await self.set_tags(name, {PID_TAG: "", LEASE_TAG: ""})
        await self.release(name, holder=me)
        self.held.discard(name)
        log.info("labgrid_place_released", place=name)
