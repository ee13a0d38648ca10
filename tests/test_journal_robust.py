"""Journals and the paths around them are user input (issue 11 items 15 and 17).

``hil run`` checks every journal path (and QEMU's ``log=``) before anything runs, with a
one-line error; :func:`hil.journal.read_journal` skips a damaged line, says which and why, and
keeps every other record; ``hil diff --journal`` reports those as warnings or one-line errors,
never a traceback, and prints names read back from a journal with control characters escaped.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hil.backends import open_backend
from hil.cli import main
from hil.errors import BackendOptionError
from hil.journal import JournalError, read_journal

PLAIN = '[script]\nname = "{name}"\n[[step]]\nop = "out"\nport = 0x81\nvalue = 0x99\n[[step]]\nop = "in"\nport = 0x81\n'


def script(tmp_path: Path, name: str = "s") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(PLAIN.format(name=name), encoding="utf-8")
    return path


def hil(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --- journal paths and log= checked before anything runs ---------------------------------------------


def test_unwritable_journal_paths_are_one_line_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    cases = [
        (["--journal", "/proc/version"], "journal /proc/version: is a kernel interface file"),
        (["--journal-dir", "/dev/null"], "journal directory /dev/null: is not a directory"),
        (["--journal", str(afile / "j.jsonl")], f"journal {afile / 'j.jsonl'}: {afile} is not a directory"),
        (["--journal", str(afile / "deeper" / "j.jsonl")], f"{afile} is not a directory"),
        (["--journal", str(tmp_path)], "is a directory; give a file name"),
    ]
    for extra, wanted in cases:
        code, out, err = hil(capsys, "run", str(script(tmp_path)), *extra)
        assert code == 2 and out == "", (extra, out, err)
        (line,) = err.splitlines()
        assert line.startswith("hil run: error: ") and wanted in line, (extra, line)


def test_every_journal_is_checked_before_the_first_script_runs(capsys: pytest.CaptureFixture[str],
                                                               tmp_path: Path) -> None:
    """The second script's journal cannot be written: the first script must not run either."""
    jd = tmp_path / "jd"
    jd.mkdir()
    (jd / "b.jsonl").mkdir()  # where b's journal would go
    code, out, err = hil(capsys, "run", str(script(tmp_path, "a")), str(script(tmp_path, "b")), "--journal-dir", str(jd))
    assert code == 2 and out == ""
    assert f"journal {jd / 'b.jsonl'}: is a directory" in err
    assert not (jd / "a.jsonl").exists()


def test_a_journal_directory_is_created_only_when_a_script_runs(capsys: pytest.CaptureFixture[str],
                                                               tmp_path: Path) -> None:
    jd = tmp_path / "new" / "jd"
    code, _, err = hil(capsys, "run", str(script(tmp_path)), "--journal-dir", str(jd))
    assert code == 0, err
    assert read_journal(jd / "s.jsonl").status == "passed"


