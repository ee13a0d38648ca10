"""The compiled run of a script (hil.runner: each written step compiled once, ``in`` and ``out``
run in the loop itself, their records made from a ready format) against the general loop
(``run_script(..., compiled=False)``, step by step through ``_run_step``).

Seeded random scripts of ``in`` (8 and 16 bits, with and without expectations that hold or
fail, masks, names and tolerances), ``out``, memory steps, channel programming and nested
repeats and includes run both ways on fresh simulators: the journals must be the same text
(wall times aside), the results the same observations and status, and the machine the same
when read back through the backend afterwards. The strict simulator adds steps that fail part
way (an undecoded port), a progress callback that interrupts adds Ctrl-C at a random step.
"""

from __future__ import annotations

import random
import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from hil.backends import open_backend
from hil.backends.base import Backend, current_step
from hil.journal import (
    OBS_KINDS,
    ErrorObs,
    InObs,
    Journal,
    RunResult,
    _encode,
    _obs_text,
    json_str,
    obs_format,
    read_journal,
)
from hil.runner import run_script
from hil.script import load_script

#: ports the simulator decodes (the DMA controllers, the page registers)
PORTS8 = [*range(0x00, 0x10), *range(0x81, 0x90), *range(0xC0, 0xE0, 2)]
READ_PORTS = ["dma1.status", "dma1.all_mask", "ch1.page", "ch2.page", "ch1.addr", "ch1.count", "dma2.status"]
NAMES = ["", "", "", "probe", 'quote " and \\ back', "per%cent %s %d", "caf\u00e9 \u2713"]
UNDECODED = 0x2F0  #: nothing in the simulator answers here: sim:?strict=1 refuses it at run time


def _value(rng: random.Random, hi: int) -> str:
    match rng.randrange(4):
        case 0:
            return "\"buf >> 16\""  # an expression bound once the buffer is placed
        case 1:
            return str(rng.choice([0, hi]))
    return hex(rng.randrange(hi + 1))


def _step(rng: random.Random, depth: int, strict: bool) -> str:
    """One random [[step]] table's body (keys only), or a nested repeat/include marker."""
    extra = ""
    if rng.random() < 0.3:
        extra += f"name = {_toml_str(rng.choice(NAMES))}\n"
    if rng.random() < 0.15:
        extra += f"diff_mask = {rng.randrange(256)}\n"
    if rng.random() < 0.15:
        extra += "may_differ = true\n"
    kind = rng.choices(["in", "out", "in16", "out16", "mem", "program", "repeat", "bad"],
                       [30, 30, 5, 5, 10, 5, 8 if depth < 2 else 0, 4 if strict else 0])[0]
    match kind:
        case "in":
            text = f'op = "in"\nport = {_port(rng)}\n'
            if rng.random() < 0.6:
                text += f"expect = {_value(rng, 0xFF)}\n"
                if rng.random() < 0.5:
                    text += f"mask = {hex(rng.randrange(256))}\n"
            return text + extra
        case "in16":
            text = f'op = "in"\nwidth = 16\nport = {hex(rng.choice(PORTS8[:15]))}\n'
            if rng.random() < 0.5:
                text += f"expect = {hex(rng.randrange(0x10000))}\nmask = {hex(rng.randrange(0x10000))}\n"
            return text + extra
        case "out":
            return f'op = "out"\nport = {hex(rng.choice(PORTS8))}\nvalue = {_value(rng, 0xFF)}\n' + extra
        case "out16":
            port, value = hex(rng.choice(PORTS8[:15])), hex(rng.randrange(0x10000))
            return f'op = "out"\nwidth = 16\nport = {port}\nvalue = {value}\n' + extra
        case "mem":
            return rng.choice([
                f'op = "fill"\nbuffer = "buf"\npattern = "{rng.randrange(256):02x} 5a"\n',
                f'op = "write"\nbuffer = "buf"\noffset = {rng.randrange(8)}\nhex = "{rng.randbytes(4).hex()}"\n',
                f'op = "read"\nbuffer = "buf"\nlength = {rng.randrange(1, 17)}\n',
                f'op = "read"\nbuffer = "buf"\nlength = 4\nexpect_hex = "{rng.randbytes(4).hex()}"\n',
            ]) + extra
        case "program":
            return rng.choice([
                'op = "program"\nchannel = 1\nmode = "DMA_MODE_READ"\nbuffer = "buf"\nenable = false\n',
                'op = "residue"\nchannel = 1\n',
                'op = "disable"\nchannel = 1\n',
            ])
        case "bad":
            return f'op = "in"\nport = {UNDECODED}\n'
        case _:
            return "repeat"


