"""Benches shared through labgrid, for real: a labgrid-coordinator and a labgrid-exporter on
127.0.0.1 (ser2net from the distribution serving the agents' ptys over RFC 2217), places made
on it, and lpc-hil acquiring them, running the example scripts, dying on them and sharing them.

Started once for the module (docs/reference/labgrid.md §6 has the set-up): agents ``a`` and
``b`` (``hil agent --io sim``), ``dev`` (with a floppy and a Sound Blaster) on ptys, exported
as RawSerialPort; ``t`` (``--listen tcp``) exported as a raw-TCP NetworkSerialPort. Places
``a``, ``b`` (tag ``ich10=1``), ``dev`` (``hil-fdc=1``, ``hil-sb16=1``), ``t`` and ``wrong``
(``t``'s port, but tagged ``hil-io=devport``). Locally these tests skip without labgrid or
ser2net; under HIL_REQUIRE_ALL=1 (CI) they must run.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hil.backends import open_backend
from hil.errors import LabgridError, PlaceBusyError
from hil.labgrid.lock import GRACE_S, LEASE_TAG, PID_TAG, LockState, judge
from hil.labgrid.session import Coordinator
from hil.ops import In, Out
from hil.testing import require

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "configs" / "scripts"
START_TIMEOUT_S = 20.0


def _tool(name: str) -> str | None:
    """A labgrid entry point next to this interpreter (a venv's bin), else on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def _ser2net() -> str | None:
    return shutil.which("ser2net") or ("/usr/sbin/ser2net" if os.path.exists("/usr/sbin/ser2net") else None)


def _labgrid_installed() -> bool:
    try:
        import labgrid  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class Lab:
    address: str
    tmp: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def url(self, place: str, query: str = "") -> str:
        return f"labgrid://{self.address}/{place}" + (f"?{query}" if query else "")


def _start(cmd: list[str], out: Path, *, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A process in a session of its own (so that the whole group, ser2net children included,
    is stopped at the end), its output to a file (the coordinator prints every request)."""
    with out.open("wb") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=cwd, env=env, start_new_session=True)


def _wait_for(out: Path, proc: subprocess.Popen[bytes], test: str) -> str:
    """The first line of ``out`` containing ``test``, waiting for it."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        for line in out.read_text(errors="replace").splitlines():
            if test in line:
                return line
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"{out.name}: no line with {test!r}:\n{out.read_text(errors='replace')[-2000:]}")


async def _make_places(address: str, places: dict[str, tuple[str, dict[str, str]]], groups: list[str]) -> None:
    """Create the places with labgrid's own client calls, once the exporter's resources are there."""
    from labgrid.remote.client import ClientSession
    from labgrid.remote.generated import labgrid_coordinator_pb2 as pb

    session = ClientSession(address, asyncio.get_running_loop())
    await session.start()
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not all(g in session.resources.get("bench", {}) for g in groups):
            assert time.monotonic() < deadline, f"exporter resources never arrived: {session.resources}"
            await asyncio.sleep(0.1)
        for name, (pattern, tags) in places.items():
            await session.stub.AddPlace(pb.AddPlaceRequest(name=name))
            await session.stub.AddPlaceMatch(pb.AddPlaceMatchRequest(placename=name, pattern=pattern))
            await session.stub.SetPlaceTags(pb.SetPlaceTagsRequest(placename=name, tags=tags))
        await session.sync_with_coordinator()
    finally:
        await session.stop()
        await session.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    coordinator_bin, exporter_bin, ser2net = _tool("labgrid-coordinator"), _tool("labgrid-exporter"), _ser2net()
    require(_labgrid_installed() and coordinator_bin is not None and exporter_bin is not None, "labgrid",
            "pip install 'lpc-hil[labgrid]'")
    require(ser2net is not None, "ser2net", "apt-get install ser2net")
    assert coordinator_bin and exporter_bin
    tmp = tmp_path_factory.mktemp("lab")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        coord = _start([coordinator_bin, "-l", "127.0.0.1:0"], tmp / "coordinator.out", cwd=tmp)
        procs.append(coord)
        address = _wait_for(tmp / "coordinator.out", coord, "listening on").rsplit(" ", 1)[1]
        ptys = {}
        for name, io in (("a", "sim"), ("b", "sim"), ("dev", "sim:?floppy=generate&sb16=1")):
            agent = _start([sys.executable, "-m", "hil", "agent", "--io", io, "--listen", "pty"],
                           tmp / f"agent-{name}.out", cwd=ROOT)
            procs.append(agent)
            ptys[name] = _wait_for(tmp / f"agent-{name}.out", agent, "/dev/pts/").strip()
        agent = _start([sys.executable, "-m", "hil", "agent", "--listen", "tcp://127.0.0.1:0"], tmp / "agent-t.out", cwd=ROOT)
        procs.append(agent)
        tcp_port = int(_wait_for(tmp / "agent-t.out", agent, "tcp://").strip().rsplit(":", 1)[1])
        config = "".join(f"{g}:\n  RawSerialPort:\n    port: {p}\n    speed: 115200\n" for g, p in ptys.items())
        config += f"tcp:\n  NetworkSerialPort:\n    host: 127.0.0.1\n    port: {tcp_port}\n    protocol: raw\n"
        (tmp / "exporter.yaml").write_text(config)
        env = {**os.environ, "PATH": os.environ.get("PATH", "") + ":/usr/sbin"}
        exporter = _start([exporter_bin, "-c", address, "--name", "bench", "--hostname", "127.0.0.1",
                           str(tmp / "exporter.yaml")], tmp / "exporter.out", cwd=tmp, env=env)
        procs.append(exporter)
        _wait_for(tmp / "exporter.out", exporter, "Exporter ready")
        asyncio.run(_make_places(address, {
            "a": ("bench/a/*", {"hil-io": "sim", "ich10": "1"}),
            "b": ("bench/b/*", {"hil-io": "sim", "ich10": "1"}),
            "dev": ("bench/dev/*", {"hil-io": "sim", "hil-fdc": "1", "hil-sb16": "1"}),
            "t": ("bench/tcp/*", {"hil-io": "sim"}),
            "wrong": ("bench/tcp/*", {"hil-io": "devport"}),
        }, ["a", "b", "dev", "tcp"]))
        yield Lab(address, tmp, procs)
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(procs):
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def hil(*args: str, env: dict[str, str] | None = None, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hil", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env=env)


async def verdict(lab: Lab, place: str) -> tuple[LockState, dict[str, str], str | None]:
    async with Coordinator(lab.address) as c:
        info = c.place(place)
        return c.verdict(place).state, info.tags, info.acquired


def assert_free(state: tuple[LockState, dict[str, str], str | None]) -> None:
    s, tags, acquired = state
    assert (s, acquired) == (LockState.FREE, None)
    assert PID_TAG not in tags and LEASE_TAG not in tags


HOLDER = """
import asyncio, sys
from hil.backends import open_backend
async def main():
    async with open_backend(sys.argv[1]) as be:
        await be.inb(0x08)
        print("running", flush=True)
        while True:  # mid-run: programs, one after another, until killed
            await be.inb(0x08)
asyncio.run(main())
"""


def start_holder(lab: Lab, url: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    script = lab.tmp / "holder.py"
    script.write_text(HOLDER)
    out = lab.tmp / f"holder-{time.monotonic_ns()}.out"
    proc = _start([sys.executable, str(script), url], out, cwd=ROOT, env=env)
    _wait_for(out, proc, "running")
    return proc


# --- the Contract: open_backend("labgrid:?place=NAME") with LG_COORDINATOR -------------------


async def test_open_backend_acquires_the_place_runs_programs_and_releases_it(lab: Lab,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LG_COORDINATOR", lab.address)
    async with open_backend("labgrid:?place=a") as be:
        caps = be.capabilities
        assert caps.backend == "labgrid"
        assert "labgrid place a (exporter bench)" in caps.identity and "io=sim" in caps.identity
        assert (caps.details["place"], caps.details["exporter"]) == ("a", "bench")
        assert caps.details["resource"] == "bench/a/NetworkSerialPort/RawSerialPort"
        state, tags, _ = await verdict(lab, "a")
        assert state is LockState.LIVE and tags[PID_TAG] == str(os.getpid())
        # a channel 0 address through the flip-flop, on the agent behind ser2net's RFC 2217 port
        results = await be.execute([Out(0x0C, 0), Out(0x00, 0x34), Out(0x00, 0x12), Out(0x0C, 0), In(0x00), In(0x00)])
        assert results == [0x34, 0x12]
    assert_free(await verdict(lab, "a"))


async def test_a_failed_open_releases_what_it_acquired(lab: Lab) -> None:
    """Place 'wrong' is tagged hil-io=devport, but its port's agent serves sim."""
    with pytest.raises(LabgridError, match=r"tag hil-io=devport, but its agent serves io=sim"):
        async with open_backend(lab.url("wrong")):
            pass
    assert_free(await verdict(lab, "wrong"))


def test_example_scripts_run_on_a_place(lab: Lab) -> None:
    r = hil("run", "-q", "-b", lab.url("a"), str(SCRIPTS / "mem-to-mem.toml"), str(SCRIPTS / "qemu-register-quirks.toml"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 passed, 0 failed, 0 skipped" in r.stdout
    assert_free(asyncio.run(verdict(lab, "a")))


def test_device_scripts_run_on_a_place_whose_tags_name_the_devices(lab: Lab) -> None:
    r = hil("run", "-q", "-b", lab.url("dev"), str(SCRIPTS / "floppy-read.toml"), str(SCRIPTS / "sb16-single.toml"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 passed, 0 failed, 0 skipped" in r.stdout


def test_a_raw_tcp_serial_port_is_reached_without_rfc2217(lab: Lab) -> None:
    journal = lab.tmp / "t.jsonl"
    r = hil("run", "-q", "--journal", str(journal), "-b", lab.url("t"), str(SCRIPTS / "mem-to-mem.toml"))
    assert r.returncode == 0, r.stdout + r.stderr
    lines = journal.read_text().splitlines()
    assert "via tcp://127.0.0.1:" in lines[0] and "rfc2217" not in lines[0]
    assert '"status":"passed"' in lines[-1]


# --- locks that do not outlive the run --------------------------------------------------------


def test_a_killed_client_leaves_a_stale_lock_that_doctor_names_and_release_frees(lab: Lab) -> None:
    holder = start_holder(lab, lab.url("a"))
    state, tags, _ = asyncio.run(verdict(lab, "a"))
    assert state is LockState.LIVE and tags[PID_TAG] == str(holder.pid)
    holder.send_signal(signal.SIGKILL)  # mid-run: no close, no release
    holder.wait()
    state, tags, _ = asyncio.run(verdict(lab, "a"))
    assert state is LockState.STALE and tags[PID_TAG] == str(holder.pid)
    doctor = hil("doctor", lab.url("a"))
    assert doctor.returncode == 1, doctor.stdout
    assert "stale lock" in doctor.stdout and "hil labgrid release a" in doctor.stdout
    assert "SKIP  agent" in doctor.stdout  # a diagnosis takes no lock over
    release = hil("labgrid", "release", "a", "-x", lab.address)
    assert release.returncode == 0, release.stdout + release.stderr
    assert "released (stale" in release.stdout
    assert_free(asyncio.run(verdict(lab, "a")))


def test_the_next_run_takes_a_dead_runs_lock_over(lab: Lab) -> None:
    holder = start_holder(lab, lab.url("b"))
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    r = hil("run", "-q", "-b", lab.url("b"), str(SCRIPTS / "mem-to-mem.toml"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "labgrid_stale_lock_taken_over" in r.stderr and f"pid {holder.pid}" in r.stderr
    assert_free(asyncio.run(verdict(lab, "b")))


def test_ctrl_c_releases_the_place(lab: Lab) -> None:
    holder = start_holder(lab, lab.url("a"))
    holder.send_signal(signal.SIGINT)
    assert holder.wait(15) != 0
    assert_free(asyncio.run(verdict(lab, "a")))


def test_a_holder_on_another_host_is_stale_once_its_lease_has_ended(lab: Lab) -> None:
    """No pid can be checked on another host: the lease decides. The lock a killed run left is
    live until the lease (3 s here) and the grace after it have passed."""
    holder = start_holder(lab, lab.url("b", "lease=3"), env={**os.environ, "LG_HOSTNAME": "elsewhere"})
    holder.send_signal(signal.SIGKILL)
    holder.wait()

    async def seen() -> tuple[LockState, LockState]:
        async with Coordinator(lab.address) as c:
            info = c.place("b")
            assert info.acquired is not None and info.acquired.startswith("elsewhere/")
            now = time.time()
            return (judge(info.acquired, info.tags, c.me, now).state,
                    judge(info.acquired, info.tags, c.me, now + 3 + GRACE_S + 1).state)

    assert asyncio.run(seen()) == (LockState.LIVE, LockState.STALE)
    assert hil("labgrid", "release", "b", "-x", lab.address).returncode == 1  # live: refused
    forced = hil("labgrid", "release", "--force", "b", "-x", lab.address)
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert_free(asyncio.run(verdict(lab, "b")))


async def test_a_run_whose_lease_lapses_stops_running_programs(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cut off from the coordinator (every renewal fails), a run may no longer trust its lock."""
    async with open_backend(lab.url("a", "lease=3")) as be:
        await be.inb(0x08)

        async def unreachable(self: Coordinator, *args: object) -> None:
            raise LabgridError("coordinator unreachable (test)")

        monkeypatch.setattr(Coordinator, "renew", unreachable)
        await asyncio.sleep(3.3)
        with pytest.raises(LabgridError, match="lease ran out unrenewed"):
            await be.inb(0x08)
    assert_free(await verdict(lab, "a"))


# --- busy places ------------------------------------------------------------------------------


async def test_a_place_someone_else_holds_is_busy_until_released(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    from hil.labgrid.plugin import wait_for_place

    monkeypatch.setenv("LG_USERNAME", "colleague")
    colleague = Coordinator(lab.address)
    await colleague.connect()  # labgrid names a session at its start: this one is .../colleague
    monkeypatch.delenv("LG_USERNAME")
    try:
        await colleague.acquire("b")
        with pytest.raises(PlaceBusyError, match=r"'b' is busy: acquired by .*/colleague") as busy:
            async with open_backend(lab.url("b")):
                pass
        assert busy.value.holder.endswith("/colleague")
        reason = await wait_for_place(lab.url("b"), 0.5)
        assert reason is not None and "still busy after 0.5 s" in reason and "colleague" in reason

        async def release_soon() -> None:
            await asyncio.sleep(1.0)
            await colleague.release("b")

        releasing = asyncio.create_task(release_soon())
        async with open_backend(lab.url("b", "wait=20")) as be:  # waits for the release, then acquires
            assert be.capabilities.details["place"] == "b"
            assert releasing.done()
        await releasing
        assert await wait_for_place(lab.url("b"), 0) is None
        assert await wait_for_place("sim", 0) is None
    finally:
        await colleague.close()
    assert_free(await verdict(lab, "b"))


# --- fan-out ----------------------------------------------------------------------------------


async def test_two_places_are_held_and_driven_at_once(lab: Lab) -> None:
    async with open_backend(lab.url("a")) as a, open_backend(lab.url("b")) as b:
        assert [s for s, _, _ in [await verdict(lab, "a"), await verdict(lab, "b")]] == [LockState.LIVE] * 2

        async def channel0(be: object, value: int) -> list[object]:
            assert hasattr(be, "execute")
            return await be.execute([Out(0x0C, 0), Out(0x00, value), Out(0x00, 0), Out(0x0C, 0), In(0x00)])

        assert await asyncio.gather(channel0(a, 0x11), channel0(b, 0x22)) == [[0x11], [0x22]]
    assert_free(await verdict(lab, "a"))
    assert_free(await verdict(lab, "b"))


def test_diff_runs_two_places_and_the_simulator(lab: Lab) -> None:
    r = hil("diff", str(SCRIPTS / "mem-to-mem.toml"), "-b", lab.url("a"), "-b", lab.url("b"), "-b", "sim",
            "--journal-dir", str(lab.tmp / "diff"))
    assert r.returncode == 0, r.stdout + r.stderr
    for n, place in ((1, "a"), (2, "b")):
        header = (lab.tmp / "diff" / f"backend{n}" / "mem-to-mem.jsonl").read_text().splitlines()[0]
        assert f"labgrid place {place} (exporter bench)" in header


async def test_run_place_selector_runs_every_matching_free_place(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    def run() -> subprocess.CompletedProcess[str]:
        return hil("run", "--place", "tag=ich10", "--coordinator", lab.address, str(SCRIPTS / "mem-to-mem.toml"))

    r = await asyncio.to_thread(run)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "a: mem-to-mem PASSED" in r.stdout and "b: mem-to-mem PASSED" in r.stdout
    assert "dev:" not in r.stdout and "t:" not in r.stdout
    monkeypatch.setenv("LG_USERNAME", "colleague")
    async with Coordinator(lab.address) as colleague:
        monkeypatch.delenv("LG_USERNAME")
        await colleague.acquire("b")
        try:
            r = await asyncio.to_thread(run)
        finally:
            await colleague.release("b")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "a: mem-to-mem PASSED" in r.stdout and "b: BUSY (acquired by" in r.stdout
    assert "1 place ran, 1 busy" in r.stdout


async def test_lg_env_names_the_place_to_open(lab: Lab) -> None:
    from hil.labgrid.plugin import lg_env_url

    env = lab.tmp / "env.yaml"
    env.write_text(f"targets:\n  main:\n    resources:\n      RemotePlace:\n        name: a\n"
                   f"options:\n  coordinator_address: {lab.address}\n")
    url = lg_env_url(env)
    assert url == lab.url("a")
    async with open_backend(url) as be:
        assert be.capabilities.details["place"] == "a"


def test_an_unreachable_coordinator_is_one_line_error() -> None:
    require(_labgrid_installed(), "labgrid", "pip install 'lpc-hil[labgrid]'")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = hil("run", "-b", f"labgrid://127.0.0.1:{port}/a", str(SCRIPTS / "mem-to-mem.toml"))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr  # no labgrid log line before it
    assert lines[0].startswith(f"hil run: error: cannot reach the labgrid coordinator at 127.0.0.1:{port} (")
    assert "is labgrid-coordinator running there?" in lines[0]


def test_lg_env_backend_reads_lg_env_like_labgrids_plugin(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    from hil.labgrid.plugin import lg_env_backend

    env = lab.tmp / "env2.yaml"
    env.write_text("targets:\n  main:\n    resources:\n      - RemotePlace:\n          name: !template $LG_PLACE\n")
    monkeypatch.setenv("LG_PLACE", "b")
    monkeypatch.delenv("LG_ENV", raising=False)
    assert lg_env_backend(None) is None
    monkeypatch.setenv("LG_ENV", str(env))
    assert lg_env_backend(None, lab.address) == lab.url("b")
    monkeypatch.setenv("LG_COORDINATOR", "10.9.8.7")
    assert lg_env_backend(str(env)) == "labgrid://10.9.8.7:20408/b"


def test_labgrid_places_lists_the_selected_places_with_their_state(lab: Lab) -> None:
    import json

    r = hil("labgrid", "places", "tag=ich10", "-x", lab.address, "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [(row["place"], row["state"]) for row in rows] == [("a", "free"), ("b", "free")]
    text = hil("labgrid", "--coordinator", lab.address, "places")
    assert text.returncode == 0 and {line.split()[0] for line in text.stdout.splitlines()} == {"a", "b", "dev", "t", "wrong"}


PLUGIN_TEST = """
from hil.ops import In


async def test_on_the_bench(hil_backend):
    assert hil_backend.capabilities.backend == "labgrid"
    assert await hil_backend.execute([In(0x81)]) is not None
"""


def _pytest_in(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """A pytest run of :data:`PLUGIN_TEST` with our plugin (and labgrid's, which installing labgrid loads)."""
    (tmp / "test_bench.py").write_text(PLUGIN_TEST)
    (tmp / "pytest.ini").write_text("[pytest]\nasyncio_mode = auto\nasyncio_default_test_loop_scope = session\n"
                                    "asyncio_default_fixture_loop_scope = session\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "hil.pytest_plugin", "-p", "no:cacheprovider",
                           *args], cwd=tmp, env=env, capture_output=True, text=True, timeout=120)


async def test_the_plugin_waits_for_a_busy_place_then_skips_naming_the_holder(lab: Lab,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 18 item 4: ``--hil-backend labgrid:?place=…`` with the place held by a colleague:
    the test waits ``--hil-place-timeout`` seconds, then is skipped with the holder named; once
    the place is free, the same run passes on it. ``--lg-env`` selects the place as labgrid's
    own plugin reads it."""
    monkeypatch.setenv("LG_USERNAME", "colleague")
    colleague = Coordinator(lab.address)
    await colleague.connect()
    monkeypatch.delenv("LG_USERNAME")
    work = lab.tmp / "plugin-busy"
    work.mkdir(exist_ok=True)
    try:
        await colleague.acquire("b")
        t0 = time.monotonic()
        busy = await asyncio.to_thread(_pytest_in, work, "--hil-backend", lab.url("b"), "--hil-place-timeout", "1.5")
        waited = time.monotonic() - t0
        assert busy.returncode == 0, busy.stdout[-2000:]
        assert "1 skipped" in busy.stdout and "colleague" in busy.stdout and "still busy after 1.5 s" in busy.stdout
        assert waited >= 1.5
    finally:
        await colleague.release("b")
        await colleague.close()
    free = await asyncio.to_thread(_pytest_in, work, "--hil-backend", lab.url("b"))
    assert free.returncode == 0 and "1 passed" in free.stdout, free.stdout[-2000:]
    env = work / "plugin-env.yaml"
    env.write_text(f"targets:\n  main:\n    resources:\n      RemotePlace:\n        name: a\n"
                   f"options:\n  coordinator_address: {lab.address}\n")
    chosen = await asyncio.to_thread(_pytest_in, work, "--lg-env", str(env), "-v")
    assert chosen.returncode == 0 and "1 passed" in chosen.stdout, chosen.stdout[-2000:]
    assert "/a]" in chosen.stdout  # the place from the environment file is in the test id
    assert_free(await verdict(lab, "a"))
    assert_free(await verdict(lab, "b"))
