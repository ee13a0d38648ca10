"""pytest plugin: tests against any backend URL, transfer scripts as test items.

Registered as the ``pytest11`` entry point ``hil.pytest_plugin`` (and loadable with ``-p
hil.pytest_plugin`` where the package is only on ``PYTHONPATH``). README.md "pytest plugin" is
the user's guide; in short:

* ``--hil-backend URL`` (repeatable; else the ``HIL_BACKEND`` environment variable, several URLs
  separated by whitespace; else ``sim``): every test that uses ``hil_backend`` or ``hil_dma``
  runs once per URL, the URL in its id (``test_x[sim:?floppy=generate]``). Any URL
  :func:`hil.backends.open_backend` takes works, third-party schemes included: the plugin has no
  list of schemes.
* ``hil_backend``: one connection per URL for the whole session, brought to the known state
  before each test (:func:`reset_known_state`); ``hil_dma``: an :class:`~hil.dma.IsaDma` on it.
* ``@pytest.mark.hil_requires("fdc", "irq")`` skips, naming the missing capability;
  ``@pytest.mark.hil_xfail_on("qemu", reason=...)`` marks a documented model gap as a strict xfail
  on the backends it names.
* every ``*.toml`` file with a ``[script]`` table is a test item per backend, run by
  :func:`hil.runner.run_script` and failing with the runner's own report lines.
* ``--hil-record FILE`` records every session (``record:``); ``--hil-vcd DIR`` writes one VCD
  waveform per test on simulator backends.
* JUnit: a test suite property per backend (identity, agent version, capabilities) and the
  backend as a property of every test case.

Event loops (pytest-asyncio 1.x, docs/reference/devices.md §7): the connection is a
session-scoped async fixture in the session's loop (``loop_scope="session"``), so every test that
uses it must run in that loop too, in strict and in auto mode: ``@pytest.mark.asyncio(loop_scope=
"session")`` on the test (or ``pytestmark`` on the module), or ``asyncio_default_test_loop_scope =
session`` in the ini file. A test in another loop fails at setup with that one line, rather than
with a link's "attached to a different loop" in the middle of a transfer.
"""

from __future__ import annotations

import asyncio
import os
import re
import tomllib
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from hil.backends import BackendURL, open_backend
from hil.backends.base import Backend, Capability
from hil.dma import IsaDma, forget_host_state
from hil.errors import HilError, PlaceBusyError, ScriptRunFailedError
from hil.ops import Op, Out
from hil.ports import CASCADE_CHANNEL, DMA1, DMA2, MASK_SET, PAGE_PORT, Mode, ModeSelect
from hil.records import dataclass

BACKEND_ENV = "HIL_BACKEND"
PLACE_TIMEOUT_S = 60.0  #: how long a test waits for a busy labgrid place before it skips
DEFAULT_BACKEND = "sim"
FIXTURES = ("hil_backend", "hil_dma", "hil_url")
#: backends whose reset is a reopen: a new machine at power-on costs nothing in process
REOPEN_SCHEMES = frozenset({"sim"})
LOOP_HINT = ('hil_backend is a session-scoped connection: run this test in the session event loop with '
             '@pytest.mark.asyncio(loop_scope="session") or asyncio_default_test_loop_scope = session '
             '(README.md "pytest plugin")')

_SESSIONS = pytest.StashKey[dict[str, "HilSession"]]()
_URLS = pytest.StashKey[list[str]]()


# --- options, markers ---------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hil", "lpc-hil backends")
    group.addoption("--hil-backend", action="append", default=[], metavar="URL",
                    help=f"backend URL to run hil tests and scripts on (repeatable; default: ${BACKEND_ENV}, "
                         f"else {DEFAULT_BACKEND})")
    group.addoption("--hil-record", metavar="FILE", default=None,
                    help="record every backend session to FILE (JSONL, for --hil-backend replay:FILE); "
                         "with several backends FILE-1, FILE-2, ...")
    group.addoption("--hil-vcd", metavar="DIR", default=None,
                    help="write a VCD waveform (and GTKWave view) per test into DIR, on simulator backends")
    group.addoption("--hil-place-timeout", metavar="S", type=float, default=PLACE_TIMEOUT_S,
                    help="labgrid: how long a test waits for a busy place before it skips, naming the holder "
                         f"(default {PLACE_TIMEOUT_S:g})")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "hil_requires(*capabilities): skip unless the backend has them all "
                                       "(names of hil.backends.Capability: fdc, irq, sb16, devices, ...)")
    config.addinivalue_line("markers", "hil_xfail_on(*backends, reason, strict=True): a documented model gap: "
                                       "expected to fail on backends of these schemes, profiles or kinds")
    config.stash[_SESSIONS] = {}
    given = config.getoption("--hil-backend")
    if not given:  # labgrid's own plugin reads --lg-env / LG_ENV: its target's place is the bench
        lg_env = getattr(config.option, "lg_env", None)
        if lg_env:
            from hil.labgrid.plugin import lg_env_backend

            try:
                url = lg_env_backend(lg_env, getattr(config.option, "lg_coordinator", None))
            except HilError as e:
                raise pytest.UsageError(f"--lg-env: {e}") from None
            given = [url] if url else []
    config.stash[_URLS] = backend_urls(given, os.environ.get(BACKEND_ENV))


