"""The pytest plugin (issue 17 item 1), driven through ``pytester``: each test writes a small
test project, runs pytest on it with the plugin, and checks the outcomes and the report.

The inner runs load the plugin with ``-p hil.pytest_plugin`` (this checkout may be on PYTHONPATH
only, with no installed entry point); :func:`test_entry_point_is_declared` checks the entry point
that an install provides.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tomllib
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import pytest

from hil.ports import DMA1, DMA2, PAGE_PORT
from hil.pytest_plugin import backend_urls, is_script, reset_program
from hil.testing import require

pytest_plugins = ("pytester",)

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "configs" / "scripts"
FLOPPY = "sim:?floppy=generate"


def run(pytester: pytest.Pytester, *args: str, mode: str = "strict") -> pytest.RunResult:
    """pytest in a subprocess (its own event loops and environment), with the plugin."""
    return pytester.runpytest_subprocess("-p", "hil.pytest_plugin", "-p", "no:cacheprovider",
                                         "-o", f"asyncio_mode={mode}",
                                         "-o", "asyncio_default_fixture_loop_scope=function", *args)


@pytest.fixture(autouse=True)
def _env(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.delenv("HIL_BACKEND", raising=False)


def test_entry_point_is_declared() -> None:
    """pyproject declares the pytest11 entry point under the module's own name (so the
    ``-p hil.pytest_plugin`` in addopts and the entry point are one plugin); an installed
    distribution carries it."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["entry-points"]["pytest11"] == {"hil.pytest_plugin": "hil.pytest_plugin"}
    assert "-p hil.pytest_plugin" in project["tool"]["pytest"]["ini_options"]["addopts"]
    try:
        dist = metadata.distribution("lpc-hil")
    except metadata.PackageNotFoundError:
        return  # running from a checkout on PYTHONPATH: the declaration above is what an install reads
    source = json.loads(dist.read_text("direct_url.json") or "{}").get("url", "")
    if source.rstrip("/") != ROOT.as_uri():
        return  # installed from another tree (or a wheel): its metadata says nothing about this checkout
    eps = [ep for ep in dist.entry_points if ep.group == "pytest11"]
    assert [(ep.name, ep.value) for ep in eps] == [("hil.pytest_plugin", "hil.pytest_plugin")]


def test_backend_urls_options_then_environment_then_sim() -> None:
    assert backend_urls(["sim", FLOPPY, "sim"], "qemu:") == ["sim", FLOPPY]
    assert backend_urls([], "sim:?profile=qemu  labgrid:?place=bench-1") == ["sim:?profile=qemu", "labgrid:?place=bench-1"]
    assert backend_urls([], None) == backend_urls([], "  ") == ["sim"]
    with pytest.raises(pytest.UsageError, match="--hil-backend"):
        backend_urls(["agent+tcp://127.0.0.1:port"], None)


TESTS = '''
    import pytest
    from hil.ops import In

    pytestmark = pytest.mark.asyncio(loop_scope="session")

    async def test_status(hil_backend, hil_url):
        assert hil_url in hil_backend.url
        assert await hil_backend.inb(0x08) & 0x0F == 0

    @pytest.mark.hil_requires("fdc", "irq")
    async def test_fdc(hil_dma):
        assert await hil_dma.backend.inb(0x3F4) & 0x80  # MSR: RQM

    @pytest.mark.hil_xfail_on("qemu", reason="the model gap under test")
    async def test_gap(hil_backend):
        assert hil_backend.capabilities.details.get("profile") != "qemu"
'''


@pytest.mark.parametrize("mode", ["strict", "auto"])
def test_parametrised_over_backends_with_markers(pytester: pytest.Pytester, mode: str) -> None:
    pytester.makepyfile(test_bench=TESTS)
    result = run(pytester, "-v", "-rsx", "--hil-backend", "sim", "--hil-backend", FLOPPY,
                 "--hil-backend", "sim:?profile=qemu", mode=mode)
    result.assert_outcomes(passed=6, skipped=2, xfailed=1)
    out = result.stdout.str()
    for line in ("test_status[sim] PASSED", f"test_fdc[{FLOPPY}] PASSED", "test_gap[sim:?profile=qemu] XFAIL",
                 "test_gap[sim] PASSED", "test_status[sim:?profile=qemu] PASSED"):
        assert line in out, line
    assert "backend sim lacks capability 'fdc' (hil_requires" in out
    assert "the model gap under test (hil_xfail_on qemu)" in out


