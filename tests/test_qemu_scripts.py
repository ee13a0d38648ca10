"""The differential run: example scripts on the simulator and on QEMU.

Every example in configs/scripts/ that can run on both (its capabilities are met by ``sim`` and by
``qemu:``) runs on ``sim`` (the datasheet / Intel profile), ``sim:?profile=qemu`` and ``qemu:``:

* ``sim:?profile=qemu`` vs ``qemu:`` must be identical, with no tolerance at all: a difference is
  a bug in the qemu profile.
* ``sim`` vs ``qemu:`` (and ``sim`` vs ``sim:?profile=qemu``) may differ only where the ONE
  known-deviations file configs/deviations/intel-vs-qemu.toml explains it, and every entry of it
  must be needed.

The QEMU-device examples (qemu-*.toml with requires = ["fdc"] / ["sb16"]) are refused on the
simulator with a capability error (the qemu-sb16-* ones run on it with sb16=1:
tests/test_sim_sb16_examples.py), and the examples that need the simulator's devices are refused
on qemu:. Their runs on QEMU are in tests/test_qemu_devices.py.
"""

from __future__ import annotations

import asyncio
import functools
import json
from pathlib import Path

import pytest

from hil.backends import open_backend
from hil.diff import DiffReport, compare, load_deviations
from hil.journal import RunResult
from hil.runner import check_capabilities, run_script
from hil.script import load_script
from hil.script.model import ScriptCapabilityError
from hil.testing import require

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "configs" / "scripts"
DEVIATIONS = ROOT / "configs" / "deviations" / "intel-vs-qemu.toml"
QEMU_URL = "qemu:?floppy=generate&sb16=1"  # the most capable qemu: every device it can have
URLS = {"intel": "sim", "simqemu": "sim:?profile=qemu", "qemu": "qemu:"}
FAILING = "failing-expectation.toml"


def need_qemu() -> None:
    from hil.backends.qemu import qemu_available

    ok, why = qemu_available()
    require(ok, "qemu-system-x86_64 (QEMU 7.2 or later)", why)


def runs_on(name: str, url: str) -> bool:
    try:
        check_capabilities(load_script(SCRIPTS / name), open_backend(url))  # no I/O: not opened
    except ScriptCapabilityError:
        return False
    return True


EXAMPLES = sorted(p.name for p in SCRIPTS.glob("*.toml"))
#: every example the simulator and QEMU can both run (failing-expectation fails on purpose)
BOTH = [n for n in EXAMPLES if n != FAILING and runs_on(n, "sim") and runs_on(n, QEMU_URL)]
QEMU_ONLY = [n for n in EXAMPLES if not runs_on(n, "sim") and runs_on(n, QEMU_URL)]
SIM_ONLY = [n for n in EXAMPLES if runs_on(n, "sim") and not runs_on(n, QEMU_URL)]
#: QEMU-device examples the simulator runs with its Sound Blaster 16 (tests/test_sim_sb16_examples.py)
SB16_URLS = {"intel": "sim:?sb16=1", "simqemu": "sim:?profile=qemu&sb16=1", "qemu": "qemu:?sb16=1"}
SB16_EXAMPLES = [n for n in QEMU_ONLY if runs_on(n, SB16_URLS["intel"])]


@functools.cache
def run(name: str, which: str) -> RunResult:
    """One example on one backend, each run on a fresh backend (a fresh QEMU for qemu:)."""

    async def go() -> RunResult:
        script = load_script(SCRIPTS / name)
        async with open_backend(URLS.get(which, which)) as be:  # a label of URLS, or a URL
            return await run_script(script, be)

    return asyncio.run(go())


def diff(names: list[str], a: str, b: str, deviations: list | None) -> DiffReport:
    report = DiffReport(backends=[URLS.get(a, a), URLS.get(b, b)])
    for name in names:
        compare([run(name, a), run(name, b)], deviations, report)
    return report


# --- which examples run where ------------------------------------------------------------------------


def test_the_sets_of_examples():
    assert {"mem-to-mem.toml", "qemu-register-quirks.toml"} <= set(BOTH)
    assert {"qemu-fdc-read.toml", "qemu-fdc-write.toml", "qemu-sb16-single.toml", "qemu-sb16-autoinit.toml"} <= set(QEMU_ONLY)
    assert "floppy-read.toml" in SIM_ONLY and "audio-ring-autoinit.toml" in SIM_ONLY
    assert set(BOTH) | set(QEMU_ONLY) | set(SIM_ONLY) | {FAILING} == set(EXAMPLES)
    assert all(n.startswith("qemu-") for n in QEMU_ONLY)


@pytest.mark.parametrize("name", [n for n in EXAMPLES if n.startswith("qemu-")])
def test_qemu_examples_describe_themselves(name: str):
    script = load_script(SCRIPTS / name)
    assert script.name == name.removesuffix(".toml")
    assert "§" in script.description and ".md" in script.description, script.description


def test_qemu_fragments_are_used():
    used = {Path(s.file).name for n in EXAMPLES if n.startswith("qemu-") for s in load_script(SCRIPTS / n).steps}
    fragments = {p.name for p in (SCRIPTS / "fragments").glob("qemu-*.toml")}
    assert fragments and fragments <= used


