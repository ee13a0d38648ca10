"""The differential run: every example script on the simulator and on QEMU.

Every example in configs/scripts/ whose capabilities both meet runs on ``sim`` (the datasheet /
Intel profile), ``sim:?profile=qemu`` and ``qemu:``, each with every device the examples drive
(``floppy=generate&sb16=1``; a script names the devices it needs in ``requires``):

* ``sim:?profile=qemu`` vs ``qemu:`` must be identical, with no tolerance at all but the timing
  samples the scripts mark may_differ (QEMU plays sound in wall time, the simulator in virtual
  time: docs/reference/qemu-qtest.md §7): a difference is a bug in the qemu profile.
* ``sim`` vs ``qemu:`` (and ``sim`` vs ``sim:?profile=qemu``) may differ only where the ONE
  known-deviations file configs/deviations/intel-vs-qemu.toml explains it, and every entry of it
  must be needed.

The one example that needs the simulator's abstract devices (transfer-16bit, requires = ["devices"])
is refused on qemu:. More checks of QEMU's devices (the disk image on the host, IRQ edges, the
residue falling in wall time) are in tests/test_qemu_devices.py.
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
DEVICES = "floppy=generate&sb16=1"  #: every device the examples drive
URLS = {"intel": f"sim:?{DEVICES}", "simqemu": f"sim:?profile=qemu&{DEVICES}", "qemu": f"qemu:?{DEVICES}"}
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
BOTH = [n for n in EXAMPLES if n != FAILING and runs_on(n, URLS["intel"]) and runs_on(n, URLS["qemu"])]
QEMU_ONLY = [n for n in EXAMPLES if not runs_on(n, URLS["intel"]) and runs_on(n, URLS["qemu"])]
SIM_ONLY = [n for n in EXAMPLES if runs_on(n, URLS["intel"]) and not runs_on(n, URLS["qemu"])]
#: examples whose every observation is the same on the AT profile and on QEMU (tests/test_examples.py)
SAME_EVERYWHERE = {"floppy-read.toml", "floppy-write.toml", "verify-mode.toml"}
#: ... and whose one difference a diff_mask entry narrows away
NARROWED = {"sb16-autoinit.toml"}


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
    """Issue 13 §5 'Measure': every example but the sim-only one runs on two independent backends."""
    assert SIM_ONLY == ["transfer-16bit.toml"]
    assert QEMU_ONLY == []
    assert set(BOTH) | set(SIM_ONLY) | {FAILING} == set(EXAMPLES)
    assert len(BOTH) == 11  # + failing-expectation: 12 of the 13 examples run on sim and on qemu:
    assert runs_on(FAILING, URLS["intel"]) and runs_on(FAILING, URLS["qemu"])


@pytest.mark.parametrize("name", SIM_ONLY)
def test_simulator_device_examples_are_not_applicable_on_qemu(name: str):
    with pytest.raises(ScriptCapabilityError, match=r"lacks capability 'devices'"):
        check_capabilities(load_script(SCRIPTS / name), open_backend(URLS["qemu"]))


@pytest.mark.parametrize(("name", "need", "option"), [("floppy-read.toml", "fdc", "floppy=generate"),
                                                      ("sb16-single.toml", "sb16", "sb16=1")])
def test_a_device_example_needs_the_device_option(name: str, need: str, option: str):
    script = load_script(SCRIPTS / name)
    for scheme in ("qemu:", "sim"):
        with pytest.raises(ScriptCapabilityError, match=f"backend {scheme} lacks capability '{need}'"):
            check_capabilities(script, open_backend(scheme))
        check_capabilities(script, open_backend(f"{scheme.rstrip(':')}:?{option}"))


# --- runs --------------------------------------------------------------------------------------------


#: examples whose expectations are the datasheet's and which QEMU therefore fails (on purpose):
#: no memory-to-memory, decrement written forward, no 64 KiB wrap (docs/reference/8237.md §5)
FAILS_ON_QEMU = {"mem-to-mem.toml", "decrement-mode.toml", "page-wrap-64k.toml"}


@pytest.mark.parametrize("name", BOTH)
def test_runs_everywhere(name: str):
    need_qemu()
    for which in URLS:
        result = run(name, which)
        expected = "failed" if name in FAILS_ON_QEMU and which != "intel" else "passed"
        assert result.status == expected, (which, result.error, [(o.step, o.name, o.value, o.expect) for o in result.failures])
        assert result.error is None


def test_failing_expectation_fails_the_same_everywhere():
    need_qemu()
    for which in URLS:
        result = run(FAILING, which)
        assert result.status == "failed" and result.error is None
        assert [o.step for o in result.failures] == ["11"], which


@pytest.mark.parametrize("name", BOTH)
def test_qemu_profile_equals_qemu_exactly(name: str):
    """No deviation list: the qemu profile and QEMU agree on every observation but the timing
    samples a script marks may_differ."""
    need_qemu()
    report = diff([name], "simqemu", "qemu", None)
    assert report.errors == [] and report.counted == [], report.format()
    assert all(d.tolerated and d.tolerated.startswith("may_differ") for d in report.divergences), report.format()
    assert report.compared > 0


#: every example the simulator runs and compares (failing-expectation fails on purpose)
SIM_RUNNABLE = [n for n in EXAMPLES if n != FAILING and runs_on(n, "sim")]


def intel_vs_qemu(deviations: list | None) -> DiffReport:
    """The whole intel-vs-QEMU picture: sim vs qemu: for the examples both run, and sim vs
    sim:?profile=qemu for every example the simulator runs."""
    report = diff(BOTH, "intel", "qemu", deviations)
    other = diff(SIM_RUNNABLE, "intel", "simqemu", deviations)
    report.divergences += other.divergences
    report.errors += other.errors
    report.compared += other.compared
    return report


def test_intel_vs_qemu_divergences_are_all_known():
    need_qemu()
    deviations = load_deviations(DEVIATIONS)
    report = diff(BOTH, "intel", "qemu", deviations)
    assert report.errors == [] and report.counted == [], report.format()
    for name in BOTH:  # each of the other examples shows QEMU's differences, explained
        shown = [d for d in report.divergences if d.script == name.removesuffix(".toml") and d.tolerated
                 and d.tolerated.startswith("known deviation")]
        assert bool(shown) == (name not in SAME_EVERYWHERE | NARROWED), name


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
    qemu profile vs qemu: without any file: exit 0 as well (equal but for the timing samples);
    without the file the AT profile and QEMU diverge (exit 1)."""
    need_qemu()
    from hil.cli import main

    scripts = [str(SCRIPTS / n) for n in BOTH]
    junit = tmp_path / "diff.xml"
    code = main(["diff", *scripts, "-b", URLS["intel"], "-b", URLS["qemu"], "--deviations", str(DEVIATIONS),
                 "--junit", str(junit), "--journal-dir", str(tmp_path / "j1"), "--json"])
    assert code == 0 and junit.exists()
    code = main(["diff", *scripts, "-b", URLS["simqemu"], "-b", URLS["qemu"], "--journal-dir", str(tmp_path / "j2")])
    assert code == 0
    header = json.loads((tmp_path / "j2" / "backend2" / "floppy-read.jsonl").read_text().splitlines()[0])
    assert header["capabilities"]["backend"] == "qemu" and header["identity"].startswith("qemu 7.")
    assert {"fdc", "sb16", "irq"} <= set(header["capabilities"]["features"])
    assert main(["diff", str(SCRIPTS / "sb16-single.toml"), "-b", URLS["intel"], "-b", URLS["qemu"],
                 "--journal-dir", str(tmp_path / "j3")]) == 1