def test_environment_fallback_and_default(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(test_bench=TESTS)
    monkeypatch.setenv("HIL_BACKEND", FLOPPY)
    run(pytester, "-v").stdout.fnmatch_lines([f"*test_fdc[[]{FLOPPY}[]] PASSED*"])
    monkeypatch.delenv("HIL_BACKEND")
    result = run(pytester, "-v")
    result.stdout.fnmatch_lines(["*test_status[[]sim[]] PASSED*"])
    result.assert_outcomes(passed=2, skipped=1)


def test_xfail_on_is_strict_where_the_gap_is_not_there(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_gap='''
        import pytest
        @pytest.mark.asyncio(loop_scope="session")
        @pytest.mark.hil_xfail_on("sim", reason="claimed gap")
        async def test_passes(hil_backend):
            assert True
    ''')
    result = run(pytester)
    result.assert_outcomes(failed=1)
    assert "XPASS(strict)" in result.stdout.str()


def test_unknown_capability_is_an_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_x='''
        import pytest
        @pytest.mark.asyncio(loop_scope="session")
        @pytest.mark.hil_requires("warp_drive")
        async def test_x(hil_backend):
            pass
    ''')
    result = run(pytester)
    result.assert_outcomes(errors=1)
    assert "hil_requires('warp_drive'): unknown capability" in result.stdout.str()


@pytest.mark.parametrize("mode", ["strict", "auto"])
def test_a_test_outside_the_session_loop_fails_with_one_line(pytester: pytest.Pytester, mode: str) -> None:
    pytester.makepyfile(test_loop='''
        import pytest
        @pytest.mark.asyncio
        async def test_function_loop(hil_backend):
            await hil_backend.inb(0x08)
    ''')
    result = run(pytester, mode=mode)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*runs in the 'function' event loop; hil_backend is a session-scoped connection*"
                                 "loop_scope=\"session\"*"])
    assert "Traceback" not in result.stdout.str()


def test_ini_default_test_loop_scope_session_is_enough(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_ini='''
        async def test_ini(hil_backend):
            assert await hil_backend.inb(0x81) == 0
    ''')
    run(pytester, "-o", "asyncio_default_test_loop_scope=session", mode="auto").assert_outcomes(passed=1)


KNOWN_STATE = '''
    import pytest
    from hil.ops import In, Out
    pytestmark = pytest.mark.asyncio(loop_scope="session")

    async def test_1_dirty(hil_backend):
        await hil_backend.execute([Out(0x81, 0x12), Out(0x0A, 0x02), Out(0x8B, 0x34)])  # page, unmask ch2

    async def test_2_known(hil_backend, hil_dma):
        assert await hil_backend.inb(0x81) == 0 and await hil_backend.inb(0x8B) == 0
        assert hil_dma.owner_of(2) is None
'''


def test_each_test_starts_at_the_known_state_on_sim(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_state=KNOWN_STATE)
    run(pytester).assert_outcomes(passed=2)


def test_the_reset_program_is_master_clear_pages_and_cascade() -> None:
    """docs/reference/8237.md §3.2 (master clear), §3.6 (channel 4 cascade, unmasked)."""
    ops = reset_program()
    ports = [op.port for op in ops]
    assert ports[:2] == [DMA1.master_clear, DMA2.master_clear]
    assert set(ports[2:-2]) == set(PAGE_PORT.values())
    assert [(op.port, op.value) for op in ops[-2:]] == [(DMA2.mode, 0xC0), (DMA2.single_mask, 0x00)]


