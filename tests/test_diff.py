"""Comparing runs step by step (hil.diff): divergences, decoded meanings, tolerances,
known-deviation lists, reports (human, JSON, JUnit XML) and exit codes.

Real runs use two simulator profiles: reading the DMA mask register (``dma1.all_mask``) gives the
mask on ``sim`` (Intel chipsets make it readable, docs/reference/8237.md §2.9) and 0 on ``sim:?profile=qemu``.
Other cases are built from observations directly.
"""

from __future__ import annotations

import json
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from hil.backends import open_backend
from hil.diff import DeviationFileError, DiffReport, compare, load_deviations
from hil.journal import DeviceObs, ErrorObs, InObs, Observation, ReadObs, ResidueObs, RunResult, WaitTcObs
from hil.runner import run_script
from hil.script import load_script

SIM, QEMU = "sim", "sim:?profile=qemu"


def write(tmp_path: Path, body: str, name: str = "masks") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(f'[script]\nname = "{name}"\n' + textwrap.dedent(body), encoding="utf-8")
    return path


async def run(url: str, path: Path, **variables: int) -> RunResult:
    async with open_backend(url) as be:
        return await run_script(load_script(path, variables=variables), be)


def deviations(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "known.toml"
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


MASKS = """
    [vars]
    dmask = 0xFF
    [[step]]
    op = "in"
    port = "dma1.status"
    [[step]]
    op = "in"
    port = "dma1.all_mask"
    diff_mask = "dmask"
    [[step]]
    op = "in"
    port = "dma2.all_mask"
    [[step]]
    op = "in"
    port = "ch2.page"
"""


# --- real runs on two profiles ------------------------------------------------------------------------


async def test_equal_runs(tmp_path: Path) -> None:
    path = write(tmp_path, MASKS)
    a, b = await run(SIM, path), await run("sim:?profile=intel", path)
    report = compare([a, b])
    assert report.divergences == [] and report.errors == []
    assert report.compared == 4 and report.scripts == ["masks"]
    assert report.exit_code == 0
    assert report.format().splitlines()[-1].startswith("EQUAL: 1 script(s) on 2 backends (sim, sim:?profile=intel)")


async def test_mask_readback_differs_between_profiles(tmp_path: Path) -> None:
    path = write(tmp_path, MASKS)
    report = compare([await run(SIM, path), await run(QEMU, path)])
    assert report.exit_code == 1 and report.errors == []
    assert [(d.step, d.op) for d in report.divergences] == [("2", "in"), ("3", "in")]
    d1, d2 = report.divergences
    assert d1.script == "masks" and d1.what == "in 0x0F (DMA1 mask)"
    assert d1.values == {SIM: "0x0F", QEMU: "0x00"}
    assert d1.meaning == f"mask readback: masked channels 0,1,2,3 on {SIM}, none on {QEMU} (0x0F vs 0x00)"
    assert d2.what == "in 0xDE (DMA2 mask)" and d2.values == {SIM: "0x0E", QEMU: "0x00"}
    assert "masked channels 5,6,7 on sim" in d2.meaning
    assert d1.tolerated is None and len(report.counted) == 2
    text = report.format()
    assert f"masks: step 2 in 0x0F (DMA1 mask): {SIM}=0x0F, {QEMU}=0x00" in text
    assert text.splitlines()[-1].startswith("DIVERGED:") and "2 divergence(s), 0 tolerated" in text


async def test_diff_mask_from_the_script(tmp_path: Path) -> None:
    path = write(tmp_path, MASKS)
    # only bit 4..7 of step 2 are compared: both profiles read them as 0
    report = compare([await run(SIM, path, dmask=0xF0), await run(QEMU, path, dmask=0xF0)])
    assert [d.step for d in report.divergences] == ["3"]
    # a mask that keeps a differing bit still reports, decoded under the mask
    report = compare([await run(SIM, path, dmask=0x04), await run(QEMU, path, dmask=0x04)])
    d = report.divergences[0]
    assert d.step == "2" and "masked channels 2 on sim, none on" in d.meaning and "(0x04 vs 0x00)" in d.meaning


async def test_may_differ_is_reported_but_not_counted(tmp_path: Path) -> None:
    path = write(tmp_path, """
        [[step]]
        op = "in"
        port = "dma1.all_mask"
        may_differ = true
        note = "timing-dependent"
        [[step]]
        op = "in"
        port = "dma1.status"
    """)
    report = compare([await run(SIM, path), await run(QEMU, path)])
    (d,) = report.divergences
    assert d.step == "1" and d.tolerated == "may_differ (timing-dependent)"
    assert report.counted == [] and report.exit_code == 0
    assert "(tolerated: may_differ (timing-dependent))" in report.format()
    assert report.format().splitlines()[-1].startswith("EQUAL:") and "0 divergence(s), 1 tolerated" in report.format()


async def test_known_deviations_match_by_profile_tags(tmp_path: Path) -> None:
    path = write(tmp_path, MASKS)
    runs = [await run(SIM, path), await run(QEMU, path)]
    known = load_deviations(deviations(tmp_path, """
        [[deviation]]
        name = "qemu-mask-unreadable"
        between = ["qemu", "intel"]
        op = "in"
        port = "dma1.all_mask"
        reason = "QEMU reads 0 at the write-all-mask port"
        reference = "docs/reference/8237.md §2.9"

        [[deviation]]
        name = "other-pair"
        between = ["intel", "vmware"]
        reason = "does not apply to these two"
    """))
    report = compare(runs, known)
    tolerated = {d.step: d.tolerated for d in report.divergences}
    assert tolerated == {
        "2": "known deviation qemu-mask-unreadable: QEMU reads 0 at the write-all-mask port [docs/reference/8237.md §2.9]",
        "3": None,  # the DMA2 mask is another port: still counted
    }
    assert report.exit_code == 1
    # the same list matches in either order of the pair
    assert {d.step: d.tolerated is not None for d in compare(runs[::-1], known).divergences} == {"2": True, "3": False}
    # ... and a pair that the list does not name is not excused
    other = runs[0], RunResult(runs[1].script, runs[1].file, "agent+tcp://bench", "",
                               {"backend": "agent+tcp"}, runs[1].observations, "passed")
    assert all(d.tolerated is None for d in compare(list(other), known).divergences)


async def test_known_deviation_globs_and_diff_mask(tmp_path: Path) -> None:
    path = write(tmp_path, MASKS)
    runs = [await run(SIM, path), await run(QEMU, path)]
    masked = load_deviations(deviations(tmp_path, """
        [[deviation]]
        name = "ignore-all-mask"
        between = ["sim:intel", "sim:qemu"]
        script = "mas*"
        step = "[23]"
        diff_mask = 0x00
        reason = "compare nothing of these bytes"
    """))
    assert compare(runs, masked).divergences == []
    partly = load_deviations(deviations(tmp_path, """
        [[deviation]]
        name = "low-bit-only"
        between = ["intel", "qemu"]
        step = "2"
        diff_mask = 0x01
        reason = "only channel 0 must agree"
    """))
    d = compare(runs, partly).divergences
    assert [(x.step, x.tolerated) for x in d] == [("2", None), ("3", None)]
    assert "masked channels 0 on sim, none" in d[0].meaning
    wrong_script = load_deviations(deviations(tmp_path, """
        [[deviation]]
        name = "n"
        between = ["intel", "qemu"]
        script = "floppy-*"
        reason = "r"
    """))
    assert len(compare(runs, wrong_script).counted) == 2


def test_run_tags() -> None:
    intel = RunResult("s", "f", SIM, capabilities={"backend": "sim", "details": {"profile": "intel"}})
    qemu = RunResult("s", "f", QEMU, capabilities={"backend": "sim", "details": {"profile": "qemu"}})
    assert intel.tags == {"sim", "intel", "sim:intel"}
    assert qemu.tags == {QEMU, "sim", "qemu", "sim:qemu"}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('[[deviation]]\nname = "n"\nbetween = ["a", "b"]\n', "deviation 1: missing required key 'reason'"),
        ('[[deviation]]\nname = "n"\nbetween = ["a"]\nreason = "r"\n', "key 'between' must be two backend labels"),
        ('[[deviation]]\nname = "n"\nbetween = ["a", "b"]\nreason = "r"\nprot = 8\n', "unknown key 'prot'"),
        ('[[deviation]]\nname = "n"\nbetween = ["a", "b"]\nreason = "r"\nport = "dma9.status"\n',
         "unknown register name 'dma9.status'"),
        ('[[deviation]]\nname = "n"\nbetween = ["a", "b"]\nreason = "r"\ndiff_mask = "0x0F"\n',
         "key 'diff_mask' must be an integer"),
        ('[[deviation]\n', "not valid TOML"),
        ("deviation = 3\n", "deviation"),
    ],
)
def test_deviation_file_errors(tmp_path: Path, body: str, expected: str) -> None:
    path = deviations(tmp_path, body)
    with pytest.raises((DeviationFileError, TypeError)) as info:
        load_deviations(path)
    assert isinstance(info.value, DeviationFileError), f"{type(info.value).__name__}: {info.value}"
    assert str(path) in str(info.value) and expected in str(info.value)


