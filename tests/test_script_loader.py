"""Transfer-script loading and validation (hil.script).

Every error class gets a test that checks the message names the file, the step (path label),
the key and what was expected. Scripts are written into ``tmp_path``; none of the shipped
examples is needed.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from hil.backends.base import Capabilities, Capability
from hil.backends.recording import RecordingBackend
from hil.backends.sim import SimBackend
from hil.ports import port_names
from hil.runner import check_capabilities, prepare
from hil.script import Op, load_script
from hil.script.expr import Expr
from hil.script.loader import bind
from hil.script.model import (
    ScriptCapabilityError,
    ScriptError,
    ScriptIncludeError,
    ScriptNameError,
    ScriptRangeError,
    ScriptStructureError,
    ScriptSyntaxError,
    ScriptTypeError,
)

PORTS = port_names()
HEADER = '[script]\nname = "t"\n'


def write(tmp_path: Path, body: str, name: str = "s.toml", header: bool = True) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text((HEADER if header else "") + textwrap.dedent(body), encoding="utf-8")
    return path


def load_error(path: Path, cls: type[ScriptError], **kw: object) -> ScriptError:
    with pytest.raises(cls) as info:
        load_script(path, **kw)  # type: ignore[arg-type]
    assert type(info.value) is cls, f"expected exactly {cls.__name__}, got {type(info.value).__name__}"
    return info.value


def assert_names(err: ScriptError, file: Path, step: str | None, key: str | None, *expected: str) -> None:
    """The message names file, step, key and what was expected; the attributes agree."""
    msg = str(err)
    assert err.file == str(file)
    assert msg.startswith(str(file)), msg
    assert err.step == step
    if step is not None:
        assert f"step {step}" in msg, msg
    assert err.key == key
    if key is not None:
        assert f"key {key!r}" in msg, msg
    for text in expected:
        assert text in msg, f"{text!r} not in {msg!r}"


# --- ScriptSyntaxError ---------------------------------------------------------------------------


def test_syntax_error_names_file_and_toml_position(tmp_path: Path) -> None:
    path = write(tmp_path, "[[step]]\nop = \"in\"\nport = 0x08\nvalue = \n")
    err = load_error(path, ScriptSyntaxError)
    assert_names(err, path, None, None, "not valid TOML", "line 6")


def test_syntax_error_in_an_included_fragment_names_the_fragment(tmp_path: Path) -> None:
    frag = tmp_path / "frag.toml"
    frag.write_text("[[step]\nop = 'in'\n", encoding="utf-8")
    path = write(tmp_path, '[[step]]\nop = "include"\nfile = "frag.toml"\n')
    err = load_error(path, ScriptSyntaxError)
    assert err.file == str(frag.resolve())
    assert "not valid TOML" in str(err)


# --- ScriptStructureError: unknown op, unknown key, missing key -------------------------------------


def test_unknown_op(tmp_path: Path) -> None:
    path = write(tmp_path, """
        [[step]]
        op = "in"
        port = 8

        [[step]]
        op = "frobnicate"
    """)
    err = load_error(path, ScriptStructureError)
    assert_names(err, path, "2", "op", "unknown op 'frobnicate'", "ops: out, in, fill")


def test_missing_op(tmp_path: Path) -> None:
    path = write(tmp_path, '[[step]]\nport = 8\n')
    err = load_error(path, ScriptStructureError)
    assert_names(err, path, "1", "op", "missing required key", "out, in")


def test_op_that_is_not_a_string(tmp_path: Path) -> None:
    path = write(tmp_path, '[[step]]\nop = ["in"]\nport = 8\n')
    assert_names(load_error(path, ScriptStructureError), path, "1", "op", "unknown op ['in']")


def test_unknown_key_lists_the_allowed_ones(tmp_path: Path) -> None:
    path = write(tmp_path, '[[step]]\nop = "in"\nprot = 8\nport = 8\n')
    err = load_error(path, ScriptStructureError)
    assert_names(err, path, "1", "prot", "(in)", "unknown key for in", "allowed:", "port", "expect", "mask")


def test_missing_required_key(tmp_path: Path) -> None:
    path = write(tmp_path, '[[step]]\nop = "out"\nport = "dma1.clear_ff"\n')
    err = load_error(path, ScriptStructureError)
    assert_names(err, path, "1", "value", "(out)", "missing required key")


def test_unknown_top_level_table_and_missing_header(tmp_path: Path) -> None:
    path = write(tmp_path, '[settings]\nx = 1\n[[step]]\nop = "settle"\n')
    err = load_error(path, ScriptStructureError)
    assert_names(err, path, None, "settings", "unknown top-level table", "[script]", "[[step]]")
    path = write(tmp_path, '[[step]]\nop = "settle"\n', name="nohdr.toml", header=False)
    err = load_error(path, ScriptStructureError)
    assert_names(err, path, None, "script", 'name = "..."')


def test_a_script_needs_steps(tmp_path: Path) -> None:
    err = load_error(write(tmp_path, ""), ScriptStructureError)
    assert err.key == "step" and "at least one [[step]]" in str(err)


def test_addr_and_buffer_exclusive_and_data_exactly_one(tmp_path: Path) -> None:
    path = write(tmp_path, """
        [buffers.b]
        size = 16
        channel = 1
        [[step]]
        op = "read"
        addr = 0x1000
        buffer = "b"
    """)
    err = load_error(path, ScriptStructureError)
    assert_names(err, path, "1", "addr", "exactly one of addr or buffer")
    path = write(tmp_path, '[[step]]\nop = "write"\naddr = 0x1000\nhex = "00"\ntext = "x"\n', name="w.toml")
    err = load_error(path, ScriptStructureError)
    assert_names(err, path, "1", "text", "exactly one of hex, pattern")


# --- ScriptTypeError --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("step", "key", "expected"),
    [
        ('op = "in"\nport = 1.5', "port", "expected an integer or expression string, got float"),
        ('op = "program"\nchannel = 2\nmode = 0x44\naddr = 0x1000\nlength = 8\nenable = "yes"', "enable",
         "expected true or false"),
        ('op = "delay"\nus = true', "us", "expected a number 0..3.6e+09, got True"),
        ('op = "delay"\nus = "10"', "us", "expected a number"),
        ('op = "write"\naddr = 0\nhex = "zz"', "hex", "is not hex bytes"),
        ('op = "read"\naddr = 0\nlength = 4\nexpect_digest = "md5:00"', "expect_digest",
         "sha256:<64 lowercase hex digits>"),
        ('op = "out"\nport = 8\nvalue = "2 ** 3"', "value", "only integers, names and"),
        ('op = "out"\nport = 8\nvalue = "__import__(\'os\')"', "value", "only integers, names and"),
        ('op = "repeat"\ncount = 2\nsteps = []', "steps", "non-empty list of step tables"),
        ('op = "in"\nport = 8\nname = 3', "name", "expected a string"),
    ],
)
def test_type_errors(tmp_path: Path, step: str, key: str, expected: str) -> None:
    path = write(tmp_path, f"[[step]]\nop = \"settle\"\n\n[[step]]\n{step}\n")
    err = load_error(path, ScriptTypeError)
    assert_names(err, path, "2", key, expected)


def test_type_error_in_header_and_vars(tmp_path: Path) -> None:
    path = write(tmp_path, '[[step]]\nop = "settle"\n', name="h.toml", header=False)
    path.write_text('[script]\nname = 5\n' + path.read_text())
    assert_names(load_error(path, ScriptTypeError), path, None, "script.name", "non-empty string")
    path = write(tmp_path, '[vars]\nn = [1]\n[[step]]\nop = "settle"\n', name="v.toml")
    assert_names(load_error(path, ScriptTypeError), path, None, "vars.n", "expected an integer or an expression")


# --- ScriptRangeError -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("step", "key", "expected"),
    [
        ('op = "out"\nport = 8\nvalue = 0x100', "value", "is outside 0x0..0xFF"),
        ('op = "out"\nport = 8\nwidth = 16\nvalue = 0x10000', "value", "is outside 0x0..0xFFFF"),
        ('op = "out"\nport = 0x10000\nvalue = 0', "port", "is outside 0x0..0xFFFF"),
        ('op = "in"\nport = 8\nwidth = 12', "width", "use 8 or 16"),
        ('op = "program"\nchannel = 4\nmode = 0xC0\naddr = 0\nlength = 2', "channel", "channel 4 is the cascade"),
        ('op = "enable"\nchannel = 9', "channel", "9 is outside 0..7"),
        ('op = "program"\nchannel = 2\nmode = 0x45\naddr = 0\nlength = 2', "mode", "has channel bits set"),
        ('op = "program"\nchannel = 2\nmode = {select = "burst"}\naddr = 0\nlength = 2', "mode.select",
         "use one of demand, single, block, cascade"),
        ('op = "read"\naddr = 0\nlength = 2\nexpect_hex = "00 11 22"', "expect_hex",
         "3 bytes expected but length is 2"),
        ('op = "device"\nchannel = 2\nkind = "pipe"', "kind", 'use "source" or "sink"'),
        ('op = "wait_tc"\nchannel = 2\ntimeout = 7200', "timeout", "expected a number 0..3600"),
        ('op = "repeat"\ncount = -1\nsteps = [{op = "settle"}]', "count", "-1 is outside 0..1000000"),
        ('op = "out"\nport = 8\nvalue = "1 // 0"', "value", "division by zero"),
        ('op = "in"\nport = 8\ndiff_mask = 0x10000', "diff_mask", "outside 0..65535"),
    ],
)
def test_range_errors(tmp_path: Path, step: str, key: str, expected: str) -> None:
    path = write(tmp_path, f"[[step]]\nop = \"settle\"\n\n[[step]]\n{step}\n")
    err = load_error(path, ScriptRangeError)
    assert_names(err, path, "2", key, expected)


def test_arithmetic_errors_in_vars_are_range_errors(tmp_path: Path) -> None:
    path = write(tmp_path, '[vars]\nn = 0\nbad = "1 << (n - 1)"\n[[step]]\nop = "settle"\n')
    assert_names(load_error(path, ScriptRangeError), path, None, "vars.bad", "shift by -1")


def test_buffer_declaration_ranges(tmp_path: Path) -> None:
    path = write(tmp_path, '[buffers.b]\nsize = 0x10001\nchannel = 1\n[[step]]\nop = "settle"\n')
    assert_names(load_error(path, ScriptRangeError), path, None, "buffers.b.size", "outside 1..65536 for channel 1")
    path = write(tmp_path, '[buffers.b]\nsize = 16\nchannel = 4\n[[step]]\nop = "settle"\n', name="c.toml")
    assert_names(load_error(path, ScriptRangeError), path, None, "buffers.b.channel", "not a data channel")


def test_a_buffer_step_stays_inside_its_buffer(tmp_path: Path) -> None:
    base = '[buffers.b]\nsize = 16\nchannel = 1\n[[step]]\n'
    path = write(tmp_path, base + 'op = "read"\nbuffer = "b"\noffset = 8\nlength = 9\n')
    assert_names(load_error(path, ScriptRangeError), path, "1", "length", "run past the end of buffer 'b' (16 bytes)")
    path = write(tmp_path, base + 'op = "write"\nbuffer = "b"\noffset = 12\nhex = "00 01 02 03 04"\n', name="w.toml")
    assert_names(load_error(path, ScriptRangeError), path, "1", "hex", "5 bytes at offset 12")
    path = write(tmp_path, base + 'op = "read"\nbuffer = "b"\noffset = 16\n', name="o.toml")
    assert_names(load_error(path, ScriptRangeError), path, "1", "offset", "beyond buffer 'b'")
    # in bounds: the whole buffer by default, or a slice of it
    script = load_script(write(tmp_path, base + 'op = "read"\nbuffer = "b"\noffset = 4\n', name="ok.toml"))
    assert script.steps[0].args.length == 12


# --- ScriptNameError --------------------------------------------------------------------------------


def test_unknown_name_in_an_expression(tmp_path: Path) -> None:
    path = write(tmp_path, '[vars]\nbase = 0x10\n[[step]]\nop = "out"\nport = 8\nvalue = "base + nope"\n')
    err = load_error(path, ScriptNameError)
    assert_names(err, path, "1", "value", "unknown name 'nope'", "variable, buffer", "register name", "constant")


def test_unknown_buffer_and_var_names(tmp_path: Path) -> None:
    path = write(tmp_path, '[buffers.b]\nsize = 16\nchannel = 1\n[[step]]\nop = "read"\nbuffer = "c"\n')
    assert_names(load_error(path, ScriptNameError), path, "1", "buffer", "unknown buffer 'c' (buffers: b)")
    path = write(tmp_path, '[vars]\nn = "m + 1"\n[[step]]\nop = "settle"\n', name="v.toml")
    assert_names(load_error(path, ScriptNameError), path, None, "vars.n", "unknown name 'm'")
    path = write(tmp_path, '[vars]\nSINGLE = 1\n[[step]]\nop = "settle"\n', name="shadow.toml")
    assert_names(load_error(path, ScriptNameError), path, None, "vars.SINGLE", "may not shadow a constant")
    path = write(tmp_path, '[buffers."ch2.count"]\nsize = 1\nchannel = 1\n[[step]]\nop = "settle"\n', name="reg.toml")
    assert_names(load_error(path, ScriptNameError), path, None, "buffers.ch2.count", "buffer names are identifiers")


def test_overriding_an_undeclared_variable(tmp_path: Path) -> None:
    path = write(tmp_path, '[vars]\nn = 1\n[[step]]\nop = "settle"\n')
    err = load_error(path, ScriptNameError, variables={"m": 2})
    assert_names(err, path, None, "vars.m", "not declared in [vars]")


# --- ScriptIncludeError -------------------------------------------------------------------------------


def test_missing_include(tmp_path: Path) -> None:
    path = write(tmp_path, '[[step]]\nop = "settle"\n[[step]]\nop = "include"\nfile = "parts/nothere.toml"\n')
    err = load_error(path, ScriptIncludeError)
    assert_names(err, path, "2", "file", "(include)", "'parts/nothere.toml'", "not found")


def test_missing_script_file(tmp_path: Path) -> None:
    err = load_error(tmp_path / "absent.toml", ScriptIncludeError)
    assert_names(err, tmp_path / "absent.toml", None, None, "file not found")


def test_include_cycle(tmp_path: Path) -> None:
    main = write(tmp_path, '[[step]]\nop = "include"\nfile = "a.toml"\n', name="main.toml")
    (tmp_path / "a.toml").write_text('[[step]]\nop = "settle"\n[[step]]\nop = "include"\nfile = "b.toml"\n')
    (tmp_path / "b.toml").write_text('[[step]]\nop = "include"\nfile = "a.toml"\n')
    err = load_error(main, ScriptIncludeError)
    # the error is in b.toml, at its first step, reached through main step 1 and a.toml step 2
    assert_names(err, (tmp_path / "b.toml").resolve(), "1:a.toml/2:b.toml/1", "file", "'a.toml' includes itself (cycle)")


def test_self_include_and_fragment_shape(tmp_path: Path) -> None:
    path = write(tmp_path, '[[step]]\nop = "include"\nfile = "s.toml"\n')
    assert_names(load_error(path, ScriptIncludeError), path, "1", "file", "includes itself (cycle)")
    (tmp_path / "frag.toml").write_text('[script]\nname = "x"\n[[step]]\nop = "settle"\n')
    path = write(tmp_path, '[[step]]\nop = "include"\nfile = "frag.toml"\n', name="f.toml")
    assert_names(load_error(path, ScriptIncludeError), path, "1", "file", "a fragment holds only [[step]] tables")


def test_write_from_a_missing_data_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[[step]]\nop = "write"\naddr = 0x1000\nfile = "payload.bin"\n')
    assert_names(load_error(path, ScriptIncludeError), path, "1", "file", "cannot read 'payload.bin'")


# --- ScriptCapabilityError --------------------------------------------------------------------------


class PortsOnly(RecordingBackend):
    """A sim that claims nothing beyond port I/O and memory, like a bare hardware link."""

    @property
    def capabilities(self) -> Capabilities:
        inner = self.inner.capabilities
        return Capabilities("bare", "bare link", frozenset(), inner.memory_window)


def test_required_capability_missing(tmp_path: Path) -> None:
    path = write(tmp_path, '[[step]]\nop = "settle"\n', header=False)
    path.write_text('[script]\nname = "t"\nrequires = ["devices"]\n' + path.read_text())
    script = load_script(path)
    be = PortsOnly(SimBackend("bare"))
    with pytest.raises(ScriptCapabilityError) as info:
        check_capabilities(script, be)
    assert_names(info.value, path, None, "script.requires", "lacks capability 'devices'", "it has: none")


def test_step_capability_missing(tmp_path: Path) -> None:
    path = write(tmp_path, """
        [[step]]
        op = "in"
        port = 8
        [[step]]
        op = "repeat"
        count = 2
        steps = [{op = "device", channel = 1, kind = "sink"}]
    """)
    script = load_script(path)
    with pytest.raises(ScriptCapabilityError) as info:
        check_capabilities(script, PortsOnly(SimBackend("bare")))
    assert_names(info.value, path, "2[1].1", "op", "(device)", "needs capability 'devices'", "bare")
    check_capabilities(script, SimBackend())  # the simulator has devices


def test_unknown_capability_name(tmp_path: Path) -> None:
    path = write(tmp_path, '[[step]]\nop = "settle"\n', header=False)
    path.write_text('[script]\nname = "t"\nrequires = ["teleport"]\n' + path.read_text())
    with pytest.raises(ScriptCapabilityError) as info:
        check_capabilities(load_script(path), SimBackend())
    assert_names(info.value, path, None, "script.requires", "unknown capability 'teleport'", "devices")


# --- path labels: repeat and include expansion -------------------------------------------------------


def test_repeat_expansion_labels(tmp_path: Path) -> None:
    path = write(tmp_path, """
        [vars]
        n = 2
        [[step]]
        op = "in"
        port = 8
        [[step]]
        op = "repeat"
        count = "n"
        steps = [
            {op = "in", port = "dma1.status", name = "poll"},
            {op = "repeat", count = 2, steps = [{op = "delay", us = 1}]},
        ]
        [[step]]
        op = "repeat"
        count = 0
        steps = [{op = "in", port = 8}]
        [[step]]
        op = "settle"
    """)
    script = load_script(path)
    assert [s.path for s in script.steps] == [
        "1",
        "2[1].1", "2[1].2[1].1", "2[1].2[2].1",
        "2[2].1", "2[2].2[1].1", "2[2].2[2].1",
        "4",
    ]
    assert [s.index for s in script.steps] == list(range(8))
    assert script.steps[1].op is Op.IN and script.steps[1].name == "poll"
    assert script.steps[1].describe() == "step 2[1].1 (in: poll)"
    # --var changes the expansion
    assert len(load_script(path, variables={"n": 3}).steps) == 1 + 3 * 3 + 1


def test_include_labels_and_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "reset.toml").write_text(
        '[[step]]\nop = "out"\nport = "dma1.master_clear"\nvalue = 0\n'
        '[[step]]\nop = "include"\nfile = "status.toml"\n'  # relative to lib/
    )
    (tmp_path / "lib" / "status.toml").write_text('[[step]]\nop = "in"\nport = "dma1.status"\n')
    path = write(tmp_path, """
        [[step]]
        op = "settle"
        [[step]]
        op = "include"
        file = "lib/reset.toml"
        [[step]]
        op = "repeat"
        count = 2
        steps = [{op = "include", file = "lib/status.toml"}]
    """)
    script = load_script(path)
    assert [s.path for s in script.steps] == [
        "1", "2:reset.toml/1", "2:reset.toml/2:status.toml/1", "3[1].1:status.toml/1", "3[2].1:status.toml/1",
    ]
    assert script.steps[1].file == str((tmp_path / "lib" / "reset.toml").resolve())
    assert script.steps[0].file == str(path)
    assert script.steps[2].args.port == 0x08


def test_error_inside_a_repeat_names_the_expanded_path(tmp_path: Path) -> None:
    path = write(tmp_path, '[[step]]\nop = "repeat"\ncount = 3\nsteps = [{op = "settle"}, {op = "in"}]\n')
    err = load_error(path, ScriptStructureError)
    assert_names(err, path, "1[1].2", "port", "missing required key")


def test_error_inside_an_include_names_fragment_and_path(tmp_path: Path) -> None:
    (tmp_path / "frag.toml").write_text('[[step]]\nop = "settle"\n[[step]]\nop = "out"\nport = 8\nvalue = 999\n')
    path = write(tmp_path, '[[step]]\nop = "include"\nfile = "frag.toml"\n')
    err = load_error(path, ScriptRangeError)
    assert_names(err, (tmp_path / "frag.toml").resolve(), "1:frag.toml/2", "value", "outside 0x0..0xFF")


# --- expressions ------------------------------------------------------------------------------------


def test_expressions_with_vars_registers_and_constants(tmp_path: Path) -> None:
    path = write(tmp_path, """
        [vars]
        sector = 512
        sectors = 2
        total = "sector * sectors"
        ch = 2
        [[step]]
        op = "out"
        port = "ch2.count"
        value = "(total - 1) & 0xFF"
        [[step]]
        op = "out"
        port = "dma1.mode"
        value = "SINGLE | IO_TO_MEM | AUTOINIT | ch"
        [[step]]
        op = "in"
        port = "dma2.status"
        expect = "1 << (6 - 4)"
        mask = "~0xF0 & 0xFF"
        [[step]]
        op = "in"
        port = "dma1.status + 0x10"
        [[step]]
        op = "program"
        channel = "ch"
        mode = "DMA_MODE_READ | DMA_AUTOINIT"
        addr = "0x20000 + total"
        length = "total"
        [[step]]
        op = "program"
        channel = 5
        mode = {select = "block", transfer = "mem_to_io", decrement = true}
        addr = 0x40000
        length = 4
    """)
    script = load_script(path)
    assert script.variables == {"sector": 512, "sectors": 2, "total": 1024, "ch": 2}
    s = [st.args for st in script.steps]
    assert s[0].port == PORTS["ch2.count"] == 0x05 and s[0].value == 0xFF
    assert s[1].port == 0x0B and s[1].value == 0x40 | 0x04 | 0x10 | 2
    assert s[2].port == 0xD0 and s[2].expect == 4 and s[2].mask == 0x0F
    assert s[3].port == 0x18  # a register name inside arithmetic: the DMA1 mirror
    assert s[4].channel == 2 and s[4].mode == 0x54 and s[4].addr == 0x20400 and s[4].length == 1024
    assert s[5].mode == 0x80 | 0x08 | 0x20


def test_var_overrides_propagate(tmp_path: Path) -> None:
    path = write(tmp_path, """
        [vars]
        n = 4
        twice = "n * 2"
        [[step]]
        op = "out"
        port = 8
        value = "twice"
    """)
    assert load_script(path).steps[0].args.value == 8
    script = load_script(path, variables={"n": 0x30})
    assert script.variables == {"n": 0x30, "twice": 0x60}
    assert script.steps[0].args.value == 0x60
    # an override is range-checked where it is used
    err = load_error(path, ScriptRangeError, variables={"n": 0x80})
    assert_names(err, path, "1", "value", "'twice' = 256")


def test_tolerances_are_loaded(tmp_path: Path) -> None:
    path = write(tmp_path, """
        [[step]]
        op = "in"
        port = "dma1.status"
        diff_mask = "0x0F"
        note = "TC bits only"
        [[step]]
        op = "residue"
        channel = 2
        may_differ = true
    """)
    a, b = load_script(path).steps
    assert a.tolerance.diff_mask == 0x0F and not a.tolerance.may_differ and a.tolerance.note == "TC bits only"
    assert b.tolerance.may_differ and b.tolerance.diff_mask is None
    path = write(tmp_path, '[[step]]\nop = "in"\nport = 8\nmay_differ = 1\n', name="bad.toml")
    assert_names(load_error(path, ScriptTypeError), path, "1", "may_differ", "expected true or false")


def test_data_sources(tmp_path: Path) -> None:
    (tmp_path / "blob.bin").write_bytes(bytes(range(5)))
    path = write(tmp_path, """
        [[step]]
        op = "write"
        addr = 0x1000
        hex = "de ad_be ef"
        [[step]]
        op = "write"
        addr = 0x1000
        pattern = "01 02 03"
        length = 7
        [[step]]
        op = "write"
        addr = 0x1000
        text = "hi"
        [[step]]
        op = "write"
        addr = 0x1000
        file = "blob.bin"
        [[step]]
        op = "read"
        addr = 0x1000
        length = 5000
    """)
    s = load_script(path).steps
    assert s[0].args.data == bytes.fromhex("deadbeef")
    assert s[1].args.data == bytes([1, 2, 3, 1, 2, 3, 1]) and s[1].args.length == 7
    assert s[2].args.data == b"hi"
    assert s[3].args.data == bytes(range(5))
    assert s[4].args.record == "digest"  # longer than 4096 bytes: a digest unless asked


# --- two-phase binding ------------------------------------------------------------------------------


BUFFERED = """
    [buffers.first]
    size = 0x800
    channel = 1
    [buffers.second]
    size = 0x100
    channel = 5
    [[step]]
    op = "out"
    port = "ch1.page"
    value = "first >> 16"
    [[step]]
    op = "out"
    port = "ch1.addr"
    value = "first & 0xFF"
    [[step]]
    op = "read"
    buffer = "second"
    offset = 0x10
    length = 4
