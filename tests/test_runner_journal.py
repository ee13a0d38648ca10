"""Running transfer scripts (hil.runner) and their JSONL journals (hil.journal).

Observations are checked op by op on the simulator; the journal is checked as a round trip,
against truncation, and against a real ``python -m hil run`` killed with SIGKILL mid-run.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hil.backends.recording import RecordingBackend
from hil.backends.sim import SimBackend
from hil.journal import InObs, Journal, JournalError, Observation, RunResult, WaitTcObs, read_journal
from hil.runner import run_script
from hil.script import load_script

HEADER = '[script]\nname = "{name}"\n'
DATA = "00 11 22 33 44 55 66 77 88 99 aa bb cc dd ee ff"
SHA = "sha256:" + hashlib.sha256(bytes.fromhex(DATA)).hexdigest()


def write(tmp_path: Path, body: str, name: str = "t", requires: str = "") -> Path:
    path = tmp_path / f"{name}.toml"
    head = HEADER.format(name=name) + (f"requires = {requires}\n" if requires else "")
    path.write_text(head + textwrap.dedent(body), encoding="utf-8")
    return path


EVERY_OP = f"""
    [buffers.src]
    size = 16
    channel = 3
    [buffers.dst]
    size = 512
    channel = 2

    [[step]]
    op = "write"
    buffer = "src"
    hex = "{DATA}"
    [[step]]
    op = "in"
    port = "dma1.status"
    [[step]]
    op = "in"
    name = "mask readback"
    port = "dma1.all_mask"
    expect = 0x0F
    mask = 0x0F
    [[step]]
    op = "in"
    port = "dma1.all_mask"
    expect = 0x00
    mask = 0x01
    [[step]]
    op = "read"
    buffer = "src"
    expect_hex = "{DATA}"
    [[step]]
    op = "read"
    buffer = "src"
    record = "digest"
    expect_digest = "{SHA}"
    [[step]]
    op = "read"
    buffer = "src"
    length = 4
    expect_hex = "00 11 22 34"
    [[step]]
    op = "device"
    channel = 2
    kind = "source"
    pattern = "a5 5a"
    length = 512
    [[step]]
    op = "program"
    channel = 2
    mode = "DMA_MODE_READ"
    buffer = "dst"
    [[step]]
    op = "wait_tc"
    channel = 2
    [[step]]
    op = "residue"
    channel = 2
    expect = 0
    [[step]]
    op = "device"
    channel = 3
    kind = "sink"
    capacity = 8
    [[step]]
    op = "program"
    channel = 3
    mode = "DMA_MODE_WRITE"
    buffer = "src"
    [[step]]
    op = "wait_tc"
    channel = 3
    timeout = 0.01
    expect_complete = false
    [[step]]
    op = "residue"
    channel = 3
    [[step]]
    op = "read"
    buffer = "dst"
    length = 4
    expect_hex = "a5 5a a5 5a"
