"""The example transfer scripts in configs/scripts/ and the intel-vs-qemu known-deviation list.

Every example runs green on the default ``sim`` backend (the datasheet / Intel-chipset profile),
except failing-expectation.toml, which fails on purpose at one identified step. Run on both
simulator profiles and compared in-process with :func:`hil.diff.compare`, the examples may only
differ where configs/deviations/intel-vs-qemu.toml (or a step's may_differ) explains it; each
example that demonstrates a QEMU deviation (docs/reference/8237.md §5, docs/reference/qemu-qtest.md §8) must actually show one,
and every entry of the deviation list must be needed by some example.
"""

from __future__ import annotations

import asyncio
import functools
from itertools import pairwise
from pathlib import Path

import pytest

from hil.backends import open_backend
from hil.diff import DiffReport, compare, load_deviations
from hil.journal import RunResult
from hil.runner import run_script
from hil.script import load_script
from hil.script.loader import digest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "configs" / "scripts"
DEVIATIONS = ROOT / "configs" / "deviations" / "intel-vs-qemu.toml"
URLS = {"intel": "sim", "qemu": "sim:?profile=qemu"}

# qemu-*: tests/test_qemu_scripts.py; fragments/ is a subdirectory: not examples
EXAMPLES = sorted(p.name for p in SCRIPTS.glob("*.toml") if not p.name.startswith("qemu-"))
FAILING = "failing-expectation.toml"
PASSING = [name for name in EXAMPLES if name != FAILING]

#: examples that demonstrate a behaviour QEMU's i8257 does not share (docs/reference/8237.md §5)
DIFFERS_ON_QEMU = {
    "audio-ring-autoinit.toml",  # no autoinit reload; mask not readable at 0xDE
    "cascade-gating.toml",  # channel 4 / DMA2 disable do not gate channels 0-3
    "decrement-mode.toml",  # data written forward below the start address
    "mem-to-mem.toml",  # command 0x01 ignored, nothing copied; temporary register reads 0
    "page-wrap-64k.toml",  # linear addressing, no wrap inside the page
    "transfer-16bit.toml",  # 16-bit page bit 0 OR-ed in
}
#: examples whose every observation is the same on both profiles
SAME_ON_QEMU = {"floppy-read.toml", "verify-mode.toml"}

REQUIRED = {FAILING, *DIFFERS_ON_QEMU, *SAME_ON_QEMU}


@functools.cache
def run(name: str, profile: str) -> RunResult:
    """Run one example on one simulator profile (cached: runs are deterministic, virtual time)."""

    async def go() -> RunResult:
        script = load_script(SCRIPTS / name)
        async with open_backend(URLS[profile]) as be:
            return await run_script(script, be)

    return asyncio.run(go())


def diff(names: list[str], deviations: list | None) -> DiffReport:
    report = DiffReport(backends=list(URLS.values()))
    for name in names:
        compare([run(name, "intel"), run(name, "qemu")], deviations, report)
    return report


# --- the set of examples ---------------------------------------------------------------------


def test_every_required_example_exists():
    assert REQUIRED <= set(EXAMPLES), f"missing: {sorted(REQUIRED - set(EXAMPLES))}"
    assert set(EXAMPLES) == REQUIRED, "a new example: classify it in DIFFERS_ON_QEMU or SAME_ON_QEMU"


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_has_a_description_citing_the_reference(name: str):
    script = load_script(SCRIPTS / name)
    assert script.name == name.removesuffix(".toml")
    assert "§" in script.description and (".md" in script.description), script.description


def test_a_fragment_is_included_with_path_labels():
    fragments = sorted(p for p in (SCRIPTS / "fragments").glob("*.toml") if not p.name.startswith("qemu-"))
    assert fragments
    used = set()
    for name in EXAMPLES:
        for step in load_script(SCRIPTS / name).steps:
            if ":" in step.path:
                used.add(Path(step.file).name)
    assert used == {p.name for p in fragments}, "every fragment is used by some example"
    paths = [s.path for s in load_script(SCRIPTS / "audio-ring-autoinit.toml").steps]
    assert "7[1].2:snd-dma-pointer.toml/3" in paths and "7[4].2:snd-dma-pointer.toml/5" in paths


# --- hil run on the default sim --------------------------------------------------------------


@pytest.mark.parametrize("name", PASSING)
def test_example_passes_on_sim(name: str):
    result = run(name, "intel")
    assert result.status == "passed", (result.error, [(o.step, o.name, o.value, o.expect) for o in result.failures])
    assert result.backend == "sim"
    assert any(o.ok for o in result.observations), "an example checks something"