def test_deviation_file_missing(tmp_path: Path) -> None:
    with pytest.raises(DeviationFileError, match="known-deviations file not found"):
        load_deviations(tmp_path / "none.toml")


def test_deviation_port_by_number_or_name(tmp_path: Path) -> None:
    (a, b) = load_deviations(deviations(tmp_path, """
        [[deviation]]
        name = "a"
        between = ["x", "y"]
        port = "dma2.status"
        reason = "r"
        [[deviation]]
        name = "b"
        between = ["x", "y"]
        port = 0x08
        reason = "r"
    """))
    assert (a.port, b.port, a.step, a.script, a.op) == (0xD0, 0x08, "*", "*", "*")


# --- decoded meanings, from observations -------------------------------------------------------------


def pair(obs_a: Observation, obs_b: Observation, la: str = "sim", lb: str = "qemu") -> DiffReport:
    a = RunResult("s", "s.toml", la, observations=[obs_a], status="passed")
    b = RunResult("s", "s.toml", lb, observations=[obs_b], status="passed")
    return compare([a, b])


def one(obs_a: Observation, obs_b: Observation) -> str:
    (d,) = pair(obs_a, obs_b).divergences
    return d.meaning


def test_status_meaning() -> None:
    assert one(InObs("4", port=0x08, value=0x04), InObs("4", port=0x08, value=0x00)) == (
        "status: TC2 set on sim, clear on qemu")
    # DMA2: channel numbers start at 4; TC and request bits both decoded
    meaning = one(InObs("4", port=0xD0, value=0x21), InObs("4", port=0xD0, value=0x08))
    assert meaning == "status: TC4 set on sim, clear on qemu; TC7 set on qemu, clear on sim; request5 set on sim, clear on qemu"
    d = pair(InObs("4", port=0x08, value=0x04), InObs("4", port=0x08, value=0x00)).divergences[0]
    assert d.what == "in 0x08 (DMA1 status)" and d.values == {"sim": "0x04", "qemu": "0x00"}


