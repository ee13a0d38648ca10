"""``record:`` and ``replay:`` (issue 17 item 2): a session written to JSONL and played back.

A replay must answer exactly what the recorded backend answered (results, errors as their own
class, capabilities, identity, virtual clock, IRQ lines), in the recorded order, and fail at the
first op that differs with the program index, the op, its port and value, and the script step.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hil.backends import open_backend
from hil.backends.record import DEFAULT_FILE, RecordBackend, split_url
from hil.backends.replay import ReplayBackend, rewind
from hil.backends.sim import SimBackend
from hil.errors import BackendOptionError, JournalError, MemoryRangeError, RecordFormatError, ReplayMismatchError
from hil.ops import DevAttach, DevState, In, IrqState, MemRead, MemWrite, Out, Settle, WaitIrq
from hil.runner import run_script
from hil.script import load_script

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "configs" / "scripts"


def test_url_grammar() -> None:
    assert split_url("record:sim") == ("sim", DEFAULT_FILE)
    assert split_url("record:sim:?floppy=generate#run.jsonl") == ("sim:?floppy=generate", "run.jsonl")
    assert split_url("record:agent+tcp://127.0.0.1:7777?token=x#/tmp/a.jsonl") == (
        "agent+tcp://127.0.0.1:7777?token=x", "/tmp/a.jsonl")
    with pytest.raises(BackendOptionError, match="record: needs the URL"):
        open_backend("record:")
    with pytest.raises(BackendOptionError, match="replay: needs the file"):
        open_backend("replay:")


PROGRAM = [DevAttach(1, "source", b"abcd"), Out(0x0A, 0x05), Out(0x0C, 0), Out(0x0B, 0x45), Out(0x83, 0x03),
           Out(0x02, 0), Out(0x02, 0), Out(0x03, 3), Out(0x03, 0), Out(0x0A, 0x01), Settle(), In(0x08),
           MemRead(0x30000, 4), DevState(1), IrqState()]


async def test_replay_answers_what_was_recorded(tmp_path: Path) -> None:
    file = tmp_path / "s.jsonl"
    async with open_backend(f"record:sim#{file}") as rec:
        assert isinstance(rec, RecordBackend)
        want = await rec.execute(PROGRAM)
        await rec.settle(0.5)
        await rec.execute([WaitIrq(6, True, 100.0)])
        with pytest.raises(MemoryRangeError) as recorded_error:
            await rec.read_mem((16 << 20) - 2, 4)
        want_caps, want_vt = rec.capabilities, rec.virtual_time_ns()
    assert [json.loads(line)["kind"] for line in file.read_text().splitlines()] == [
        "session", "program", "settle", "program", "program"]
    async with open_backend(f"replay:{file}") as rep:
        assert isinstance(rep, ReplayBackend)
        got = rep.capabilities
        assert (got.backend, got.identity, got.features, got.memory_window) == (
            want_caps.backend, want_caps.identity, want_caps.features, want_caps.memory_window)
        assert got.details["profile"] == "intel"
        assert await rep.execute(PROGRAM) == want  # bytes, DeviceState, IrqLines, ints
        await rep.settle(0.5)
        assert await rep.wait_irq(6, True, 100e-6) is False
        with pytest.raises(MemoryRangeError) as replayed_error:
            await rep.read_mem((16 << 20) - 2, 4)
        assert str(replayed_error.value) == str(recorded_error.value)
        assert replayed_error.value.addr == recorded_error.value.addr
        assert rep.virtual_time_ns() == want_vt and rep.remaining == 0


TINY = """
[script]
name = "tiny"

[vars]
mode = 0x45

[[step]]
op = "out"
name = "mask channel 1"
port = 0x0A
value = 0x05

[[step]]
op = "out"
name = "the mode byte"
port = 0x0B
value = "mode"