def test_failing_expectation_fails_at_the_documented_step():
    result = run(FAILING, "intel")
    assert result.status == "failed"
    assert result.error is None
    [bad] = result.failures
    assert bad.step == "7" and "DELIBERATELY WRONG" in bad.name
    assert (bad.op, bad.port, bad.value, bad.expect) == ("in", 0x05, 0xFF, 0x00)  # count MSB after TC (§3.1)
    assert all(o.ok is not False for o in result.observations if o is not bad)
    assert "FAIL" in load_script(SCRIPTS / FAILING).description


def test_audio_ring_wraps_on_sim():
    """The sink saw 1.5 rings, i.e. the ring wrapped once (docs/reference/8237.md §3.2), and memory -> I/O left
    the ring as it was; the pointer samples went down and came back up after the wrap."""
    result = run("audio-ring-autoinit.toml", "intel")
    [sink] = [o for o in result.observations if o.step == "end.device5"]
    assert sink.tc and sink.length == 6144
    pattern = bytes.fromhex("00112233445566778899aabbccddeeff")
    ring = pattern * (4096 // 16)
    assert sink.digest == digest(ring + ring[:2048])  # > 4096 bytes: recorded as a digest only
    samples = [o.value for o in result.observations if o.op == "residue" and o.may_differ]
    assert len(samples) == 8 and samples[0::2] == samples[1::2]  # the two reads while masked agree
    firsts = samples[0::2]
    assert all(0 < s <= 4096 for s in firsts)
    assert any(b > a for a, b in pairwise(firsts)), f"no wrap seen in the pointer samples {firsts}"


# --- hil diff sim vs sim:?profile=qemu with the known-deviation list ----------------------------


@pytest.mark.parametrize("name", PASSING)
def test_intel_vs_qemu_divergences_are_all_tolerated(name: str):
    report = diff([name], load_deviations(DEVIATIONS))
    assert report.errors == []
    assert report.counted == [], report.format()
    assert report.exit_code == 0
    if name in DIFFERS_ON_QEMU:
        tolerated = [d for d in report.divergences if d.tolerated and d.tolerated.startswith("known deviation")]
        assert tolerated, f"{name} is meant to show a QEMU deviation but showed none"
    else:
        assert report.divergences == [], report.format()


@pytest.mark.parametrize("name", sorted(DIFFERS_ON_QEMU))
def test_without_the_list_the_profiles_diverge(name: str):
    report = diff([name], None)
    assert report.counted, f"{name}: the profiles agree, so the deviation entries for it are dead"
    assert report.exit_code == 1


def test_every_deviation_entry_is_needed():
    deviations = load_deviations(DEVIATIONS)
    names = [d.name for d in deviations]
    assert len(names) == len(set(names))
    for d in deviations:
        if d.script.startswith("qemu-"):
            continue  # needed by the runs on real QEMU: tests/test_qemu_scripts.py checks those
        assert d.between == ("intel", "qemu")
        assert d.reason and ("docs/reference/8237.md" in d.reference or "docs/reference/qemu-qtest.md" in d.reference), d.name
        others = [x for x in deviations if x is not d]
        report = diff(PASSING, others)
        assert report.counted, f"deviation {d.name} tolerates nothing the examples show"


def test_the_whole_set_compares_clean():
    """What `hil diff configs/scripts/*.toml` (without failing-expectation) reports, in-process."""
    report = diff(PASSING, load_deviations(DEVIATIONS))
    assert report.exit_code == 0, report.format()
    assert "EQUAL" in report.format().splitlines()[-1]
    assert any(d.tolerated and d.tolerated.startswith("may_differ") for d in report.divergences)


def test_the_format_reference_covers_every_op_key_and_constant():
    """docs/scripts.md is the full reference: every op, every key of every op, every constant."""
    from hil.script.loader import COMMON_KEYS, CONSTANTS
    from hil.script.steps import KINDS, allowed_keys

    text = (ROOT / "docs" / "scripts.md").read_text(encoding="utf-8")
    for op, cls in KINDS.items():
        assert f"### `{op.value}`" in text or f"`{op.value}` " in text, op.value
        for key in allowed_keys(cls):
            if key not in ("addr", "buffer", "offset", "hex", "pattern", "text", "file"):
                assert f"`{key}`" in text, f"{op.value}.{key}"
    for key in ("addr", "buffer", "offset", "hex", "pattern", "text", "file", *COMMON_KEYS):
        assert f"`{key}`" in text, key
    for name in CONSTANTS:
        assert f"`{name}`" in text, name
    for record in ("`header`", "`obs`", "`end`"):
        assert record in text