"""


async def test_buffer_expressions_are_resolved_after_placement(tmp_path: Path) -> None:
    script = load_script(write(tmp_path, BUFFERED))
    # loading leaves the buffer expressions symbolic ...
    assert isinstance(script.steps[0].args.value, Expr)
    assert isinstance(script.steps[2].args.addr, Expr) and script.steps[2].args.buffer == "second"
    # ... binding evaluates them against where the zone placed the buffers
    from hil.runner import place_buffers

    be = SimBackend()
    placed = place_buffers(script, be)
    assert placed["first"] == 0x10000  # the zone starts at 64 KiB, in declaration order
    assert placed["second"] >= placed["first"] + 0x800 and placed["second"] % 2 == 0
    bound = prepare(script, be)
    assert bound[0].value == placed["first"] >> 16
    assert bound[1].value == placed["first"] & 0xFF
    assert bound[2].addr == placed["second"] + 0x10 and bound[2].length == 4
    assert bind(script.steps[2], {"first": 0, "second": 0x30000}, script).addr == 0x30010


def test_binding_arithmetic_error_is_a_range_error(tmp_path: Path) -> None:
    path = write(tmp_path, '[buffers.b]\nsize = 16\nchannel = 1\n'
                           '[[step]]\nop = "out"\nport = 8\nvalue = "1 // (b - b)"\n')
    with pytest.raises(ScriptRangeError) as info:
        prepare(load_script(path), SimBackend())
    assert_names(info.value, path, "1", "value", "division by zero")


async def test_binding_range_errors_come_before_any_port_access(tmp_path: Path) -> None:
    path = write(tmp_path, """
        [buffers.buf]
        size = 16
        channel = 1
        [[step]]
        op = "out"
        port = "dma1.clear_ff"
        value = 0
        [[step]]
        op = "in"
        port = "dma1.status"
        [[step]]
        op = "out"
        port = "ch1.addr"
        value = "buf"
    """)
    script = load_script(path)  # phase 1 cannot know where buf lands: fine
    from hil.runner import run_script

    async with RecordingBackend(SimBackend()) as be:
        with pytest.raises(ScriptRangeError) as info:
            await run_script(script, be, journal=tmp_path / "j.jsonl")
        assert be.trace == [] and be.programs == 0  # steps 1 and 2 are valid, yet nothing ran
    assert_names(info.value, path, "3", "value", "(out)", "'buf' = 65536 is outside 0..255")
    assert not (tmp_path / "j.jsonl").exists()


async def test_fixed_buffers_checked_against_the_rules_and_the_window(tmp_path: Path) -> None:
    from hil.runner import run_script

    crossing = write(tmp_path, '[buffers.b]\nsize = 32\nchannel = 1\nat = 0xFFF0\n'
                               '[[step]]\nop = "in"\nport = 8\n')
    async with RecordingBackend(SimBackend()) as be:
        with pytest.raises(ScriptRangeError) as info:
            await run_script(load_script(crossing), be)
        assert be.trace == []
    assert_names(info.value, crossing, None, "buffers.b", "crosses the 64 KiB boundary")

    beyond = write(tmp_path, '[buffers.b]\nsize = 32\nchannel = 1\nat = 0x200000\n'
                             '[[step]]\nop = "in"\nport = 8\n', name="beyond.toml")
    async with RecordingBackend(SimBackend(mem_size=1 << 20)) as be:
        with pytest.raises(ScriptRangeError) as info:
            await run_script(load_script(beyond), be)
        assert be.trace == []
    assert_names(info.value, beyond, None, "buffers.b", "outside the memory")


def test_zone_buffers_never_overlap_fixed_ones(tmp_path: Path) -> None:
    path = write(tmp_path, """
        [buffers.fixed]
        size = 0x100
        channel = 1
        at = 0x10000
        [buffers.placed]
        size = 0x100
        channel = 1
        [[step]]
        op = "read"
        buffer = "placed"
    """)
    script = load_script(path)
    from hil.runner import place_buffers

    where = place_buffers(script, SimBackend())
    assert where["fixed"] == 0x10000
    assert where["placed"] >= 0x10100 or where["placed"] + 0x100 <= 0x10000
    assert place_buffers(script, SimBackend()) == where  # deterministic


def test_zone_exhaustion_is_a_range_error(tmp_path: Path) -> None:
    path = write(tmp_path, '[buffers.big]\nsize = 0x10000\nchannel = 1\n[[step]]\nop = "settle"\n')
    from hil.runner import place_buffers

    with pytest.raises(ScriptRangeError) as info:
        place_buffers(load_script(path), SimBackend(mem_size=0x18000))
    assert_names(info.value, path, None, "buffers.big", "cannot place 65536 bytes for channel 1")


def test_capability_checked_before_placement(tmp_path: Path) -> None:
    path = write(tmp_path, '[[step]]\nop = "dreq"\nchannel = 1\nlevel = true\n')
    with pytest.raises(ScriptCapabilityError):
        prepare(load_script(path), PortsOnly(SimBackend("bare")))
    assert Capability.DREQ in SimBackend().capabilities


def test_repeat_and_include_pass_their_tolerances_down(tmp_path):
    """docs/scripts.md: diff_mask / may_differ / note on a repeat or include apply to the steps
    inside it, unless a step sets its own; they are checked where they were written."""
    (tmp_path / "frag.toml").write_text('[[step]]\nop = "in"\nport = "dma1.status"\n')
    (tmp_path / "s.toml").write_text(
        '[script]\nname = "t"\n'
        '[[step]]\nop = "repeat"\ncount = 2\nmay_differ = true\nnote = "timing"\n'
        'steps = [{ op = "in", port = "ch2.count" }, { op = "in", port = "ch2.count", may_differ = false }]\n'
        '[[step]]\nop = "include"\nfile = "frag.toml"\ndiff_mask = 0x0F\n'
        '[[step]]\nop = "in"\nport = "dma1.status"\n'
    )
    steps = load_script(tmp_path / "s.toml").steps
    tol = {s.path: s.tolerance for s in steps}
    assert tol["1[1].1"].may_differ and tol["1[2].1"].note == "timing"
    assert not tol["1[1].2"].may_differ
    assert tol["2:frag.toml/1"].diff_mask == 0x0F
    assert tol["3"].diff_mask is None and not tol["3"].may_differ
    (tmp_path / "bad.toml").write_text(
        '[script]\nname = "t"\n[[step]]\nop = "repeat"\ncount = 1\nmay_differ = "yes"\nsteps = [{ op = "delay", us = 1 }]\n')
    with pytest.raises(ScriptTypeError) as info:
        load_script(tmp_path / "bad.toml")
    assert info.value.step == "1" and info.value.key == "may_differ"