def test_other_register_meanings() -> None:
    assert one(InObs("1", port=0x04, value=0x12), InObs("1", port=0x04, value=0x34)) == (
        "channel 2 current address byte differs: 0x12 on sim, 0x34 on qemu (the flip-flop picks low/high byte)")
    assert "channel 5 current count" in one(InObs("1", port=0xC6, value=1),
                                            InObs("1", port=0xC6, value=2))
    assert one(InObs("1", port=0x81, value=1), InObs("1", port=0x81, value=2)) == (
        "page register byte: 0x01 on sim, 0x02 on qemu")
    assert one(InObs("1", port=0x3F8, value=1), InObs("1", port=0x3F8, value=2)) == (
        "0x1 on sim, 0x2 on qemu")
    assert one(ResidueObs("1", channel=2, value=0), ResidueObs("1", channel=2, value=12)) == (
        "channel 2 residue 0 bytes on sim, 12 on qemu")
    assert one(WaitTcObs("1", channel=1, tc=False, value=8),
               WaitTcObs("1", channel=1, tc=True, value=0)) == (
        "channel 1 reached terminal count on qemu, not on sim")


def test_read_meaning_finds_the_first_differing_byte() -> None:
    a = ReadObs("5", addr=0x10000, length=4, data="00112233", digest="sha256:a")
    b = ReadObs("5", addr=0x10000, length=4, data="00112299", digest="sha256:b")
    d = pair(a, b).divergences[0]
    assert d.what == "read 0x10000+4"
    assert d.meaning == "1 byte(s) differ, first at offset 3 (0x10003): 0x33 on sim, 0x99 on qemu"
    # digests only: the contents differ, no more is known
    a.data = b.data = None
    assert pair(a, b).divergences[0].meaning == "contents differ (digests sha256:a vs sha256:b)"
    # same digest: equal, whatever else was recorded
    assert pair(ReadObs("5", digest="sha256:x", data="00"),
                ReadObs("5", digest="sha256:x")).divergences == []


