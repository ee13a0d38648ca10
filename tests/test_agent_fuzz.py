"""The CI-sized run of fuzz/fuzz_agent.py (the full run sends 1,000,000 frames): mutated frames
against an in-process agent with a reference model; divergences, ops outside the allow-list and
double executions must all be 0, and the fuzzer must notice each when an agent has that fault."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from hil.agent.server import AgentCore

_SPEC = importlib.util.spec_from_file_location("fuzz_agent", Path(__file__).resolve().parent.parent / "fuzz" / "fuzz_agent.py")
assert _SPEC is not None and _SPEC.loader is not None
fuzz_agent = importlib.util.module_from_spec(_SPEC)
sys.modules["fuzz_agent"] = fuzz_agent  # its dataclasses look their module up
_SPEC.loader.exec_module(fuzz_agent)


@pytest.mark.parametrize("io_thread", [False, True], ids=["on-loop", "io-thread"])
async def test_fuzzed_frames_no_divergence_nothing_outside_nothing_twice(io_thread):
    counts = await fuzz_agent.fuzz(3000, seed=7, io_thread=io_thread)
    assert counts.frames >= 3000 and counts.executed > 500 and counts.refused > 50 and counts.replays_checked > 500
    assert (counts.divergences, counts.outside, counts.double) == (0, 0, 0)
    assert {"bitflip", "truncate", "duplicate", "garbage", "stranger"} <= set(counts.mutations)


async def test_the_fuzzer_sees_an_agent_that_runs_retransmissions_again(monkeypatch):
    original = AgentCore.handle

    async def forgetful(self, frame, conn=None):
        if self.session is not None:
            self.session.cache.clear()  # no replay cache: a retransmission is executed again
            self.session.next = frame.seq if frame.type == 0x02 else self.session.next
        return await original(self, frame, conn)

    monkeypatch.setattr(AgentCore, "handle", forgetful)
    counts = await fuzz_agent.fuzz(1500, seed=7)
    assert counts.double > 0


async def test_the_fuzzer_sees_an_agent_that_serves_strangers(monkeypatch):
    original = AgentCore.handle

    async def careless(self, frame, conn=None):
        if self.session is not None and conn is not None and conn.name == "stranger":
            conn = self.session.conn  # the token bypass of the old agent: any connection uses the session
        return await original(self, frame, conn)

    monkeypatch.setattr(AgentCore, "handle", careless)
    counts = await fuzz_agent.fuzz(1500, seed=7)
    assert counts.outside > 0