def backend_urls(given: list[str], env: str | None) -> list[str]:
    """The URLs to run on: the options, else the environment's, else ``sim``; each parsed now,
    so a bad URL is one usage error before anything is collected."""
    urls = list(given) or (env.split() if env and env.strip() else [DEFAULT_BACKEND])
    for url in urls:
        try:
            BackendURL.parse(url)
        except HilError as e:
            raise pytest.UsageError(f"--hil-backend: {e}") from None
    return list(dict.fromkeys(urls))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if any(name in metafunc.fixturenames for name in FIXTURES):
        urls = metafunc.config.stash[_URLS]
        metafunc.parametrize("hil_url", urls, ids=urls, scope="session")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse, at setup, a test that uses the session connection from another event loop."""
    default = _ini(config, "asyncio_default_test_loop_scope") or "function"
    for item in items:
        if "hil_backend" not in getattr(item, "fixturenames", ()):
            continue
        marker = item.get_closest_marker("asyncio")
        if marker is None:
            continue  # not an asyncio test: a sync test cannot await the backend, and pytest-asyncio says so
        scope = marker.kwargs.get("loop_scope") or marker.kwargs.get("scope") or default
        if scope != "session":
            item.stash[_WRONG_LOOP] = scope


_WRONG_LOOP = pytest.StashKey[str]()


def _ini(config: pytest.Config, name: str) -> str | None:
    try:
        value = config.getini(name)
    except ValueError:  # pytest-asyncio is not loaded
        return None
    return str(value) if value else None


def pytest_runtest_setup(item: pytest.Item) -> None:
    scope = item.stash.get(_WRONG_LOOP, None)
    if scope is not None:
        pytest.fail(f"{item.nodeid}: runs in the {scope!r} event loop; {LOOP_HINT}", pytrace=False)


# --- sessions ------------------------------------------------------------------------------


def _record_file(config: pytest.Config, url: str) -> str | None:
    base = config.getoption("--hil-record")
    if not base:
        return None
    urls = config.stash[_URLS]
    if len(urls) == 1:
        return str(base)
    path = Path(base)
    return str(path.with_name(f"{path.stem}-{urls.index(url) + 1}{path.suffix}"))


@dataclass
class HilSession:
    """One backend URL's connection for the pytest session, and the loop it lives in."""

    url: str
    record: str | None = None
    backend: Backend | None = None
    loop: asyncio.AbstractEventLoop | None = None
    tests: int = 0
    properties: dict[str, str] = field(default_factory=dict)

    def _new(self) -> Backend:
        backend = open_backend(self.url)
        if self.record is not None:
            from hil.backends.record import RecordBackend

            backend = RecordBackend(backend, self.record)
        return backend

    async def open(self, place_timeout: float = 0.0) -> Backend:
        """Open the connection; a ``labgrid:`` place someone else holds is waited for up to
        ``place_timeout`` seconds, then :class:`~hil.errors.PlaceBusyError` (the caller skips)."""
        self.loop = asyncio.get_running_loop()
        if BackendURL.parse(self.url).scheme == "labgrid":
            from hil.labgrid.plugin import wait_for_place

            reason = await wait_for_place(self.url, place_timeout)
            if reason is not None:
                raise PlaceBusyError(reason)
        self.backend = self._new()
        await self.backend.open()
        self.properties = backend_properties(self.backend)
        return self.backend

    async def close(self) -> None:
        if self.backend is not None:
            await self.backend.close()

    def usable(self) -> bool:
        """The connection is open and its loop idle (between tests), so a script item can use it."""
        return (self.backend is not None and not self.backend.closed and self.loop is not None
                and not self.loop.is_closed() and not self.loop.is_running())

    async def reset(self) -> Backend:
        """Bring the backend to the known state (:func:`reset_known_state`) and return it."""
        assert self.backend is not None
        self.tests += 1
        if _inner_scheme(self.backend) not in REOPEN_SCHEMES:
            await reset_known_state(self.backend)
        elif self.tests > 1:  # the first test has the machine the session opened, at power-on
            await self.backend.close()
            self.backend = self._new()
            await self.backend.open()
        return self.backend


