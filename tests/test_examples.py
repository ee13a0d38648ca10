"""The example transfer scripts in configs/scripts/ and the intel-vs-qemu known-deviation list.

Every example drives a real device by its registers - the floppy controller (requires fdc) or the
Sound Blaster 16 (requires sb16) - or none at all; only transfer-16bit keeps the simulator's
abstract source (requires devices), since no device every backend has writes memory on a 16-bit
channel. They all run on the simulator with every device plugged in (``sim:?floppy=generate&sb16=1``,
the datasheet / Intel-chipset profile) and pass, except failing-expectation.toml, which fails on
purpose at one identified step. Run on both simulator profiles and compared in-process with
:func:`hil.diff.compare`, the examples may only differ where configs/deviations/intel-vs-qemu.toml
(or a step's may_differ) explains it; each example that demonstrates a QEMU deviation
(docs/reference/8237.md §5, docs/reference/qemu-qtest.md §8) must actually show one, and every
entry of the deviation list must be needed by some example. The runs on QEMU itself are in
tests/test_qemu_scripts.py, the runs over an agent in tests/test_agent_link.py.
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
from hil.runner import check_capabilities, run_script
from hil.script import load_script
from hil.script.loader import digest
from hil.script.model import ScriptCapabilityError

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "configs" / "scripts"
DEVIATIONS = ROOT / "configs" / "deviations" / "intel-vs-qemu.toml"
#: every device the examples drive, on both profiles (the README's `hil diff` lines use the same)
URLS = {"intel": "sim:?floppy=generate&sb16=1", "qemu": "sim:?profile=qemu&floppy=generate&sb16=1"}

EXAMPLES = sorted(p.name for p in SCRIPTS.glob("*.toml"))  # fragments/ is a subdirectory: not examples
FAILING = "failing-expectation.toml"
PASSING = [name for name in EXAMPLES if name != FAILING]

#: examples that demonstrate a behaviour QEMU's i8257 or devices do not share (docs/reference/8237.md §5)
DIFFERS_ON_QEMU = {
    "audio-ring-autoinit.toml",  # TC at the ring's wrap; the mask not readable at 0xDE
    "cascade-gating.toml",  # channel 4 / DMA2 disable do not gate channels 0-3: no FDC overrun
    "decrement-mode.toml",  # the sector written forward below the start address
    "mem-to-mem.toml",  # command 0x01 ignored, nothing copied; temporary register reads 0
    "page-wrap-64k.toml",  # linear addressing, no wrap inside the page
    "qemu-register-quirks.toml",  # mask readback ports, lone low-byte write, page file, 0x10-0x1F
    "sb16-autoinit.toml",  # no TC at the wrap
    "sb16-single.toml",  # the count wraps to base, no TC
    "transfer-16bit.toml",  # 16-bit page bit 0 OR-ed in
}
#: examples whose every observation is the same on both profiles
SAME_ON_QEMU = {"floppy-read.toml", "floppy-write.toml", "verify-mode.toml"}
#: the examples no real device can express: the simulator's abstract devices, refused elsewhere
SIM_ONLY = {"transfer-16bit.toml"}
#: controller-only: memory-to-memory involves no device at all (docs/reference/8237.md §3.8)
NO_DEVICE = {"mem-to-mem.toml", "qemu-register-quirks.toml"}
#: examples whose one difference a diff_mask entry narrows away (so nothing is left to tolerate)
NARROWED_ON_QEMU = {"sb16-autoinit.toml"}

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
def test_each_example_says_what_it_drives(name: str):
    """A data-moving example names the real device it drives (issue 13 §5); the abstract
    simulator devices are left to the sim-only ones, which say so."""
    script = load_script(SCRIPTS / name)
    ops = {step.op.value for step in script.steps}
    if name in SIM_ONLY:
        assert "devices" in script.requires and "SIMULATOR ONLY" in script.description
    else:
        assert "devices" not in script.requires and not ops & {"device", "dreq"}, name
    if ops & {"program"} and name not in SIM_ONLY | NO_DEVICE:
        assert {"fdc", "sb16"} & set(script.requires), f"{name} moves data: it needs a real device"
        assert "irq" in script.requires and "wait_irq" in ops, f"{name}: a driver waits for its device's IRQ"


@pytest.mark.parametrize("name", [n for n in EXAMPLES if n not in SIM_ONLY])
def test_a_device_example_is_skipped_where_the_device_is_missing(name: str):
    script = load_script(SCRIPTS / name)
    check_capabilities(script, open_backend(URLS["intel"]))
    for need, url in (("fdc", "sim:?sb16=1"), ("sb16", "sim:?floppy=generate")):
        if need in script.requires:
            with pytest.raises(ScriptCapabilityError, match=f"lacks capability '{need}'"):
                check_capabilities(script, open_backend(url))


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_has_a_description_citing_the_reference(name: str):
    script = load_script(SCRIPTS / name)
    assert script.name == name.removesuffix(".toml")
    assert "§" in script.description and (".md" in script.description), script.description


def test_a_fragment_is_included_with_path_labels():
    fragments = sorted((SCRIPTS / "fragments").glob("*.toml"))
    assert fragments
    used = set()
    for name in EXAMPLES:
        for step in load_script(SCRIPTS / name).steps:
            if ":" in step.path:
                used.add(Path(step.file).name)
    assert used == {p.name for p in fragments}, "every fragment is used by some example"
    paths = [s.path for s in load_script(SCRIPTS / "audio-ring-autoinit.toml").steps]
    assert "14[1].5:snd-dma-pointer.toml/3" in paths and "14[3].5:snd-dma-pointer.toml/5" in paths


# --- hil run on the default sim --------------------------------------------------------------


@pytest.mark.parametrize("name", PASSING)
def test_example_passes_on_sim(name: str):
    result = run(name, "intel")
    assert result.status == "passed", (result.error, [(o.step, o.name, o.value, o.expect) for o in result.failures])
    assert result.backend == URLS["intel"]
    assert any(o.ok for o in result.observations), "an example checks something"


def test_failing_expectation_fails_at_the_documented_step():
    result = run(FAILING, "intel")
    assert result.status == "failed"
    assert result.error is None
    [bad] = result.failures
    assert bad.step == "11" and "DELIBERATELY WRONG" in bad.name
    assert (bad.op, bad.port, bad.value, bad.expect) == ("in", 0x05, 0xFF, 0x00)  # count MSB after TC (§3.1)
    assert all(o.ok is not False for o in result.observations if o is not bad)
    assert "FAIL" in load_script(SCRIPTS / FAILING).description


def test_audio_ring_wraps_on_sim():
    """The 16-bit ring on the AT profile (docs/reference/8237.md §3.2): at each period's IRQ the ALSA
    pointer reads the residue exactly - half the ring left, then the whole ring again because
    the controller reloaded the base at TC, then half - and the two reads of each pointer call
    agree (the channel is masked between them). Four IRQs, one per period."""
    result = run("audio-ring-autoinit.toml", "intel")
    samples = [o.value for o in result.observations if o.op == "residue" and o.may_differ]
    assert len(samples) == 6 and samples[0::2] == samples[1::2]
    assert samples[0::2] == [2048, 4096, 2048], samples
    [irq] = [o for o in result.observations if o.op == "irq"]
    assert irq.count == 4 and irq.level is False


def test_sb16_count_falls_at_the_sample_rate_on_sim():
    """sb16-single on the AT profile: one byte per sample period at 8000 Hz, so 200 bytes per
    25 ms sample (docs/reference/devices.md §5 'Behaviour'), and TC at the block's end."""
    result = run("sb16-single.toml", "intel")
    samples = [o.value for o in result.observations if o.op == "residue" and o.may_differ]
    assert [a - b for a, b in pairwise(samples)] == [200, 200], samples
    [after] = [o for o in result.observations if o.step == "24"]
    assert after.value == 0  # count 0xFFFF after TC (docs/reference/8237.md §3.1)