@contextmanager
def running_agent() -> Iterator[str]:
    """``hil agent`` serving the simulator with a floppy on a free TCP port (a subprocess)."""
    proc = subprocess.Popen([sys.executable, "-m", "hil", "agent", "--io", FLOPPY, "--listen", "tcp://127.0.0.1:0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("tcp://"), line
        yield "agent+" + line
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def agent() -> Iterator[str]:
    with running_agent() as url:
        yield url


def test_known_state_through_an_agent_is_the_reset_program(pytester: pytest.Pytester, agent: str) -> None:
    """Through an agent the session's one connection stays open: the reset is the program."""
    pytester.makepyfile(test_state=KNOWN_STATE)
    result = run(pytester, "-v", "--hil-backend", agent, "--junitxml=report.xml")
    result.assert_outcomes(passed=2)
    suite = ET.parse(pytester.path / "report.xml").getroot().find("testsuite")
    assert suite is not None
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props[f"hil[{agent}].agent_version"].startswith("hil-agent ")
    assert "fdc" in (props[f"hil[{agent}].capabilities"] or "").split(",")
    assert props[f"hil[{agent}].identity"].startswith("agent hil-agent")
    case_props = [(p.get("name"), p.get("value")) for p in suite.iter("testcase").__next__().iter("property")]
    assert ("hil_backend", agent) in case_props


def copy_scripts(pytester: pytest.Pytester, *names: str) -> None:
    """Example scripts (and the fragments they include) into the test project."""
    for name in names:
        (pytester.path / name).write_text((SCRIPTS / name).read_text(encoding="utf-8"), encoding="utf-8")
    (pytester.path / "fragments").mkdir(exist_ok=True)
    for frag in (SCRIPTS / "fragments").glob("*.toml"):
        (pytester.path / "fragments" / frag.name).write_text(frag.read_text(encoding="utf-8"), encoding="utf-8")


def test_scripts_are_test_items_with_the_runners_report(pytester: pytest.Pytester) -> None:
    copy_scripts(pytester, "mem-to-mem.toml", "floppy-read.toml", "failing-expectation.toml")
    (pytester.path / "other.toml").write_text('[tool]\nname = "not a script"\n', encoding="utf-8")
    result = run(pytester, "-v", "-rs", "--hil-backend", "sim", "--hil-backend", FLOPPY)
    result.assert_outcomes(passed=3, failed=1, skipped=2)
    out = result.stdout.str()
    assert f"mem-to-mem.toml::mem-to-mem[{FLOPPY}] PASSED" in out
    assert "floppy-read.toml::floppy-read[sim] SKIPPED" in out and "floppy-read needs fdc" in out
    assert "other.toml" not in out and "fdc-reset" not in out
    result.stdout.fnmatch_lines([
        f"failing-expectation on {FLOPPY}: FAILED — 66 steps, 40 observations, 1 failed expectation(s)",
        "  FAIL step 11 (DELIBERATELY WRONG*): in 0x05: read 0xFF, expected 0x00",
    ])
    assert "Traceback" not in out and "runtest" not in out


def test_is_script_needs_a_script_table(tmp_path: Path) -> None:
    assert is_script(SCRIPTS / "floppy-read.toml")
    assert not is_script(SCRIPTS / "fragments" / "fdc-reset.toml")
    assert not is_script(ROOT / "pyproject.toml")
    (tmp_path / "bad.toml").write_text("[script\n", encoding="utf-8")
    assert not is_script(tmp_path / "bad.toml")


def test_pytest_configs_scripts_from_the_checkout() -> None:
    """``pytest configs/scripts`` in the repository (its pyproject's addopts load the plugin):
    every script runs; the one that is wrong on purpose fails with its report line."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "configs/scripts", "-q", "-p", "no:cacheprovider",
                           "--hil-backend", "sim:?floppy=generate&sb16=1&ecp=1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "HIL_BACKEND": ""})
    assert proc.returncode == 1, proc.stdout[-2000:]
    assert "1 failed, 15 passed" in proc.stdout
    assert "FAIL step 11 (DELIBERATELY WRONG" in proc.stdout


def test_vcd_per_test(pytester: pytest.Pytester) -> None:
    require(importlib.util.find_spec("vcd") is not None, "pyvcd", "pip install -e '.[test]'")
    pytester.makepyfile(test_w='''
        import pytest
        pytestmark = pytest.mark.asyncio(loop_scope="session")
        async def test_one(hil_backend):
            await hil_backend.outb(0x0A, 0x06)
    ''')
    copy_scripts(pytester, "mem-to-mem.toml")
    run(pytester, "--hil-vcd", "waves").assert_outcomes(passed=2)
    names = sorted(p.name for p in (pytester.path / "waves").iterdir())
    assert names == ["mem-to-mem.toml_mem-to-mem_sim.gtkw", "mem-to-mem.toml_mem-to-mem_sim.vcd",
                     "test_w.py_test_one_sim.gtkw", "test_w.py_test_one_sim.vcd"]
    text = (pytester.path / "waves" / "test_w.py_test_one_sim.vcd").read_text(encoding="utf-8")
    assert "$scope module dma1 $end" in text and "$upscope $end" in text


def test_record_an_agent_session_and_replay_it_offline(pytester: pytest.Pytester) -> None:
    """One bench session becomes a CI fixture: the tests and a script run through an agent
    with --hil-record; then the agent is gone, and the same run passes on replay: alone."""
    pytester.makepyfile(test_bench=TESTS)
    copy_scripts(pytester, "mem-to-mem.toml")
    with running_agent() as agent:
        first = run(pytester, "-v", "--hil-backend", agent, "--hil-record", "bench.jsonl")
    first.assert_outcomes(passed=4)
    lines = (pytester.path / "bench.jsonl").read_text(encoding="utf-8").splitlines()
    assert '"kind":"session"' in lines[0] and '"backend":"agent"' in lines[0]
    replay = run(pytester, "-v", "--hil-backend", "replay:bench.jsonl")
    replay.assert_outcomes(passed=4)
    assert "test_fdc[replay:bench.jsonl] PASSED" in replay.stdout.str()  # the agent's capabilities replayed
    # a changed test no longer matches the session: the first differing op is named
    pytester.makepyfile(test_bench=TESTS.replace("inb(0x08)", "inb(0x0A)"))
    changed = run(pytester, "--hil-backend", "replay:bench.jsonl")
    changed.assert_outcomes(passed=3, failed=1)
    changed.stdout.fnmatch_lines(["*ReplayMismatchError: replay bench.jsonl: program 1*op 0 differs: "
                                  "recorded In(port=0x8, width=8), got In(port=0xA, width=8)*"])


def test_record_on_sim_and_replay(pytester: pytest.Pytester) -> None:
    """On sim each test gets a fresh machine (a new session in the record); the replay follows
    the recorded sessions, so the known state of every test replays too."""
    pytester.makepyfile(test_state=KNOWN_STATE, test_bench=TESTS)
    run(pytester, "--hil-backend", FLOPPY, "--hil-record", "sim.jsonl").assert_outcomes(passed=5)
    kinds = [line.split('"kind":"')[1].split('"')[0] for line in (pytester.path / "sim.jsonl").read_text().splitlines()]
    assert kinds.count("session") == 5
    run(pytester, "--hil-backend", "replay:sim.jsonl").assert_outcomes(passed=5)


def test_plugin_does_not_touch_tests_without_its_fixtures(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_plain='''
        import asyncio
        def test_plain():
            assert 1
        async def test_async_auto():
            await asyncio.sleep(0)
    ''')
    result = run(pytester, "-v", "--hil-backend", "sim", "--hil-backend", FLOPPY, mode="auto")
    result.assert_outcomes(passed=2)
    assert "[sim]" not in result.stdout.str()


def test_plugin_module_imports_without_side_effects() -> None:
    """Importing the plugin configures no logging and starts no loop (it is imported by every
    pytest run once installed)."""
    code = "import logging, asyncio, hil.pytest_plugin; assert not logging.getLogger().handlers; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.stdout.strip() == "ok", out.stderr