def _port(rng: random.Random) -> str:
    return _toml_str(rng.choice(READ_PORTS)) if rng.random() < 0.4 else hex(rng.choice(PORTS8))


def _toml_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _steps(rng: random.Random, n: int, key: str, depth: int, strict: bool, tmp: Path) -> str:
    out = []
    for _ in range(n):
        body = _step(rng, depth, strict)
        if body != "repeat":
            out.append(f"[[{key}]]\n{body}")
            continue
        if rng.random() < 0.25:  # an include of a fragment file, once
            frag = tmp / f"frag{rng.randrange(10**9)}.toml"
            frag.write_text(_steps(rng, rng.randrange(1, 4), "step", depth + 1, strict, tmp), encoding="utf-8")
            out.append(f'[[{key}]]\nop = "include"\nfile = "{frag.name}"\n')
            continue
        out.append(f'[[{key}]]\nop = "repeat"\ncount = {rng.choice([0, 1, 2, 3, 7])}\n'
                   + _steps(rng, rng.randrange(1, 5), f"{key}.steps", depth + 1, strict, tmp))
    return "".join(out)


def random_script(seed: int, tmp: Path, strict: bool = False) -> Path:
    rng = random.Random(seed)
    path = tmp / f"s{seed}.toml"
    path.write_text(f'[script]\nname = "random {seed}"\n\n[buffers.buf]\nsize = 64\nchannel = 1\n\n'
                    + _steps(rng, rng.randrange(3, 20), "step", 0, strict, tmp), encoding="utf-8")
    return path


def _journal_text(path: Path) -> str:
    """The journal with what differs between two runs of the same script blanked: wall times,
    the start time and the process."""
    text = path.read_text(encoding="utf-8")
    text = re.sub(r'"t":[0-9.e-]+', '"t":0', text)
    text = re.sub(r'"elapsed":[0-9.e-]+', '"elapsed":0', text)
    return re.sub(r'"started":"[^"]*","pid":\d+', '"started":"","pid":0', text)


def _observations(result: RunResult) -> list[Any]:
    out = []
    for o in result.observations:
        o.t = 0.0
        out.append(o)
    return out


async def _machine(be: Backend) -> tuple[list[int], bytes]:
    """What the run left in the machine, read through the backend: every DMA and page register
    (the same reads on both sides, flip-flop and status side effects included), and memory."""
    regs = [await be.inb(p) for p in PORTS8]
    return regs, await be.read_mem(0x10000, 0x100)


async def run_both(path: Path, tmp: Path, url: str = "sim", progress: Any = None, wall_clock: bool = False) -> list[Any]:
    """(journal text, status, error, observations, machine state, current steps) of the run
    of ``path``, compiled and general; ``wall_clock``: as on a backend without virtual time
    (qemu:), whose records have no ``vt_ns``."""
    script = load_script(path)
    outs = []
    for compiled in (True, False):
        seen: list[str | None] = []

        def note(i: int, n: int, step: object, seen: list[str | None] = seen) -> None:
            seen.append(current_step())  # what a backend reporting the step would name
            if progress is not None:
                progress(i, n, step)

        journal = tmp / f"{path.stem}-{compiled}.jsonl"
        async with open_backend(url) as be:
            if wall_clock:
                be.virtual_time_ns = lambda: None  # type: ignore[method-assign]  # as a wall-clock backend's
            try:
                result = await run_script(script, be, journal=journal, progress=note, compiled=compiled)
            except KeyboardInterrupt:
                result = read_journal(journal)
            state = await _machine(be)
        # the journal holds what the result does, wall times included (blanked below)
        assert read_journal(journal).observations == result.observations
        outs.append([_journal_text(journal), result.status, result.error, _observations(result), state, seen])
    return outs


@pytest.mark.parametrize("seed", range(60))
async def test_compiled_run_equals_general_run(seed: int, tmp_path: Path) -> None:
    fast, general = await run_both(random_script(seed, tmp_path), tmp_path, wall_clock=seed % 3 == 0)
    assert fast == general
    assert ('"vt_ns"' in fast[0]) is (seed % 3 != 0)


@pytest.mark.parametrize("seed", range(100, 130))
async def test_compiled_run_equals_general_run_when_a_step_fails(seed: int, tmp_path: Path) -> None:
    fast, general = await run_both(random_script(seed, tmp_path, strict=True), tmp_path, "sim:?strict=1")
    assert fast == general