def test_cascade_gating_starves_the_floppy_controller_on_sim():
    """cascade-gating on the AT profile: with channel 4 masked, and again with DMA2 disabled, the
    FDC's requests go unserved and it ends READ DATA with an overrun (ST0 0x40, ST1 OR 0x10,
    docs/reference/devices.md §2.3, §2.4), nothing moved; enabled, the read completes."""
    result = run("cascade-gating.toml", "intel")
    by_step = {o.step: o for o in result.observations}
    for part in ("13", "26"):
        assert by_step[f"{part}[1].1"].value == 0x40 and by_step[f"{part}[2].1"].value == 0x10
    assert by_step["10"].value == 512 and by_step["23"].value == 512  # residue: the whole sector
    eight_filler = digest(b"\xee" * 8)
    assert by_step["15"].digest == by_step["28"].digest == eight_filler
    assert result.status == "passed"


# --- hil diff sim vs sim:?profile=qemu with the known-deviation list ----------------------------


@pytest.mark.parametrize("name", PASSING)
def test_intel_vs_qemu_divergences_are_all_tolerated(name: str):
    report = diff([name], load_deviations(DEVIATIONS))
    assert report.errors == []
    assert report.counted == [], report.format()
    assert report.exit_code == 0
    if name in NARROWED_ON_QEMU:  # only the timing samples are left
        assert all(d.tolerated and d.tolerated.startswith("may_differ") for d in report.divergences), report.format()
    elif name in DIFFERS_ON_QEMU:
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