def _inner_scheme(backend: Backend) -> str:
    """The scheme whose reset a session follows: a recorder's inner backend's, and for a replay
    the recorded session's (a recorded ``sim:`` was reopened per test, so its replay is too)."""
    from hil.backends.record import RecordBackend
    from hil.backends.replay import ReplayBackend

    match backend:
        case RecordBackend():
            return _inner_scheme(backend.inner)
        case ReplayBackend() if backend.recorded_url:
            return BackendURL.parse(backend.recorded_url).scheme
    return type(backend).scheme


def reset_program() -> list[Op]:
    """The known state of the DMA subsystem, as one program: a master clear of both controllers
    (every channel masked, flip-flop, status, request and command register cleared:
    docs/reference/8237.md §3.2), every channel's page register 0, and channel 4 in cascade mode
    and unmasked, which is what an AT BIOS leaves (§3.6), so channels 0-3 reach the bus."""
    cascade = Mode(select=ModeSelect.CASCADE).encode(CASCADE_CHANNEL & 3)
    return [Out(DMA1.master_clear, 0), Out(DMA2.master_clear, 0),
            *(Out(port, 0) for port in sorted(set(PAGE_PORT.values()))),
            Out(DMA2.mode, cascade), Out(DMA2.single_mask, (CASCADE_CHANNEL & 3) & ~MASK_SET)]


async def reset_known_state(backend: Backend) -> None:
    """What ``hil_backend`` does before each test on a backend that is not reopened: the
    :func:`reset_program`, then the host side forgotten (:func:`hil.dma.forget_host_state`: no
    claims, an empty shadow). Memory, devices and IRQ counts are not part of the known state
    (hardware keeps them); on ``sim`` each test gets a new machine instead, which resets all."""
    await backend.execute(reset_program())
    forget_host_state(backend)


def backend_properties(backend: Backend) -> dict[str, str]:
    """What a JUnit report says of a backend: identity, agent version (agents only; the version
    the agent gave in its HELLO, which its identity carries), capabilities."""
    caps = backend.capabilities
    agent = "n/a"
    if caps.backend == "agent":
        words = caps.identity.split()
        agent = " ".join(words[1:3]) if len(words) >= 3 else caps.identity
    return {"identity": caps.identity, "agent_version": agent,
            "capabilities": ",".join(sorted(f.value for f in caps.features))}


@pytest.fixture(scope="session")
def hil_url() -> str:
    """The backend URL under test (parametrized over ``--hil-backend``)."""
    return DEFAULT_BACKEND


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def hil_session(hil_url: str, request: pytest.FixtureRequest,
                      record_testsuite_property: Any) -> AsyncIterator[HilSession]:
    """The session's connection to ``hil_url`` (opened once, closed at the end)."""
    session = HilSession(hil_url, _record_file(request.config, hil_url))
    try:
        await session.open(request.config.getoption("--hil-place-timeout"))
    except PlaceBusyError as e:  # a shared bench in use: not this test's failure
        pytest.skip(f"backend {hil_url}: {e}")
    except HilError as e:
        pytest.fail(f"backend {hil_url}: {e}", pytrace=False)
    request.config.stash[_SESSIONS][hil_url] = session
    for key, value in session.properties.items():
        record_testsuite_property(f"hil[{hil_url}].{key}", value)
    try:
        yield session
    finally:
        request.config.stash[_SESSIONS].pop(hil_url, None)
        await session.close()


def _check_markers(node: pytest.Item | Any, backend: Backend, url: str, request: pytest.FixtureRequest) -> None:
    caps = backend.capabilities
    have = {f.value for f in caps.features}
    known = {c.value for c in Capability}
    for mark in node.iter_markers("hil_requires"):
        for need in mark.args:
            if need not in known:
                pytest.fail(f"hil_requires({need!r}): unknown capability; known: {', '.join(sorted(known))}",
                            pytrace=False)
            if need not in have:
                pytest.skip(f"backend {url} lacks capability {need!r} (hil_requires; it has: "
                            f"{', '.join(sorted(have)) or 'none'})")
    names = _kinds(backend, url)
    for mark in node.iter_markers("hil_xfail_on"):
        if names & set(mark.args):
            reason = mark.kwargs.get("reason") or "documented model gap"
            request.applymarker(pytest.mark.xfail(reason=f"{reason} (hil_xfail_on {', '.join(mark.args)})",
                                                  strict=mark.kwargs.get("strict", True)))


def _kinds(backend: Backend, url: str) -> set[str]:
    """The names ``hil_xfail_on`` matches: the URL's scheme (a recorder's: its inner URL's), the
    capabilities' backend kind and, where the backend has one, its profile (``sim:?profile=qemu``
    and an agent serving QEMU's profile match ``"qemu"``)."""
    caps = backend.capabilities
    names = {BackendURL.parse(url).scheme, caps.backend, _inner_scheme(backend)}
    profile = caps.details.get("profile")
    if isinstance(profile, str):
        names.add(profile)
    return names


