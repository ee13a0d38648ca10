"""The step classes are the one description of each step kind: the loader's keys come from their
fields, and docs/scripts.md's step reference must list exactly those keys."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from hil.script.steps import KINDS, Op, allowed_keys

ROOT = Path(__file__).resolve().parent.parent
GROUPS = {"*address*": ("addr", "buffer", "offset"), "*data*": ("hex", "pattern", "text", "file", "length")}


def documented() -> dict[str, dict[str, str]]:
    """op -> {key: default column} from the tables of docs/scripts.md's "Ops" section."""
    text = (ROOT / "docs" / "scripts.md").read_text(encoding="utf-8")
    ops = text[text.index("\n## Ops\n"):text.index("\n## `repeat` and `include`; path labels")]
    out: dict[str, dict[str, str]] = {}
    for section in ops.split("\n### ")[1:]:
        title, _, body = section.partition("\n")
        names = re.findall(r"`([a-z_]+)`", title.split(" — ")[0])
        for name in names:
            out.setdefault(name, {})
        rows = [[c.strip() for c in line.strip("|").split("|")] for line in body.splitlines() if line.startswith("|")]
        if not rows:
            continue
        header, *rows = rows
        with_op = header[0] == "Op"
        for cells in rows[1:] if rows and set(rows[0][0]) <= {"-"} else rows:
            op = cells[0].strip("`") if with_op else names[0]
            key, default = (cells[1], cells[3]) if with_op else (cells[0], cells[2])
            for k in GROUPS.get(key, (key.strip("`"),) if key.startswith("`") else ()):
                out[op][k] = default
    return out


def test_every_op_has_a_step_class() -> None:
    assert set(KINDS) == set(Op)
    for op, cls in KINDS.items():
        assert cls.op is op and dataclasses.is_dataclass(cls)
        assert cls.__dataclass_params__.frozen, cls  # type: ignore[attr-defined]  # set by @dataclass


@pytest.mark.parametrize("op", list(Op), ids=str)
def test_the_docs_list_exactly_the_keys_of_each_step_class(op: Op) -> None:
    docs = documented()
    assert op.value in docs, f"docs/scripts.md has no section for {op.value}"
    keys = allowed_keys(KINDS[op])
    assert set(docs[op.value]) == set(keys), f"{op.value}: docs {sorted(docs[op.value])}, class {sorted(keys)}"
    for key, required in keys.items():
        if key in docs[op.value] and key not in GROUPS["*address*"] + GROUPS["*data*"]:
            assert (docs[op.value][key] == "required") == required, f"{op.value}.{key}: required is {required}"


def test_the_docs_parser_sees_the_tables() -> None:
    """The check above must be able to fail: a section's keys are found, groups expanded."""
    docs = documented()
    assert docs["out"] == {"port": "required", "value": "required", "width": "8"}
    assert set(docs["write"]) == {"addr", "buffer", "offset", "hex", "pattern", "text", "file", "length"}
    assert docs["disable"] == {"channel": "required"} and docs["suspend"] == {}
    assert docs["resume"] == {"lose_state": "`false`"}


def test_a_loaded_step_is_its_class_with_every_default(tmp_path: Path) -> None:
    from hil.script import load_script
    from hil.script.steps import Device, In, Read, WaitTc

    path = tmp_path / "s.toml"
    path.write_text('[script]\nname = "s"\n[buffers.b]\nsize = 16\nchannel = 1\n'
                    '[[step]]\nop = "in"\nport = "dma1.status"\n'
                    '[[step]]\nop = "read"\nbuffer = "b"\noffset = 4\n'
                    '[[step]]\nop = "wait_tc"\nchannel = 1\n'
                    '[[step]]\nop = "device"\nchannel = 1\nkind = "sink"\ncapacity = 8\n', encoding="utf-8")
    steps = [s.args for s in load_script(path).steps]
    assert steps[0] == In(width=8, port=0x08, expect=None, mask=0xFF)
    read = steps[1]
    assert isinstance(read, Read) and (read.length, read.buffer, read.record, read.expect_hex) == (12, "b", "bytes", None)
    assert str(read.addr) != "" and not isinstance(read.addr, int)  # names a buffer: bound once it is placed
    assert steps[2] == WaitTc(channel=1, timeout=1.0, expect_complete=True)
    assert steps[3] == Device(channel=1, kind="sink", dreq=True, data=b"", capacity=8)
    assert steps[3].needs() == "devices" and steps[2].needs() is None and read.moved() == 12