"""


@pytest.fixture
async def every_op(tmp_path: Path) -> tuple[RunResult, Path, Path]:
    path = write(tmp_path, EVERY_OP, name="every-op", requires='["devices"]')
    journal = tmp_path / "out" / "every.jsonl"
    async with SimBackend() as be:
        result = await run_script(load_script(path), be, journal=journal)
    return result, path, journal


def by_step(result: RunResult) -> dict[str, Observation]:
    return {o.step: o for o in result.observations}


async def test_in_observations(every_op: tuple[RunResult, Path, Path]) -> None:
    obs = by_step(every_op[0])
    plain = obs["2"]
    assert (plain.op, plain.port, plain.width, plain.value, plain.index) == ("in", 0x08, 8, 0x00, 1)
    assert plain.ok is None and plain.expect is None  # nothing expected
    good, bad = obs["3"], obs["4"]
    assert (good.value, good.expect, good.mask, good.ok, good.name) == (0x0F, 0x0F, 0x0F, True, "mask readback")
    assert (bad.value, bad.expect, bad.mask, bad.ok) == (0x0F, 0x00, 0x01, False)
    assert "1" not in obs  # write steps observe nothing


async def test_read_observations(every_op: tuple[RunResult, Path, Path]) -> None:
    obs = by_step(every_op[0])
    full, digest_only, wrong = obs["5"], obs["6"], obs["7"]
    assert full.addr == 0x10000 and full.length == 16
    assert full.data == DATA.replace(" ", "") and full.digest == SHA and full.ok is True
    assert digest_only.data is None and digest_only.digest == SHA
    assert digest_only.expect == SHA and digest_only.ok is True
    assert wrong.data == "00112233" and wrong.expect == "00112234" and wrong.ok is False


async def test_transfer_observations(every_op: tuple[RunResult, Path, Path]) -> None:
    obs = by_step(every_op[0])
    wait = obs["10"]
    assert (wait.channel, wait.tc, wait.value, wait.length, wait.expect, wait.ok) == (2, True, 0, 512, "complete", True)
    assert (obs["11"].value, obs["11"].expect, obs["11"].ok) == (0, 0, True)
    assert obs["16"].ok is True  # the source's pattern landed in dst
    # the sink takes 8 of 16 bytes and drops its request: no TC, 8 bytes left
    partial = obs["14"]
    assert (partial.tc, partial.value, partial.length, partial.ok, partial.expect) == (False, 8, 16, None, None)
    assert obs["15"].value == 8 and obs["15"].ok is None


async def test_device_end_observations(every_op: tuple[RunResult, Path, Path]) -> None:
    result = every_op[0]
    ends = [o for o in result.observations if o.step.startswith("end.")]
    assert [o.step for o in ends] == ["end.device2", "end.device3"]
    assert result.observations[-2:] == ends  # after every step
    source, sink = ends
    assert (source.op, source.channel, source.length, source.value, source.tc) == ("device", 2, 512, 0, True)
    assert source.digest is None
    sent = bytes.fromhex(DATA)[:8]
    assert (sink.channel, sink.length, sink.value, sink.tc) == (3, 8, 0, False)
    assert sink.data == sent.hex() and sink.digest == "sha256:" + hashlib.sha256(sent).hexdigest()


async def test_status_failures_and_time(every_op: tuple[RunResult, Path, Path]) -> None:
    result, path, _ = every_op
    assert result.status == "failed" and result.error is None
    assert [o.step for o in result.failures] == ["4", "7"]
    assert result.script == "every-op" and result.file == str(path) and result.backend == "sim"
    assert result.steps_total == 16 and result.identity.startswith("sim profile=intel")
    vts = [o.vt_ns for o in result.observations]
    assert all(v is not None for v in vts) and vts == sorted(vts)  # virtual time on the sim
    ts = [o.t for o in result.observations]
    assert ts == sorted(ts)


async def test_passing_run(tmp_path: Path) -> None:
    path = write(tmp_path, '[[step]]\nop = "in"\nport = "dma2.all_mask"\nexpect = 0x0E\n')
    async with SimBackend() as be:
        result = await run_script(load_script(path), be)
    assert result.status == "passed" and result.failures == []


async def test_incomplete_wait_tc_is_a_failed_expectation(tmp_path: Path) -> None:
    path = write(tmp_path, """
        [[step]]
        op = "program"
        channel = 1
        mode = "DMA_MODE_READ"
        addr = 0x20000
        length = 16
        [[step]]
        op = "wait_tc"
        channel = 1
        timeout = 0.001
        [[step]]
        op = "in"
        port = 8
    """)
    async with SimBackend() as be:
        result = await run_script(load_script(path), be)
    wait = by_step(result)["2"]
    assert (wait.tc, wait.value, wait.length, wait.ok) == (False, 16, 16, False)
    assert result.status == "failed" and "3" in by_step(result)  # the run goes on


# --- an error stops the run --------------------------------------------------------------------------


ERRORING = """
    [buffers.ring]
    size = 64
    channel = 1
    [[step]]
    op = "device"
    channel = 1
    kind = "sink"
    [[step]]
    op = "in"
    port = "dma1.status"
    [[step]]
    op = "program"
    channel = 1
    mode = "DMA_MODE_WRITE | DMA_AUTOINIT"
    buffer = "ring"
    [[step]]
    op = "settle"
    name = "never quiet"
    timeout = 0.01
    [[step]]
    op = "in"
    port = "dma1.status"
