"""The qemu-sb16-* examples on the simulator's Sound Blaster 16 (``sim:?sb16=1``, hil/sim/sb16.py)
and on QEMU's (``qemu:?sb16=1``), compared with ``hil diff``.

* ``sim:?profile=qemu&sb16=1`` vs ``qemu:?sb16=1``: no deviation list at all; the only differences
  allowed are the residue samples and IRQ-acknowledge reads the scripts mark may_differ (QEMU plays
  in wall time, the simulator in virtual time: docs/reference/qemu-qtest.md §7).
* ``sim:?sb16=1`` (the AT profile) vs ``qemu:?sb16=1``: only the sb16-* entries of
  configs/deviations/intel-vs-qemu.toml, each of them needed. The scripts' expectations are
  QEMU's, so on the AT profile they fail exactly at the steps those entries explain.
"""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path

import pytest

from hil.backends import open_backend
from hil.diff import DiffReport, compare, load_deviations
from hil.journal import RunResult
from hil.runner import run_script
from hil.script import load_script
from hil.testing import require

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "configs" / "scripts"
DEVIATIONS = ROOT / "configs" / "deviations" / "intel-vs-qemu.toml"
URLS = {"intel": "sim:?sb16=1", "simqemu": "sim:?profile=qemu&sb16=1", "qemu": "qemu:?sb16=1"}
EXAMPLES = sorted(p.name for p in SCRIPTS.glob("qemu-sb16-*.toml"))
#: steps whose expectation is QEMU's and which the AT profile therefore fails (the deviations)
FAILS_ON_INTEL = {
    "qemu-sb16-single.toml": {"19", "20"},  # count 0xFFFF and TC at the block's end
    "qemu-sb16-autoinit.toml": {*(f"18[{i}].3" for i in range(1, 11)), "22"},  # DREQ per sample; TC at the wrap
}


def need_qemu() -> None:
    from hil.backends.qemu import qemu_available

    ok, why = qemu_available()
    require(ok, "qemu-system-x86_64 (QEMU 7.2 or later)", why)


@functools.cache
def run(name: str, which: str) -> RunResult:
    async def go() -> RunResult:
        async with open_backend(URLS[which]) as be:
            return await run_script(load_script(SCRIPTS / name), be)

    return asyncio.run(go())


def diff(a: str, b: str, deviations: list | None) -> DiffReport:
    report = DiffReport(backends=[URLS[a], URLS[b]])
    for name in EXAMPLES:
        compare([run(name, a), run(name, b)], deviations, report)
    return report


def test_both_examples_are_here():
    assert EXAMPLES == ["qemu-sb16-autoinit.toml", "qemu-sb16-single.toml"]


@pytest.mark.parametrize("name", EXAMPLES)
def test_qemu_profile_passes_the_qemu_expectations(name: str):
    result = run(name, "simqemu")
    assert result.status == "passed", [(o.step, o.name, o.value, o.expect) for o in result.failures]
    assert result.error is None


@pytest.mark.parametrize("name", EXAMPLES)
def test_intel_profile_fails_only_where_qemu_differs(name: str):
    result = run(name, "intel")
    assert result.error is None and result.status == "failed"
    assert {o.step for o in result.failures} == FAILS_ON_INTEL[name]


def test_qemu_profile_equals_qemu_but_for_timing():
    need_qemu()
    report = diff("simqemu", "qemu", None)
    assert report.errors == [] and report.counted == [], report.format()
    assert report.compared > 0
    assert all(d.tolerated and d.tolerated.startswith("may_differ") for d in report.divergences)


def test_intel_vs_qemu_only_documented_deviations_each_needed():
    need_qemu()
    deviations = load_deviations(DEVIATIONS)
    report = diff("intel", "qemu", deviations)
    assert report.errors == [] and report.counted == [], report.format()
    sb16 = [d for d in deviations if d.name.startswith("sb16-")]
    assert len(sb16) == 4
    for d in sb16:
        others = [x for x in deviations if x is not d]
        assert diff("intel", "qemu", others).counted, f"{d.name} tolerates nothing"


def test_hil_diff_on_the_command_line(tmp_path: Path):
    """`hil diff` with worker processes: the qemu profile vs qemu: equal without any file; the AT
    profile vs qemu: equal with the deviations file, different (exit 1) without it."""
    need_qemu()
    from hil.cli import main

    scripts = [str(SCRIPTS / n) for n in EXAMPLES]
    assert main(["diff", *scripts, "-b", URLS["simqemu"], "-b", URLS["qemu"], "--journal-dir", str(tmp_path / "a")]) == 0
    assert main(["diff", *scripts, "-b", URLS["intel"], "-b", URLS["qemu"], "--deviations", str(DEVIATIONS),
                 "--journal-dir", str(tmp_path / "b")]) == 0
    assert main(["diff", *scripts, "-b", URLS["intel"], "-b", URLS["simqemu"], "--journal-dir", str(tmp_path / "c")]) == 1