@pytest.mark.parametrize("name", QEMU_ONLY)
def test_qemu_device_examples_are_refused_on_the_simulator(name: str):
    script = load_script(SCRIPTS / name)
    need = set(script.requires)
    assert need & {"fdc", "sb16"}
    for url in ("sim", "sim:?profile=qemu"):
        with pytest.raises(ScriptCapabilityError, match=r"backend sim\S* lacks capability '(fdc|sb16)'"):
            check_capabilities(script, open_backend(url))


@pytest.mark.parametrize("name", SIM_ONLY)
def test_simulator_device_examples_are_not_applicable_on_qemu(name: str):
    with pytest.raises(ScriptCapabilityError, match=r"lacks capability 'devices'"):
        check_capabilities(load_script(SCRIPTS / name), open_backend(QEMU_URL))


def test_a_qemu_device_example_needs_the_device_option():
    script = load_script(SCRIPTS / "qemu-fdc-read.toml")
    with pytest.raises(ScriptCapabilityError, match="backend qemu: lacks capability 'fdc'"):
        check_capabilities(script, open_backend("qemu:"))
    check_capabilities(script, open_backend("qemu:?floppy=generate"))


# --- runs --------------------------------------------------------------------------------------------


#: examples whose expectations are the datasheet's and which QEMU therefore fails (on purpose)
FAILS_ON_QEMU = {"mem-to-mem.toml"}  # no memory-to-memory in QEMU's i8257 (docs/reference/8237.md §5)


@pytest.mark.parametrize("name", BOTH)
def test_runs_everywhere(name: str):
    need_qemu()
    for which in URLS:
        result = run(name, which)
        expected = "failed" if name in FAILS_ON_QEMU and which != "intel" else "passed"
        assert result.status == expected, (which, result.error, [(o.step, o.name, o.value, o.expect) for o in result.failures])
        assert result.error is None


@pytest.mark.parametrize("name", BOTH)
def test_qemu_profile_equals_qemu_exactly(name: str):
    """No tolerance, no deviation list: the qemu profile and QEMU agree on every observation."""
    need_qemu()
    report = diff([name], "simqemu", "qemu", None)
    assert report.errors == []
    assert report.divergences == [], report.format()
    assert report.compared > 0


#: every example the simulator runs and compares (failing-expectation fails on purpose)
SIM_RUNNABLE = [n for n in EXAMPLES if n != FAILING and runs_on(n, "sim")]


def intel_vs_qemu(deviations: list | None) -> DiffReport:
    """The whole intel-vs-QEMU picture: sim vs qemu: for the examples both run, and sim vs
    sim:?profile=qemu for every example the simulator runs, and sim:?sb16=1 vs qemu:?sb16=1 for
    the Sound Blaster 16 examples."""
    report = diff(BOTH, "intel", "qemu", deviations)
    for other in (diff(SIM_RUNNABLE, "intel", "simqemu", deviations),
                  diff(SB16_EXAMPLES, SB16_URLS["intel"], SB16_URLS["qemu"], deviations)):
        report.divergences += other.divergences
        report.errors += other.errors
        report.compared += other.compared
    return report


def test_intel_vs_qemu_divergences_are_all_known():
    need_qemu()
    deviations = load_deviations(DEVIATIONS)
    report = diff(BOTH, "intel", "qemu", deviations)
    assert report.errors == [] and report.counted == [], report.format()
    for name in BOTH:  # each of these examples shows QEMU's differences, explained
        assert any(d.script == name.removesuffix(".toml") and d.tolerated for d in report.divergences), name


def test_intel_vs_qemu_profile_divergences_are_all_known_too():
    """The same ONE file explains the simulator's two profiles on every example (it supersedes
    configs/deviations/intel-vs-qemu.toml)."""
    report = diff(SIM_RUNNABLE, "intel", "simqemu", load_deviations(DEVIATIONS))
    assert report.errors == [] and report.counted == [], report.format()


def test_every_deviation_entry_is_needed_and_cited():
    need_qemu()
    deviations = load_deviations(DEVIATIONS)
    names = [d.name for d in deviations]
    assert len(names) == len(set(names))
    for d in deviations:
        assert d.between == ("intel", "qemu"), d.name
        assert d.reason and "§" in d.reference and ".md" in d.reference, d.name
        assert d.script != "*" or d.port is not None, f"{d.name}: scope an entry to a script or a port"
        others = [x for x in deviations if x is not d]
        assert intel_vs_qemu(others).counted, f"deviation {d.name} tolerates nothing the examples show"


def test_hil_diff_on_the_command_line(tmp_path: Path):
    """`hil diff` with worker processes, sim vs qemu: with the deviation file: exit 0; then the
    qemu profile vs qemu: without any file: exit 0 as well (equal)."""
    need_qemu()
    from hil.cli import main

    scripts = [str(SCRIPTS / n) for n in BOTH]
    junit = tmp_path / "diff.xml"
    code = main(["diff", *scripts, "-b", "sim", "-b", "qemu:", "--deviations", str(DEVIATIONS),
                 "--junit", str(junit), "--journal-dir", str(tmp_path / "j1"), "--json"])
    assert code == 0 and junit.exists()
    code = main(["diff", *scripts, "-b", "sim:?profile=qemu", "-b", "qemu:", "--journal-dir", str(tmp_path / "j2")])
    assert code == 0
    header = json.loads((tmp_path / "j2" / "backend2" / "mem-to-mem.jsonl").read_text().splitlines()[0])
    assert header["capabilities"]["backend"] == "qemu" and header["identity"].startswith("qemu 7.")