"""


async def test_error_step_stops_the_run(tmp_path: Path) -> None:
    """An autoinit ring never settles: only running finds that. The run stops at that step."""
    path = write(tmp_path, ERRORING, requires='["devices"]')
    journal = tmp_path / "err.jsonl"
    async with SimBackend() as be:
        result = await run_script(load_script(path), be, journal=journal)
    assert result.status == "error"
    assert result.error is not None and result.error.startswith("step 4 (settle: never quiet):")
    assert "DMA still active" in result.error
    assert [o.step for o in result.observations] == ["2", "4"]  # no step 5, no device end observations
    err = result.observations[-1]
    assert err.op == "settle" and err.index == 3 and err.name == "never quiet"
    assert err.ok is False and "DMA still active" in (err.error or "")
    assert result.failures == []  # the run's error, not a failed expectation
    back = read_journal(journal)
    assert back.status == "error" and back.error == result.error
    assert [o.to_json() for o in back.observations] == [o.to_json() for o in result.observations]


async def test_progress_is_reported_per_step(tmp_path: Path) -> None:
    path = write(tmp_path, '[[step]]\nop = "repeat"\ncount = 3\nsteps = [{op = "in", port = 8}]\n')
    seen: list[tuple[int, int, str]] = []
    async with SimBackend() as be:
        await run_script(load_script(path), be, progress=lambda i, n, step: seen.append((i, n, step.path)))
    assert seen == [(0, 3, "1[1].1"), (1, 3, "1[2].1"), (2, 3, "1[3].1")]


async def test_ports_touched_are_the_scripts(tmp_path: Path) -> None:
    path = write(tmp_path, """
        [[step]]
        op = "out"
        port = "ch1.page"
        value = 0x12
        [[step]]
        op = "in"
        port = "ch1.page"
        [[step]]
        op = "out"
        port = 0x80
        width = 16
        value = 0x3456
    """)
    async with RecordingBackend(SimBackend()) as be:
        result = await run_script(load_script(path), be)
        assert be.port_trace() == [("W", 0x83, 0x12), ("R", 0x83, 0x12), ("W", 0x80, 0x3456)]
        assert be.programs == 3
    assert result.observations[0].value == 0x12


# --- the journal -------------------------------------------------------------------------------------


async def test_journal_round_trip(every_op: tuple[RunResult, Path, Path]) -> None:
    result, _, journal = every_op
    records = [json.loads(line) for line in journal.read_text().splitlines()]
    assert [r["type"] for r in records] == ["header"] + ["obs"] * len(result.observations) + ["end"]
    head = records[0]
    assert head["script"] == "every-op" and head["backend"] == "sim" and head["steps"] == 16
    assert head["capabilities"]["details"]["profile"] == "intel" and head["pid"] == os.getpid()
    assert records[-1] == {"type": "end", "status": "failed", "error": None, "failures": 2,
                           "elapsed": round(result.elapsed, 6)}
    back = read_journal(journal)
    assert (back.script, back.file, back.backend, back.identity, back.status, back.steps_total) == (
        result.script, result.file, result.backend, result.identity, result.status, result.steps_total)
    assert back.capabilities == result.capabilities
    assert back.observations == result.observations  # every field, False included
    assert [o.step for o in back.failures] == ["4", "7"]
    assert back.tags == result.tags == {"sim", "intel", "sim:intel"}


def test_observation_json_keeps_false_and_drops_absent() -> None:
    o = WaitTcObs("3", 2, channel=1, tc=False, ok=False, value=0)
    d = o.to_json()
    assert d["tc"] is False and d["ok"] is False and d["value"] == 0
    assert "name" not in d and "may_differ" not in d and "port" not in d and "error" not in d
    assert Observation.from_json(d) == o
    tolerant = InObs("4", may_differ=True, diff_mask=0x0F)
    assert Observation.from_json(tolerant.to_json()) == tolerant
    assert Observation.from_json({**d, "future_field": 1}) == o  # newer writers do not break readers


def test_each_record_reads_back_as_its_kind() -> None:
    """The record's op picks the kind; an ``error`` makes it the failed step's, whatever its op."""
    from hil.journal import DeviceObs, ErrorObs, ReadObs, ResidueObs

    kinds = {"in": InObs, "read": ReadObs, "residue": ResidueObs, "wait_tc": WaitTcObs, "device": DeviceObs}
    for op, kind in kinds.items():
        back = Observation.from_json({"step": "1", "op": op, "value": 3})
        assert type(back) is kind and back.op == op
    failed = Observation.from_json({"step": "2", "op": "settle", "index": 1, "ok": False, "error": "DMA still active"})
    assert isinstance(failed, ErrorObs) and (failed.op, failed.error, failed.ok) == ("settle", "DMA still active", False)
    assert failed.to_json() == {"step": "2", "op": "settle", "index": 1, "ok": False, "error": "DMA still active", "t": 0.0}
    with pytest.raises(JournalError, match="op 'delay' records no observation"):
        Observation.from_json({"step": "3", "op": "delay"})


def test_journal_cut_short(tmp_path: Path) -> None:
    path = tmp_path / "cut.jsonl"
    jr = Journal(path)
    r = RunResult("cut", "cut.toml", "sim", steps_total=3)
    jr.header(r)
    jr.observation(InObs("1", 0, port=8, value=1))
    jr.observation(InObs("2", 1, port=8, value=2))
    jr.close()
    with open(path, "a", encoding="utf-8") as fh:
        fh.write('{"type":"obs","step":"3","op":"in","ind')  # a record cut by a kill
    back = read_journal(path)
    assert back.status == "running" and back.error is None
    assert [(o.step, o.value) for o in back.observations] == [("1", 1), ("2", 2)]


def test_journal_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(JournalError, match="empty journal"):
        read_journal(empty)
    headless = tmp_path / "headless.jsonl"
    headless.write_text('{"type":"obs","step":"1","op":"in"}\n')
    with pytest.raises(JournalError, match=r"headless.jsonl:1: journal does not start with a header"):
        read_journal(headless)


async def test_journal_object_is_left_open_for_its_owner(tmp_path: Path) -> None:
    path = write(tmp_path, '[[step]]\nop = "in"\nport = 8\n')
    jr = Journal(tmp_path / "own.jsonl")
    async with SimBackend() as be:
        await run_script(load_script(path), be, journal=jr)
    jr._write({"type": "note"})  # still open: the caller owns it
    jr.close()
    assert read_journal(tmp_path / "own.jsonl").status == "passed"


class BlockingDelay(RecordingBackend):
    """A backend whose delay never returns, so a run can be interrupted mid-step."""

    def __init__(self, inner: SimBackend) -> None:
        super().__init__(inner)
        self.blocked = asyncio.Event()

    async def delay(self, us: float) -> None:
        self.blocked.set()
        await asyncio.Event().wait()


async def test_cancelled_run_ends_its_journal_as_interrupted(tmp_path: Path) -> None:
    path = write(tmp_path, '[[step]]\nop = "in"\nport = 8\n[[step]]\nop = "delay"\nus = 10\n'
                           '[[step]]\nop = "in"\nport = 8\n')
    journal = tmp_path / "cancel.jsonl"
    async with BlockingDelay(SimBackend()) as be:
        task = asyncio.create_task(run_script(load_script(path), be, journal=journal))
        await be.blocked.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    back = read_journal(journal)
    assert back.status == "interrupted" and back.error == "interrupted at step 2 (delay)"
    assert [o.step for o in back.observations] == ["1"]


async def test_a_run_that_never_suspends_can_still_be_cancelled(tmp_path: Path) -> None:
    """On the simulator no await suspends; the runner yields to the loop now and then, so a
    cancellation scheduled on the loop (what Ctrl-C does) lands within a few milliseconds. The
    bound is loose (a loaded CI machine), yet far below the whole run's seconds: a runner that
    never yields would only stop at the end."""
    path = write(tmp_path, '[[step]]\nop = "repeat"\ncount = 1000000\nsteps = [{op = "in", port = 8}]\n')
    script, journal = load_script(path), tmp_path / "cancel.jsonl"
    async with SimBackend() as be:
        task = asyncio.create_task(run_script(script, be, journal=journal))
        loop = asyncio.get_running_loop()
        asked = []
        loop.call_later(0.05, lambda: (asked.append(time.perf_counter()), task.cancel()))
        with pytest.raises(asyncio.CancelledError):
            await task
        stopped = time.perf_counter()
    assert asked and stopped - asked[0] < 0.5
    back = read_journal(journal)
    assert back.status == "interrupted" and back.error is not None
    assert 0 < len(back.observations) < 250_000
    assert back.error == f"interrupted at step {script.steps[len(back.observations)].path} (in)"


# --- a real run, killed -----------------------------------------------------------------------------


SLOW = """
    [[step]]
    op = "in"
    name = "first"
    port = "dma1.all_mask"
    [[step]]
    op = "repeat"
    count = 5000
    steps = [
        {op = "in", port = "dma1.status"},
        {op = "fill", addr = 0x100000, length = 0x10000, pattern = "5a"},
        {op = "read", addr = 0x100000, length = 0x10000},
        {op = "delay", us = 2000},
    ]
