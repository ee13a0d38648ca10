"""The ``hil`` command: every subcommand's --help, exit statuses, --json, --log-format json,
``hil run`` journals and variables, and ``hil diff`` over worker processes and saved journals.

Most tests call :func:`hil.cli.main` in-process; ``hil diff`` with backends starts real worker
processes (``python -m hil run``), one per backend.
"""

from __future__ import annotations

import argparse
import json
import os
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from hil.cli import build_parser, main
from hil.diff import compare
from hil.journal import read_journal

ROOT = Path(__file__).resolve().parent.parent
FLOPPY = ROOT / "configs" / "scripts" / "floppy-read.toml"
SUBCOMMANDS = ["run", "diff", "regs", "peek", "poke", "demo", "backends"]
SIM, QEMU = "sim", "sim:?profile=qemu"
FDC = "floppy=generate"  #: floppy-read drives the floppy controller (requires = ["fdc", "irq"])


def all_subcommands() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(action.choices)


def write(tmp_path: Path, body: str, name: str = "t") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(f'[script]\nname = "{name}"\n' + textwrap.dedent(body), encoding="utf-8")
    return path


def hil(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


PASSING = """
    [vars]
    want = 0x0F
    [[step]]
    op = "in"
    name = "mask"
    port = "dma1.all_mask"
    expect = "want"
    [[step]]
    op = "in"
    port = "dma1.status"
"""

ERRORING = """
    [[step]]
    op = "in"
    port = 8
    [[step]]
    op = "dreq"
    channel = 1
    level = true
"""

MASKS = """
    [[step]]
    op = "in"
    port = "dma1.status"
    [[step]]
    op = "in"
    port = "dma1.all_mask"
"""


# --- help and usage -------------------------------------------------------------------------------


def test_every_subcommand_is_known() -> None:
    assert set(SUBCOMMANDS) <= set(all_subcommands())


@pytest.mark.parametrize("command", all_subcommands())
def test_help_for_every_subcommand(capsys: pytest.CaptureFixture[str], command: str) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: hil {command}")
    assert "--log-format" in out
    if command in SUBCOMMANDS:
        assert "--json" in out
    if command in ("run", "diff"):
        assert "Exit status: 0" in " ".join(out.split())


def test_top_level_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in SUBCOMMANDS:
        assert command in out
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and "lpc-hil" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [[], ["frobnicate"], ["peek"], ["peek", "zz"], ["poke", "0x80"], ["run"],
                                  ["run", "x.toml", "--log-format", "xml"]])
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "usage: hil" in capsys.readouterr().err


# --- regs, peek, poke, backends, demo ----------------------------------------------------------------