def test_qemu_log_option_is_checked_with_the_url(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(BackendOptionError, match=r"option log='/missing/dir/x': directory '/missing/dir' does not exist"):
        open_backend("qemu:?log=/missing/dir/x")
    with pytest.raises(BackendOptionError, match="is a directory"):
        open_backend(f"qemu:?log={tmp_path}")
    open_backend(f"qemu:?log={tmp_path / 'qemu.log'}")  # fine: nothing started yet
    code, out, err = hil(capsys, "run", str(script(tmp_path)), "-b", "qemu:?log=/missing/dir/x")
    assert code == 2 and out == ""
    (line,) = err.splitlines()
    assert line.startswith("hil run: error: backend URL 'qemu:?log=/missing/dir/x': option log=")


# --- reading damaged journals --------------------------------------------------------------------------


def journal(tmp_path: Path, *lines: str, name: str = "j.jsonl", script_name: str = "s", backend: str = "sim") -> Path:
    head = json.dumps({"type": "header", "version": 1, "script": script_name, "file": "s.toml", "backend": backend,
                       "identity": "", "capabilities": {"backend": backend}, "steps": 3})
    path = tmp_path / name
    path.write_text("\n".join([head, *lines]) + "\n", encoding="utf-8")
    return path


def obs(step: str, value: int) -> str:
    return json.dumps({"type": "obs", "step": step, "op": "in", "index": int(step) - 1, "port": 8, "value": value})


END = json.dumps({"type": "end", "status": "passed", "error": None, "failures": 0, "elapsed": 0.1})


def test_a_corrupt_middle_line_loses_that_record_only(tmp_path: Path) -> None:
    """Before: reading stopped at the first bad line, and every later record, the end record
    included, was silently lost (the run looked "running")."""
    path = journal(tmp_path, obs("1", 1), '{"type":"obs","step":"2",,,', obs("3", 3), END)
    back = read_journal(path)
    assert [o.step for o in back.observations] == ["1", "3"]
    assert back.status == "passed"
    (problem,) = back.problems
    assert (problem.file, problem.line) == (str(path), 3)
    assert str(problem).startswith(f"{path}:3: not JSON")


@pytest.mark.parametrize(("line", "why"), [
    ("5", "not a record: 5"),
    ('["obs"]', "not a record"),
    ('{"type":"obs","op":"in"}', "observation record: missing field 'step'"),
    ('{"type":"obs","step":5,"op":"in"}', "observation record: field 'step' is int 5, expected str"),
    ('{"type":"obs","step":"2","op":"in","value":"0x10"}', "field 'value' is str"),
    ('{"type":"obs","step":"2","op":"in","ok":1}', "field 'ok' is int 1, expected bool/null"),
    ('{"type":"obs","step":"2","op":"out","value":1}', "observation record: op 'out' records no observation"),
    ('{"type":"obs","step":"2","op":"in","expect":[1]}', "field 'expect' is list [1], expected int/str/null"),
    ('{"type":"mystery"}', "unknown record type 'mystery'"),
    ('{"type":"header","script":"again","backend":"sim"}', "a second header record"),
    ('{"type":"end","status":7}', "end record: field 'status' is int"),
    ('{"type":"end","status":"exploded"}', "end record: unknown status 'exploded'"),
    ("\x00\x01garbage", "not JSON"),
])
def test_a_bad_line_is_reported_and_skipped(tmp_path: Path, line: str, why: str) -> None:
    back = read_journal(journal(tmp_path, obs("1", 1), line, obs("3", 3), END))
    assert [o.step for o in back.observations] == ["1", "3"] and back.status == "passed"
    (problem,) = back.problems
    assert problem.line == 3 and why in problem.why, problem


def test_not_utf8_is_a_bad_line(tmp_path: Path) -> None:
    path = journal(tmp_path, obs("1", 1))
    with open(path, "ab") as fh:
        fh.write(b"\xff\xfe{}\n" + obs("3", 3).encode() + b"\n")
    back = read_journal(path)
    assert [o.step for o in back.observations] == ["1", "3"]
    assert [(p.line, p.why) for p in back.problems] == [(3, "not UTF-8 text")]


def test_a_cut_last_line_is_reported_as_cut(tmp_path: Path) -> None:
    path = journal(tmp_path, obs("1", 1))
    with open(path, "a", encoding="utf-8") as fh:
        fh.write('{"type":"obs","step":"2","op":"in","ind')
    back = read_journal(path)
    assert back.status == "running" and [o.step for o in back.observations] == ["1"]
    assert [(p.line, p.why) for p in back.problems] == [(3, "line cut short (the run was killed?)")]


@pytest.mark.parametrize(("text", "why"), [
    ("5\n", r"j.jsonl:1: not a record: 5; no header record"),
    ('{"type":"header","backend":"sim"}\n', r"j.jsonl:1: header record: missing field 'script'"),
    ('{"type":"header","script":["x"],"backend":"sim"}\n', r"j.jsonl:1: header record: field 'script' is list"),
    ('{"type":"obs","step":"1","op":"in"}\n', r"j.jsonl:1: journal does not start with a header record"),
])
def test_a_file_without_a_usable_header_is_not_a_journal(tmp_path: Path, text: str, why: str) -> None:
    path = tmp_path / "j.jsonl"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(JournalError, match=why):
        read_journal(path)


def test_unreadable_files_are_journal_errors(tmp_path: Path) -> None:
    with pytest.raises(JournalError, match="cannot read it"):
        read_journal(tmp_path)
    with pytest.raises(JournalError, match="cannot read it: no such file"):
        read_journal(tmp_path / "absent.jsonl")


# --- hil diff --journal -----------------------------------------------------------------------------------


def test_diff_reports_bad_journals_in_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    good = journal(tmp_path, obs("1", 1), END, name="good.jsonl")
    for text in ("5\n", '{"type":"header","backend":"sim"}\n'):
        bad = tmp_path / "bad.jsonl"
        bad.write_text(text, encoding="utf-8")
        code, out, err = hil(capsys, "diff", "--journal", str(good), "--journal", str(bad))
        assert code == 2 and out == ""
        (line,) = err.splitlines()
        assert line.startswith(f"hil diff: error: --journal: {bad}:1: ")


def test_diff_warns_about_skipped_lines_and_compares_the_rest(capsys: pytest.CaptureFixture[str],
                                                             tmp_path: Path) -> None:
    a = journal(tmp_path, obs("1", 1), obs("2", 2), obs("3", 3), END, name="a.jsonl")
    b = journal(tmp_path, obs("1", 1), "5", obs("3", 4), END, name="b.jsonl", backend="sim:?profile=qemu")
    code, out, err = hil(capsys, "diff", "--journal", str(a), "--journal", str(b))
    assert code == 1, out + err  # step 3 differs: the record after the bad line was compared
    assert f"warning: {b}:3: not a record: 5 (line skipped)" in out.splitlines()
    assert "s: step 3 in 0x08" in out and "step 2" in out  # step 2 is on one side only now
    assert "1 unreadable journal line(s)" in out.splitlines()[-1]
    code, out, _ = hil(capsys, "diff", "--journal", str(a), "--journal", str(b), "--json")
    assert json.loads(out)["warnings"] == [f"{b}:3: not a record: 5 (line skipped)"]


def test_diff_escapes_names_read_back_from_journals(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A journal is a file from anywhere: its script name and backend reach the terminal only
    escaped, with the loader's own escape_controls."""
    evil = "red\x1b[31mALERT\x1b]0;title\x07\u202e"
    a = journal(tmp_path, obs("1", 1), END, name="a.jsonl", script_name=evil)
    b = journal(tmp_path, obs("1", 2), END, name="b.jsonl", script_name=evil, backend="sim\x1b[2J")
    code, out, _ = hil(capsys, "diff", "--journal", str(a), "--journal", str(b))
    assert code == 1
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    assert "red\\x1b[31mALERT\\x1b]0;title\\x07\\u202e: step 1" in out
    assert "sim\\x1b[2J" in out
    code, out, _ = hil(capsys, "diff", "--journal", str(a), "--journal", str(a))
    assert code == 0 and "\x1b" not in out


def test_a_journal_that_fails_to_write_is_a_one_line_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """/dev/full opens for writing and refuses every write: found at the header, before step 1."""
    code, out, err = hil(capsys, "run", str(script(tmp_path)), "--journal", "/dev/full")
    assert code == 2 and out == ""
    (line,) = err.splitlines()
    assert line == "hil run: error: journal /dev/full: cannot write it: no space left on device"