"""


def test_killed_run_keeps_its_observations(tmp_path: Path) -> None:
    """SIGKILL a real ``python -m hil run``: the journal holds everything observed before it."""
    path = write(tmp_path, SLOW, name="slow")
    journal = tmp_path / "slow.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "hil", "run", str(path), "--journal", str(journal), "--log-format", "json"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 60  # a guard against a hang, not a timing assertion
        while time.monotonic() < deadline and proc.poll() is None:
            if journal.exists() and journal.read_text().count('"type":"obs"') >= 5:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    back = read_journal(journal)
    assert back.status == "running" and back.error is None
    assert back.script == "slow" and back.steps_total == 1 + 4 * 5000
    n = len(back.observations)
    assert 5 <= n < 1 + 2 * 5000
    first = back.observations[0]
    assert (first.step, first.name, first.port, first.value) == ("1", "first", 0x0F, 0x0F)
    # the observations so far, in order, with nothing skipped
    expected = ["1"] + [f"2[{k}].{j}" for k in range(1, 5001) for j in (1, 3)]
    assert [o.step for o in back.observations] == expected[:n]
    reads = [o for o in back.observations if o.op == "read"]
    digest = "sha256:" + hashlib.sha256(b"\x5a" * 0x10000).hexdigest()
    assert reads and all(o.digest == digest and o.data is None for o in reads)
    assert not journal.read_text().rstrip().endswith('"type":"end"}')


async def test_virtual_time_comes_from_the_backend_interface(tmp_path: Path) -> None:
    """The runner asks ``virtual_time_ns()``; it never reaches into ``backend.machine``."""
    path = write(tmp_path, '[[step]]\nop = "delay"\nus = 250\n[[step]]\nop = "in"\nport = 0x08\n')
    inner = SimBackend()
    async with RecordingBackend(inner) as be:  # the simulator behind nothing but the interface
        assert not hasattr(be, "machine")
        result = await run_script(load_script(path), be)
    stamps = [o.vt_ns for o in result.observations]
    assert stamps and all(isinstance(t, int) for t in stamps), stamps
    assert stamps[-1] == inner.virtual_time_ns() >= 250_000
