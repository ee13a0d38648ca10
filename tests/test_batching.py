"""Steps travel as few programs where a program is a round trip (issue 16: round trips).

On an agent the runner sends consecutive steps as one program (``Backend.batched``): writes
wait for the next program that reads, a step's reads ride along and its observation is made
when the results arrive. Journals stay what they are step by step (test_agent_link.py compares
every example through an agent with the simulator in process); errors still name their step.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from test_agent_link import EVERY_DEVICE, SCRIPTS, agent, url_for

from hil.agent.server import AgentCore, start
from hil.allowlist import AllowList
from hil.backends import open_backend
from hil.backends.mock import MockBackend
from hil.errors import BatchError, HilError, UnsupportedOperationError
from hil.ops import In, Op, Out
from hil.runner import run_script
from hil.script import load_script

FLOPPY_READ = next(p for p in SCRIPTS if p.name == "floppy-read.toml")


async def test_floppy_read_takes_at_most_six_programs_on_an_agent():
    """Was 73: one per step, and two for a residue."""
    async with agent(io_url=EVERY_DEVICE) as (listener, _, rec), open_backend(url_for(listener)) as be:
        rec.clear()
        before = be.stats.programs
        result = await run_script(load_script(FLOPPY_READ), be)
        assert result.status == "passed", result.error
        assert be.stats.programs - before <= 6
        assert rec.programs <= 6  # counted where they run, too


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "s.toml"
    path.write_text('[script]\nname = "s"\n' + textwrap.dedent(body), encoding="utf-8")
    return path


REFUSED_MIDWAY = """
    [[step]]
    op = "out"
    port = "ch1.page"
    value = 0x5A
    [[step]]
    op = "in"
    port = "ch1.page"
    expect = 0x5A
    [[step]]
    op = "out"
    port = 0x3F2
    value = 0x1C
    [[step]]
    op = "in"
    port = "ch2.page"
"""


async def test_a_refused_step_is_reported_as_itself_after_the_steps_before_it_ran(tmp_path):
    """The floppy's port is outside a plain agent's allow-list: refused when queued, after what
    the earlier steps queued has run and been observed, as without batching."""
    async with agent() as (listener, _, rec), open_backend(url_for(listener)) as be:
        result = await run_script(load_script(write(tmp_path, REFUSED_MIDWAY)), be)
    assert result.status == "error" and result.error is not None and result.error.startswith("step 3 (out)")
    assert [(o.step, o.ok) for o in result.observations] == [("2", True), ("3", False)]
    assert "PORT_DENIED" in (result.observations[-1].error or "")
    assert [e.op for e in rec.trace if isinstance(e.op, Out)] == [Out(0x83, 0x5A)]


class Batching(MockBackend):
    """A round-trip backend whose programs fail at the op the handler refuses, by its index."""

    ROUND_TRIPS = True

    async def _execute(self, ops):
        for i, op in enumerate(ops):
            if op == Out(0x80, 0xEE):
                raise UnsupportedOperationError("refused", index=i)
        return await super()._execute(ops)


def handler(op: Op) -> int | None:
    return 0x11 if isinstance(op, In) else None


async def test_a_combined_program_failing_names_the_part_it_failed_in():
    be = Batching(handler)
    await be.open()
    got: list[list[object]] = []
    try:
        async with be.batched():
            be.batch_tag = "first"
            await be.execute([Out(0x81, 1)])
            await be.submit([In(0x81)], got.append)
            be.batch_tag = "second"
            await be.execute([Out(0x80, 0xEE)])
            be.batch_tag = "third"
            await be.execute([In(0x82)])
    except BatchError as e:
        assert (e.tag, str(e.error)) == ("second", "refused")
    else:
        raise AssertionError("the combined program did not fail")
    assert got == [] and be.programs == []  # refused as a whole: nothing of it ran


async def test_batching_sends_queued_programs_with_the_next_read():
    be = Batching(handler)
    await be.open()
    got: list[list[object]] = []
    async with be.batched():
        await be.execute([Out(0x81, 1)])
        await be.submit([In(0x81)], got.append)
        await be.execute([Out(0x82, 2)])
        assert be.programs == []  # nothing read yet: nothing sent
        assert await be.execute([In(0x82)]) == [0x11]
        assert got == [[0x11]]
        await be.execute([Out(0x83, 3)])
    assert be.programs == [(Out(0x81, 1), In(0x81), Out(0x82, 2), In(0x82)), (Out(0x83, 3),)]


async def test_backends_whose_programs_are_cheap_do_not_batch():
    be = MockBackend(handler)
    await be.open()
    async with be.batched():
        await be.execute([Out(0x81, 1)])
        assert be.programs == [(Out(0x81, 1),)]


def test_batch_error_is_a_hil_error():
    assert issubclass(BatchError, HilError)


async def test_short_programs_skip_the_agents_io_thread_long_ones_do_not(monkeypatch):
    """The I/O thread keeps the agent answering while a long program runs; a short one that
    waits for nothing runs on the agent's loop (the hand-off was most of its time)."""
    import threading

    from hil.ops import Delay

    async with agent() as (listener, _, rec), open_backend(url_for(listener)) as be:
        threads: list[str] = []
        run = rec.execute

        async def execute(ops):  # type: ignore[no-untyped-def]
            threads.append(threading.current_thread().name)
            return await run(ops)

        monkeypatch.setattr(rec, "execute", execute)
        await be.inb(0x81)
        await be.execute([Out(0x81, 1), Delay(10)])
        await be.execute([In(0x81)] * 65)
    assert threads == [threading.current_thread().name, "hil-agent-io", "hil-agent-io"]