def test_device_end_observations_compared() -> None:
    a = DeviceObs("end.device3", channel=3, length=8, value=0, tc=False, data="00" * 8, digest="sha256:a")
    b = DeviceObs("end.device3", channel=3, length=8, value=0, tc=False, data="00" * 7 + "01",
                    digest="sha256:b")
    d = pair(a, b).divergences[0]
    assert d.what == "device on channel 3 at end of run" and "first at offset 7" in d.meaning
    same = DeviceObs("end.device2", channel=2, length=512, value=0, tc=True)
    assert pair(same, DeviceObs("end.device2", channel=2, length=512, value=0, tc=True)).divergences == []
    assert len(pair(same, DeviceObs("end.device2", channel=2, length=500, value=12, tc=True)).divergences) == 1


def test_observed_on_one_side_only() -> None:
    a = RunResult("s", "s.toml", "x", observations=[InObs("1", port=8, value=0),
                                                    DeviceObs("end.device2", channel=2, length=1, value=0)],
                  status="passed")
    b = RunResult("s", "s.toml", "y", observations=[InObs("1", port=8, value=0)], status="passed")
    report = compare([a, b])
    (d,) = report.divergences
    assert d.step == "end.device2" and d.values == {"x": "0", "y": "(missing)"} and d.meaning == "observed on x only"
    assert report.exit_code == 1


# --- a run that errored, or was cut short -------------------------------------------------------------


def _runs_with_error() -> tuple[RunResult, RunResult]:
    good = RunResult("s", "s.toml", "sim", observations=[
        InObs("1", 0, port=8, value=0),
        ReadObs("2", 1, addr=0x10000, length=2, data="0000", digest="sha256:z"),
        InObs("3", 2, port=8, value=4),
        DeviceObs("end.device2", channel=2, length=2, tc=True),
    ], status="passed")
    bad = RunResult("s", "s.toml", "qemu", observations=[
        InObs("1", 0, port=8, value=0),
        ErrorObs("2", 1, failed_op="read", message="memory access 0x10000+0x2 is outside physical memory", ok=False),
    ], status="error", error="step 2 (read): memory access 0x10000+0x2 is outside physical memory")
    return good, bad


@pytest.mark.parametrize("order", ["reference-ok", "reference-errored"])
def test_missing_observations_after_an_error(order: str) -> None:
    good, bad = _runs_with_error()
    runs = [good, bad] if order == "reference-ok" else [bad, good]
    report = compare(runs)
    assert report.errors == ["s on qemu: step 2 (read): memory access 0x10000+0x2 is outside physical memory"]
    # the failing step itself is a divergence; what the stopped run never reached is not
    (d,) = report.divergences
    assert d.step == "2" and d.what == "read 0x10000+2"
    assert d.values["qemu"].startswith("error: memory access") and d.values["sim"].startswith("sha256:z")
    assert d.meaning.startswith("the step failed on qemu (memory access")
    assert report.exit_code == 2
    assert report.format().splitlines()[-1].startswith("ERROR:")


def test_both_failed_the_same_step() -> None:
    _, bad = _runs_with_error()
    report = compare([bad, RunResult("s", "s.toml", "other", observations=bad.observations, status="error",
                                     error=bad.error)])
    assert report.divergences == [] and len(report.errors) == 2 and report.exit_code == 2


def test_interrupted_journal_is_an_error_not_a_list_of_missing_steps() -> None:
    good, _ = _runs_with_error()
    cut = RunResult("s", "s.toml", "qemu", observations=good.observations[:1], status="running")
    report = compare([good, cut])
    assert report.errors == ["s on qemu: journal ends before the run did (interrupted)"]
    assert report.divergences == [] and report.exit_code == 2