@pytest.mark.parametrize("seed", range(200, 215))
async def test_compiled_run_equals_general_run_when_interrupted(seed: int, tmp_path: Path) -> None:
    path = random_script(seed, tmp_path)
    total = len(load_script(path).steps)
    at = random.Random(seed).randrange(max(1, total))

    def interrupt(i: int, n: int, step: object) -> None:
        if i == at:
            raise KeyboardInterrupt

    fast, general = await run_both(path, tmp_path, progress=interrupt)
    assert fast == general
    if total:
        assert fast[1] == "interrupted" and fast[2].startswith("interrupted at step ")


def test_the_random_scripts_cover_what_the_compiled_run_does_itself(tmp_path: Path) -> None:
    """The seeds above run the compiled in and out (both widths), expectations that hold and
    that fail, repeats of several passes, nested groups and failing steps."""
    texts = "".join(random_script(s, tmp_path).read_text() for s in range(60))
    strict = "".join(random_script(s, tmp_path, strict=True).read_text() for s in range(100, 130))
    for needle in ('op = "in"', 'op = "out"', "width = 16", "expect =", "mask =", "[[step.steps.steps]]",
                   'op = "include"', "count = 7", "diff_mask", "may_differ", "per%cent"):
        assert needle in texts, needle
    assert f"port = {UNDECODED}" in strict


@pytest.mark.parametrize("seed", range(40))
def test_obs_format_writes_what_the_journal_writes(seed: int, tmp_path: Path) -> None:
    """The ready format of an ``in`` step's record, filled in, is the text the journal's general
    encoder writes for the same observation."""
    rng = random.Random(seed)
    name = rng.choice(NAMES)
    expect = rng.choice([None, rng.randrange(256)])
    mask = rng.randrange(256) if expect is not None else None
    diff_mask, may_differ = rng.choice([None, rng.randrange(256)]), rng.random() < 0.5
    sample = InObs("", 0, name, True if expect is not None else None, diff_mask, may_differ,
                   port=rng.randrange(0x10000), width=rng.choice([8, 16]), value=0, expect=expect, mask=mask)
    slots = ("step", "index", "value") + (("ok",) if expect is not None else ())
    fmt = obs_format(sample, slots)
    journal = tmp_path / "j.jsonl"
    jr = Journal(journal)
    lines = []
    for _ in range(5):
        path = rng.choice(["0", "12", "3[2].1", "4:frag.toml/2", "5[7].3[1].0"])
        index, value, t = rng.randrange(10**6), rng.randrange(0x10000), round(rng.random() * 100, 6)
        vt = rng.choice([None, rng.randrange(10**12)])
        ok = None if expect is None or mask is None else (value & mask) == (expect & mask)
        obs = InObs(path, index, name, ok, diff_mask, may_differ, t, vt, sample.port, sample.width, value, expect, mask)
        jr.observation(obs)
        filled = (json_str(path), index, value) + (("true" if ok else "false",) if expect is not None else ())
        lines.append(fmt.without_vt % (*filled, t) if vt is None else fmt.with_vt % (*filled, t, vt))
    jr.close()
    assert journal.read_text(encoding="utf-8").splitlines() == lines


def test_obs_format_refuses_slots_the_record_does_not_have() -> None:
    with pytest.raises(ValueError, match="record order"):
        obs_format(InObs("", 0, port=1, width=8, value=0), ("step", "index", "value", "ok"))
    with pytest.raises(ValueError, match="record order"):
        obs_format(InObs("", 0, port=1, width=8, value=0), ("value", "step"))


def _random_value(rng: random.Random) -> Any:
    return rng.choice([None, None, 0, rng.randrange(-5, 10**12), True, False, "", rng.choice(NAMES), "1[2].3",
                       rng.random(), float("nan"), float("inf"), -0.0, [1, "x"], {"k": 1}])


@pytest.mark.parametrize("seed", range(300))
def test_observation_records_equal_the_general_encoder(seed: int) -> None:
    """Journal.observation's record text (one getter per kind, no dict) is what the general
    encoder writes for the record dict, for every kind and any value a field may hold,
    including the ones it hands back to json.dumps (non-finite floats, nested values)."""
    rng = random.Random(seed)
    kind = rng.choice([*OBS_KINDS.values(), ErrorObs])
    obs = kind("")
    for f in fields(kind):
        setattr(obs, f.name, _random_value(rng) if rng.random() < 0.8 else getattr(obs, f.name))
    assert _obs_text(obs) == _encode(obs._fill({"type": "obs"}))
