"""``hil run`` as a bench engineer uses it: Ctrl-C, many scripts with some not applicable, pipes
closed early, how problems are printed, progress, JUnit, and the README's own command lines.

Ctrl-C and closed pipes are tested on real ``python -m hil`` processes; the rest calls
:func:`hil.cli.main` in-process.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import hil.cli.run as cli_run
from hil.backends.qemu import qemu_available
from hil.cli import main
from hil.journal import journal_names, read_journal
from hil.testing import require

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SIM, QEMU = "sim", "sim:?profile=qemu"
STOP_BOUND_S = 0.25  #: Ctrl-C stops a run within 100 ms (45-65 ms measured, process exit included); room for a loaded CI machine

LONG = """
    [[step]]
    op = "in"
    name = "first"
    port = "dma1.all_mask"
    [[step]]
    op = "repeat"
    count = {count}
    steps = [{{op = "in", port = "dma1.status"}}]
"""


def write(tmp_path: Path, body: str, name: str = "t", requires: str = "") -> Path:
    path = tmp_path / f"{name}.toml"
    head = f'[script]\nname = "{name}"\n' + (f"requires = {requires}\n" if requires else "")
    path.write_text(head + textwrap.dedent(body), encoding="utf-8")
    return path


def hil(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def records(journal: Path) -> list[dict]:
    return [json.loads(line) for line in journal.read_text().splitlines()]


def start(*argv: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "hil", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT)})


def wait_for_records(proc: subprocess.Popen[str], *journals: Path, size: int = 4096) -> None:
    deadline = time.monotonic() + 60  # a guard against a hang, not a timing assertion
    while time.monotonic() < deadline and proc.poll() is None:
        if all(j.exists() and j.stat().st_size > size for j in journals):
            return
        time.sleep(0.005)
    raise AssertionError(f"no records to interrupt (exit status {proc.poll()}): {proc.communicate()}")


def interrupt(proc: subprocess.Popen[str]) -> tuple[float, str, str]:
    """SIGINT (what Ctrl-C sends) to the process alone; seconds until it exited, its output."""
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    finally:
        proc.kill()
    took = time.monotonic() - t0
    out, err = proc.communicate()
    return took, out, err


# --- item 2: Ctrl-C ---------------------------------------------------------------------------------


@pytest.mark.parametrize("url", [SIM, "qemu:"])
def test_sigint_stops_a_long_run(tmp_path: Path, url: str) -> None:
    """The simulator never suspends in an await: without the runner's yields a Ctrl-C waited for
    the end of the run (12 s for 300,000 steps) and the journal said "passed". QEMU's backend
    suspends on every exchange; its process is stopped within the bound too."""
    if url.startswith("qemu"):
        ok, why = qemu_available()
        require(ok, "qemu-system-x86_64 (QEMU 7.2 or later)", why)
    path = write(tmp_path, LONG.format(count=50_000), name="long")
    journal = tmp_path / "long.jsonl"
    report = tmp_path / "run.xml"
    proc = start("run", str(path), "--journal", str(journal), "-b", url, "--junit", str(report), cwd=tmp_path)
    wait_for_records(proc, journal)
    took, out, err = interrupt(proc)
    assert proc.returncode == 130
    assert took < STOP_BOUND_S, f"took {took * 1e3:.0f} ms to stop"
    assert out == ""
    (line,) = err.splitlines()
    assert re.fullmatch(rf"hil run: interrupted at step 2\[\d+\]\.1 \(\d+ of 50001\) of long; "
                        rf"journal kept in {re.escape(str(journal))}", line), line
    end = records(journal)[-1]
    assert end["type"] == "end" and end["status"] == "interrupted"
    assert re.fullmatch(r"interrupted at step 2\[\d+\]\.1 \(in\)", end["error"])
    back = read_journal(journal)
    assert back.status == "interrupted" and 0 < len(back.observations) < 50_001
    error = ET.parse(report).getroot().find("testsuite/testcase[@name='long']/error")
    assert error is not None and error.get("message") == "interrupted " + line.split("interrupted ")[1].split(";")[0]


def test_sigint_while_loading_stops_at_once(tmp_path: Path) -> None:
    """Loading and checking a big script is pure computation with no await: Ctrl-C lands there
    too, before any step runs (loading 100,000 written steps takes seconds; binding a repeat of
    2,000,000 no longer does)."""
    body = LONG.format(count=2).replace('steps = [{op = "in", port = "dma1.status"}]',
                                        "steps = [" + ", ".join(['{op = "in", port = "dma1.status"}'] * 100_000) + "]")
    path = write(tmp_path, body, name="huge")
    proc = start("run", str(path), "-v", "--log-format", "json", cwd=tmp_path)
    deadline = time.monotonic() + 60
    while proc.poll() is None and _cpu_seconds(proc.pid) < 1.0 and time.monotonic() < deadline:
        time.sleep(0.01)  # imports take a fraction of that
    assert proc.poll() is None
    took, out, err = interrupt(proc)
    assert proc.returncode == 130 and took < STOP_BOUND_S * 3, took
    assert out == "" and err in ("hil run: interrupted while loading the scripts\n",
                                 "hil run: interrupted while checking the scripts against sim\n"), err


def test_sigint_stops_a_diff_and_its_workers(tmp_path: Path) -> None:
    """The workers are ``hil run`` processes: interrupted with the diff, they end their journals."""
    path = write(tmp_path, LONG.format(count=100_000), name="long")
    jd = tmp_path / "jd"
    journals = [jd / f"backend{i}" / "long.jsonl" for i in (1, 2)]
    proc = start("diff", str(path), "-b", SIM, "-b", QEMU, "--journal-dir", str(jd), cwd=tmp_path)
    wait_for_records(proc, *journals)
    took, out, err = interrupt(proc)
    assert proc.returncode == 130 and took < 3, took
    assert out == "" and err == f"hil diff: interrupted (workers stopped; journals kept in {jd})\n"
    for journal in journals:
        head, end = records(journal)[0], records(journal)[-1]
        assert end["type"] == "end" and end["status"] == "interrupted", journal
        assert _gone(head["pid"])


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] == "Z"  # exited, not reaped yet
    except (FileNotFoundError, ProcessLookupError):
        return True


# --- item 5: many scripts, some not applicable -------------------------------------------------------


PLAIN = '[[step]]\nop = "in"\nport = "dma1.all_mask"\n'
WRONG = '[[step]]\nop = "in"\nport = "dma1.all_mask"\nexpect = 0\n'


def test_scripts_the_backend_cannot_run_are_skipped(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    good = write(tmp_path, PLAIN, name="good")
    fdc = write(tmp_path, PLAIN, name="floppy", requires='["fdc"]')
    both = write(tmp_path, PLAIN, name="sound", requires='["fdc", "sb16", "devices"]')
    jd = tmp_path / "jd"
    code, out, err = hil(capsys, "run", str(fdc), str(good), str(both), "--journal-dir", str(jd))
    assert code == 0, err
    assert out.splitlines() == [
        "floppy on sim: SKIPPED (needs fdc)",
        out.splitlines()[1],
        "sound on sim: SKIPPED (needs fdc, sb16)",
        "1 passed, 0 failed, 2 skipped",
    ]
    assert out.splitlines()[1].startswith("good on sim: PASSED")
    # a skipped script leaves a journal saying so, so a diff can tell it from a lost run
    skipped = read_journal(jd / "floppy.jsonl")
    assert (skipped.status, skipped.error, skipped.observations) == ("skipped", "needs fdc", [])
    assert read_journal(jd / "good.jsonl").status == "passed"
    # with a failure: exit 1 and the counts
    bad = write(tmp_path, WRONG, name="bad")
    code, out, _ = hil(capsys, "run", str(good), str(bad), str(fdc), "-q")
    assert code == 1 and out.splitlines()[-1] == "1 passed, 1 failed, 1 skipped"
    code, out, _ = hil(capsys, "run", str(good), str(fdc), "--json")
    assert code == 0 and [(s["script"], s["status"], s["error"]) for s in json.loads(out)] == [
        ("good", "passed", None), ("floppy", "skipped", "needs fdc")]


def test_an_unknown_capability_is_still_an_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    good = write(tmp_path, PLAIN, name="good")
    odd = write(tmp_path, PLAIN, name="odd", requires='["warp_drive"]')
    code, out, err = hil(capsys, "run", str(good), str(odd))
    assert code == 2 and out == "" and "unknown capability 'warp_drive'" in err


def test_journal_names_follow_the_file_not_the_glob_order(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    one, two, other = tmp_path / "a" / "x.toml", tmp_path / "b" / "x.toml", tmp_path / "floppy read.toml"
    names = journal_names([other, one, two])
    assert names[0] == "floppy_read.jsonl"
    assert len(set(names)) == 3 and all(re.fullmatch(r"x-[0-9a-f]{8}\.jsonl", n) for n in names[1:])
    assert journal_names([two, other, one]) == [names[2], names[0], names[1]]  # any order, same names
    assert journal_names([one, other]) == ["x.jsonl", "floppy_read.jsonl"]


def _readme_command(prefix: str) -> tuple[str, str]:
    """The README line starting with ``prefix`` inside a ``sh`` block, and its comment."""
    for block in re.findall(r"```sh\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL):
        for line in block.splitlines():
            if line.startswith(prefix):
                command, _, comment = line.partition("#")
                return command.strip(), comment.strip()
    raise AssertionError(f"README has no command line starting {prefix!r}")


def test_readme_run_over_every_example_is_true(tmp_path: Path) -> None:
    """README's ``hil run configs/scripts/*.toml ...`` line, executed as written (in a directory
    that has the repository's configs/): its comment's counts and exit status hold, and the
    journal the README's next command compares exists under the name it uses."""
    command, comment = _readme_command("hil run configs/scripts/*.toml")
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    argv = [sys.executable, "-m", "hil", *shlex.split(command)[1:]]
    files = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "configs" / "scripts").glob("*.toml"))
    argv[argv.index("configs/scripts/*.toml"):argv.index("configs/scripts/*.toml") + 1] = files  # as a shell globs
    proc = subprocess.run(argv, check=False, capture_output=True, text=True, cwd=tmp_path, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    counts, _, status = comment.partition(": exit ")
    assert proc.stdout.splitlines()[-1] == counts, proc.stdout
    assert proc.returncode == int(status), proc.stderr
    assert any(line.startswith("failing-expectation on sim:") and ": FAILED" in line for line in proc.stdout.splitlines())
    assert sum("SKIPPED (needs " in line for line in proc.stdout.splitlines()) == int(counts.split()[-2])
    diff_cmd, _ = _readme_command("hil diff --journal bench/floppy.jsonl")
    wanted = shlex.split(diff_cmd)[-1]
    assert read_journal(tmp_path / wanted).status == "passed"


# --- item 6: closed pipes ------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["demo"], ["run", "-v", str(ROOT / "configs/scripts/floppy-read.toml"),
                                              str(ROOT / "configs/scripts/mem-to-mem.toml")],
                                  ["regs", "--json"]])