[[step]]
op = "in"
port = 0x08
"""


async def test_first_differing_op_is_named_with_its_step(tmp_path: Path) -> None:
    """A script that writes another value than it did when recorded: the replay says which
    program, which op, the port and both values, and the step that issued it."""
    file = tmp_path / "s.jsonl"
    (tmp_path / "tiny.toml").write_text(TINY, encoding="utf-8")
    script = load_script(tmp_path / "tiny.toml")
    async with RecordBackend(SimBackend(), file) as rec:
        assert (await run_script(script, rec)).status == "passed"
    changed = load_script(tmp_path / "tiny.toml", variables={"mode": 0x49})
    rewind(file)
    async with ReplayBackend(file) as rep:
        result = await run_script(changed, rep)
    assert result.status == "error"
    assert result.error == ("step 2 (out: the mode byte): replay " + str(file) + ": program 1 (issued by tiny step 2 "
                            "(out: the mode byte)): op 0 differs: recorded Out(port=0xB, value=0x45, width=8), "
                            "got Out(port=0xB, value=0x49, width=8)")
    rewind(file)
    async with ReplayBackend(file) as rep:
        await rep.outb(0x0A, 0x05)  # the script's first step, outside any script
        with pytest.raises(ReplayMismatchError) as e:
            await rep.execute([Out(0x0A, 0x07)])
    assert e.value.program == 1 and e.value.op_index == 0 and e.value.step is None
    assert str(e.value).endswith("program 1 (recorded from tiny step 2 (out: the mode byte)): op 0 differs: "
                                 "recorded Out(port=0xB, value=0x45, width=8), got Out(port=0xA, value=0x7, width=8)")


async def test_program_count_and_length_differences(tmp_path: Path) -> None:
    file = tmp_path / "s.jsonl"
    async with RecordBackend(SimBackend(), file) as rec:
        await rec.execute([Out(0x81, 1), Out(0x82, 2)])
    async with ReplayBackend(file) as rep:
        with pytest.raises(ReplayMismatchError, match=r"op 1: the program has 1 ops, the recording 2"):
            await rep.execute([Out(0x81, 1)])
        with pytest.raises(ReplayMismatchError, match=r"program 1: the recording ended after 1 programs"):
            await rep.execute([In(0x81)])
    rewind(file)
    async with ReplayBackend(file) as rep:
        with pytest.raises(ReplayMismatchError, match=r"recorded a program of 2 ops, got settle"):
            await rep.settle(1.0)


async def test_recorded_order_is_kept_across_overlapping_sessions(tmp_path: Path) -> None:
    """Two recorders on one file in one process (hil run keeps its first backend open while a
    fresh one runs the next script) come out in the order their programs ran."""
    file = tmp_path / "s.jsonl"
    first = RecordBackend(SimBackend(), file)
    async with first:
        await first.outb(0x81, 1)
        async with RecordBackend(SimBackend(), file) as second:
            await second.outb(0x82, 2)
        await first.outb(0x83, 3)
    kinds = [(e["kind"], e.get("ops", [{}])[0].get("port")) for e in map(json.loads, file.read_text().splitlines())]
    assert kinds == [("session", None), ("program", 0x81), ("session", None), ("program", 0x82), ("program", 0x83)]


async def test_bad_record_files_are_one_line_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"kind":"program"}\n')
    with pytest.raises(RecordFormatError, match=r"bad.jsonl:1: a session record starts with a session line"):
        await ReplayBackend(bad).open()
    bad.write_text('{"kind":"session","format":"hil-record/1","capabilities":{}}\nnot json\n')
    rewind(bad)
    with pytest.raises(RecordFormatError, match=r"bad.jsonl:2: not JSON"):
        await ReplayBackend(bad).open()
    with pytest.raises(BackendOptionError, match="cannot read the record"):
        await ReplayBackend(tmp_path / "missing.jsonl").open()


def _journal(path: Path) -> list[dict[str, object]]:
    """A journal without what may differ between two runs of one session: wall times and the URL."""
    out = []
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        for key in ("t", "elapsed", "backend", "started", "pid"):
            entry.pop(key, None)
        out.append(entry)
    return out


def test_an_agent_session_recorded_by_hil_run_replays_offline(tmp_path: Path) -> None:
    """``hil run --record`` over an agent serving the simulator, then the agent stops and
    ``hil run -b replay:FILE`` gives the same journals (observations, virtual times, identity)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    scripts = [str(SCRIPTS / "floppy-read.toml"), str(SCRIPTS / "mem-to-mem.toml")]
    agent = subprocess.Popen([sys.executable, "-m", "hil", "agent", "--io", "sim:?floppy=generate", "--listen",
                              "tcp://127.0.0.1:0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        assert agent.stdout is not None
        url = "agent+" + agent.stdout.readline().strip()
        rec = subprocess.run([sys.executable, "-m", "hil", "run", "-q", "-b", url, "--record", str(tmp_path / "a.jsonl"),
                              "--journal-dir", str(tmp_path / "live"), *scripts],
                             capture_output=True, text=True, timeout=300, env=env)
    finally:
        agent.terminate()
        agent.wait(10)
    assert rec.returncode == 0, rec.stdout + rec.stderr
    rep = subprocess.run([sys.executable, "-m", "hil", "run", "-q", "-b", f"replay:{tmp_path / 'a.jsonl'}",
                          "--journal-dir", str(tmp_path / "replayed"), *scripts],
                         capture_output=True, text=True, timeout=300, env=env)
    assert rep.returncode == 0, rep.stdout + rep.stderr
    assert "2 passed, 0 failed, 0 skipped" in rep.stdout
    for name in ("floppy-read.jsonl", "mem-to-mem.jsonl"):
        live, replayed = _journal(tmp_path / "live" / name), _journal(tmp_path / "replayed" / name)
        assert live == replayed, name
        assert "agent hil-agent" in str(live[0]["identity"])


def test_hil_run_record_on_sim_replays_with_fresh_machines(tmp_path: Path) -> None:
    """On sim each script of a run gets a fresh machine; the record holds a session per script
    and one replay backend plays them in order."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    scripts = [str(SCRIPTS / "floppy-read.toml"), str(SCRIPTS / "mem-to-mem.toml")]
    rec = subprocess.run([sys.executable, "-m", "hil", "run", "-q", "-b", "sim:?floppy=generate", "--record",
                          str(tmp_path / "s.jsonl"), "--journal-dir", str(tmp_path / "live"), *scripts],
                         capture_output=True, text=True, timeout=300, env=env)
    assert rec.returncode == 0, rec.stdout + rec.stderr
    kinds = [json.loads(line)["kind"] for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert kinds.count("session") == 2
    rep = subprocess.run([sys.executable, "-m", "hil", "run", "-q", "-b", f"replay:{tmp_path / 's.jsonl'}",
                          "--journal-dir", str(tmp_path / "replayed"), *scripts],
                         capture_output=True, text=True, timeout=300, env=env)
    assert rep.returncode == 0, rep.stdout + rep.stderr
    for name in ("floppy-read.jsonl", "mem-to-mem.jsonl"):
        assert _journal(tmp_path / "live" / name) == _journal(tmp_path / "replayed" / name), name


async def test_memwrite_data_round_trips_as_hex(tmp_path: Path) -> None:
    file = tmp_path / "s.jsonl"
    async with RecordBackend(SimBackend(), file) as rec:
        await rec.execute([MemWrite(0x1000, bytes(range(256)))])
    line = json.loads(file.read_text().splitlines()[1])
    assert line["ops"][0]["data"] == {"hex": bytes(range(256)).hex()}
    async with ReplayBackend(file) as rep:
        assert await rep.execute([MemWrite(0x1000, bytearray(range(256)))]) == []


async def test_a_record_file_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(JournalError, match=r"record file .*file/s.jsonl: cannot write: not a directory"):
        async with RecordBackend(SimBackend(), tmp_path / "file" / "s.jsonl"):
            pass