# --- frames: larger ones offered on TCP, the smaller offer wins --------------------------------

async def _read_trips(url: str, n: int) -> tuple[int, int]:
    async with open_backend(url) as be:
        assert be.agent is not None
        before = be.stats.round_trips
        assert await be.read_mem(0x100000, n) == bytes(n)
        return be.agent.max_payload, be.stats.round_trips - before


async def test_tcp_ends_offer_large_frames_and_a_small_offer_wins():
    """Both ends offer TCP_MAX_PAYLOAD on TCP: 1 MiB is some 18 frames, not 256. A host that
    offers 4 KiB (an older one, or ?max_payload=4096) gets 4 KiB frames from the same agent."""
    from hil.agent.protocol import DEFAULT_MAX_PAYLOAD, TCP_MAX_PAYLOAD

    async with agent() as (listener, core, _):
        payload, trips = await _read_trips(url_for(listener), 1 << 20)
        assert payload == TCP_MAX_PAYLOAD and trips <= (1 << 20) // TCP_MAX_PAYLOAD + 2
        _, small = await _read_trips(url_for(listener, f"?max_payload={DEFAULT_MAX_PAYLOAD}"), 1 << 16)
        assert small >= (1 << 16) // DEFAULT_MAX_PAYLOAD
        assert core.limits().max_reply <= DEFAULT_MAX_PAYLOAD  # the agent answers in 4 KiB too


async def test_an_agent_that_offers_small_frames_on_tcp_gets_them():
    """An agent that does not offer more on TCP (an older one): the host keeps to its offer."""
    from hil.agent.protocol import DEFAULT_MAX_PAYLOAD

    class Old(AgentCore):
        def offer(self, conn):  # type: ignore[no-untyped-def]
            return self.max_payload

    async with open_backend("sim") as io:
        listener = await start(Old(io, AllowList.default([range(0, 1 << 24)])), "tcp://127.0.0.1:0")
        try:
            payload, trips = await _read_trips(f"agent+{listener.address}", 1 << 16)
        finally:
            listener.close()
    assert payload == DEFAULT_MAX_PAYLOAD and trips >= (1 << 16) // DEFAULT_MAX_PAYLOAD


async def test_serial_links_keep_small_frames():
    from hil.agent.protocol import DEFAULT_MAX_PAYLOAD

    async with agent("pty") as (listener, _, _):
        payload, _ = await _read_trips(url_for(listener), 1 << 14)
    assert payload == DEFAULT_MAX_PAYLOAD
