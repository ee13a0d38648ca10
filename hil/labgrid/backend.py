"""The ``labgrid:`` backend: a bench shared through a labgrid coordinator.

Opening it acquires the place (or uses it as it is when this user already holds it outside
lpc-hil), tags the lock with this process and a lease it renews while open
(:mod:`hil.labgrid.lock`), finds the agent's serial port among the place's resources and
opens the agent backend on it (``agent+rfc2217://`` for ser2net's RFC 2217 ports, raw TCP
otherwise). Everything else is the agent backend's, forwarded. Closing, a failed open and
Ctrl-C (a cancelled task closes through ``async with``) release what this backend acquired,
and only that. A run killed outright leaves its lock behind; the lease and the pid make it
stale, and the next open takes it over (or ``hil labgrid release`` frees it).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from dataclasses import replace

from hil.agent.client import AgentBackend, from_url as agent_from_url
from hil.backends import BackendURL
from hil.backends.base import Backend, Capabilities
from hil.errors import LabgridError
from hil.labgrid.address import DEVICE_TAGS, PlaceURL, parse_place_url, tag
from hil.labgrid.session import Coordinator, SerialPort
from hil.log import get_logger
from hil.ops import ALL_OPS, IrqLines, Op, Result

log = get_logger("hil.labgrid")

PORT_TIMEOUT_S = 10.0  #: for the exporter to start serving the port after the acquire
RELEASE_TIMEOUT_S = 10.0  #: closing does not hang on a coordinator that went away


def from_url(url: BackendURL) -> LabgridBackend:
    return LabgridBackend(url.raw, parse_place_url(url))


class LabgridBackend(Backend):
    scheme = "labgrid"
    OPS = ALL_OPS  #: forwarded: the agent decides

    def __init__(self, url: str, place: PlaceURL) -> None:
        super().__init__(url)
        self.place = place
        self.agent: AgentBackend | None = None
        self.port: SerialPort | None = None
        self.tags: dict[str, str] = {}
        self._coordinator: Coordinator | None = None
        self._acquired = False  #: this backend acquired the place (and releases it)
        self._renewer: asyncio.Task[None] | None = None
        self._vouched_until = 0.0  #: the lease as last renewed (Unix time)
        self._renew_error: BaseException | None = None

    # --- life cycle ---------------------------------------------------------------------
    async def _open(self) -> None:
        try:
            await self._acquire_and_connect()
        except BaseException:
            await self._release()
            raise

    async def _acquire_and_connect(self) -> None:
        p = self.place
        coordinator = self._coordinator = Coordinator(p.coordinator)
        await coordinator.connect()
        self._acquired = await coordinator.take(p.place, os.getpid(), p.lease_s, p.wait_s)
        if self._acquired:
            self._vouched_until = time.time() + p.lease_s
            self._renewer = asyncio.create_task(self._renew(), name=f"labgrid lease {p.place}")
            self._renewer.add_done_callback(self._renewer_ended)
        self.tags = coordinator.place(p.place).tags
        self.port = await coordinator.wait_port(p.place, PORT_TIMEOUT_S)
        agent = agent_from_url(BackendURL.parse(self.port.agent_url(p.agent_options)))
        agent.add_reset_listener(self._agent_reset)
        self.agent = agent
        await agent.open()
        self._check_tags(agent.capabilities)
        log.info("labgrid_bench_open", place=p.place, exporter=self.port.exporter, port=self.port.path,
                 agent=agent.capabilities.identity)

    def _check_tags(self, caps: Capabilities) -> None:
        """The place's tags say what its agent serves: a disagreement is a wiring or set-up error."""
        where = f"labgrid place {self.place.place!r}"
        for name, value in (("io", caps.details.get("io")), ("profile", caps.details.get("profile"))):
            want = tag(self.tags, name)
            if want is not None and want != value:
                raise LabgridError(f"{where}: tag hil-{name}={want}, but its agent serves {name}={value or 'none'} "
                                   f"(do the place's matches name the right port? is the agent's --io right?)")
        for name, cap in DEVICE_TAGS.items():
            if (tag(self.tags, name) or "0").lower() in ("1", "yes", "true", "on") and cap not in caps:
                raise LabgridError(f"{where}: tag hil-{name}=1, but its agent advertises no {cap.value} "
                                   f"(start it with an --io that has one, e.g. sim:?floppy=generate&sb16=1)")

    async def _renew(self) -> None:
        """Renew the lease every third of it; a failed renewal is retried. Once the lease has
        run out unrenewed, another run may take the place over: programs are refused from then."""
        p = self.place
        assert self._coordinator is not None
        while True:
            await asyncio.sleep(p.lease_s / 3)
            try:
                await self._coordinator.renew(p.place, os.getpid(), p.lease_s)
            except LabgridError as e:
                log.warning("labgrid_lease_renewal_failed", place=p.place, error=str(e))
                continue
            self._vouched_until = time.time() + p.lease_s

    def _renewer_ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._renew_error = task.exception()
            log.error("labgrid_lease_task_failed", place=self.place.place, error=repr(self._renew_error))

    def _check_lease(self) -> None:
        if self._renew_error is not None:
            raise self._renew_error
        if self._acquired and time.time() > self._vouched_until:
            raise LabgridError(f"labgrid place {self.place.place!r}: the lease ran out unrenewed (coordinator "
                               f"{self.place.coordinator} unreachable?); another run may hold the place now")

    async def _agent_reset(self, _agent: Backend) -> None:
        for listener in list(self._reset_listeners):
            await listener(self)

    async def _close(self) -> None:
        await self._release()

    async def _release(self) -> None:
        """Close the agent link, stop renewing, give the place back (if acquired here), disconnect."""
        agent, self.agent = self.agent, None
        renewer, self._renewer = self._renewer, None
        coordinator, self._coordinator = self._coordinator, None
        try:
            if agent is not None:
                await agent.close()
        finally:
            if renewer is not None:
                renewer.cancel()
                await asyncio.gather(renewer, return_exceptions=True)
            if coordinator is not None:
                try:
                    if self._acquired or self.place.place in coordinator.held:
                        self._acquired = False
                        await asyncio.wait_for(asyncio.shield(coordinator.give_back(self.place.place)), RELEASE_TIMEOUT_S)
                except (LabgridError, TimeoutError) as e:
                    log.warning("labgrid_release_failed", place=self.place.place, error=str(e))
                finally:
                    await coordinator.close()

    # --- the backend interface, forwarded to the agent ------------------------------------
    def _agent(self) -> AgentBackend:
        if self.agent is None:
            raise LabgridError(f"{self.url}: not connected to the place's agent")
        return self.agent

    @property
    def capabilities(self) -> Capabilities:
        p = self.place
        details: dict[str, object] = {"place": p.place, "coordinator": p.coordinator}
        if self.port is not None:
            details |= {"exporter": self.port.exporter, "resource": self.port.path}
        if self.tags:
            details["tags"] = dict(sorted(self.tags.items()))
        where = f"labgrid place {p.place}" + (f" (exporter {self.port.exporter})" if self.port else "")
        if self.agent is None:
            return Capabilities("labgrid", f"{where} via {p.coordinator}", details=details)
        inner = self.agent.capabilities
        return replace(inner, backend="labgrid", identity=f"{where}: {inner.identity}",
                       details={**inner.details, **details})

    def check(self, ops: Sequence[Op]) -> None:
        self._agent().check(ops)

    async def execute(self, ops: Sequence[Op]) -> list[Result]:
        self._check_open()
        self._check_lease()
        return await self._agent().execute(ops)

    async def _execute(self, ops: Sequence[Op]) -> list[Result]:
        return await self._agent().execute(ops)

    async def _settle(self, timeout_s: float | None) -> None:
        await self._agent().settle(timeout_s)

    async def settle(self, timeout_s: float | None = None) -> None:
        self._check_open()
        self._check_lease()
        await self._agent().settle(timeout_s)

    def virtual_time_ns(self) -> int | None:
        return self._agent().virtual_time_ns() if self.agent is not None else None

    def _irq_lines(self) -> IrqLines:
        return self._agent()._irq_lines()  # the agent's lines as of its last program