def test_a_closed_pipe_is_not_a_traceback(argv: list[str], tmp_path: Path) -> None:
    """``hil demo | head -0``: the reader is gone before the first line."""
    proc = start(*argv, cwd=tmp_path)
    assert proc.stdout is not None
    proc.stdout.close()  # the only reading end: every write to stdout now fails with EPIPE
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err


# --- item 12: how problems are printed --------------------------------------------------------------


NEVER_SETTLES = """
    [buffers.ring]
    size = 64
    channel = 1
    [[step]]
    op = "device"
    channel = 1
    kind = "sink"
    [[step]]
    op = "program"
    channel = 1
    mode = "DMA_MODE_WRITE | DMA_AUTOINIT"
    buffer = "ring"
    [[step]]
    op = "settle"
    name = "wait for quiet"
    timeout = 0.01
    [[step]]
    op = "in"
    port = "dma1.status"
"""


def test_an_error_in_a_step_is_printed_once_and_is_not_a_failed_expectation(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = write(tmp_path, NEVER_SETTLES, name="ring", requires='["devices"]')
    code, out, err = hil(capsys, "run", str(path))
    assert code == 2
    assert (out + err).count("DMA still active") == 1, out + err
    lines = out.splitlines()
    assert lines[0].startswith("ring on sim: ERROR — 4 steps, 1 observations, 0 failed expectation(s)")
    assert lines[1].startswith("  ERROR step 3 (settle: wait for quiet): DMA still active")
    assert "FAIL" not in out
    assert "use delay instead of settle" in out and "delay()" not in out  # the op's name, as scripts spell it
    code, out, _ = hil(capsys, "run", str(path), "--json")
    (summary,) = json.loads(out)
    assert summary["status"] == "error" and summary["failures"] == 0
    code, out, _ = hil(capsys, "run", str(path), "-v")
    assert out.count("DMA still active") == 1


def test_long_expected_bytes_are_cut_with_an_ellipsis(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    want = " ".join(f"{i:02x}" for i in range(48))
    path = write(tmp_path, f'[[step]]\nop = "read"\naddr = 0x20000\nlength = 48\nrecord = "bytes"\n'
                           f'expect_hex = "{want}"\n', name="bytes")
    code, out, _ = hil(capsys, "run", str(path))
    assert code == 1
    line = next(ln for ln in out.splitlines() if ln.startswith("  FAIL"))
    read, expected = line.split(", expected ")
    assert read.endswith(f"{'00' * 32}… sha256:{hashlib.sha256(bytes(48)).hexdigest()}")
    assert expected == "".join(f"{i:02x}" for i in range(32)) + "…"
    short = write(tmp_path, '[[step]]\nop = "read"\naddr = 0x20000\nlength = 2\nexpect_hex = "01 02"\n', name="short")
    code, out, _ = hil(capsys, "run", str(short))
    assert code == 1 and out.rstrip().endswith(", expected 0102")  # nothing cut, no ellipsis


# --- item 15: progress ------------------------------------------------------------------------------


class Terminal(io.StringIO):
    """stderr as a terminal that counts writes."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def isatty(self) -> bool:
        return True

    def write(self, s: str) -> int:
        self.writes += 1
        return super().write(s)


def test_terminal_progress_is_rate_limited(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                           tmp_path: Path) -> None:
    """A redraw per step wrote 9.8 MB for 300,000 steps and slowed the run 2-3x."""
    path = write(tmp_path, LONG.format(count=20_000), name="long")
    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    # a redraw every millisecond at most: 20,000 steps take tens of milliseconds now, fewer
    # than one redraw at the real rate; still a small fraction of one write per step
    monkeypatch.setattr(cli_run, "REDRAW_HZ", 1000)
    t0 = time.monotonic()
    code = main(["run", str(path)])
    took = time.monotonic() - t0
    capsys.readouterr()
    assert code == 0
    shown = term.getvalue()
    redraws = shown.count("\r") // 2  # every write starts with \r; a clear is \r...\r
    assert 1 <= term.writes <= cli_run.REDRAW_HZ * took + 8, (term.writes, took)
    assert shown.startswith("\rloading 1/1: ")  # before the steps (checking follows within 0.1 s: not redrawn)
    assert re.search(r"long: step \d+/20001 \(in\)", shown) and redraws >= 1
    assert shown.endswith("\r")  # the line is cleared before the summary


def test_quiet_turns_progress_off(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                  tmp_path: Path) -> None:
    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    assert main(["run", str(write(tmp_path, LONG.format(count=2000))), "-q"]) == 0
    capsys.readouterr()
    assert term.getvalue() == ""


def test_without_a_terminal_long_runs_print_a_line_now_and_then(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    monkeypatch.setattr(cli_run, "PLAIN_EVERY_S", 0.05)
    code, _, err = hil(capsys, "run", str(write(tmp_path, LONG.format(count=30_000), name="long")))
    assert code == 0
    lines = [ln for ln in err.splitlines() if ln.startswith("hil run: long: step ")]
    assert len(lines) >= 2 and "\r" not in err
    assert all(re.fullmatch(r"hil run: long: step \d+/30001 \(in\) \(\d+ s\)", ln) for ln in lines), lines
    # a short run prints no progress at all
    monkeypatch.setattr(cli_run, "PLAIN_EVERY_S", 5.0)
    code, _, err = hil(capsys, "run", str(write(tmp_path, PLAIN, name="short")))
    assert code == 0 and err == ""


# --- item 16: JUnit -----------------------------------------------------------------------------------


def test_run_junit_one_case_per_script(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    good, bad = write(tmp_path, PLAIN, name="good"), write(tmp_path, WRONG, name="bad")
    fdc = write(tmp_path, PLAIN, name="floppy", requires='["fdc"]')
    broken = write(tmp_path, NEVER_SETTLES, name="broken", requires='["devices"]')  # an error only running finds
    report = tmp_path / "out" / "run.xml"
    report.parent.mkdir()
    code, out, _ = hil(capsys, "run", str(good), str(bad), str(fdc), str(broken), "--junit", str(report))
    assert code == 2
    root = ET.parse(report).getroot()
    assert root.tag == "testsuites" and root.get("name") == "hil run"
    (suite,) = root.findall("testsuite")
    assert (suite.get("name"), suite.get("tests"), suite.get("failures"), suite.get("errors"), suite.get("skipped")) == (
        "hil run on sim", "4", "1", "1", "1")
    assert suite.find("properties/property[@name='backend']").get("value") == "sim"
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert list(cases) == ["good", "bad", "floppy", "broken"]
    assert list(cases["good"]) == []
    failure = cases["bad"].find("failure")
    assert failure.get("message") == "1 failed expectation(s)"
    assert failure.text == "FAIL step 1: in 0x0F: read 0x0F, expected 0x00"
    assert failure.text in out  # the same words as on the terminal
    assert cases["floppy"].find("skipped").get("message") == "needs fdc"
    error = cases["broken"].find("error")
    assert error.get("message").startswith("step 3 (settle: wait for quiet): ") and "DMA still active" in error.get("message")
    assert cases["good"].get("classname") == "good" and cases["good"].get("file") == str(good)