def test_same_backend_twice_and_three_backends() -> None:
    o = InObs("1", port=0x0F, value=0x0F)
    runs = [RunResult("s", "f", "sim", observations=[o], status="passed") for _ in range(2)]
    report = compare(runs)
    assert report.backends == ["sim#1", "sim#2"] and report.exit_code == 0
    third = RunResult("s", "f", "qemu", observations=[InObs("1", port=0x0F, value=0)], status="passed")
    report = compare([*runs, third])
    assert report.compared == 2
    (d,) = report.divergences
    assert d.values == {"sim#1": "0x0F", "qemu#3": "0x00"}  # one duplicate URL numbers them all


def test_several_scripts_in_one_report() -> None:
    report = DiffReport(backends=["a", "b"])
    for name, va in (("one", 1), ("two", 2)):
        runs = [RunResult(name, f"{name}.toml", lab, observations=[InObs("1", port=8, value=v)],
                          status="passed") for lab, v in (("a", va), ("b", 1))]
        compare(runs, None, report)
    assert report.scripts == ["one", "two"] and report.compared == 2
    assert [d.script for d in report.divergences] == ["two"]


# --- JSON and JUnit ------------------------------------------------------------------------------------


async def test_json_and_junit_reports(tmp_path: Path) -> None:
    path = write(tmp_path, MASKS)
    equal = write(tmp_path, '[[step]]\nop = "in"\nport = "dma1.status"\n', name="status")
    known = load_deviations(deviations(tmp_path, """
        [[deviation]]
        name = "dma2-mask"
        between = ["intel", "qemu"]
        port = "dma2.all_mask"
        reason = "QEMU <mask> & \\"quotes\\""
    """))
    report = DiffReport(backends=[SIM, QEMU])
    compare([await run(SIM, path), await run(QEMU, path)], known, report)
    compare([await run(SIM, equal), await run(QEMU, equal)], known, report)
    good, bad = _runs_with_error()
    compare([good, bad], None, report)

    data = json.loads(json.dumps(report.to_json()))
    assert data["backends"] == [SIM, QEMU] and data["scripts"] == ["masks", "status", "s"]
    assert data["exit_code"] == 2 and len(data["errors"]) == 1
    divs = {(d["script"], d["step"]): d for d in data["divergences"]}
    assert set(divs) == {("masks", "2"), ("masks", "3"), ("s", "2")}
    assert divs[("masks", "2")]["values"] == {SIM: "0x0F", QEMU: "0x00"} and "tolerated" not in divs[("masks", "2")]
    assert divs[("masks", "3")]["tolerated"].startswith("known deviation dma2-mask")
    assert divs[("masks", "2")]["meaning"].startswith("mask readback")

    root = ET.fromstring(report.to_junit())
    assert root.tag == "testsuites"
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert set(suites) == {"masks", "status", "s", "errors"}
    masks = suites["masks"]
    assert (masks.get("tests"), masks.get("failures"), masks.get("errors")) == ("2", "1", "0")
    assert masks.find("properties/property").get("value") == f"{SIM} {QEMU}"
    cases = {c.get("name"): c for c in masks.findall("testcase")}
    failed = cases["step 2 in 0x0F (DMA1 mask)"]
    assert failed.get("classname") == "masks"
    assert failed.find("failure").get("message").startswith("mask readback")
    assert f"{SIM}=0x0F, {QEMU}=0x00" in failed.find("failure").text
    skipped = cases["step 3 in 0xDE (DMA2 mask)"].find("skipped")
    assert skipped is not None and 'QEMU <mask> & "quotes"' in skipped.get("message")
    status = suites["status"]
    assert status.get("failures") == "0" and [c.get("name") for c in status.findall("testcase")] == ["all steps equal"]
    err = suites["errors"].find("testcase/error")
    assert err is not None and "outside physical memory" in err.get("message")


def test_empty_compare() -> None:
    report = compare([])
    assert report.exit_code == 0 and report.compared == 0
    ET.fromstring(report.to_junit())


