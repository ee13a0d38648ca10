"""Hostile transfer scripts: file rules, load-time limits, printable names (issue 11 items 5, 14, 17).

A script is input. Loading one must not read outside its directory tree (unless allowed), block
on a FIFO, read a device forever, or spend unbounded time and memory on repeats, includes,
expressions or nesting; every refusal is one ScriptError naming file, step, key and rule, never
a traceback. Each test here failed (or hung, or raised RecursionError/MemoryError) before the
limits existed.
"""

from __future__ import annotations

import os
import textwrap
import threading
import time
import tracemalloc
from pathlib import Path

import pytest

from hil.backends.sim import SimBackend
from hil.runner import prepare
from hil.script import load_script, loader as loader_mod
from hil.script.model import (
    ScriptError,
    ScriptFileError,
    ScriptIncludeError,
    ScriptLimitError,
    ScriptRangeError,
    ScriptTypeError,
    StepList,
)

HEADER = '[script]\nname = "t"\n'


def write(path: Path, body: str, header: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text((HEADER if header else "") + textwrap.dedent(body), encoding="utf-8")
    return path


def refused(path: Path, cls: type[ScriptError], **kw: object) -> ScriptError:
    """Load ``path`` in a thread so that a loader that blocks (FIFO) fails the test instead of
    hanging the suite; return the error it raised, which must be a ``cls``."""
    box: dict[str, BaseException | object] = {}

    def run() -> None:
        try:
            box["value"] = load_script(path, **kw)  # type: ignore[arg-type]
        except BaseException as e:  # handed to the test thread
            box["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "load_script blocked"
    assert "error" in box, f"loaded, but {cls.__name__} was expected"
    err = box["error"]
    assert isinstance(err, cls), f"expected {cls.__name__}, got {type(err).__name__}: {err}"
    return err


def data_step(name: str) -> str:
    return f'[[step]]\nop = "write"\naddr = 0x1000\nfile = {name!r}\n'


# --- item 5: data and include files --------------------------------------------------------------


def test_data_file_outside_the_script_tree_is_refused(tmp_path: Path) -> None:
    (tmp_path / "secret.bin").write_bytes(b"top secret")
    path = write(tmp_path / "scripts" / "s.toml", '[[step]]\nop = "settle"\n' + data_step("../secret.bin"))
    err = refused(path, ScriptFileError)
    assert isinstance(err, ScriptFileError) and err.rule == "directory"
    assert (err.step, err.key) == ("2", "file")
    assert "outside the script's directory tree" in str(err) and str(tmp_path / "secret.bin") in str(err)
    assert "--allow-path" in str(err)
    # the classic: climb to /etc/passwd
    path = write(tmp_path / "scripts" / "p.toml", data_step("../../../../../../../../etc/passwd"))
    assert refused(path, ScriptFileError).rule == "directory"  # type: ignore[attr-defined]
    # an explicit allowed directory widens the rule
    script = load_script(tmp_path / "scripts" / "s.toml", allow_paths=[tmp_path])
    assert script.steps[1].args.data == b"top secret"


def test_data_file_in_a_subdirectory_is_fine(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.bin").write_bytes(b"\x01\x02")
    assert load_script(write(tmp_path / "s.toml", data_step("data/x.bin"))).steps[0].args.data == b"\x01\x02"


def test_symlink_out_of_the_tree_is_refused(tmp_path: Path) -> None:
    (tmp_path / "outside.bin").write_bytes(b"x")
    (tmp_path / "s").mkdir()
    os.symlink(tmp_path / "outside.bin", tmp_path / "s" / "link.bin")
    err = refused(write(tmp_path / "s" / "s.toml", data_step("link.bin")), ScriptFileError)
    assert err.rule == "directory"  # type: ignore[attr-defined]


def test_dev_zero_is_not_a_regular_file(tmp_path: Path) -> None:
    path = write(tmp_path / "s.toml", data_step("/dev/zero"))
    assert refused(path, ScriptFileError).rule == "directory"  # type: ignore[attr-defined]
    t0 = time.monotonic()
    err = refused(path, ScriptFileError, allow_paths=["/dev"])
    assert time.monotonic() - t0 < 5
    assert err.rule == "regular" and "character device" in str(err), str(err)  # type: ignore[attr-defined]
    assert (err.step, err.key) == ("1", "file")


def test_fifo_does_not_block(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    err = refused(write(tmp_path / "s.toml", data_step("pipe")), ScriptFileError)
    assert err.rule == "regular" and "FIFO" in str(err)  # type: ignore[attr-defined]
    err = refused(write(tmp_path / "i.toml", '[[step]]\nop = "include"\nfile = "pipe"\n'), ScriptFileError)
    assert err.rule == "regular" and (err.step, err.key) == ("1", "file")  # type: ignore[attr-defined]
    err = refused(tmp_path / "pipe", ScriptFileError)  # the script itself
    assert err.rule == "regular"  # type: ignore[attr-defined]


def test_directory_as_data_file(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    err = refused(write(tmp_path / "s.toml", data_step("d")), ScriptFileError)
    assert err.rule == "regular" and "directory" in str(err)  # type: ignore[attr-defined]


def test_oversized_data_and_fragment_files(tmp_path: Path) -> None:
    with open(tmp_path / "big.bin", "wb") as f:  # sparse: costs no disk
        f.truncate(loader_mod.MAX_DATA + 1)
    err = refused(write(tmp_path / "s.toml", data_step("big.bin")), ScriptFileError)
    assert err.rule == "size" and f"more than the {loader_mod.MAX_DATA}" in str(err)  # type: ignore[attr-defined]
    with open(tmp_path / "big.toml", "wb") as f:
        f.truncate(loader_mod.MAX_SCRIPT_BYTES + 1)
    err = refused(write(tmp_path / "i.toml", '[[step]]\nop = "include"\nfile = "big.toml"\n'), ScriptFileError)
    assert err.rule == "size"  # type: ignore[attr-defined]


def test_symlink_loop(tmp_path: Path) -> None:
    os.symlink("b", tmp_path / "a")
    os.symlink("a", tmp_path / "b")
    err = refused(write(tmp_path / "s.toml", data_step("a")), ScriptFileError)
    assert err.rule == "path" and "symlink loop" in str(err)  # type: ignore[attr-defined]
    err = refused(write(tmp_path / "i.toml", '[[step]]\nop = "include"\nfile = "a"\n'), ScriptFileError)
    assert err.rule == "path" and (err.step, err.key) == ("1", "file")  # type: ignore[attr-defined]


def test_nul_byte_in_a_path(tmp_path: Path) -> None:
    err = refused(write(tmp_path / "s.toml", '[[step]]\nop = "write"\naddr = 0\nfile = "x\\u0000y"\n'),
                  ScriptFileError)
    assert err.rule == "path" and "NUL" in str(err) and (err.step, err.key) == ("1", "file")  # type: ignore[attr-defined]
    err = refused(write(tmp_path / "i.toml", '[[step]]\nop = "include"\nfile = "x\\u0000y"\n'), ScriptFileError)
    assert err.rule == "path"  # type: ignore[attr-defined]
    with pytest.raises(ScriptFileError):
        load_script(str(tmp_path / "s\0.toml"))


def test_include_outside_the_tree_needs_an_allowed_path(tmp_path: Path) -> None:
    write(tmp_path / "common" / "reset.toml", '[[step]]\nop = "settle"\n', header=False)
    path = write(tmp_path / "scripts" / "s.toml", '[[step]]\nop = "include"\nfile = "../common/reset.toml"\n')
    err = refused(path, ScriptFileError)
    assert err.rule == "directory" and (err.step, err.key) == ("1", "file")  # type: ignore[attr-defined]
    assert [s.path for s in load_script(path, allow_paths=[tmp_path / "common"]).steps] == ["1:reset.toml/1"]


def test_missing_files_stay_include_errors(tmp_path: Path) -> None:
    err = refused(write(tmp_path / "s.toml", data_step("nope.bin")), ScriptIncludeError)
    assert type(err) is ScriptIncludeError and "not found" in str(err)


# --- item 14: load-time bombs --------------------------------------------------------------------


def assert_limit(err: ScriptError, limit: str, step: str | None, key: str | None) -> None:
    assert isinstance(err, ScriptLimitError), f"{type(err).__name__}: {err}"
    assert err.limit == limit, err.limit
    assert (err.step, err.key) == (step, key), (err.step, err.key, str(err))
    if step is not None:
        assert f"step {step}" in str(err)


def test_nested_repeats_1000_cubed(tmp_path: Path) -> None:
    path = write(tmp_path / "s.toml", """
        [[step]]
        op = "repeat"
        count = 1000
        steps = [{op = "repeat", count = 1000, steps = [{op = "repeat", count = 1000, steps = [{op = "settle"}]}]}]
    """)
    t0 = time.monotonic()
    err = refused(path, ScriptLimitError)
    assert time.monotonic() - t0 < 5
    assert_limit(err, "expanded steps", "1", "count")
    assert f"{loader_mod.MAX_STEPS:,}" in str(err)


def test_include_fan_out_10_over_7_levels(tmp_path: Path) -> None:
    for level in range(1, 8):
        body = ('[[step]]\nop = "in"\nport = 8\n' if level == 7
                else f'[[step]]\nop = "include"\nfile = "l{level + 1}.toml"\n' * 10)
        (tmp_path / f"l{level}.toml").write_text(body)
    path = write(tmp_path / "s.toml", '[[step]]\nop = "include"\nfile = "l1.toml"\n' * 10)
    t0 = time.monotonic()
    err = refused(path, ScriptLimitError)
    assert time.monotonic() - t0 < 5
    assert err.limit == "expanded steps" and err.key == "file"  # type: ignore[attr-defined]


def test_fan_out_within_the_limit_loads_each_fragment_once(tmp_path: Path) -> None:
    """10 x 10 x 10 includes of a shared fragment: 1000 steps, labels as if expanded."""
    (tmp_path / "c.toml").write_text('[[step]]\nop = "in"\nport = 8\n')
    (tmp_path / "b.toml").write_text('[[step]]\nop = "include"\nfile = "c.toml"\n' * 10)
    (tmp_path / "a.toml").write_text('[[step]]\nop = "include"\nfile = "b.toml"\n' * 10)
    script = load_script(write(tmp_path / "s.toml", '[[step]]\nop = "include"\nfile = "a.toml"\n' * 10))
    assert len(script.steps) == 1000
    assert script.steps[999].path == "10:a.toml/10:b.toml/10:c.toml/1"
    assert [s.index for s in script.steps] == list(range(1000))


def test_diamond_include_is_not_a_cycle(tmp_path: Path) -> None:
    (tmp_path / "leaf.toml").write_text('[[step]]\nop = "settle"\n')
    (tmp_path / "mid.toml").write_text('[[step]]\nop = "include"\nfile = "leaf.toml"\n')
    path = write(tmp_path / "s.toml", '[[step]]\nop = "include"\nfile = "leaf.toml"\n'
                                      '[[step]]\nop = "include"\nfile = "mid.toml"\n')
    assert [s.path for s in load_script(path).steps] == ["1:leaf.toml/1", "2:mid.toml/1:leaf.toml/1"]


def test_shared_fragment_keeps_each_includes_tolerance(tmp_path: Path) -> None:
    (tmp_path / "f.toml").write_text('[[step]]\nop = "in"\nport = 8\n')
    path = write(tmp_path / "s.toml", '[[step]]\nop = "include"\nfile = "f.toml"\ndiff_mask = 0x0F\n'
                                      '[[step]]\nop = "include"\nfile = "f.toml"\n')
    a, b = load_script(path).steps
    assert a.tolerance.diff_mask == 0x0F and b.tolerance.diff_mask is None


def test_16_mib_pattern_in_a_1000_repeat(tmp_path: Path) -> None:
    path = write(tmp_path / "s.toml", """
        [[step]]
        op = "repeat"
        count = 1000
        steps = [{op = "write", addr = 0x100000, pattern = "5a", length = 0x1000000}]
    """)
    err = refused(path, ScriptLimitError)
    assert_limit(err, "moved bytes", "1", "count")


def test_held_bytes_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loader_mod, "MAX_HELD_BYTES", 1000)
    step = '[[step]]\nop = "write"\naddr = 0x1000\npattern = "00"\nlength = 400\n'
    assert len(load_script(write(tmp_path / "ok.toml", step * 2)).steps) == 2
    assert_limit(refused(write(tmp_path / "s.toml", step * 3), ScriptLimitError), "held bytes", "3", "pattern")


def test_vars_squaring_chain(tmp_path: Path) -> None:
    chain = "\n".join(["v0 = 0x10000"] + [f'v{k} = "v{k - 1} * v{k - 1}"' for k in range(1, 40)])
    err = refused(write(tmp_path / "s.toml", f'[vars]\n{chain}\n[[step]]\nop = "settle"\n'), ScriptLimitError)
    assert_limit(err, "expression size", None, "vars.v3")  # 2**16, 2**32, 2**64, then 2**128
    assert "64 bits" in str(err)


def test_shift_chain_in_a_step(tmp_path: Path) -> None:
    err = refused(write(tmp_path / "s.toml", '[[step]]\nop = "out"\nport = 0x80\nvalue = "(1 << 64) << 64"\n'),
                  ScriptLimitError)
    assert_limit(err, "expression size", "1", "value")


def test_2000_deep_arrays(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(HEADER + "x = " + "[" * 2000 + "]" * 2000 + '\n[[step]]\nop = "settle"\n')
    assert_limit(refused(path, ScriptLimitError), "TOML nesting", None, None)
    path.write_text(HEADER + '[[step]]\nop = "settle"\nnote = ' + "[" * 100 + "]" * 100 + "\n")
    assert_limit(refused(path, ScriptLimitError), "TOML nesting", None, None)  # parses, still refused


def test_5000_unary_minus(tmp_path: Path) -> None:
    path = write(tmp_path / "s.toml", f'[[step]]\nop = "out"\nport = 0x80\nvalue = "{"-" * 5000}1"\n')
    assert_limit(refused(path, ScriptLimitError), "expression size", "1", "value")
    # within the limit, deep unary chains still evaluate
    path = write(tmp_path / "ok.toml", f'[[step]]\nop = "out"\nport = 0x80\nvalue = "{"-" * 200}1"\n')
    assert load_script(path).steps[0].args.value == 1


def test_5000_character_names(tmp_path: Path) -> None:
    long = "n" * 5000
    err = refused(write(tmp_path / "a.toml", f'[[step]]\nop = "settle"\nname = "{long}"\n'), ScriptLimitError)
    assert_limit(err, "name length", "1", "name")
    err = refused(write(tmp_path / "b.toml", f'[vars]\n{long} = 1\n[[step]]\nop = "settle"\n'), ScriptLimitError)
    assert err.limit == "name length" and len(str(err)) < 400  # type: ignore[attr-defined]
    err = refused(write(tmp_path / "c.toml", f'[buffers.{long}]\nsize = 16\nchannel = 1\n[[step]]\nop = "settle"\n'),
                  ScriptLimitError)
    assert err.limit == "name length"  # type: ignore[attr-defined]
    path = tmp_path / "d.toml"
    path.write_text(f'[script]\nname = "{long}"\n[[step]]\nop = "settle"\n')
    assert_limit(refused(path, ScriptLimitError), "name length", None, "script.name")


def test_nesting_limit(tmp_path: Path) -> None:
    inner = '{op = "settle"}'
    for _ in range(loader_mod.MAX_NESTING + 1):
        inner = f'{{op = "repeat", count = 1, steps = [{inner}]}}'
    # TOML nesting grows two levels per repeat (table + array): allow that much for this test
    path = write(tmp_path / "s.toml", f"[[step]]\nop = \"repeat\"\ncount = 1\nsteps = [{inner}]\n")
    old = loader_mod.MAX_TOML_DEPTH
    try:
        loader_mod.MAX_TOML_DEPTH = 100
        err = refused(path, ScriptLimitError)
    finally:
        loader_mod.MAX_TOML_DEPTH = old
    assert err.limit == "nesting" and err.key == "steps"  # type: ignore[attr-defined]


def test_a_million_step_repeat_loads_fast_and_small(tmp_path: Path) -> None:
    path = write(tmp_path / "s.toml", """
        [[step]]
        op = "in"
        port = 8
        [[step]]
        op = "repeat"
        count = 1000000
        steps = [{op = "out", port = 0x80, value = 1}]
    """)
    tracemalloc.start()
    t0 = time.monotonic()
    try:
        script = load_script(path)
        elapsed = time.monotonic() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(script.steps) == 1_000_001
    assert peak < 10 << 20, f"loading took {peak >> 20} MiB"  # a flat list took about 500 MiB
    assert elapsed < 5, f"loading took {elapsed:.1f} s"  # a flat list took 11 s
    last = script.steps[-1]
    assert (last.index, last.path, last.args.value) == (1_000_000, "2[1000000].1", 1)
    bound = prepare(script, SimBackend())
    assert len(bound) == 1_000_001 and bound[1] is bound[-1]  # one bound dict per written step


def test_one_more_step_than_the_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loader_mod, "MAX_STEPS", 10)
    body = """
        [[step]]
        op = "settle"
        [[step]]
        op = "repeat"
        count = COUNT
        steps = [{op = "settle"}]
    """
    assert len(load_script(write(tmp_path / "ok.toml", body.replace("COUNT", "9"))).steps) == 10
    path = write(tmp_path / "s.toml", body.replace("COUNT", "10"))
    assert_limit(refused(path, ScriptLimitError), "expanded steps", "2", "count")


def test_step_list_behaves_like_the_expanded_list(tmp_path: Path) -> None:
    (tmp_path / "f.toml").write_text('[[step]]\nop = "in"\nport = 8\n[[step]]\nop = "settle"\n')
    path = write(tmp_path / "s.toml", """
        [[step]]
        op = "settle"
        [[step]]
        op = "repeat"
        count = 3
        steps = [{op = "delay", us = 1}, {op = "repeat", count = 2, steps = [{op = "include", file = "f.toml"}]}]
        [[step]]
        op = "repeat"
        count = 0
        steps = [{op = "settle"}]
        [[step]]
        op = "in"
        port = 9
    """)
    steps = load_script(path).steps
    assert isinstance(steps, StepList)
    flat = list(steps)
    assert len(flat) == len(steps) == 1 + 3 * (1 + 2 * 2) + 1
    assert [steps[i] for i in range(len(steps))] == flat
    assert steps[-1] == flat[-1] and steps[3:7] == flat[3:7] and steps[::5] == flat[::5]
    assert steps == flat and [s.index for s in flat] == list(range(len(flat)))
    assert flat[3].path == "2[1].2[1].1:f.toml/2" and flat[-2].path == "2[3].2[2].1:f.toml/2"
    assert sorted(s.path for s in steps.templates()) == ["1", "1", "1", "1", "2", "4"]  # f.toml once
    with pytest.raises(IndexError):
        steps[len(steps)]


# --- item 17: what reaches the terminal ----------------------------------------------------------


ESC = "\x1b[2J\x1b[31m"


@pytest.mark.parametrize(("where", "key"), [
    ('[script]\nname = "x\\u001b[2J"\n[[step]]\nop = "settle"\n', "script.name"),
    ('[script]\nname = "x"\ndescription = "a\\u001b]0;title\\u0007"\n[[step]]\nop = "settle"\n', "script.description"),
    (HEADER + '[[step]]\nop = "settle"\nname = "\\u001b[31mred"\n', "name"),
    (HEADER + '[[step]]\nop = "settle"\nnote = "\\u009b31m"\n', "note"),
    (HEADER + '[[step]]\nop = "repeat"\ncount = 1\nnote = "\\u202eevil"\nsteps = [{op = "settle"}]\n', "note"),
])
def test_control_characters_in_names_are_refused(tmp_path: Path, where: str, key: str) -> None:
    path = tmp_path / "s.toml"
    path.write_text(where)
    err = refused(path, ScriptTypeError)
    assert err.key == key and "control character" in str(err)
    assert "\x1b" not in str(err) and "\x9b" not in str(err) and "\u202e" not in str(err)


def test_multiline_description_is_fine(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text('[script]\nname = "x"\ndescription = """two\n\tlines"""\n[[step]]\nop = "settle"\n')
    assert load_script(path).description == "two\n\tlines"


def test_error_messages_escape_control_characters(tmp_path: Path) -> None:
    err = refused(tmp_path / f"a{ESC}b.toml", ScriptIncludeError)  # a file name from the command line
    assert "\x1b" not in str(err) and "\\x1b[2J" in str(err)
    # a fragment's or data file's name becomes part of labels and messages: control characters
    # in it are refused, even when the file exists
    (tmp_path / f"x{ESC}.toml").write_text('[[step]]\nop = "settle"\n')
    (tmp_path / f"x{ESC}.bin").write_bytes(b"1")
    toml_name = "x\\u001b[2J\\u001b[31m"
    for n, step in enumerate((f'op = "include"\nfile = "{toml_name}.toml"',
                              f'op = "write"\naddr = 0\nfile = "{toml_name}.bin"')):
        err = refused(write(tmp_path / f"s{n}.toml", f"[[step]]\n{step}\n"), ScriptFileError)
        assert err.rule == "path" and "control characters" in str(err), str(err)  # type: ignore[attr-defined]
        assert "\x1b" not in str(err) and err.key == "file"


def test_overlapping_fixed_buffers_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "s.toml", """
        [buffers.a]
        size = 0x1000
        channel = 1
        at = 0x20000
        [buffers.b]
        size = 0x100
        channel = 2
        at = 0x20800
        [[step]]
        op = "settle"
    """)
    err = refused(path, ScriptRangeError)
    assert err.key == "buffers.b.at" and "'a'" in str(err) and "'b'" in str(err) and "overlap" in str(err)
    # touching is not overlapping
    path.write_text(path.read_text().replace("at = 0x20800", "at = 0x21000"))
    assert set(load_script(path).buffers) == {"a", "b"}


def test_cli_allow_path_widens_the_rule_for_run_and_diff(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`hil run --allow-path DIR` and `hil diff --allow-path DIR` (passed on to its workers)."""
    from hil.cli import main

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.bin").write_bytes(b"\x5a" * 8)
    path = write(tmp_path / "scripts" / "s.toml",
                 data_step("../data/x.bin")
                 + '[[step]]\nop = "read"\naddr = 0x1000\nlength = 8\nexpect_hex = "5a5a5a5a5a5a5a5a"\n')
    assert main(["run", str(path), "-q"]) == 2
    assert "outside the script's directory tree" in capsys.readouterr().err
    assert main(["run", str(path), "-q", "--allow-path", str(tmp_path / "data")]) == 0
    capsys.readouterr()
    assert main(["diff", str(path), "-b", "sim", "-b", "sim:?profile=qemu", "--json"]) == 2
    capsys.readouterr()
    assert main(["diff", str(path), "-b", "sim", "-b", "sim:?profile=qemu", "--allow-path", str(tmp_path / "data"),
                 "--json"]) == 0