def _vcd(config: pytest.Config, backend: Backend, nodeid: str) -> AbstractAsyncContextManager[object]:
    """Under ``--hil-vcd DIR``: the waveform of one test in ``DIR/<its node id, as a file name>.vcd``
    (``test_floppy.py_test_read_sector_sim_floppy_generate.vcd``); nothing on other backends."""
    directory = config.getoption("--hil-vcd")
    if not directory:
        return nullcontext()
    from hil.waves.vcd import waveform

    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid).strip("_")[:120] or "test"
    return waveform(backend, Path(directory) / f"{safe}.vcd", title=nodeid, required=False)


@pytest_asyncio.fixture(loop_scope="session")
async def hil_backend(hil_session: HilSession, request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    """The session's backend, at the known state (see :func:`reset_known_state`)."""
    backend = await hil_session.reset()
    request.node.user_properties.append(("hil_backend", hil_session.url))
    _check_markers(request.node, backend, hil_session.url, request)
    async with _vcd(request.config, backend, request.node.nodeid):
        yield backend


@pytest.fixture
def hil_dma(hil_backend: Backend) -> IsaDma:
    """The Linux ISA DMA API on ``hil_backend`` (fresh host state, as the backend is)."""
    return IsaDma(hil_backend)


# --- transfer scripts as test items --------------------------------------------------------


def is_script(path: Path) -> bool:
    """A TOML file with a ``[script]`` table (fragments and other TOML files have none)."""
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False
    return isinstance(doc.get("script"), dict)


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix == ".toml" and is_script(file_path):
        return ScriptFile.from_parent(parent, path=file_path)
    return None


class ScriptFile(pytest.File):
    def collect(self) -> Iterator[pytest.Item]:
        for url in self.config.stash[_URLS]:
            yield ScriptItem.from_parent(self, name=f"{self.path.stem}[{url}]", url=url)


class ScriptItem(pytest.Item):
    """One transfer script on one backend: on the session's connection when a Python test opened
    it (reset first, in its loop), else on a connection of its own, opened for the script as
    ``hil run`` does."""

    def __init__(self, *, url: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.url = url
        self.user_properties.append(("hil_backend", url))
        #: it requests no fixtures; other plugins' hooks read this of every item (labgrid's
        #: runtest_setup looks for its "strategy" fixture), as they do of a test function
        self.fixturenames: list[str] = []

    def runtest(self) -> None:
        from hil.script import load_script

        try:
            script = load_script(self.path)
        except HilError as e:
            raise ScriptRunFailedError([str(e)]) from None
        session = self.config.stash[_SESSIONS].get(self.url)
        if session is not None and session.usable():
            assert session.loop is not None
            lines = session.loop.run_until_complete(self._on(session, script))
        else:
            lines = asyncio.run(self._alone(script))
        if lines:
            raise ScriptRunFailedError(lines)

    async def _alone(self, script: Any) -> list[str]:
        session = HilSession(self.url, _record_file(self.config, self.url))
        try:
            await session.open(self.config.getoption("--hil-place-timeout"))
        except PlaceBusyError as e:
            pytest.skip(f"backend {self.url}: {e}")
        except HilError as e:
            return [f"backend {self.url}: {e}"]
        try:
            return await self._on(session, script, reset=False)
        finally:
            await session.close()

    async def _on(self, session: HilSession, script: Any, *, reset: bool = True) -> list[str]:
        from hil.runner import missing_capabilities, run_script

        backend = await session.reset() if reset else session.backend
        assert backend is not None
        for key, value in session.properties.items():
            self.user_properties.append((f"hil.{key}", value))
        try:
            needs = missing_capabilities(script, backend)
        except HilError as e:
            return [str(e)]
        if needs:
            pytest.skip(f"{script.name} needs {', '.join(needs)}; backend {self.url} lacks it")
        async with _vcd(self.config, backend, self.nodeid):
            try:
                result = await run_script(script, backend)
            except HilError as e:
                return [str(e)]
        return report_lines(result, len(script.steps))

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, ScriptRunFailedError):
            return "\n".join(excinfo.value.lines)
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"{self.path.name} on {self.url}"


def report_lines(result: Any, steps: int) -> list[str]:
    """The lines ``hil run`` prints for a run that did not pass (nothing for one that did): its
    summary, the run's error, and each failed expectation."""
    if result.status in ("passed", "skipped"):
        return []
    lines = [f"{result.script} on {result.backend}: {result.status.upper()} — {steps} steps, "
             f"{len(result.observations)} observations, {len(result.failures)} failed expectation(s)"]
    if result.status == "error" and result.error:
        lines.append(f"  ERROR {result.error}")
    lines += [f"  FAIL {o.label}: {o.describe()}" for o in result.observations if o.ok is False and not o.error]
    return lines