def test_long_sink_contents_report_their_lengths():
    """Without recorded bytes (over 4 KiB) a device divergence still says how many bytes each side got."""
    from hil.diff import compare
    from hil.journal import DeviceObs, RunResult

    def run(url: str, length: int, digest: str) -> RunResult:
        r = RunResult("s", "s.toml", url, status="passed")
        r.observations.append(DeviceObs("end.device5", channel=5, length=length, digest=digest, value=0, tc=True))
        return r

    report = compare([run("sim", 6144, "sha256:aa"), run("sim:?profile=qemu", 4096, "sha256:bb")])
    (d,) = report.divergences
    assert "lengths differ: 6144 bytes on sim, 4096 on sim:?profile=qemu" in d.meaning


# --- issue 10: step names, whole digests, skipped and interrupted runs ----------------------------


def test_divergences_name_the_step_as_hil_run_does() -> None:
    a = InObs("7", 6, "mask readback", port=0x0F, value=0x0F)
    b = InObs("7", 6, "mask readback", port=0x0F, value=0x00)
    report = pair(a, b)
    (d,) = report.divergences
    assert d.name == "mask readback" and d.label == "step 7 (mask readback)" == a.label
    assert report.format().splitlines()[0] == "s: step 7 (mask readback) in 0x0F (DMA1 mask): sim=0x0F, qemu=0x00"
    assert report.to_json()["divergences"][0]["name"] == "mask readback"
    case = ET.fromstring(report.to_junit()).find("testsuite/testcase")
    assert case.get("name") == "step 7 (mask readback) in 0x0F (DMA1 mask)"
    # an unnamed step keeps the short form, and no empty name in the JSON
    unnamed = pair(InObs("2", port=8, value=1), InObs("2", port=8, value=0))
    assert unnamed.format().startswith("s: step 2 in 0x08") and "name" not in unnamed.to_json()["divergences"][0]


def test_json_keeps_whole_digests_text_shortens_them() -> None:
    da, db = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    report = pair(ReadObs("5", addr=0x10000, length=8192, digest=da),
                  ReadObs("5", addr=0x10000, length=8192, digest=db))
    (d,) = report.to_json()["divergences"]
    assert d["values"] == {"sim": da, "qemu": db}
    assert "sim=sha256:aaaaaaaaaaaa…, qemu=sha256:bbbbbbbbbbbb…" in report.format()
    assert da in ET.fromstring(report.to_junit()).find("testsuite/testcase/failure").text


def test_a_script_skipped_on_a_backend_is_not_compared() -> None:
    ran = RunResult("fdc", "fdc.toml", "qemu:?floppy=generate", observations=[InObs("1", port=8, value=0)],
                    status="passed")
    skipped = RunResult("fdc", "fdc.toml", "sim", status="skipped", error="needs fdc")
    report = compare([skipped, ran])
    assert report.exit_code == 0 and report.divergences == [] and report.errors == []
    assert report.skipped == ["fdc on sim: needs fdc"]
    assert report.format().splitlines() == [
        "skipped: fdc on sim: needs fdc",
        ("EQUAL: 1 script(s) on 2 backends (sim, qemu:?floppy=generate), 0 observations compared, "
         "0 divergence(s), 0 tolerated, 1 skipped")]
    assert report.to_json()["skipped"] == ["fdc on sim: needs fdc"]
    suite = ET.fromstring(report.to_junit()).find("testsuite")
    assert suite.get("skipped") == "1" and suite.find("testcase/skipped").get("message") == "fdc on sim: needs fdc"
    # one line per script, however many backends skipped it
    both = compare([skipped, RunResult("fdc", "fdc.toml", QEMU, status="skipped", error="needs fdc")])
    assert both.skipped == [f"fdc on sim, {QEMU}: needs fdc"]
    odd = compare([skipped, RunResult("fdc", "fdc.toml", "qemu:", status="skipped", error="needs fdc, sb16")])
    assert odd.skipped == ["fdc on sim (needs fdc), qemu: (needs fdc, sb16)"]


def test_an_interrupted_run_is_an_error_naming_where() -> None:
    good, _ = _runs_with_error()
    cut = RunResult("s", "s.toml", "qemu", observations=good.observations[:1], status="interrupted",
                    error="interrupted at step 2 (read)")
    report = compare([good, cut])
    assert report.exit_code == 2 and report.errors == ["s on qemu: interrupted at step 2 (read)"]
    assert report.divergences == []  # the steps it never reached are not divergences