def test_regs(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = hil(capsys, "regs")
    assert code == 0 and "DMA1: status 0x00" in out and "mask@0x0F 0x0F" in out
    code, out, _ = hil(capsys, "regs", "--json", "-b", QEMU)
    assert code == 0 and isinstance(json.loads(out), dict)


def test_peek_and_poke(capsys: pytest.CaptureFixture[str]) -> None:
    assert hil(capsys, "peek", "0x0f")[:2] == (0, "0x0F -> 0x0F\n")
    assert hil(capsys, "peek", "15", "--backend", QEMU)[1] == "0x0F -> 0x00\n"
    code, out, _ = hil(capsys, "peek", "0xC0", "--width", "16", "--json")
    assert code == 0 and json.loads(out) == {"port": 0xC0, "value": 0}
    assert hil(capsys, "poke", "0x80", "0x12")[:2] == (0, "0x80 <- 0x12\n")
    code, out, _ = hil(capsys, "poke", "0x80", "0x1234", "--width", "16", "--json")
    assert code == 0 and json.loads(out) == {"port": 0x80, "value": 0x1234}


def test_poke_value_too_wide_and_bad_backend(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = hil(capsys, "poke", "0x80", "0x100")
    assert code == 2 and out == "" and err.startswith("hil poke: error: value 256") and "8-bit" in err
    code, _, err = hil(capsys, "peek", "8", "-b", "nosuch:")
    assert code == 2 and "unknown scheme 'nosuch'" in err
    code, _, err = hil(capsys, "regs", "-b", "sim:?profile=pdp11")
    assert code == 2 and "unknown profile 'pdp11'" in err


def test_backends(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = hil(capsys, "backends", "--json")
    assert code == 0
    rows = json.loads(out)
    assert set(rows["sim"]["capabilities"]) >= {"devices", "dreq", "virtual_time"}
    code, out, _ = hil(capsys, "backends")
    assert code == 0 and any(line.startswith("sim:") for line in out.splitlines())


def test_demo(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = hil(capsys, "demo", "--bytes", "64")
    assert code == 0 and "terminal count: yes; residue 0 bytes" in out
    code, out, _ = hil(capsys, "demo", "--json", "-b", QEMU)
    assert code == 0 and json.loads(out)["data_ok"] is True


# --- hil run ---------------------------------------------------------------------------------------


def test_run_passing_failing_and_erroring(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = write(tmp_path, PASSING)
    code, out, _ = hil(capsys, "run", str(path))
    assert code == 0 and out.startswith("t on sim: PASSED — 2 steps, 2 observations, 0 failed expectation(s)")
    # on QEMU the mask reads 0: the expectation fails, exit 1, the failure is listed
    code, out, _ = hil(capsys, "run", str(path), "-b", QEMU)
    assert code == 1 and "FAILED" in out
    assert "  FAIL step 1 (mask): in 0x0F: read 0x00, expected 0x0F" in out
    code, out, err = hil(capsys, "run", str(write(tmp_path, ERRORING, name="e")))
    assert code == 2 and out == ""  # found before step 1 ran (tests/test_static_checks.py)
    assert "step 2 (dreq)" in err and "no device attached to channel 1" in err


def test_run_var_overrides(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = write(tmp_path, PASSING)
    assert hil(capsys, "run", str(path), "-b", QEMU, "--var", "want=0")[0] == 0
    assert hil(capsys, "run", str(path), "--var=want=0x0e")[0] == 1
    code, out, err = hil(capsys, "run", str(path), "--var", "want")
    assert code == 2 and "--var 'want': expected NAME=INTEGER" in err and out == ""
    code, _, err = hil(capsys, "run", str(path), "--var", "other=1")
    assert code == 2 and f"hil run: error: {path}: key 'vars.other': overridden variable is not declared" in err


def test_run_json_and_verbose(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = write(tmp_path, PASSING)
    code, out, _ = hil(capsys, "run", str(path), "--json", "-b", QEMU)
    assert code == 1
    (summary,) = json.loads(out)
    assert summary["script"] == "t" and summary["status"] == "failed" and summary["failures"] == 1
    assert summary["observations"][0]["ok"] is False and summary["observations"][0]["value"] == 0
    code, out, _ = hil(capsys, "run", str(path), "-v")
    assert code == 0 and "  ok   step 1 (mask): in 0x0F: read 0x0F, expected 0x0F" in out
    assert "       step 2: in 0x08: read 0x00" in out
    code, out, _ = hil(capsys, "run", str(path), "-v", "-q")
    assert code == 0 and len(out.splitlines()) == 1


def test_run_log_format_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = hil(capsys, "run", str(write(tmp_path, PASSING)), "--log-format", "json", "-v", "--json")
    assert code == 0 and json.loads(out)[0]["status"] == "passed"  # stdout stays machine-readable
    records = [json.loads(line) for line in err.splitlines()]
    events = [r["event"] for r in records]
    assert "run_start" in events and "run_end" in events
    end = next(r for r in records if r["event"] == "run_end")
    assert end["status"] == "passed" and end["level"] == "info" and end["script"] == "t"


def test_run_journals(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    one, two = write(tmp_path, PASSING, name="one"), write(tmp_path, MASKS, name="two words")
    journal = tmp_path / "j" / "one.jsonl"
    assert hil(capsys, "run", str(one), "--journal", str(journal))[0] == 0
    assert read_journal(journal).status == "passed"
    code, _, _ = hil(capsys, "run", str(one), str(two), "--journal-dir", str(tmp_path / "jd"))
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "jd").iterdir()) == ["one.jsonl", "two_words.jsonl"]
    assert len(read_journal(tmp_path / "jd" / "two_words.jsonl").observations) == 2
    code, _, err = hil(capsys, "run", str(one), str(two), "--journal", str(journal))
    assert code == 2 and "--journal takes one script" in err


def test_run_validates_every_script_before_running_any(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    good = write(tmp_path, PASSING, name="good")
    # loads fine, but its fixed buffer is beyond this backend's memory: found when binding
    late = write(tmp_path, '[buffers.b]\nsize = 16\nchannel = 1\nat = 0x100000\n'
                           '[[step]]\nop = "read"\nbuffer = "b"\n', name="late")
    broken = write(tmp_path, '[[step]]\nop = "in"\nport = 8\nwidth = 12\n', name="broken")
    jd = tmp_path / "jd"
    code, out, err = hil(capsys, "run", str(good), str(late), "-b", "sim:?mem=640K", "--journal-dir", str(jd))
    assert code == 2 and out == ""
    assert err.startswith(f"hil run: error: {late}: key 'buffers.b': cannot place 16 bytes") and "outside the memory" in err
    assert not jd.exists()  # the good script did not run first
    code, out, err = hil(capsys, "run", str(good), str(broken), "--journal-dir", str(jd))
    assert code == 2 and out == "" and not jd.exists()
    assert f"{broken}: step 1 (in): key 'width': width 12: use 8 or 16" in err


def test_run_shipped_floppy_example(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = hil(capsys, "run", str(FLOPPY), "-v")  # no floppy controller on a plain sim
    assert code == 0 and out.startswith("floppy-read on sim: SKIPPED (needs fdc)")
    code, out, _ = hil(capsys, "run", str(FLOPPY), "-v", "-b", f"{SIM}:?{FDC}")
    assert code == 0 and out.startswith(f"floppy-read on {SIM}:?{FDC}: PASSED")
    assert "step 7 (the command ends: IRQ 6): wait_irq 6: reached (level high, 3 rising edge(s))" in out
    code, out, _ = hil(capsys, "run", str(FLOPPY), "-b", f"{QEMU}&{FDC}")
    assert code == 0 and "PASSED" in out


# --- hil diff: worker processes ----------------------------------------------------------------------


def test_diff_two_sim_workers_equal(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = write(tmp_path, MASKS, name="masks")
    jd = tmp_path / "journals"
    sim = f"{SIM}:?{FDC}"
    code, out, err = hil(capsys, "diff", str(path), str(FLOPPY), "--backend", sim, "-b", sim, "--journal-dir", str(jd))
    assert code == 0, err
    assert out.splitlines()[-1].startswith(f"EQUAL: 2 script(s) on 2 backends ({sim}, {sim})")
    # each worker process wrote its own journals; they compare equal
    for name in ("masks.jsonl", "floppy-read.jsonl"):
        a, b = read_journal(jd / "backend1" / name), read_journal(jd / "backend2" / name)
        assert a.status == b.status == "passed"
        assert [o.step for o in a.observations] == [o.step for o in b.observations] != []
        assert compare([a, b]).divergences == []
    assert read_journal(jd / "backend1" / "masks.jsonl").observations[1].value == 0x0F
    # one worker process per backend, neither of them this one
    pids = {json.loads((jd / f"backend{i}" / "masks.jsonl").read_text().splitlines()[0])["pid"] for i in (1, 2)}
    assert len(pids) == 2 and os.getpid() not in pids


def test_diff_sim_and_qemu_diverge(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = write(tmp_path, MASKS, name="masks")
    jd, junit = tmp_path / "journals", tmp_path / "report.xml"
    code, out, err = hil(capsys, "diff", str(path), "-b", SIM, "-b", QEMU, "--json", "--junit", str(junit),
                         "--journal-dir", str(jd))
    assert code == 1, err
    report = json.loads(out)
    assert report["exit_code"] == 1 and report["backends"] == [SIM, QEMU] and report["errors"] == []
    (d,) = report["divergences"]
    assert d["step"] == "2" and d["values"] == {SIM: "0x0F", QEMU: "0x00"}
    assert d["meaning"].startswith("mask readback: masked channels 0,1,2,3 on sim, none on")
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite.get("name") == "masks" and suite.get("failures") == "1"

    # the saved journals give the same answer without running anything
    journals = [str(jd / f"backend{i}" / "masks.jsonl") for i in (1, 2)]
    code, out, _ = hil(capsys, "diff", "--journal", journals[0], "--journal", journals[1])
    assert code == 1
    assert "masks: step 2 in 0x0F (DMA1 mask): sim=0x0F, sim:?profile=qemu=0x00" in out
    # ... and a known-deviation list excuses it
    known = tmp_path / "known.toml"
    known.write_text('[[deviation]]\nname = "mask-port"\nbetween = ["intel", "qemu"]\nport = "dma1.all_mask"\n'
                     'reason = "QEMU does not decode it"\n')
    code, out, _ = hil(capsys, "diff", "--journal", journals[0], "--journal", journals[1], "--deviations", str(known))
    assert code == 0 and "(tolerated: known deviation mask-port: QEMU does not decode it)" in out


def test_diff_worker_that_cannot_run(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = write(tmp_path, '[buffers.b]\nsize = 16\nchannel = 1\nat = 0x100000\n'
                           '[[step]]\nop = "read"\nbuffer = "b"\n', name="high")
    jd = tmp_path / "journals"
    # a journal left from an earlier diff in the same directory must not stand in for this run
    stale = jd / "backend2" / "high.jsonl"
    stale.parent.mkdir(parents=True)
    stale.write_text('{"type":"header","script":"high","backend":"old"}\n{"type":"end","status":"passed"}\n')
    code, out, _ = hil(capsys, "diff", str(path), "-b", SIM, "-b", "sim:?mem=640K", "--journal-dir", str(jd), "--json")
    assert code == 2
    report = json.loads(out)
    (error,) = report["errors"]
    assert error.startswith("high: no journal (sim:?mem=640K: ")
    assert "key 'buffers.b'" in error and "outside the memory" in error
    assert not stale.exists() and (jd / "backend1" / "high.jsonl").exists()


# --- hil diff: argument errors -----------------------------------------------------------------------


def test_diff_argument_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = write(tmp_path, MASKS)
    cases = [
        (["diff", str(path), "-b", SIM], "two or more --backend"),
        (["diff", "-b", SIM, "-b", QEMU], "at least one SCRIPT"),
        (["diff", str(path), "-b", SIM, "-b", "nosuch:"], "unknown scheme 'nosuch'"),
        (["diff", str(path), "-b", SIM, "-b", QEMU, "--deviations", str(tmp_path / "none.toml")],
         "known-deviations file not found"),
        (["diff", "--journal", "a.jsonl"], "at least two journals"),
        (["diff", str(path), "--journal", "a.jsonl", "--journal", "b.jsonl"], "not both"),
        (["diff", "--journal", str(tmp_path / "a.jsonl"), "--journal", str(tmp_path / "b.jsonl")], "a.jsonl"),
        (["diff", str(tmp_path / "absent.toml"), "-b", SIM, "-b", QEMU], "file not found"),
    ]
    for argv, expected in cases:
        code, out, err = hil(capsys, *argv)
        assert code == 2, argv
        assert err.startswith("hil diff: error: ") and expected in err, (argv, err)
        assert out == ""


def test_diff_journals_of_an_interrupted_and_a_lone_run(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = write(tmp_path, MASKS, name="masks")
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert hil(capsys, "run", str(path), "--journal", str(a))[0] == 0
    assert hil(capsys, "run", str(path), "--journal", str(b), "-b", QEMU)[0] == 0
    lines = b.read_text().splitlines()
    b.write_text("\n".join(lines[:2]) + "\n")  # header and one observation: killed
    code, out, _ = hil(capsys, "diff", "--journal", str(a), "--journal", str(b))
    assert code == 2 and "error: masks on sim:?profile=qemu: journal ends before the run did (interrupted)" in out
    other = tmp_path / "other.jsonl"
    assert hil(capsys, "run", str(FLOPPY), "--journal", str(other), "-b", f"{SIM}:?{FDC}")[0] == 0
    code, out, _ = hil(capsys, "diff", "--journal", str(a), "--journal", str(other), "--json")
    assert code == 2
    errors = json.loads(out)["errors"]
    assert "masks: only one journal, nothing to compare with" in errors
    assert "floppy-read: only one journal, nothing to compare with" in errors


# --- errors under --json -----------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["run", "absent.toml"], ["diff", "absent.toml", "-b", SIM], ["regs", "-b", "nosuch:"], ["peek", "8", "-b", "nosuch:"],
    ["poke", "8", "1", "-b", "nosuch:"], ["demo", "-b", "nosuch:"], ["bench", "link", "-b", "nosuch:"],
])
def test_errors_under_json_are_json_on_stdout(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, out, err = hil(capsys, *argv, "--json")
    assert code == 2
    (line,) = err.splitlines()  # the usual one line on stderr too
    assert line.startswith(f"hil {argv[0]}: error: ")
    assert json.loads(out) == {"error": line.split(": error: ", 1)[1], "command": argv[0]}


@pytest.mark.parametrize("argv", [["run", "--json"], ["backends", "--json", "--bogus"]])
def test_usage_errors_under_json_are_json_on_stdout(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    out, err = capsys.readouterr()
    assert "usage: hil" in err
    data = json.loads(out)
    assert data["command"] == argv[0] and data["error"] in err
